"""The fallback demo set: packaged MR files located in installed packages."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from mri_tune.errors import InputError
from mri_tune_datasets.fallback import PackagedFile, build_fallback_manifest
from mri_tune_datasets.ingest import IngestSettings, ingest


@pytest.fixture
def fake_package(tiny, monkeypatch) -> tuple[PackagedFile, ...]:
    """A package `fake_mri_pkg` on sys.path holding 3 head volumes and 1 spine volume."""
    site = tiny.folder / "site"
    package = site / "fake_mri_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    table = []
    for i, region in enumerate(["head", "head", "head", "spine"]):
        tiny.nifti(f"site/fake_mri_pkg/data/v{i}.nii.gz", tiny.phantom(seed=i))
        table.append(PackagedFile("fake-mri", "fake_mri_pkg", f"data/v{i}.nii.gz", region,
                                  f"{region}-{i}"))
    table.append(PackagedFile("not-installed", "no_such_module_xyz", "a.nii.gz", "pelvis", "p"))
    monkeypatch.syspath_prepend(str(site))
    yield tuple(table)
    sys.modules.pop("fake_mri_pkg", None)


def test_fallback_manifest_names_found_files_and_degrades_loudly(tiny, fake_package) -> None:
    result = build_fallback_manifest(tiny.folder / "demo", fake_package)
    assert result.regions == {"head": 3, "spine": 1}
    assert result.missing == ["abdomen", "pelvis"]
    assert "--allow-small-regions" in result.note and "MRI_TUNE_SAMPLES" in result.note
    with open(result.manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["path"]).name for r in rows] == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz",
                                                    "v3.nii.gz"]
    settings = IngestSettings(manifest=result.manifest, out=tiny.folder / "demo" / "s.h5",
                              size=32, allow_small_regions=True)
    report = ingest(settings)
    assert all(report.slices[s]["head"] > 0 for s in ("train", "validation", "test"))
    assert report.slices["train"]["spine"] > 0
    assert any("'spine' has only 1 subject" in w for w in report.warnings)
    assert "WARNING" in report.summary()
    with pytest.raises(InputError, match="region 'spine' has 1 subject"):
        ingest(IngestSettings(manifest=result.manifest, out=tiny.folder / "strict.h5", size=32))


def test_fallback_without_any_package_is_a_clear_error(tiny) -> None:
    table = (PackagedFile("not-installed", "no_such_module_xyz", "a.nii.gz", "head", "h"),)
    with pytest.raises(InputError, match=r"pip install -e \.\[samples\]"):
        build_fallback_manifest(tiny.folder, table)


def test_fallback_finds_nibabel_example() -> None:
    """nibabel is a dependency, so its packaged fMRI volume is always found."""
    from mri_tune_datasets.fallback import locate_packaged_files

    found = {entry.subject for entry, _ in locate_packaged_files()}
    assert "nibabel-example4d" in found
