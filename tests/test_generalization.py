"""Leave-one-group-out and subject k-fold: no person on both sides, every volume tested once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mri_tune.errors import InputError
from mri_tune.results.generalization import (
    Fold,
    FoldPrediction,
    PooledSlices,
    Recipe,
    cross_validate,
    fewer_people,
    group_volumes,
    leave_one_group_out,
    pool_folds,
    run_fold,
    subject_kfold,
    verdict_rule_accuracy,
)
from mri_tune.training.config import TrainConfig
from mri_tune.training.model import CNNSpec

CLASSES = ("head", "abdomen", "pelvis", "spine")


def _volumes() -> list[dict]:
    """Volume-table rows: sources a..e; subject s2 is in sources b and c, s5 in d and e."""
    rows = [("a", "s1", "head"), ("a", "s1", "head"), ("b", "s2", "abdomen"),
            ("c", "s2", "abdomen"), ("c", "s3", "pelvis"), ("d", "s4", "spine"),
            ("d", "s5", "spine"), ("e", "s5", "pelvis"), ("f", "s6", "head"),
            ("f", "s7", "abdomen"), ("g", "s8", "pelvis"), ("g", "s9", "spine")]
    return [{"index": i, "metadata": {"source": src}, "subject": subject, "region": region,
             "path": f"{src}/{i}"} for i, (src, subject, region) in enumerate(rows)]


def _subjects(volumes: list[dict], ids: np.ndarray) -> set[str]:
    return {volumes[int(i)]["subject"] for i in ids}


def test_groups_sharing_a_subject_are_merged() -> None:
    volumes = _volumes()
    groups = group_volumes(volumes, lambda row: row["metadata"]["source"])
    assert sorted(groups) == ["a", "b+c", "d+e", "f", "g"]
    assert groups["b+c"] == [2, 3, 4]
    assert groups["d+e"] == [5, 6, 7]


def test_leave_one_group_out_tests_each_volume_once_and_no_subject_crosses() -> None:
    volumes = _volumes()
    folds = leave_one_group_out(group_volumes(volumes, lambda row: row["metadata"]["source"]))
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(len(volumes)))
    for fold in folds:
        assert not _subjects(volumes, fold.test) & _subjects(volumes, fold.train)
        assert len(fold.test) + len(fold.train) == len(volumes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subject_kfold_keeps_subjects_whole_and_spreads_regions(seed: int) -> None:
    volumes = _volumes()
    folds = subject_kfold(volumes, 3, np.random.default_rng(seed))
    assert len(folds) == 3
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(len(volumes)))
    for fold in folds:
        assert len(fold.test) > 0
        assert not _subjects(volumes, fold.test) & _subjects(volumes, fold.train)
    again = subject_kfold(volumes, 3, np.random.default_rng(seed))
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again, strict=True))


def test_kfold_needs_two_folds() -> None:
    with pytest.raises(InputError, match="k >= 2"):
        subject_kfold(_volumes(), 1, np.random.default_rng(0))


def _people_by_region(volumes: list[dict], ids: np.ndarray) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for v in ids:
        out.setdefault(volumes[int(v)]["region"], set()).add(volumes[int(v)]["subject"])
    return out


def _many_people() -> list[dict]:
    """40 volumes: region r has 2 + 2r people (2, 4, 6, 8), each with two volumes."""
    rows, subject = [], 0
    for r, region in enumerate(CLASSES):
        for _ in range(2 + 2 * r):
            rows += [(f"p{subject}", region)] * 2
            subject += 1
    return [{"index": i, "subject": person, "region": region, "metadata": {"source": "x"},
             "path": str(i)} for i, (person, region) in enumerate(rows)]


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
def test_fewer_people_keeps_that_share_of_each_regions_people_whole(fraction: float) -> None:
    volumes = _many_people()
    fold = Fold("all", np.array([0, 1]), np.arange(2, len(volumes)))  # p0 is held out
    thin = fewer_people(fold, volumes, fraction, np.random.default_rng(0))
    np.testing.assert_array_equal(thin.test, fold.test)
    before = _people_by_region(volumes, fold.train)
    after = _people_by_region(volumes, thin.train)
    assert set(after) == set(before)  # every region keeps at least one person
    for region, people in after.items():
        assert people <= before[region]
        assert len(people) == max(1, int(np.ceil(fraction * len(before[region]))))
    for person in {volumes[int(v)]["subject"] for v in thin.train}:  # people stay whole
        assert all(int(v) in thin.train for v in fold.train
                   if volumes[int(v)]["subject"] == person)
    again = fewer_people(fold, volumes, fraction, np.random.default_rng(0))
    np.testing.assert_array_equal(again.train, thin.train)
    other = [fewer_people(fold, volumes, 0.5, np.random.default_rng(seed)).train.tolist()
             for seed in range(1, 6)]
    assert len({tuple(t) for t in other}) > 1  # the draw depends on the generator


def test_fewer_people_with_the_whole_fraction_is_the_fold_and_rejects_nonsense() -> None:
    volumes = _many_people()
    fold = Fold("all", np.array([0, 1]), np.arange(2, len(volumes)))
    np.testing.assert_array_equal(
        fewer_people(fold, volumes, 1.0, np.random.default_rng(0)).train, fold.train)
    for fraction in (0.0, -0.5, 1.5):
        with pytest.raises(InputError, match="fraction of training people"):
            fewer_people(fold, volumes, fraction, np.random.default_rng(0))


def test_pooled_folds_count_decisions_at_the_paper_threshold() -> None:
    sure = np.array([[0.9, 0.1, 0.0, 0.0], [0.8, 0.2, 0.0, 0.0]])
    unsure = np.array([[0.5, 0.5, 0.0, 0.0], [0.2, 0.6, 0.2, 0.0]])
    result = pool_folds(0, [
        FoldPrediction("x", sure, np.array([0, 0]), np.array([0, 0]), 1.0),
        FoldPrediction("y", unsure, np.array([1, 1]), np.array([1, 1]), 2.0)], CLASSES)
    assert result.decided == 0.5
    assert result.evaluation.volume_accuracy == 1.0  # volume 1: votes abdomen 1, head 1 -> mass
    assert result.fold_volume_accuracy == {"x": 1.0, "y": 1.0}
    assert result.seconds == 3.0
    summary = result.summary()
    assert summary["volume_accuracy_head"] == 1.0 and np.isnan(summary["volume_accuracy_spine"])


def test_pooled_folds_count_uncertain_verdicts_and_score_the_certain_ones() -> None:
    """Volume 0: head, every slice agrees; volume 1: abdomen, votes split 1-1 (margin 0 <
    UNCERTAIN_MARGIN); volume 2: pelvis called spine by every slice (certain and wrong)."""
    probs = np.array([[0.9, 0.1, 0.0, 0.0], [0.8, 0.2, 0.0, 0.0],
                      [0.6, 0.4, 0.0, 0.0], [0.3, 0.7, 0.0, 0.0],
                      [0.0, 0.0, 0.2, 0.8], [0.0, 0.0, 0.1, 0.9]])
    labels = np.array([0, 0, 1, 1, 2, 2])
    volume = np.array([0, 0, 1, 1, 2, 2])
    result = pool_folds(0, [
        FoldPrediction("x", probs[:2], labels[:2], volume[:2], 1.0),
        FoldPrediction("y", probs[2:], labels[2:], volume[2:], 1.0)], CLASSES)
    summary = result.summary()
    assert summary["uncertain"] == pytest.approx(1 / 3)
    assert summary["volume_accuracy_certain"] == 0.5  # volume 0 right, volume 2 wrong
    assert summary["volume_accuracy"] == pytest.approx(2 / 3)  # volume 1: abdomen by mass
    assert [v.uncertain for v in result.evaluation.volumes] == [False, True, False]


def test_pooled_folds_also_score_the_mean_probability_verdict() -> None:
    """Volume 0 (head): two slices lean to abdomen, one is sure of head: the vote says abdomen,
    the mean probability head. Volume 1 (pelvis): both rules agree."""
    probs = np.array([[0.45, 0.55, 0.0, 0.0], [0.45, 0.55, 0.0, 0.0], [0.98, 0.02, 0.0, 0.0],
                      [0.0, 0.0, 0.9, 0.1], [0.0, 0.0, 0.8, 0.2]])
    labels = np.array([0, 0, 0, 2, 2])
    volume = np.array([0, 0, 0, 1, 1])
    summary = pool_folds(0, [FoldPrediction("x", probs, labels, volume, 1.0)], CLASSES).summary()
    assert summary["volume_accuracy"] == 0.5
    assert summary["volume_accuracy_mean_probability"] == 1.0


def _pooled(seed: int = 0) -> PooledSlices:
    """Four classes of 16x16 slices, each a bright square in its own quadrant; 8 volumes."""
    rng = np.random.default_rng(seed)
    images, labels, volume, rows = [], [], [], []
    for v in range(8):
        label = v % 4
        for _ in range(4):
            image = rng.integers(0, 40, (16, 16))
            r, c = divmod(label, 2)
            image[r * 8:r * 8 + 8, c * 8:c * 8 + 8] += 200
            images.append(image)
            labels.append(label)
            volume.append(v)
        rows.append({"index": v, "subject": f"s{v}", "region": CLASSES[label],
                     "metadata": {"source": f"src{v // 4}"}, "path": str(v)})
    return PooledSlices(torch.tensor(np.array(images), dtype=torch.uint8), np.array(labels),
                        np.array(volume), rows, CLASSES)


def test_cross_validate_predicts_every_held_out_volume_once_per_seed() -> None:
    data = _pooled()
    folds = leave_one_group_out(group_volumes(data.volumes, lambda r: r["metadata"]["source"]))
    recipe = Recipe("tiny", CNNSpec(2, 1, 4, 3),
                    TrainConfig(learning_rate=0.01, batch_size=16, epochs=1,
                                augmentation=False, images_per_epoch=32))
    result = cross_validate(recipe, data, folds, [0, 1], torch.device("cpu"), "loso")
    assert [s.seed for s in result.seeds] == [0, 1]
    for seed in result.seeds:
        assert seed.evaluation.volume_confusion.sum() == 8
        assert seed.evaluation.slice_confusion.sum() == 32
        assert 0.0 <= seed.decided <= 1.0
        assert 0.0 <= seed.summary()["uncertain"] <= 1.0
    spread = result.spread()
    mean, sd, low, high = spread["volume_accuracy"]
    assert low <= mean <= high and sd >= 0.0
    fewer = cross_validate(recipe, data, folds, [0], torch.device("cpu"), "loso",
                           people_fraction=0.5)
    assert fewer.seeds[0].evaluation.volume_confusion.sum() == 8  # every volume still tested


def test_an_ensemble_recipe_averages_its_members_trained_with_their_own_seeds() -> None:
    data = _pooled()
    fold = leave_one_group_out(group_volumes(data.volumes,
                                             lambda r: r["metadata"]["source"]))[0]
    train = TrainConfig(learning_rate=0.01, batch_size=16, epochs=1, augmentation=False,
                        images_per_epoch=32)
    single = Recipe("tiny", CNNSpec(2, 1, 4, 3), train)
    pair = Recipe("tiny*2", CNNSpec(2, 1, 4, 3), train, members=2)
    cpu = torch.device("cpu")
    first, second = run_fold(single, data, fold, 3, cpu), run_fold(single, data, fold, 1003, cpu)
    assert not np.allclose(first.probs, second.probs)  # the members differ
    both = run_fold(pair, data, fold, 3, cpu)
    np.testing.assert_allclose(both.probs, (first.probs + second.probs) / 2, atol=1e-6)


def _one_hot(rows: list[tuple[int, float]]) -> np.ndarray:
    """Slices as (winning class, its probability); the rest spread over the other classes."""
    probs = np.zeros((len(rows), len(CLASSES)))
    for i, (label, p) in enumerate(rows):
        probs[i] = (1.0 - p) / (len(CLASSES) - 1)
        probs[i, label] = p
    return probs


def test_verdict_rules_score_the_acquisition_plane_confident_slices_and_log_evidence() -> None:
    # Volume 0 (head, acquired axial = plane 0): 2 axial slices say head (0.9), 3 sagittal
    # reformats say spine (0.99). Volume 1 (spine, acquired sagittal): 1 spine slice at 0.95,
    # 2 axial pelvis slices at 0.4. Volume 2 (abdomen, acquisition unknown): 1 abdomen slice
    # at 0.8, 2 head slices at 0.3. The vote of every slice gets all three wrong.
    probs = _one_hot([(0, 0.9), (0, 0.9), (3, 0.99), (3, 0.99), (3, 0.99),
                      (3, 0.95), (2, 0.4), (2, 0.4),
                      (1, 0.8), (0, 0.3), (0, 0.3)])
    labels = np.array([0, 0, 0, 0, 0, 3, 3, 3, 1, 1, 1])
    volume = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    plane = np.array([0, 0, 2, 2, 2, 2, 0, 0, 1, 1, 1])
    acquisition = np.array([0, 2, -1])
    rules = verdict_rule_accuracy(probs, labels, volume, plane, acquisition)
    # Acquisition plane only, and counted 3x: volumes 0 and 1 right; volume 2 has no known
    # plane, so all its slices vote (head): wrong.
    assert rules["acquisition_plane"] == pytest.approx(2 / 3)
    assert rules["acquisition_plane_x3"] == pytest.approx(2 / 3)
    # Confident slices only: volume 0's five all pass 0.7 (spine 3 : head 2, wrong); volume 1's
    # 0.95 spine slice and volume 2's 0.8 abdomen slice vote alone (right).
    assert rules["confident_vote"] == pytest.approx(2 / 3)
    # Summed log-probabilities: the three 0.99 spine reformats outweigh two 0.9 head slices
    # (wrong); one sure slice outweighs two unsure ones in volumes 1 and 2 (right).
    assert rules["log_probability"] == pytest.approx(2 / 3)


def test_pooled_folds_score_the_verdict_rules_when_planes_are_known() -> None:
    probs = _one_hot([(0, 0.9), (3, 0.6), (3, 0.6)])
    fold = FoldPrediction("a", probs, np.array([0, 0, 0]), np.array([0, 0, 0]), 1.0,
                          plane=np.array([0, 2, 2]))
    result = pool_folds(0, [fold], CLASSES, acquisition=np.array([0]))
    assert result.evaluation.volume_accuracy == 0.0  # two spine votes against one head vote
    assert result.summary()["rule_acquisition_plane"] == 1.0
    assert pool_folds(0, [fold], CLASSES).verdict_rules == {}  # no acquisition planes given
