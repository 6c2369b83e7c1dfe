"""The store writer (atomic, grouped by split), the reader, the subject split, sample lookup."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from mri_tune.data.samples import find_samples
from mri_tune.data.store import SliceStore, format_info
from mri_tune.errors import InputError, StoreError
from mri_tune_datasets.preprocess import SliceBatch
from mri_tune_datasets.split import parse_split_fractions, split_subjects, split_targets
from mri_tune_datasets.writer import StoreWriter, VolumeRecord


def _batch(n: int, value: int, plane: str = "axial", size: int = 8) -> SliceBatch:
    images = np.full((n, size, size), value, np.uint8)
    images[:, 0, 0] = 255  # not constant
    return SliceBatch(images, plane, np.arange(n, dtype=np.int32))


def _write(out: Path, splits=(2, 0, 1, 0), sizes=(3, 4, 5, 6)) -> Path:
    regions = ["head", "spine", "head", "spine"]
    with StoreWriter(out, 8) as writer:
        for i, n in enumerate(sizes):
            writer.add_volume(VolumeRecord(f"v{i}.nii", regions[i], f"s{i}", row=i + 1),
                              [_batch(n, 10 * (i + 1))])
        writer.finish(list(splits), ["head", "spine"], {"provenance": {"preprocessing":
                                                                       {"size": 8}},
                                                        "skipped": []})
    return out


def test_store_is_grouped_by_split_and_keeps_volume_ids(tmp_path: Path) -> None:
    store = SliceStore(_write(tmp_path / "s.h5"))
    assert store.split_ranges == {"train": (0, 10), "validation": (10, 15), "test": (15, 18)}
    train = store.load_split("train")
    # volumes 1 and 3 (train), in that order, then 2 (validation), then 0 (test)
    assert train.images[:, 1, 1].tolist() == [20] * 4 + [40] * 6
    assert train.labels.tolist() == [1] * 10
    table = store.volumes()
    assert [v["path"] for v in table] == ["v1.nii", "v3.nii", "v2.nii", "v0.nii"]
    assert [(v["start"], v["stop"]) for v in table] == [(0, 4), (4, 10), (10, 15), (15, 18)]
    assert set(train.volume.tolist()) == {0, 1}
    test = store.load_split("test")
    assert test.images[:, 1, 1].tolist() == [10] * 3 and [v["path"] for v in
                                                          store.volumes("test")] == ["v0.nii"]
    assert store.preprocessing == {"size": 8}
    assert "train" in format_info(store.info())


def test_store_survives_pickle_and_reopens_lazily(tmp_path: Path) -> None:
    store = SliceStore(_write(tmp_path / "s.h5"))
    store.load_split("train")
    clone = pickle.loads(pickle.dumps(store))
    assert clone._file is None
    assert len(clone.load_split("validation")) == 5
    store.close()


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    with pytest.raises(RuntimeError), StoreWriter(out, 8) as writer:
        writer.add_volume(VolumeRecord("v.nii", "head", "s"), [_batch(3, 1)])
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_store_is_replaced_only_on_success(tmp_path: Path) -> None:
    out = _write(tmp_path / "s.h5")
    before = out.read_bytes()
    with pytest.raises(ValueError), StoreWriter(out, 8) as writer:
        writer.add_volume(VolumeRecord("v.nii", "head", "s"), [_batch(3, 1, size=9)])
    assert out.read_bytes() == before and list(tmp_path.iterdir()) == [out]


def test_unknown_format_version_is_a_store_error(tmp_path: Path) -> None:
    out = _write(tmp_path / "s.h5")
    with h5py.File(out, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(StoreError, match="format version 99"):
        SliceStore(out)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="not a readable HDF5"):
        SliceStore(tmp_path / "junk.h5")
    with pytest.raises(StoreError, match="not found"):
        SliceStore(tmp_path / "absent.h5")


def test_split_keeps_shared_subjects_together_and_covers_every_region() -> None:
    pairs = [(f"h{i}", "head") for i in range(6)] + [(f"s{i}", "spine") for i in range(3)]
    pairs += [("h0", "spine"), ("h1", "spine")]  # two people scanned in both regions
    result = split_subjects(pairs, (0.5, 0.25, 0.25), np.random.default_rng(3))
    by_region = {"head": {f"h{i}" for i in range(6)},
                 "spine": {"s0", "s1", "s2", "h0", "h1"}}
    for subjects in by_region.values():
        assert {result.assignment[s] for s in subjects} == {0, 1, 2}
    assert len(result.assignment) == 9 and result.warnings == ()


def test_split_of_a_small_region_names_it() -> None:
    pairs = [(f"h{i}", "head") for i in range(4)] + [("p0", "pelvis"), ("p1", "pelvis")]
    with pytest.raises(InputError, match=r"region 'pelvis' has 2 subject\(s\)"):
        split_subjects(pairs, (0.5, 0.25, 0.25), np.random.default_rng(0))
    relaxed = split_subjects(pairs, (0.5, 0.25, 0.25), np.random.default_rng(0),
                             allow_small_regions=True)
    assert {relaxed.assignment["p0"], relaxed.assignment["p1"]} == {0, 2}
    assert "absent from validation" in relaxed.warnings[0]


@pytest.mark.parametrize("n,expected", [(3, [1, 1, 1]), (5, [3, 1, 1]), (9, [5, 2, 2]),
                                        (8, [4, 2, 2])])
def test_split_targets(n: int, expected: list[int]) -> None:
    assert split_targets(n, (0.5, 0.25, 0.25)).tolist() == expected


def test_parse_split_fractions() -> None:
    assert parse_split_fractions("0.6,0.2,0.2") == (0.6, 0.2, 0.2)
    for bad in ("0.5,0.5", "0.5,0.6,0.2", "a,b,c", "1,0,0"):
        with pytest.raises(InputError, match="--split"):
            parse_split_fractions(bad)


def test_find_samples_order(tmp_path: Path, monkeypatch) -> None:
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    for folder in (explicit, env):
        folder.mkdir()
        (folder / "manifest.csv").write_text("path,region,subject\n")
    monkeypatch.setenv("MRI_TUNE_SAMPLES", str(env))
    assert find_samples(explicit) == explicit
    assert find_samples() == env
    monkeypatch.setenv("MRI_TUNE_SAMPLES", str(tmp_path / "nothing"))
    with pytest.raises(InputError, match="MRI_TUNE_SAMPLES"):
        find_samples()
    monkeypatch.delenv("MRI_TUNE_SAMPLES")
    monkeypatch.setattr("mri_tune.data.samples.DEFAULT_SAMPLES", tmp_path / "absent")
    assert find_samples() is None


def test_info_counts_match_written_slices(tmp_path: Path) -> None:
    info = SliceStore(_write(tmp_path / "s.h5")).info()
    assert info["splits"] == {"train": {"head": 0, "spine": 10},
                              "validation": {"head": 5, "spine": 0},
                              "test": {"head": 3, "spine": 0}}
    assert info["subjects"] == {"train": ["s1", "s3"], "validation": ["s2"], "test": ["s0"]}
    assert json.loads(json.dumps(info)) == info
