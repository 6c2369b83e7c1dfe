"""A small demo set from the real MR files that PyPI packages ship, for when no sample folder
is found (see `mri_tune.samples.find_samples`).

The files are those of the shared sample set whose source is a PyPI package. They cover few
subjects (head: up to 5, abdomen: up to 2, pelvis and spine: none), so the subject split cannot
put every region in every split: ingest them with `allow_small_regions=True`, which places a
small region's subjects in train first, then test, and prints a WARNING line per such region.
`pip install -e .[samples]` installs the packages that carry them (renalsegmentor is left out
of that group: it pulls TensorFlow; its file is used when it is installed anyway).

The files (a few MB) are copied beside the manifest, which names them by relative paths: ingest
reads only files under the manifest's folder, and a store never records a site-packages path.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from mri_tune_core.errors import InputError
from mri_tune_datasets.manifest import REGIONS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedFile:
    """An MR file inside an installed package: `module`'s folder / `relative`."""

    distribution: str
    module: str
    relative: str
    region: str
    subject: str


PACKAGED_FILES = (
    PackagedFile("nibabel", "nibabel", "tests/data/example4d.nii.gz", "head",
                 "nibabel-example4d"),
    PackagedFile("dipy", "dipy", "data/files/S0_10slices.nii.gz", "head", "dipy-S0"),
    PackagedFile("dipy", "dipy", "data/files/aniso_vox.nii.gz", "head", "dipy-aniso"),
    PackagedFile("nilearn", "nilearn",
                 "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "head",
                 "MNI152-2009a-template"),
    PackagedFile("pydicom-data", "data_store", "data/emri_small.dcm", "head", "pydicom-emri"),
    PackagedFile("pydicom-data", "data_store", "data/MR-SIEMENS-DICOM-WithOverlays.dcm",
                 "abdomen", "pydicom-abdomen"),
    PackagedFile("renalsegmentor", "segment", "data/test_data/test_sub_01.nii.gz", "abdomen",
                 "renalseg-sub01"),
)


@dataclass(frozen=True)
class FallbackSamples:
    """The manifest written, subjects per covered region, the regions not covered, and a note
    for the user (what is covered, how the split degrades, how to use a real folder)."""

    manifest: Path
    regions: dict[str, int]
    missing: list[str]
    note: str


def locate_packaged_files(table: tuple[PackagedFile, ...] = PACKAGED_FILES
                          ) -> list[tuple[PackagedFile, Path]]:
    """The entries of `table` whose package is installed and holds the file (no import runs)."""
    found = []
    for entry in table:
        spec = importlib.util.find_spec(entry.module)
        folders = list(spec.submodule_search_locations or []) if spec else []
        for folder in folders:
            path = Path(folder) / entry.relative
            if path.is_file():
                found.append((entry, path))
                break
    return found


def build_fallback_manifest(folder: Path, table: tuple[PackagedFile, ...] = PACKAGED_FILES
                            ) -> FallbackSamples:
    """Copy the packaged MR files found into `folder/files/` and write `folder/manifest.csv`
    naming them; InputError if none is found."""
    found = locate_packaged_files(table)
    if not found:
        names = sorted({e.distribution for e in table})
        raise InputError(f"no sample folder and none of the packages that ship MR files "
                         f"({', '.join(names)}) is installed; install them with "
                         "`pip install -e .[samples]`, or set MRI_TUNE_SAMPLES to a folder of "
                         "volumes with a manifest.csv (columns path, region, subject)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "region", "subject", "source"])
        for entry, path in found:
            relative = Path("files", entry.distribution, Path(entry.relative).name)
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / relative)
            writer.writerow([relative.as_posix(), entry.region, entry.subject,
                             f"pypi:{entry.distribution}"])
    regions = {r: len({e.subject for e, _ in found if e.region == r}) for r in REGIONS}
    regions = {r: n for r, n in regions.items() if n}
    missing = [r for r in REGIONS if r not in regions]
    return FallbackSamples(manifest, regions, missing, _note(regions, missing))


def _note(regions: dict[str, int], missing: list[str]) -> str:
    covered = ", ".join(f"{r} ({n} subject{'s' if n > 1 else ''})" for r, n in regions.items())
    lines = [f"No sample folder found: demo set from MR files shipped by installed packages "
             f"covers {covered}."]
    if missing:
        lines.append(f"Not covered: {', '.join(missing)}.")
    small = [r for r, n in regions.items() if n < 3]
    if small:
        lines.append(f"Regions with fewer than 3 subjects ({', '.join(small)}) cannot appear in "
                     "every split: ingest with --allow-small-regions; their validation/test "
                     "errors are not measured.")
    lines.append("For real results set MRI_TUNE_SAMPLES (or pass the samples option) to a folder "
                 "of volumes with a manifest.csv (columns path, region, subject).")
    return " ".join(lines)
