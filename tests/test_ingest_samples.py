"""Ingest of the real sample volumes (../shared/data/mri): the session's `sample_store`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mri_tune.cli import main
from mri_tune.data.store import PLANES, SPLITS, SliceStore
from mri_tune_datasets.preprocess import volume_file_to_slices
from mri_tune_datasets.split import split_subjects

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(sample_store: Path) -> SliceStore:
    return SliceStore(sample_store)


def test_every_manifest_row_is_ingested(store: SliceStore, samples_dir: Path) -> None:
    with open(samples_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert store.skipped == []
    assert {v["row"] for v in store.volumes()} == set(range(1, len(rows) + 1))
    assert all(v["n_slices"] > 0 for v in store.volumes())


def test_every_region_in_every_split(store: SliceStore) -> None:
    info = store.info()
    assert store.classes == ["head", "abdomen", "pelvis", "spine"]
    for split in SPLITS:
        assert all(n > 0 for n in info["splits"][split].values()), (split, info["splits"][split])


def test_subjects_are_disjoint_across_splits(store: SliceStore) -> None:
    subjects = store.info()["subjects"]
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not set(subjects[a]) & set(subjects[b])
    # a person merged under one id from two sources stays in one split
    splits_of = {v["split"] for v in store.volumes() if v["subject"] == "errsm30"}
    assert len(splits_of) == 1


def test_images_are_finite_and_not_constant(store: SliceStore) -> None:
    for split in SPLITS:
        data = store.load_split(split)
        assert data.images.dtype == torch.uint8  # finite by construction: 0..255 integers
        images = data.images.reshape(len(data), -1)
        assert (images.amax(dim=1) > images.amin(dim=1)).all()
        # not merely one stray pixel: every slice keeps ingest's minimum spread of grey levels
        assert images.numpy().std(axis=1).min() >= store.preprocessing["min_slice_std"]


def test_dicom_nrrd_and_4d_files_contribute_slices(store: SliceStore) -> None:
    volumes = store.volumes()
    by_format = {}
    for v in volumes:
        by_format[v["format"]] = by_format.get(v["format"], 0) + v["n_slices"]
    assert by_format["DICOM series"] > 0 and by_format["DICOM"] > 0 and by_format["NRRD"] > 0
    frames = [v for v in volumes if v["path"] == "nibabel/example4d.nii.gz"]
    assert [v["part"] for v in frames] == ["frame 0", "frame 1"]
    assert all(v["n_slices"] > 0 for v in frames)
    inversion = [v for v in volumes if v["path"] == "ukat_kidney/t1/philips_2/00901__.nii.gz"]
    assert len(inversion) == 3  # 18 inversion times: 3 evenly spaced frames, not 18 duplicates


def test_localizer_is_split_by_orientation(store: SliceStore) -> None:
    parts = [v for v in store.volumes() if "t2localizer-75055" in v["path"]]
    assert sorted(v["part"] for v in parts) == ["orientation 0", "orientation 1", "orientation 2"]
    assert sorted(v["acquisition_plane"] for v in parts) == ["axial", "coronal", "sagittal"]


def test_implausible_spacing_is_capped_and_noted(store: SliceStore) -> None:
    (s0,) = [v for v in store.volumes() if v["path"] == "dipy/S0_10slices.nii.gz"]
    assert any("implausible spacing" in note for note in s0["notes"])


def test_load_split_is_contiguous_and_typed(store: SliceStore) -> None:
    volumes = store.volumes()
    total = 0
    for split in SPLITS:
        data = store.load_split(split, device="cpu")
        assert data.images.dtype == torch.uint8 and data.images.shape[1:] == (128, 128)
        assert data.labels.dtype == torch.int64 and data.volume.dtype == torch.int64
        assert {volumes[i]["split"] for i in data.volume.unique().tolist()} == {split}
        region = [volumes[i]["region"] for i in data.volume.tolist()]
        assert [store.classes[i] for i in data.labels.tolist()] == region
        assert set(data.plane.unique().tolist()) <= set(range(len(PLANES)))
        total += len(data)
    assert total == len(store) == store.info()["n_slices"]


def test_store_info_json_has_the_issue_shape(sample_store: Path, capsys) -> None:
    assert main(["store-info", str(sample_store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert isinstance(info["n_slices"], int) and info["image_size"] == [128, 128]
    assert set(info["splits"]) == set(SPLITS) == set(info["subjects"])
    assert all(set(info["splits"][s]) == set(info["classes"]) for s in SPLITS)
    assert info["skipped"] == [] and isinstance(info["provenance"], dict)
    assert {"package_version", "manifest_sha256", "preprocessing"} <= set(info["provenance"])
    assert main(["store-info", str(sample_store)]) == 0
    assert "validation" in capsys.readouterr().out


def test_new_volume_preprocessed_like_ingest(store: SliceStore, samples_dir: Path) -> None:
    """predict's path (`volume_file_to_slices` with the store's parameters) reproduces the
    store's slices bit for bit."""
    (volume,) = [v for v in store.volumes() if v["path"] == "pyradiomics/brain1_image.nrrd"]
    batches = volume_file_to_slices(samples_dir / volume["path"], store.preprocessing)
    fresh = np.concatenate([b.images for b in batches])
    data = store.load_split(volume["split"])
    rows = (data.volume == volume["index"]).nonzero()[:, 0]
    assert np.array_equal(data.images[rows].numpy(), fresh)


def test_split_is_deterministic_for_the_seed(samples_dir: Path) -> None:
    with open(samples_dir / "manifest.csv", newline="") as handle:
        pairs = [(r["subject"], r["region"]) for r in csv.DictReader(handle)]
    first = split_subjects(pairs, (0.5, 0.25, 0.25), np.random.default_rng(0)).assignment
    again = split_subjects(pairs, (0.5, 0.25, 0.25), np.random.default_rng(0)).assignment
    other = split_subjects(pairs, (0.5, 0.25, 0.25), np.random.default_rng(1)).assignment
    assert first == again and first != other
