"""The sample MR volumes and the store built from them on first use.

Where the samples are: an explicit option, else $MRI_TUNE_SAMPLES, else `../shared/data/mri`
beside the repository root (a sample folder holds `manifest.csv`); without any, the MR files that
installed PyPI packages ship (`mri_tune_datasets.fallback`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mri_tune.errors import InputError
from mri_tune_datasets.fallback import build_fallback_manifest
from mri_tune_datasets.ingest import IngestSettings, ingest

logger = logging.getLogger(__name__)

ENV_VAR = "MRI_TUNE_SAMPLES"
MANIFEST_NAME = "manifest.csv"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SAMPLES = REPO_ROOT.parent / "shared" / "data" / "mri"


def find_samples(option: Path | str | None = None) -> Path | None:
    """The sample folder, or None when neither the option, the variable nor the default
    folder names one. An explicit option or variable that names no sample folder raises
    InputError (the user asked for it), while a missing default folder is just None."""
    for value, origin in ((option, "the samples option"), (os.environ.get(ENV_VAR), ENV_VAR)):
        if value:
            folder = Path(value).expanduser()
            if not (folder / MANIFEST_NAME).is_file():
                raise InputError(f"{origin} names {folder}, which holds no {MANIFEST_NAME}; "
                                 "point it at a folder of volumes with a manifest.csv "
                                 "(columns path, region, subject)")
            return folder
    return DEFAULT_SAMPLES if (DEFAULT_SAMPLES / MANIFEST_NAME).is_file() else None


def ensure_store(store: Path, size: int, samples: Path | None = None) -> Path:
    """The store at `store`, ingested from the sample data (all three planes, `size` x `size`
    slices) when absent.

    The sample folder is `samples`, else $MRI_TUNE_SAMPLES, else ../shared/data/mri; without
    any, a small demo set of the MR files that installed PyPI packages ship (fewer regions and
    subjects, said loudly), so that the demo still runs on a bare machine.
    """
    store = Path(store)
    if store.is_file():
        return store
    folder = find_samples(samples)
    if folder is None:
        fallback = build_fallback_manifest(store.parent / "fallback_samples")
        logger.warning("%s", fallback.note)
        manifest = fallback.manifest
    else:
        manifest = folder / MANIFEST_NAME
    logger.info("building the sample store %s from %s (first use)", store, manifest)
    store.parent.mkdir(parents=True, exist_ok=True)
    report = ingest(IngestSettings(manifest=manifest, root=manifest.parent, out=store,
                                   size=size, planes="all",
                                   allow_small_regions=folder is None))
    logger.info("%s", report.summary())
    return store
