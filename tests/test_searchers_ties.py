"""Equal losses coarsen what the searcher distinguishes (searchers/ties.py)."""

from __future__ import annotations

import math

import numpy as np
from ray import tune

from searchers.settings import SearchSettings
from searchers.space import build_space
from searchers.ties import TieGaps
from tests.test_searchers import Driver, make

SPACE = {"lr": tune.loguniform(1e-4, 1.0), "depth": tune.randint(1, 5),
         "act": tune.choice(["relu", "gelu"])}
CELLS = 8  # the objective resolves lr at 8 log-spaced cells, like a table or a quantised setting


def cell(lr: float) -> int:
    return min(int((math.log10(lr) + 4.0) / 4.0 * CELLS), CELLS - 1)


def quantised_loss(config: dict) -> float:
    penalty = 0.1 * abs(config["depth"] - 2) + (0.05 if config["act"] == "gelu" else 0.0)
    return (cell(config["lr"]) - 5.3) ** 2 / 10.0 + penalty


def test_a_tie_in_a_continuous_dimension_sets_its_gap():
    space = build_space(SPACE)
    lr = space.dimensions[0]
    gaps = TieGaps(space)
    gaps.add((10, 1, 0), 0.5)
    gaps.add((13, 1, 0), 0.5)  # same loss, lr 3 steps away: lr does not matter that finely
    gaps.add((20, 1, 0), 0.7)
    assert gaps.gaps[0] == lr.encoded[13] - lr.encoded[10]
    assert list(gaps.gaps[1:]) == [0.0, 0.0]
    used = np.array([[20, 1, 0]])
    rows = np.array([[17, 1, 0], [16, 1, 0], [23, 1, 0], [20, 2, 0], [20, 1, 1]])
    assert list(gaps.indistinct(rows, used)) == [True, False, True, False, False]


def test_ties_across_an_integer_or_categorical_dimension_or_unequal_losses_set_no_gap():
    gaps = TieGaps(build_space(SPACE))
    gaps.add((10, 1, 0), 0.5)
    gaps.add((10, 2, 0), 0.5)  # integer: the user's own values, each one distinguished
    gaps.add((13, 1, 1), 0.5)  # lr and a categorical differ: not attributable to lr
    gaps.add((14, 1, 0), 0.5000001)
    assert not gaps.active
    assert list(gaps.indistinct(np.array([[10, 1, 0], [11, 1, 0]]), np.array([[10, 1, 0]]))) \
        == [True, False]


def test_model_proposals_keep_out_of_the_gaps_equal_losses_revealed():
    space = build_space(SPACE, SearchSettings().space_settings)  # the searcher's own grid
    assert space.shape[0] == 1000  # lr as fine as the default's limit allows (the cap)
    encoded = space.dimensions[0].encoded
    searcher = make(space=SPACE, distinct_ties=True, warmup_trials=6)
    driver = Driver(searcher, 1, quantised_loss)  # each proposal knows every earlier result
    proposed = driver.run(40)
    gaps = TieGaps(space)
    used: list[tuple[int, ...]] = []
    checked = 0
    for config, source in zip(proposed, driver.sources, strict=True):
        row = space.row_of(config)
        if source == "model" and gaps.active:
            same = [u for u in used if u[1:] == row[1:]]
            assert all(abs(encoded[row[0]] - encoded[u[0]]) > gaps.gaps[0] for u in same)
            checked += 1
        used.append(row)
        gaps.add(row, quantised_loss(config))
    assert checked >= 10
    cells = [(cell(c["lr"]), c["depth"], c["act"]) for c in proposed]
    without = Driver(make(space=SPACE, distinct_ties=False, warmup_trials=6), 1, quantised_loss)
    cells_without = [(cell(c["lr"]), c["depth"], c["act"]) for c in without.run(40)]
    assert len(set(cells)) > len(set(cells_without))


def test_gaps_are_rebuilt_on_restore_and_the_search_continues_identically(tmp_path):
    straight = Driver(make(space=SPACE, distinct_ties=True, warmup_trials=6), 2, quantised_loss)
    straight.run(30)
    first = make(space=SPACE, distinct_ties=True, warmup_trials=6)
    driver = Driver(first, 2, quantised_loss)
    driver.run(18)
    assert first.core._ties.active  # the restore has gaps to rebuild
    first.save(str(tmp_path / "s.pkl"))
    fresh = make(space=SPACE)
    fresh.restore(str(tmp_path / "s.pkl"))
    np.testing.assert_array_equal(fresh.core._ties.gaps, first.core._ties.gaps)
    driver.searcher = fresh
    driver.run(30)
    assert driver.proposed == straight.proposed
