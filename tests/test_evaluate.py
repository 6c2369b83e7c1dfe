"""Confusion matrices, majority vote and per-class errors, pinned to hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_run_search import trained_search  # noqa: F401  (the session's search)

from mri_tune.results.evaluate import (
    confusion_matrix,
    evaluate_probabilities,
    format_report,
    majority_class_error,
    majority_vote,
)

CLASSES = ("head", "abdomen", "pelvis", "spine")


def _one_hot(predicted: list[int], num_classes: int = 4, confidence: float = 0.7) -> np.ndarray:
    probs = np.full((len(predicted), num_classes), (1 - confidence) / (num_classes - 1))
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def test_confusion_matrix_counts_rows_true_columns_predicted() -> None:
    got = confusion_matrix(np.array([0, 0, 1, 3]), np.array([0, 2, 1, 1]), 4)
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = expected[0, 2] = expected[1, 1] = expected[3, 1] = 1
    np.testing.assert_array_equal(got, expected)


def test_majority_vote_counts_slices_and_breaks_ties_by_probability() -> None:
    # volume 5: votes 2 x class 1 vs 1 x class 0 -> 1; volume 9: one vote each, class 3 surer.
    probs = np.array([[0.1, 0.8, 0.05, 0.05], [0.2, 0.7, 0.05, 0.05], [0.9, 0.05, 0.03, 0.02],
                      [0.4, 0.3, 0.0, 0.3], [0.1, 0.0, 0.0, 0.9]])
    volume = np.array([5, 5, 5, 9, 9])
    ids, labels = majority_vote(probs, volume)
    np.testing.assert_array_equal(ids, [5, 9])
    np.testing.assert_array_equal(labels, [1, 3])


def test_evaluation_of_a_known_case() -> None:
    # Volume 0 (head): 3 slices, 2 right. Volume 1 (spine): 2 slices, both called pelvis.
    labels = np.array([0, 0, 0, 3, 3])
    volume = np.array([0, 0, 0, 1, 1])
    ev = evaluate_probabilities(_one_hot([0, 0, 1, 2, 2]), labels, volume, CLASSES)
    assert ev.slice_accuracy == pytest.approx(2 / 5)
    assert ev.volume_accuracy == pytest.approx(1 / 2)
    assert ev.slice_class_error == {"head": pytest.approx(1 / 3), "abdomen": None,
                                    "pelvis": None, "spine": 1.0}
    assert ev.volume_class_error["head"] == 0.0 and ev.volume_class_error["spine"] == 1.0
    assert ev.volume_confusion[3, 2] == 1
    assert ev.to_dict()["volume"]["error"] == pytest.approx(0.5)


def test_majority_class_error_counts_volumes_not_slices() -> None:
    # 3 head volumes of one slice, 1 spine volume of 10 slices: the majority is head (3/4).
    labels = np.array([0, 0, 0] + [3] * 10)
    volume = np.array([0, 1, 2] + [3] * 10)
    assert majority_class_error(labels, volume) == pytest.approx(0.25)
    assert majority_class_error(labels, volume, majority=3) == pytest.approx(0.75)  # from train


def test_format_report_shows_models_side_by_side() -> None:
    from mri_tune.results.evaluate import EvaluationReport

    labels, volume = np.array([0, 3]), np.array([0, 1])
    models = {"baseline": evaluate_probabilities(_one_hot([0, 0]), labels, volume, CLASSES),
              "ensemble": evaluate_probabilities(_one_hot([0, 3]), labels, volume, CLASSES)}
    text = format_report(EvaluationReport("test", "s.h5", models, "head", 0.5, 0.5, 2, 2))
    header = next(line for line in text.splitlines() if line.startswith("volume level"))
    assert header.split()[-2:] == ["baseline", "ensemble"]
    accuracy = [line for line in text.splitlines() if line.startswith("accuracy")]
    assert accuracy[1].split()[1:] == ["0.500", "1.000"]  # volume level: baseline, ensemble


@pytest.mark.slow
def test_ensemble_beats_the_majority_class_on_test_volumes(trained_search, capsys) -> None:  # noqa: F811
    from mri_tune.cli import main

    code = main(["evaluate", "--model", str(trained_search.ensemble), "--store",
                 str(trained_search.store), "--split", "test", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["models"]) == {"baseline", "ensemble"}  # side by side
    ensemble = result["models"]["ensemble"]
    # The majority-class model learnt from the training volumes (pelvis for the seed-0 split).
    assert result["majority_class"] == "pelvis"
    assert ensemble["volume"]["error"] < result["majority_class_volume_error"]
    # ... and never worse than answering the test split's own commonest region (an oracle).
    assert ensemble["volume"]["error"] <= result["split_majority_volume_error"]
    confusion = np.array(ensemble["volume"]["confusion"])
    assert confusion.sum() == result["num_volumes"]
    assert np.array(ensemble["slice"]["confusion"]).sum() == result["num_slices"]
    # Every test volume is listed: path relative to the store's root, truth, verdict, votes.
    listed = ensemble["volumes"]
    assert len(listed) == result["num_volumes"]
    assert all(not v["path"].startswith("/") for v in listed)
    assert sum(v["correct"] for v in listed) == int(np.trace(confusion))
    assert all(sum(v["votes"].values()) > 0 and 0 <= v["confidence"]["vote_margin"] <= 1
               for v in listed)


@pytest.mark.slow
def test_evaluate_takes_one_checkpoint_too(trained_search, capsys) -> None:  # noqa: F811
    from mri_tune.cli import main

    member = next((trained_search.ensemble / "members").glob("*.pt"))
    assert main(["evaluate", "--model", str(member), "--store", str(trained_search.store),
                 "--split", "validation"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("split validation:") and "model" in out.splitlines()[2]


def test_a_verdict_carries_its_margin_and_says_uncertain_when_slices_disagree() -> None:
    from mri_tune.results.evaluate import verdict

    agree = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    sure = verdict(agree, margin=0.2)
    assert sure.label == 0 and sure.vote_margin == 1.0 and not sure.uncertain
    assert sure.mean_probability == pytest.approx(0.75)
    split = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.6, 0.4]])
    torn = verdict(split, margin=0.25)
    assert torn.label == 0 and list(torn.votes) == [3, 2]
    assert torn.vote_margin == pytest.approx(0.2) and torn.uncertain
    assert not verdict(split, margin=0.2).uncertain  # a lead of exactly the margin is enough


def test_every_volume_is_listed_with_truth_prediction_votes_and_confidence() -> None:
    from mri_tune.results.evaluate import evaluate_probabilities

    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 0, 1, 1, 1])
    volume = np.array([4, 4, 7, 7, 7])
    rows = {4: {"path": "a/head.nii.gz", "part": ""}, 7: {"path": "b/spine.nii", "part": "frame 2"}}
    ev = evaluate_probabilities(probs, labels, volume, ("head", "spine"), rows, margin=0.5)
    listed = ev.to_dict()["volumes"]
    assert [v["path"] for v in listed] == ["a/head.nii.gz", "b/spine.nii"]
    assert listed[0] | {"confidence": None} == {
        "volume": 4, "path": "a/head.nii.gz", "part": "", "truth": "head", "predicted": "head",
        "correct": True, "votes": {"head": 2, "spine": 0}, "confidence": None,
        "uncertain": False}
    assert listed[1]["votes"] == {"head": 1, "spine": 2} and listed[1]["predicted"] == "spine"
    assert listed[1]["confidence"]["vote_margin"] == pytest.approx(1 / 3, abs=1e-4)
    assert listed[1]["uncertain"] is True
    assert ev.to_dict()["volume"]["uncertain"] == 1
    assert ev.accuracy_of_certain == 1.0 and ev.uncertain_fraction == 0.5
