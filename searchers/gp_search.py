"""`GPSearch`: the Ray Tune `Searcher` over `GPSearchCore`; the only module that imports Ray.

Usage inside a Tuner (space, metric and mode may also come from the Tuner):

    tuner = tune.Tuner(trainable, param_space=paper_space(),
                       tune_config=tune.TuneConfig(search_alg=GPSearch(seed=0), metric="val_loss",
                                                   mode="min", num_samples=150,
                                                   max_concurrent_trials=8))

The searcher keeps its own pending set, so `max_concurrent_trials` (or `set_max_concurrency`)
just bounds how many trials run at once; parallel proposals differ by construction. With
`budget=` (the run's num_samples) and `pending_fraction=`, `suggest` also returns None (Tune
asks again later) while more than that fraction of the remaining budget is pending, so that the
GP sees results before the budget is spent (benchmarks/RESULTS_searchers.md measures it).
Results: a trial that errors (`error=True`), reports a `failure` key, or a missing or non-finite
metric counts as failed. A result for a trial id the searcher never proposed (Tune's
`restart_errored`) is placed by its `config` / `config/...` keys, or ignored with a debug log.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

from ray import tune
from ray.tune.search import Searcher

from mri_tune_core.paper import TABLE1
from searchers.core import GPSearchCore
from searchers.errors import SearchSpaceError
from searchers.settings import SearchSettings, resolve_settings
from searchers.space import SearchSpace, build_space

logger = logging.getLogger(__name__)

_MODES = {"min": 1.0, "max": -1.0}  # internal loss = sign * metric


class GPSearch(Searcher):
    """Random warm-up, then a GP model of the loss over any space (see searchers/core.py).

    Args:
        space: a Ray Tune param space (or a prebuilt `SearchSpace`); None to take the Tuner's.
        metric, mode: the reported metric and "min" / "max"; None to take the Tuner's.
        warmup_trials: random trials after `points_to_evaluate` (preset value when None).
        targets: PI targets as relative improvements on the best loss, e.g. (0.0, 0.25)
            (used by acquisition "pi", as in the "paper" preset).
        points_to_evaluate: configs to run first (e.g. the paper's baseline).
        seed: seed of the random warm-up and of the GP restarts.
        preset: "default" (the measured best) or "paper" (Bertrand et al. 2017: RBF kernel,
            dual-target PI, 47 warm-up trials); see settings.py.
        **overrides: any other `SearchSettings` field (kernel, acquisition, batch_rule,
            budget, pending_fraction, ...).
    """

    def __init__(self, space: Mapping[str, Any] | SearchSpace | None = None,
                 metric: str | None = None, mode: str | None = None,
                 warmup_trials: int | None = None, targets: Sequence[float] | None = None,
                 points_to_evaluate: list[Mapping[str, Any]] | None = None,
                 seed: int | None = None, preset: str = "default", **overrides: Any) -> None:
        _check_mode(mode)
        super().__init__(metric=metric, mode=mode)
        self._settings: SearchSettings = resolve_settings(
            preset, warmup_trials=warmup_trials, targets=targets, **overrides)
        self._seed = seed
        self._points = [dict(p) for p in points_to_evaluate or []]
        self._max_concurrent = 0  # 0: no limit of its own
        self._core: GPSearchCore | None = None
        if space is not None:
            self._core = self._make_core(space)

    def _make_core(self, space: Mapping[str, Any] | SearchSpace) -> GPSearchCore:
        grid = space if isinstance(space, SearchSpace) else build_space(space,
                                                                        self._settings.space_settings)
        return GPSearchCore(grid, self._settings, self._seed, self._points)

    # ---- Ray's Searcher API ---------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None,
                              config: dict, **spec: Any) -> bool:
        if self._core is not None:
            return False  # a space was given to the constructor: Tune must not pass another
        _check_mode(mode)
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        self._core = self._make_core(config)
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self._max_concurrent = int(max_concurrent)
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        core = self._require_ready()
        if self._max_concurrent and len(core.pending) >= self._max_concurrent:
            return None
        cap = core.pending_cap()
        if cap is not None and core.pending and len(core.pending) >= cap:
            return None
        config = core.propose(trial_id)
        return Searcher.FINISHED if config is None else config

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        core = self._require_ready()
        core.complete(trial_id, None if error else self._loss(result), _result_config(result))

    def add_evaluated_point(self, parameters: dict, value: float, error: bool = False,
                            pruned: bool = False, intermediate_values: list | None = None,
                            ) -> None:
        core = self._require_ready()
        loss = None if error or pruned else _MODES[self._mode] * float(value)
        core.complete(f"__evaluated_{core.n_observed + core.n_failed}", loss, parameters)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as stream:
            pickle.dump(self.__getstate__(), stream)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as stream:
            self.__setstate__(pickle.load(stream))

    # ---- the minimal state (also what pickling the searcher keeps) -----------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"metric": self._metric, "mode": self._mode, "settings": self._settings,
                "seed": self._seed, "points": self._points,
                "max_concurrent": self._max_concurrent,
                "core": None if self._core is None else self._core.get_state()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._metric, self._mode = state["metric"], state["mode"]
        self._settings, self._seed = state["settings"], state["seed"]
        self._points, self._max_concurrent = state["points"], state["max_concurrent"]
        core = state["core"]
        self._core = None if core is None else GPSearchCore.from_state(core)

    # ---- helpers -------------------------------------------------------------------------
    @property
    def core(self) -> GPSearchCore:
        """The pure search state (for inspection: pending, observations, last_source)."""
        return self._require_ready()

    def _require_ready(self) -> GPSearchCore:
        if self._core is None or self._metric is None or self._mode is None:
            raise SearchSpaceError(
                "GPSearch has no search space, metric or mode yet; pass space=, metric= and "
                "mode= to it, or give the Tuner a param_space and TuneConfig(metric, mode). Got "
                f"space={'set' if self._core else None}, metric={self._metric!r}, "
                f"mode={self._mode!r}."
            )
        return self._core

    def _loss(self, result: Mapping[str, Any] | None) -> float | None:
        """The loss to minimise, or None for a failed trial."""
        if result is None or "failure" in result:
            return None
        value = result.get(self._metric)
        try:
            loss = _MODES[self._mode] * float(value)
        except (TypeError, ValueError):
            logger.debug("result lacks a numeric %r; counted as failed", self._metric)
            return None
        return loss if math.isfinite(loss) else None


def _check_mode(mode: str | None) -> None:
    if mode is not None and mode not in _MODES:
        raise SearchSpaceError(f"mode must be 'min' or 'max'; got {mode!r}.")


def _result_config(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The trial's config from a result: its `config` dict or its flattened `config/...` keys."""
    if not result:
        return None
    if isinstance(result.get("config"), Mapping):
        return dict(result["config"])
    flat = {key[len("config/"):]: value for key, value in result.items()
            if key.startswith("config/")}
    return flat or None


def paper_space() -> dict[str, Any]:
    """Table 1 of the paper (`mri_tune_core.paper.TABLE1`) as a Ray Tune param space."""
    return {name: tune.choice(values) for name, values in TABLE1.items()}
