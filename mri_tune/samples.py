"""Where the sample MR volumes are: an explicit option, else $MRI_TUNE_SAMPLES, else
`../shared/data/mri` beside the repository root. A sample folder holds `manifest.csv`."""

from __future__ import annotations

import os
from pathlib import Path

from mri_tune.errors import InputError

ENV_VAR = "MRI_TUNE_SAMPLES"
MANIFEST_NAME = "manifest.csv"
REPO_ROOT = Path(__file__).resolve().parents[1]
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
