"""The GP searcher driven through Ray's Searcher protocol directly (no Tuner: fast)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from ray import tune
from ray.tune.search import Searcher

from searchers import GPSearch
from searchers.errors import SearchSpaceError
from searchers.gp import FitSettings

FAST_FIT = FitSettings(restarts=1, max_iterations=30)  # tests check behaviour, not fit quality


def small_space() -> dict:
    return {"x": tune.uniform(0.0, 1.0), "y": tune.uniform(0.0, 1.0),
            "depth": tune.randint(1, 5), "act": tune.choice(["relu", "gelu", "tanh"])}


def loss(config: dict) -> float:
    penalty = {"relu": 0.0, "gelu": 0.05, "tanh": 0.3}[config["act"]]
    return ((config["x"] - 0.7) ** 2 + (config["y"] - 0.3) ** 2
            + 0.05 * abs(config["depth"] - 3) + penalty)


def key(config: dict) -> tuple:
    return tuple(sorted(config.items()))


def make(**kwargs) -> GPSearch:
    options = {"space": small_space(), "metric": "loss", "mode": "min", "seed": 0,
               "warmup_trials": 5, "fit": FAST_FIT}
    options.update(kwargs)
    return GPSearch(**options)


class Driver:
    """Simulated cluster: keeps `concurrency` trials pending, completes the oldest first."""

    def __init__(self, searcher: GPSearch, concurrency: int, objective=loss) -> None:
        self.searcher, self.concurrency, self.objective = searcher, concurrency, objective
        self.pending: list[tuple[str, dict]] = []
        self.proposed: list[dict] = []
        self.sources: list[str] = []
        self.count = 0

    def fill(self) -> None:
        while len(self.pending) < self.concurrency:
            trial_id = f"t{self.count}"
            config = self.searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return
            self.count += 1
            self.pending.append((trial_id, config))
            self.proposed.append(config)
            self.sources.append(self.searcher.core.last_source)

    def step(self) -> None:
        self.fill()
        trial_id, config = self.pending.pop(0)
        value = self.objective(config)
        if value is None:
            self.searcher.on_trial_complete(trial_id, None, error=True)
        else:
            self.searcher.on_trial_complete(trial_id, {"loss": value})

    def run(self, trials: int) -> list[dict]:
        while self.count < trials:
            self.step()
        return self.proposed


def test_warmup_count_respected_after_points_to_evaluate():
    baseline = {"x": 0.0, "y": 0.0, "depth": 1, "act": "relu"}
    searcher = make(points_to_evaluate=[baseline], warmup_trials=6)
    sources = []
    for i in range(9):
        config = searcher.suggest(str(i))
        sources.append(searcher.core.last_source)
        searcher.on_trial_complete(str(i), {"loss": loss(config)})
    assert sources == ["point"] + ["warmup"] * 6 + ["model"] * 2


@pytest.mark.parametrize("concurrency", [8, 32])
def test_no_duplicate_proposals_with_many_pending(concurrency):
    searcher = make()
    searcher.set_max_concurrency(concurrency)
    driver = Driver(searcher, concurrency)
    proposed = driver.run(concurrency + 24)
    assert len({key(c) for c in proposed}) == len(proposed)
    assert driver.sources.count("model") >= 20  # the model proposed with `concurrency` pending


def test_suggest_waits_at_the_concurrency_limit():
    searcher = make()
    searcher.set_max_concurrency(2)
    assert searcher.suggest("a") and searcher.suggest("b")
    assert searcher.suggest("c") is None
    searcher.on_trial_complete("a", {"loss": 1.0})
    assert searcher.suggest("c") is not None


def test_tiny_grid_is_exhausted_exactly_once_then_finished():
    space = {"a": tune.randint(0, 3), "b": tune.choice(["p", "q"])}
    searcher = GPSearch(space=space, metric="m", mode="min", seed=1, warmup_trials=2,
                          fit=FAST_FIT)

    def objective(config: dict) -> float | None:
        return None if config["a"] == 2 else float(config["a"])  # a == 2 crashes

    driver = Driver(searcher, 2, objective)
    while True:
        driver.fill()
        if not driver.pending:
            break
        trial_id, config = driver.pending.pop(0)
        value = objective(config)
        searcher.on_trial_complete(trial_id, None if value is None else {"m": value},
                                   error=value is None)
    assert len(driver.proposed) == 6 == len({key(c) for c in driver.proposed})
    assert searcher.suggest("more") == Searcher.FINISHED
    assert searcher.core.n_failed == 2


def test_failures_nan_error_and_failure_key_are_recorded_as_failed():
    searcher = make(warmup_trials=10)
    for i, result in enumerate([{"loss": math.nan}, {"loss": math.inf}, {"failure": "oom"},
                                {"other": 1.0}, None]):
        searcher.suggest(str(i))
        searcher.on_trial_complete(str(i), result, error=result is None)
    searcher.suggest("ok")
    searcher.on_trial_complete("ok", {"loss": 0.5})
    assert searcher.core.n_failed == 5 and searcher.core.n_observed == 1


def test_learns_to_avoid_a_predictable_infeasible_region():
    # the optimum (x = 0.8) sits inside a region that always fails, like big models that OOM:
    # a GP that ignores failures keeps proposing next to its extrapolated optimum
    space = {"x": tune.uniform(0.0, 1.0), "y": tune.uniform(0.0, 1.0)}

    def objective(config: dict) -> float | None:
        if config["x"] > 0.6:
            return None
        return (config["x"] - 0.8) ** 2 + (config["y"] - 0.5) ** 2

    infeasible = {}
    for preset in ("default", "paper"):
        searcher = GPSearch(space=space, metric="loss", mode="min", seed=3, warmup_trials=8,
                              preset=preset, fit=FAST_FIT)
        proposed = Driver(searcher, 1, objective).run(50)
        infeasible[preset] = sum(c["x"] > 0.6 for c in proposed[20:])
        assert len({key(c) for c in proposed}) == 50  # failed points never come back
    assert infeasible["paper"] >= 25  # of 30: the region the paper's recipe cannot learn
    assert infeasible["default"] <= 12  # 40% of the grid is infeasible: exploration only


def test_unknown_trial_id_uses_the_result_config_or_is_ignored():
    searcher = make()
    config = searcher.suggest("known")
    searcher.on_trial_complete("known", {"loss": 1.0})
    other = dict(config, x=round(1.0 - config["x"], 12))
    searcher.on_trial_complete("restarted-1", {"loss": 0.2, "config": other})
    flat = {f"config/{k}": v for k, v in dict(config, depth=1 + config["depth"] % 4).items()}
    searcher.on_trial_complete("restarted-2", {"loss": 0.3, **flat})
    searcher.on_trial_complete("restarted-3", {"loss": 0.4})  # no config: ignored
    searcher.on_trial_complete("restarted-4", None, error=True)  # ignored
    assert searcher.core.n_observed == 3 and searcher.core.n_failed == 0


def test_save_mid_run_restore_fresh_and_continue_identically(tmp_path):
    reference = make()
    reference.set_max_concurrency(4)
    straight = Driver(reference, 4)
    straight.run(40)

    first = make()
    first.set_max_concurrency(4)
    driver = Driver(first, 4)
    driver.run(20)
    first.save(str(tmp_path / "searcher.pkl"))
    fresh = GPSearch()  # Tuner.restore calls neither __init__'s kwargs nor set_search_properties
    fresh.restore(str(tmp_path / "searcher.pkl"))
    driver.searcher = fresh
    driver.run(40)
    assert [key(c) for c in driver.proposed] == [key(c) for c in straight.proposed]


def test_same_seed_same_proposals_other_seed_other_warmup():
    runs = [Driver(make(seed=s), 1).run(12) for s in (5, 5, 6)]
    assert [key(c) for c in runs[0]] == [key(c) for c in runs[1]]
    assert [key(c) for c in runs[0][:5]] != [key(c) for c in runs[2][:5]]


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_mode_max_mirrors_mode_min(preset):
    kwargs = {"preset": preset, "warmup_trials": 5}
    low = Driver(make(**kwargs), 2).run(16)
    high_searcher = make(mode="max", **kwargs)
    high = Driver(high_searcher, 2, lambda c: -loss(c)).run(16)
    assert [key(c) for c in low] == [key(c) for c in high]


def test_paper_preset_alternates_best_and_25_percent_targets():
    searcher = make(preset="paper", warmup_trials=5)
    Driver(searcher, 1).run(7)
    core = searcher.core
    model = core._ensure_model()
    best = min(core._values)
    assert core._target(model, 0) == pytest.approx(model.transform(np.array([best]))[0])
    assert core._target(model, 1) == pytest.approx(
        model.transform(np.array([best - 0.25 * abs(best)]))[0])
    assert searcher._settings.warmup_trials == 5
    assert GPSearch(preset="paper")._settings.warmup_trials == 47


def test_no_space_gives_a_clear_error_and_bad_settings_are_rejected():
    with pytest.raises(SearchSpaceError, match="param_space"):
        GPSearch().suggest("1")
    with pytest.raises(SearchSpaceError, match="mode"):
        GPSearch(mode="maximise")
    with pytest.raises(SearchSpaceError, match="preset"):
        GPSearch(preset="fast")
    with pytest.raises(SearchSpaceError, match="warmup_trials"):
        GPSearch(warmup_trials=-1)
    for name in ("qei_candidates", "qei_samples"):
        with pytest.raises(SearchSpaceError, match=name):
            GPSearch(**{name: 0})


def test_math_modules_do_not_import_ray():
    code = ("import sys\n"
            "import searchers, searchers.space, searchers.gp, searchers.grid, "
            "searchers.acquisition, searchers.feasibility, searchers.warping, searchers.core\n"
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if 'ray' in m)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
