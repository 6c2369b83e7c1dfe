"""Selection inside leave-one-site-out folds: the inner split, the scores and the picks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mri_tune.errors import InputError
from mri_tune.results.generalization import group_volumes, leave_one_group_out
from mri_tune.results.selection import inner_split, pick, picked_right, scores

REGIONS = ("head", "abdomen", "pelvis", "spine")


def _sites() -> list[dict]:
    """Eight sites of four people each (two volumes a person); site k shows region k % 4, and
    site 7 shows two regions."""
    rows = []
    for site in range(8):
        for person in range(4):
            region = REGIONS[site % 4] if site < 7 else REGIONS[person % 2]
            rows += [(f"site{site}", f"p{site}-{person}", region)] * 2
    return [{"index": i, "metadata": {"source": src}, "subject": who, "region": region,
             "path": f"{src}/{i}"} for i, (src, who, region) in enumerate(rows)]


def _people(volumes: list[dict], ids: np.ndarray) -> set[str]:
    return {volumes[int(v)]["subject"] for v in ids}


def _regions(volumes: list[dict], ids: np.ndarray) -> set[str]:
    return {volumes[int(v)]["region"] for v in ids}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_inner_split_cuts_the_training_side_into_whole_sites_and_whole_people(seed: int) -> None:
    volumes = _sites()
    groups = group_volumes(volumes, lambda row: row["metadata"]["source"])
    for number, fold in enumerate(leave_one_group_out(groups)):
        split = inner_split(fold, groups, volumes, np.random.default_rng([seed, number]))
        parts = [split.train, split.people, split.sites]
        assert sorted(np.concatenate(parts).tolist()) == sorted(fold.train.tolist())
        for a in range(3):  # nobody on two sides
            for b in range(a + 1, 3):
                assert not _people(volumes, parts[a]) & _people(volumes, parts[b])
        assert len(split.site_names) == 2 and fold.name not in split.site_names
        assert sorted(split.sites.tolist()) == sorted(v for name in split.site_names
                                                      for v in groups[name])
        assert len(split.sites) <= 0.3 * len(fold.train)
        assert _regions(volumes, split.train) == _regions(volumes, fold.train)
        assert len(split.people) > 0
        again = inner_split(fold, groups, volumes, np.random.default_rng([seed, number]))
        np.testing.assert_array_equal(again.people, split.people)
        np.testing.assert_array_equal(again.sites, split.sites)


def test_inner_split_holds_out_fewer_sites_when_more_would_leave_a_region_untrained() -> None:
    volumes = _sites()
    groups = group_volumes(volumes, lambda row: row["metadata"]["source"])
    fold = leave_one_group_out(groups)[7]  # site7 tested: each region keeps one other site
    only = {name: ids for name, ids in groups.items() if name in ("site0", "site1", "site7")}
    fold = type(fold)("site7", fold.test, np.array(sorted(only["site0"] + only["site1"])))
    split = inner_split(fold, only, volumes, np.random.default_rng(0))
    assert split.site_names == () and len(split.sites) == 0  # either site is a region's only one
    with pytest.raises(InputError, match="share of validation people"):
        inner_split(fold, only, volumes, np.random.default_rng(0), people_fraction=1.0)


def test_scores_weigh_classes_as_the_paper_and_as_the_balanced_loss() -> None:
    # Three slices of class 0 (volume 0) and one of class 1 (volume 1).
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 1])
    volume = np.array([0, 0, 0, 1])
    train_labels = np.array([0, 1, 1, 1])  # class weights: w_0 = 4 / 2 = 2, w_1 = 4 / 6
    got = scores(probs, labels, volume, train_labels, 2)
    ce0, ce1 = -math.log(0.5), -math.log(0.9)
    assert got["weighted_ce"] == pytest.approx((3 * 2 * ce0 + (2 / 3) * ce1) / (6 + 2 / 3))
    assert got["balanced_ce"] == pytest.approx((ce0 + ce1) / 2)
    assert got["volume_accuracy"] == pytest.approx(1.0)  # argmax of a tie: the first class
    empty = scores(np.zeros((0, 2)), labels[:0], volume[:0], train_labels, 2)
    assert all(math.isnan(v) for v in empty.values())


def test_a_wrong_volume_lowers_volume_accuracy_only() -> None:
    probs = np.array([[0.6, 0.4], [0.4, 0.6], [0.3, 0.7]])
    labels = np.array([0, 0, 1])
    volume = np.array([0, 1, 2])
    got = scores(probs, labels, volume, labels, 2)
    assert got["volume_accuracy"] == pytest.approx(2 / 3)


def _candidate(people: dict, sites: dict, right: int) -> dict:
    return {"people": people, "sites": sites, "test_right": right}


def test_pick_prefers_low_losses_high_accuracy_and_breaks_ties_by_the_balanced_loss() -> None:
    rows = [
        _candidate({"balanced_ce": 0.9, "volume_accuracy": 0.5}, {"balanced_ce": 0.4}, 3),
        _candidate({"balanced_ce": 0.5, "volume_accuracy": 0.5}, {"balanced_ce": 0.8}, 5),
        _candidate({"balanced_ce": 0.7, "volume_accuracy": 0.4}, {"balanced_ce": math.nan}, 1),
    ]
    assert pick(rows, "people", "balanced_ce") == 1
    assert pick(rows, "sites", "balanced_ce") == 0  # NaN never wins
    assert pick(rows, "people", "volume_accuracy") == 1  # tie at 0.5: the lower loss
    folds = [{"candidates": rows}, {"candidates": rows[::-1]}]
    assert picked_right(folds, "people", "balanced_ce") == 10
    assert picked_right(folds, "sites", "balanced_ce") == 6
