"""The demo's store: built from the sample folder, or from packaged MR files when there is none."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from mri_tune.data.samples import ensure_store
from mri_tune.data.store import SliceStore
from mri_tune.errors import InputError


def test_store_falls_back_to_packaged_mr_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    import mri_tune.data.samples

    monkeypatch.setattr(mri_tune.data.samples, "find_samples", lambda option=None: None)
    store_path = tmp_path / "store.h5"
    with caplog.at_level(logging.WARNING):
        mri_tune.data.samples.ensure_store(store_path, 32)
    store = SliceStore(store_path)
    assert "head" in store.classes  # nibabel's example4d (an fMRI head) is always installed
    assert len(store) > 0
    assert (tmp_path / "fallback_samples" / "manifest.csv").is_file()
    assert any("MRI_TUNE_SAMPLES" in record.getMessage() for record in caplog.records)


def test_store_from_an_explicit_sample_folder(tmp_path: Path, samples_dir: Path) -> None:
    import csv

    rows = list(csv.DictReader(open(samples_dir / "manifest.csv")))
    keep = [r for r in rows if r["path"].startswith(("sct_testing_data", "dipy/aniso", "niivue"))]
    folder = tmp_path / "mine"
    folder.mkdir()
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "region", "subject"])
        writer.writeheader()
        for r in keep:  # ingest reads only under the manifest's folder: copy the few files
            source, target = samples_dir / r["path"], folder / r["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy(source, target)
            writer.writerow({"path": r["path"], "region": r["region"], "subject": r["subject"]})
    with pytest.raises(InputError, match="spine"):
        # one spine subject cannot fill three splits: the sample folder is really the one used
        ensure_store(tmp_path / "store.h5", 32, folder)
    assert not (tmp_path / "store.h5").exists()
