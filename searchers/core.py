"""The search itself, without Ray: warm-up, GP refits, grid scoring, pending and failed trials.

`GPSearchCore` minimises; the Ray `Searcher` (gp_pi_search.py) fixes the sign once at its boundary.

Proposal order: the `points_to_evaluate` queue, then `warmup_trials` uniformly random distinct
grid points, then the model. While fewer than two trials have succeeded the model cannot be fitted,
so proposals stay random (rather than leaving GPU slots idle).

Model proposals (the paper's "score every configuration", made cheap):
1. On every completed trial (once in the model phase) the GP hyper-parameters are refitted and the
   posterior mean of all N grid points is computed in two matrix products (grid.py), together with
   the feasibility estimate (feasibility.py) when trials have failed.
2. The acquisition is increasing in the posterior sd, and the sd never exceeds the prior sd, so
   acq(mu(x), sqrt(s2)) * p_feasible(x) bounds the acquisition at every grid point. The `candidates`
   points with the highest bound get their exact posterior variance; the proposal is the best of
   them, exact over the whole grid whenever the best exact value beats every other point's bound
   (logged at debug level when it does not).
3. Pending trials (batch rule `kriging_believer`): each pending point is treated as observed at its
   posterior mean. That leaves the mean unchanged and shrinks the variance by a rank-one term,
   var(x) -= c(x, p)^2 / (c(p, p) + s2_n), with c the current posterior covariance, so the next
   proposal moves away from running trials. With `exclude` pending points are only masked.
Evaluated, failed and pending grid points are never proposed again.

Reproducibility: warm-up draws use the persisted `numpy.random.Generator`; the hyper-parameter fit
draws its restarts from a generator seeded by (seed, number of observations), and its warm start
is the persisted previous optimum, so a restored searcher rebuilds exactly the same model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from searchers.acquisition import log_expected_improvement, log_probability_of_improvement
from searchers.feasibility import choose_bandwidth, log_feasibility
from searchers.gp import (
    CholeskyFailure,
    GPHyperparameters,
    GPPosterior,
    PairDistances,
    correlation,
    fit_hyperparameters,
    single_threaded_blas,
)
from searchers.grid import ProductGrid, grid_sums, table_rows
from searchers.settings import SearchSettings
from searchers.space import SearchSpace, flatten, unflatten
from searchers.warping import OutputTransform, fit_output_transform

logger = logging.getLogger(__name__)

STATE_VERSION = 1
_MIN_OBSERVATIONS = 2  # a GP on fewer successful trials carries no information on length scales
_POOL = 8  # bounds are evaluated on this many times `candidates` lowest-mean points


@dataclass(eq=False)
class _PendingUpdates:
    """Rank-one variance updates of the candidates, one per pending point (kriging believer)."""

    points: list[int] = field(default_factory=list)  # flat indices, in the order applied
    whitened: list[np.ndarray] = field(default_factory=list)  # v_p = L \ k(X, p), (n,) each
    scales: list[float] = field(default_factory=list)  # sqrt(c(p, p) + s2_n)
    factors: list[np.ndarray] = field(default_factory=list)  # u_l(p_k) for l < k
    columns: list[np.ndarray] = field(default_factory=list)  # u_k(candidates), (M,) each


@dataclass(eq=False)
class _Model:
    """Everything derived from (observations, failures, hyper-parameters); rebuilt, never saved."""

    n_observed: int
    n_failed: int
    posterior: GPPosterior
    transform: OutputTransform
    best: float  # best transformed loss
    train_values: np.ndarray  # (n, D) value indices of the GP's inputs
    grid_mean: np.ndarray  # (N,)
    grid_log_feasibility: np.ndarray | None  # (N,)
    candidates: np.ndarray  # (M,) flat indices
    candidate_values: np.ndarray  # (M, D) value indices
    candidate_whitened: np.ndarray  # (n, M) L \ k(X, candidates)
    candidate_variance: np.ndarray  # (M,), shrunk by the pending updates
    outside_bound: float  # highest acquisition bound among non-candidates (-inf if none)
    train_tables: list[np.ndarray] = field(default_factory=list)  # kappa(values_d, train_d)
    pending: _PendingUpdates = field(default_factory=_PendingUpdates)


class GPSearchCore:
    """Proposals over a finite grid for a loss to minimise; see the module docstring."""

    def __init__(self, space: SearchSpace, settings: SearchSettings, seed: int | None = None,
                 points_to_evaluate: list[Mapping[str, Any]] | None = None) -> None:
        self.space = space
        self.settings = settings
        self._entropy = int(np.random.SeedSequence(seed).entropy)
        self._rng = np.random.Generator(np.random.PCG64(self._entropy))
        self._queue: list[dict[str, Any]] = [dict(p) for p in points_to_evaluate or []]
        for point in self._queue:
            space.index_of(point)  # validate now, not when the trial is due
        self._warmup_issued = 0
        self._model_proposals = 0
        self._observed: list[int] = []
        self._values: list[float] = []
        self._failed: list[int] = []
        self._pending: dict[str, int] = {}
        self._params: GPHyperparameters | None = None
        self._params_observations = -1
        self._init_caches()
        self.last_source = ""  # "point", "warmup", "random" or "model": how the last was chosen

    def _init_caches(self) -> None:
        self._grid = ProductGrid.for_shape(self.space.shape)
        self._used = np.zeros(self.space.size, dtype=bool)
        self._used[self._observed + self._failed + list(self._pending.values())] = True
        self._model: _Model | None = None

    # ---- the protocol -------------------------------------------------------------------
    @property
    def pending(self) -> dict[str, int]:
        return dict(self._pending)

    @property
    def n_observed(self) -> int:
        return len(self._observed)

    @property
    def n_failed(self) -> int:
        return len(self._failed)

    def propose(self, trial_id: str) -> dict[str, Any] | None:
        """A config for `trial_id`, or None when every grid point has been used."""
        with single_threaded_blas():
            return self._propose(trial_id)

    def _propose(self, trial_id: str) -> dict[str, Any] | None:
        if self._queue:  # the user's values verbatim, completed with the space's constants
            point = self._queue.pop(0)
            flat = self.space.index_of(point)
            self._mark_pending(trial_id, flat, "point")
            return unflatten({**flatten(self.space.config(flat)), **flatten(point)})
        if self._used.all():
            return None
        if self._warmup_issued < self.settings.warmup_trials:
            self._warmup_issued += 1
            return self._issue(trial_id, self._random_free(), "warmup")
        if len(self._values) < _MIN_OBSERVATIONS:
            return self._issue(trial_id, self._random_free(), "random")
        choice = self._model_choice()
        if choice is None:
            return self._issue(trial_id, self._random_free(), "random")
        self._model_proposals += 1
        return self._issue(trial_id, choice, "model")

    def complete(self, trial_id: str, value: float | None,
                 config: Mapping[str, Any] | None = None) -> None:
        """Record a finished trial; `value` None (or non-finite) means it failed."""
        flat = self._pending.pop(trial_id, None)
        if flat is None and config is not None:
            flat = self._index_or_none(config)
        if flat is None:
            logger.debug("ignoring the result of unknown trial %s (no config to place it)",
                         trial_id)
            return
        self._used[flat] = True
        if value is None or not math.isfinite(value):
            self._failed.append(flat)
        else:
            self._observed.append(flat)
            self._values.append(float(value))
        self._model = None
        if self._in_model_phase():
            with single_threaded_blas():
                self._ensure_model()

    # ---- state ---------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The minimal state: everything else is rebuilt from it."""
        return {
            "version": STATE_VERSION,
            "space": self.space.to_dict(),
            "settings": self.settings,
            "entropy": self._entropy,
            "rng": self._rng.bit_generator.state,
            "queue": list(self._queue),
            "warmup_issued": self._warmup_issued,
            "model_proposals": self._model_proposals,
            "observed": list(self._observed),
            "values": list(self._values),
            "failed": list(self._failed),
            "pending": list(self._pending.items()),
            "params": None if self._params is None else self._params.to_log_vector().tolist(),
            "params_observations": self._params_observations,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> GPSearchCore:
        core = cls.__new__(cls)
        core.space = SearchSpace.from_dict(state["space"])
        core.settings = state["settings"]
        core._entropy = int(state["entropy"])
        core._rng = np.random.Generator(np.random.PCG64())
        core._rng.bit_generator.state = state["rng"]
        core._queue = list(state["queue"])
        core._warmup_issued = int(state["warmup_issued"])
        core._model_proposals = int(state["model_proposals"])
        core._observed = [int(i) for i in state["observed"]]
        core._values = [float(v) for v in state["values"]]
        core._failed = [int(i) for i in state["failed"]]
        core._pending = {str(t): int(i) for t, i in state["pending"]}
        params = state["params"]
        core._params = None if params is None else GPHyperparameters.from_log_vector(
            np.asarray(params))
        core._params_observations = int(state["params_observations"])
        core.last_source = ""
        core._init_caches()
        return core

    # ---- proposals -----------------------------------------------------------------------
    def _issue(self, trial_id: str, flat: int, source: str) -> dict[str, Any]:
        self._mark_pending(trial_id, flat, source)
        return self.space.config(flat)

    def _mark_pending(self, trial_id: str, flat: int, source: str) -> None:
        self._pending[trial_id] = flat
        self._used[flat] = True
        self.last_source = source

    def _random_free(self) -> int:
        for _ in range(32):  # rejection sampling is O(1) while the grid is mostly free
            flat = int(self._rng.integers(self.space.size))
            if not self._used[flat]:
                return flat
        free = np.flatnonzero(~self._used)
        return int(free[self._rng.integers(len(free))])

    def _in_model_phase(self) -> bool:
        return (not self._queue and self._warmup_issued >= self.settings.warmup_trials
                and len(self._values) >= _MIN_OBSERVATIONS)

    def _index_or_none(self, config: Mapping[str, Any]) -> int | None:
        try:
            return self.space.index_of(config)
        except (ValueError, TypeError) as err:
            logger.debug("result config does not fit the search space: %s", err)
            return None

    def _model_choice(self) -> int | None:
        try:
            model = self._ensure_model()
        except CholeskyFailure as err:
            logger.warning("GP model unavailable, proposing at random: %s", err)
            return None
        if self.settings.batch_rule == "kriging_believer":
            self._apply_pending(model)
        log_acq = self._log_acquisition(model, model.grid_mean[model.candidates],
                                        np.sqrt(model.candidate_variance), self._model_proposals)
        if model.grid_log_feasibility is not None:
            log_acq = log_acq + model.grid_log_feasibility[model.candidates]
        log_acq[self._used[model.candidates]] = -np.inf
        best = int(np.argmax(log_acq))
        if not np.isfinite(log_acq[best]):
            return None
        if log_acq[best] < model.outside_bound:
            logger.debug("proposal not certified over the whole grid: best %.3g < bound %.3g",
                         log_acq[best], model.outside_bound)
        return int(model.candidates[best])

    def _target(self, model: _Model, proposal: int) -> float:
        """The PI target of model proposal number `proposal`, in transformed units.

        Targets alternate: proposal k aims at targets[k mod T], a relative improvement on the best.
        """
        relative = self.settings.targets[proposal % len(self.settings.targets)]
        best_raw = min(self._values)
        return float(model.transform(np.array([best_raw - relative * abs(best_raw)]))[0])

    def _log_acquisition(self, model: _Model, mean: np.ndarray, sd: np.ndarray | float,
                         proposal: int) -> np.ndarray:
        if self.settings.acquisition == "pi":
            return log_probability_of_improvement(mean, sd, self._target(model, proposal))
        return log_expected_improvement(mean, sd, model.best)

    # ---- the model -----------------------------------------------------------------------
    def _ensure_model(self) -> _Model:
        if self._model is None:
            self._model = self._build_model()
        return self._model

    def _build_model(self) -> _Model:
        values = np.array(self._values)
        transform = fit_output_transform(values, self.settings.output_transform)
        kernel = self.settings.kernel
        observed = self.space.unravel(np.array(self._observed))  # (n, D)
        if self._params_observations != len(values) or self._params is None:
            # hyper-parameters from the successes only: imputed failures would add a cliff
            # that shrinks every length scale
            fit_rng = np.random.default_rng([self._entropy, len(values)])
            self._params = fit_hyperparameters(self._pair_distances(observed), transform(values),
                                               kernel, self.settings.fit, fit_rng,
                                               previous=self._params)
            self._params_observations = len(values)
            logger.debug("GP refit on %d trials: %s", len(values), self._params)
        train, y = observed, transform(values)
        if self.settings.impute_failures and self._failed:
            # a failed trial counts as the worst loss seen: the mean rises over a failing region
            train = np.concatenate([observed, self.space.unravel(np.array(self._failed))])
            y = np.concatenate([y, np.full(len(self._failed), y.max())])
        posterior = GPPosterior.condition(self._pair_distances(train), y, self._params, kernel)
        grid_mean, grid_log_feasibility = self._score_grid(posterior, train)
        return self._select_candidates(posterior, transform, float(y[:len(values)].min()),
                                       train, grid_mean, grid_log_feasibility)

    def _pair_distances(self, points: np.ndarray) -> PairDistances:
        """(n, D) value indices -> their pairwise distances, coded by value pair (V_d^2 each)."""
        values, codes = [], np.empty((points.shape[1], len(points), len(points)), dtype=np.int64)
        for d, dim in enumerate(self.space.dimensions):
            every = np.arange(dim.size)
            values.append(dim.sqdist(every[:, None], every[None, :]).ravel())
            codes[d] = points[:, d][:, None] * dim.size + points[:, d][None, :]
        return PairDistances(tuple(values), codes)

    def _tables(self, params: GPHyperparameters, points: np.ndarray) -> list[np.ndarray]:
        """Per-dimension correlation tables kappa(values_d, points_d): (V_d, k) each."""
        tables = []
        for d, dim in enumerate(self.space.dimensions):
            sq = dim.sqdist(np.arange(dim.size)[:, None], points[:, d][None, :])
            tables.append(correlation(sq / params.length_scales[d] ** 2, self.settings.kernel))
        return tables

    def _score_grid(self, posterior: GPPosterior,
                    train: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Posterior mean (N,) of every grid point, and log p_feasible (N,) if trials failed.

        train: (n, D) the GP's inputs: the successful trials, then any imputed failures.
        """
        params = posterior.params
        sums = grid_sums(self._grid, self._tables(params, train),
                         (params.signal_variance * posterior.alpha)[:, None])
        if not (self.settings.feasibility and self._failed):
            return sums[:, 0], None
        trials = self.space.unravel(np.array(self._observed + self._failed))  # (t, D)
        succeeded = np.arange(len(trials)) < len(self._observed)
        feasibility = self.settings.feasibility_model
        scaled = [replace(params, length_scales=tuple(c * np.asarray(params.length_scales)))
                  for c in feasibility.bandwidths]
        pairs = np.stack([table_rows(self._tables(p, trials), trials, len(trials))
                          for p in scaled])  # (B, t, t)
        chosen = scaled[choose_bandwidth(pairs, succeeded, feasibility)]
        weights = np.stack([succeeded, np.ones(len(trials))], axis=1).astype(float)
        counts = grid_sums(self._grid, self._tables(chosen, trials), weights)  # (N, 2)
        return sums[:, 0], log_feasibility(counts, feasibility)

    def _select_candidates(self, posterior: GPPosterior, transform: OutputTransform,
                           best: float, train: np.ndarray, grid_mean: np.ndarray,
                           grid_log_feasibility: np.ndarray | None) -> _Model:
        params = posterior.params
        model = _Model(len(self._values), len(self._failed), posterior, transform,
                       best, train, grid_mean, grid_log_feasibility,
                       candidates=np.empty(0, dtype=np.int64),
                       candidate_values=np.empty((0, len(self.space.shape)), dtype=np.int64),
                       candidate_whitened=np.empty((len(train), 0)),
                       candidate_variance=np.empty(0), outside_bound=-np.inf)
        model.train_tables = self._tables(params, train)
        chosen, model.outside_bound = self._top_bounds(model)
        if len(chosen) == 0:
            return model
        model.candidates = chosen
        model.candidate_values = self.space.unravel(chosen)
        cross = params.signal_variance * table_rows(
            model.train_tables, model.candidate_values, len(train)).T  # (n, M)
        model.candidate_whitened = posterior.whiten(cross)
        model.candidate_variance = np.maximum(
            params.signal_variance - np.einsum("ij,ij->j", model.candidate_whitened,
                                               model.candidate_whitened), 0.0)
        return model

    def _top_bounds(self, model: _Model) -> tuple[np.ndarray, float]:
        """The `candidates` free grid points of highest bound, and the best bound left out.

        The bound at the prior sd is a decreasing function of the mean alone, times
        p_feasible <= 1, so it is evaluated only on the `_POOL` x `candidates` free points of
        lowest mean: every other point's bound is at most the bound at the pool's highest mean.
        """
        free_mean = model.grid_mean.copy()
        free_mean[self._observed + self._failed] = np.inf
        n_free = int(np.isfinite(free_mean).sum())
        pool_size = min(_POOL * self.settings.candidates, n_free)
        if pool_size == 0:
            return np.empty(0, dtype=np.int64), -np.inf
        pool = np.argpartition(free_mean, pool_size - 1)[:pool_size]
        bound = self._bound(model, pool)
        count = min(self.settings.candidates, pool_size)
        top = np.argpartition(-bound, count - 1)[:count]
        rest = np.ones(pool_size, dtype=bool)
        rest[top] = False
        outside = float(bound[rest].max()) if rest.any() else -np.inf
        if pool_size < n_free:
            threshold = np.array([free_mean[pool].max()])
            outside = max(outside, float(self._bound(model, None, threshold)[0]))
        return np.sort(pool[top]), outside

    def _bound(self, model: _Model, points: np.ndarray | None,
               mean: np.ndarray | None = None) -> np.ndarray:
        """Upper bound of the (log) acquisition at grid `points`: its value at the prior sd.

        With `points` None, the bound for the given `mean` values without feasibility.
        """
        prior_sd = math.sqrt(model.posterior.params.signal_variance)
        mean = model.grid_mean[points] if mean is None else mean
        proposals = range(len(self.settings.targets) if self.settings.acquisition == "pi" else 1)
        # every target's best points compete for the candidate slots
        bound = np.max(np.stack([self._log_acquisition(model, mean, prior_sd, k)
                                 for k in proposals]), axis=0)
        if points is not None and model.grid_log_feasibility is not None:
            bound = bound + model.grid_log_feasibility[points]
        return bound

    def _apply_pending(self, model: _Model) -> None:
        updates = model.pending
        for flat in self._pending.values():
            if flat not in updates.points and flat not in self._observed:
                self._add_pending_update(model, flat)

    def _add_pending_update(self, model: _Model, flat: int) -> None:
        """One kriging-believer step: candidates' variance -= c(x, p)^2 / (c(p, p) + s2_n)."""
        params, posterior = model.posterior.params, model.posterior
        updates = model.pending
        point = self.space.unravel(np.array([flat]))  # (1, D)
        n = len(model.train_values)
        cross = params.signal_variance * table_rows(model.train_tables,
                                                    point, n).T  # (n, 1)
        whitened = posterior.whiten(cross)[:, 0]
        to_candidates = params.signal_variance * table_rows(
            self._tables(params, point), model.candidate_values, 1)[:, 0]
        covariance = to_candidates - model.candidate_whitened.T @ whitened  # (M,)
        self_covariance = params.signal_variance - whitened @ whitened
        factors = np.empty(len(updates.points))
        if updates.points:
            earlier = self.space.unravel(np.array(updates.points))
            to_earlier = params.signal_variance * table_rows(self._tables(params, point),
                                                             earlier, 1)[:, 0]
            for k, (w, s, f) in enumerate(zip(updates.whitened, updates.scales, updates.factors,
                                              strict=True)):
                factors[k] = (to_earlier[k] - whitened @ w - factors[:k] @ f) / s
            covariance -= np.stack(updates.columns, axis=1) @ factors
            self_covariance -= factors @ factors
        scale = math.sqrt(max(self_covariance, 0.0) + params.noise_variance)
        column = covariance / scale
        model.candidate_variance = np.maximum(model.candidate_variance - column**2, 0.0)
        updates.points.append(flat)
        updates.whitened.append(whitened)
        updates.scales.append(scale)
        updates.factors.append(factors)
        updates.columns.append(column)

