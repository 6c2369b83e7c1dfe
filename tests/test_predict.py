"""Prediction on new volumes: thresholded decisions, the vote, the JSON shape, Fig. 6, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_run_search import trained_search  # noqa: F401  (the session's trained ensemble)

from mri_tune.cli import main
from mri_tune.errors import InputError
from mri_tune.results.predict import check_threshold, decisions, summarise_volume

CLASSES = ("head", "abdomen", "pelvis", "spine")
# One volume per region, of subjects in the training split of the seed-0 split, in the three
# formats (NRRD, NIfTI, DICOM series folder).
REGION_VOLUMES = {
    "head": "pyradiomics/brain1_image.nrrd",
    "abdomen": "ukat_kidney/b0/siemens_1/00010__bh_b0map_3D_default_e1.nii.gz",
    "pelvis": "picai_prep_prostatex/ProstateX-0001/07-08-2011/6.000000-t2tsetra-76610/",
    "spine": "sct_example_data/mt0.nii.gz",
}


def test_decision_only_where_a_class_exceeds_the_threshold() -> None:
    probs = np.array([[0.8, 0.1, 0.05, 0.05], [0.5, 0.4, 0.05, 0.05], [0.1, 0.1, 0.1, 0.7]])
    assert decisions(probs, CLASSES, 0.7) == ["head", None, None]  # 0.7 is not > 0.7
    assert decisions(probs, CLASSES, 0.45) == ["head", "head", "spine"]


def test_volume_summary_votes_and_keeps_every_slice() -> None:
    probs = np.array([[0.1, 0.8, 0.05, 0.05], [0.2, 0.6, 0.1, 0.1], [0.9, 0.05, 0.03, 0.02]])
    summary = summarise_volume("v.nii", probs, CLASSES, 0.7, np.array([4, 5, 6]),
                               ["axial"] * 3, [""] * 3)
    assert summary.label == "abdomen"
    assert summary.votes == {"head": 1, "abdomen": 2, "pelvis": 0, "spine": 0}
    as_dict = summary.to_dict()
    assert [s["index"] for s in as_dict["slices"]] == [4, 5, 6]
    assert [s["decision"] for s in as_dict["slices"]] == ["abdomen", None, "head"]
    assert as_dict["slices"][0]["probs"]["abdomen"] == pytest.approx(0.8)


def test_threshold_must_be_a_probability() -> None:
    with pytest.raises(InputError, match=r"--threshold must be a probability in \[0, 1\)"):
        check_threshold(1.5)


@pytest.mark.slow
def test_predict_labels_a_volume_of_each_region_and_plots(trained_search, tmp_path,  # noqa: F811
                                                          capsys, samples_dir: Path) -> None:
    volumes = [str(samples_dir / path) for path in REGION_VOLUMES.values()]
    plot = tmp_path / "profile.png"
    code = main(["predict", "--model", str(trained_search.ensemble), *volumes, "--json",
                 "--plot", str(plot)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"volumes"}
    labels = {Path(v["path"]).as_posix(): v["label"] for v in result["volumes"]}
    for region, path in REGION_VOLUMES.items():
        assert labels[(samples_dir / path).as_posix()] == region
    first = result["volumes"][0]
    assert set(first) >= {"path", "label", "votes", "slices", "confidence", "uncertain"}
    assert set(first["confidence"]) == {"vote_margin", "mean_probability"}
    assert set(first["slices"][0]) >= {"index", "probs", "decision"}
    assert sum(first["votes"].values()) == len(first["slices"])
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_predict_reports_unreadable_input_as_ingest_does(trained_search, tmp_path,  # noqa: F811
                                                        capsys) -> None:
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    code = main(["predict", "--model", str(trained_search.ensemble), str(empty)])
    assert code == 2
    assert "empty (zero-byte) file" in capsys.readouterr().err
    code = main(["predict", "--model", str(trained_search.ensemble), str(tmp_path / "no.nii")])
    assert code == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_new_volumes_are_sliced_exactly_as_ingest_did(trained_search,  # noqa: F811
                                                      samples_dir: Path) -> None:
    """The ensemble's saved preprocessing turns a sample volume into the store's very slices."""
    from mri_tune.data.store import SliceStore
    from mri_tune.results.ensemble import load_ensemble
    from mri_tune_datasets.preprocess import PLANES, volume_file_to_slices

    path = REGION_VOLUMES["pelvis"]
    store = SliceStore(trained_search.store)
    row = next(r for r in store.volumes() if r["path"].rstrip("/") == path.rstrip("/"))
    split = store.load_split(row["split"])
    mine = split.volume.numpy() == row["index"]
    stored = {(PLANES[int(p)], int(i)): img for p, i, img in zip(
        split.plane.numpy()[mine], split.slice_index.numpy()[mine], split.images.numpy()[mine],
        strict=True)}
    batches = volume_file_to_slices(samples_dir / path, load_ensemble(trained_search.ensemble)
                                    .preprocessing)
    new = {(b.plane, int(i)): img for b in batches for i, img in zip(b.slice_index, b.images,
                                                                       strict=True)}
    assert new.keys() == stored.keys()
    for key, image in new.items():
        np.testing.assert_array_equal(image, stored[key])
