"""The search itself, without Ray: warm-up, GP refits, candidate scoring, pending and failed trials.

`GPSearchCore` minimises; the Ray `Searcher` (gp_search.py) fixes the sign once at its boundary.
A configuration is a row of value indices (space.py); rows already evaluated, failed or pending are
never proposed again, so no proposal rounds to a configuration already run. Once bitwise equal
losses show the objective does not resolve a continuous dimension finely (ties.py), the model
also skips rows within that gap of a used one (`_best_distinct`).

Proposal order: the `points_to_evaluate` queue, then `warmup_trials` uniformly random distinct
configurations, then the model. While fewer than two trials have succeeded the model cannot be
fitted, so proposals stay random (rather than leaving GPU slots idle).

Model proposals. On every completed trial (once in the model phase) the GP hyper-parameters are
refitted and a candidate set of M points with exact posterior mean and variance is built:
1. Exhaustive (space size <= `exhaustive_limit`; the paper's 470,400): the posterior mean of every
   configuration is computed in two matrix products (grid.py), with the feasibility estimate
   (feasibility.py) when trials have failed. The acquisition is increasing in the posterior sd and
   the sd never exceeds the prior sd, so acq(mu(x), sqrt(s2)) * p_feasible(x) bounds it at every
   point; the `candidates` points of highest bound get their exact variance, and the proposal is
   exact over the whole space whenever the best exact value beats every other point's bound.
2. Larger spaces: quasi-random points, perturbations of the best trials and of the pending ones
   (candidates.py), the `candidates` best of them by the same bound, then a coordinate local search
   of the acquisition from the best few.
`suggest` then only applies the batch rule to the pending trials (batch.py) and takes the argmax.

Reproducibility: warm-up draws and Thompson draws use the persisted `numpy.random.Generator`; the
hyper-parameter fit and the candidate set draw from generators seeded by (seed, number of trials),
and the fit's warm start is the persisted previous optimum, so a restored searcher rebuilds exactly
the same model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from searchers.acquisition import log_expected_improvement, log_probability_of_improvement
from searchers.batch import (
    BelieverUpdates,
    ThompsonSampler,
    lipschitz_estimate,
    log_local_penalty,
)
from searchers.candidates import (
    coordinate_neighbours,
    distinct_rows,
    perturbed_rows,
    quasi_random_rows,
)
from searchers.errors import SearcherStateError
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
from searchers.space import Row, SearchSpace, flatten, unflatten
from searchers.ties import TieGaps
from searchers.warping import OutputTransform, fit_output_transform

logger = logging.getLogger(__name__)

STATE_VERSION = 2
_MIN_OBSERVATIONS = 2  # a GP on fewer successful trials carries no information on length scales
_POOL = 8  # exhaustive: bounds are evaluated on this many times `candidates` lowest-mean points
_BEST_CENTRES = 4  # larger spaces: perturbations around this many best trials
_PERTURBATION_STEP = 0.5  # sd of a perturbation, in length scales (capped at 1/4 of the range)
_LIPSCHITZ_POINTS = 256  # local penalisation: slopes measured among this many best candidates
_TIE_CHUNK = 64  # candidates checked at once, best first, against the used rows (ties.py)


@dataclass(eq=False)
class _Model:
    """Everything derived from (observations, failures, hyper-parameters); rebuilt, never saved."""

    posterior: GPPosterior
    transform: OutputTransform
    best: float  # best transformed loss
    train_values: np.ndarray  # (n, D) value indices of the GP's inputs
    train_tables: list[np.ndarray]  # kappa(values_d, train_d), (V_d, n) each
    rows: np.ndarray  # (M, D) candidates
    mean: np.ndarray  # (M,)
    log_feasibility: np.ndarray | None  # (M,)
    whitened: np.ndarray  # (n, M) L \ k(X, candidates)
    variance: np.ndarray  # (M,) given the completed trials
    outside_bound: float  # highest acquisition bound among non-candidates (-inf if none)
    index: dict[Row, int] = field(default_factory=dict)  # row -> candidate position
    believer: BelieverUpdates = field(default_factory=BelieverUpdates)
    believer_variance: np.ndarray | None = None  # (M,) variance shrunk by the pending points
    thompson: ThompsonSampler | None = None
    lipschitz: float = 1.0
    pending_moments: dict[Row, tuple[float, float]] = field(default_factory=dict)


class GPSearchCore:
    """Proposals over a search space for a loss to minimise; see the module docstring."""

    def __init__(self, space: SearchSpace, settings: SearchSettings, seed: int | None = None,
                 points_to_evaluate: list[Mapping[str, Any]] | None = None) -> None:
        self.space = space
        self.settings = settings
        self._entropy = int(np.random.SeedSequence(seed).entropy)
        self._rng = np.random.Generator(np.random.PCG64(self._entropy))
        self._queue: list[dict[str, Any]] = [dict(p) for p in points_to_evaluate or []]
        for point in self._queue:
            space.row_of(point)  # validate now, not when the trial is due
        self._warmup_issued = 0
        self._model_proposals = 0
        self._observed: list[Row] = []
        self._values: list[float] = []
        self._failed: list[Row] = []
        self._pending: dict[str, Row] = {}
        self._params: GPHyperparameters | None = None
        self._params_observations = -1
        self._init_caches()
        self.last_source = ""  # "point", "warmup", "random" or "model": how the last was chosen

    def _init_caches(self) -> None:
        self._exhaustive = self.space.size <= self.settings.exhaustive_limit
        self._grid = ProductGrid.for_shape(self.space.shape) if self._exhaustive else None
        self._used: set[Row] = set(self._observed) | set(self._failed) | set(
            self._pending.values())
        self._used_mask = None
        if self._exhaustive:
            self._used_mask = np.zeros(self.space.size, dtype=bool)
            if self._used:
                self._used_mask[np.ravel_multi_index(np.array(list(self._used)).T,
                                                     self.space.shape)] = True
        self._model: _Model | None = None
        self._ties = TieGaps(self.space)
        if self.settings.distinct_ties:
            for row, value in zip(self._observed, self._values, strict=True):
                self._ties.add(row, value)

    # ---- the protocol -------------------------------------------------------------------
    @property
    def pending(self) -> dict[str, Row]:
        return dict(self._pending)

    @property
    def n_observed(self) -> int:
        return len(self._observed)

    @property
    def n_failed(self) -> int:
        return len(self._failed)

    def pending_cap(self) -> int | None:
        """Most trials that may be pending now (`pending_fraction` of the remaining budget)."""
        if not self.settings.pending_fraction or self.settings.budget is None:
            return None
        remaining = self.settings.budget - self.n_observed - self.n_failed
        return max(1, int(self.settings.pending_fraction * remaining))

    def propose(self, trial_id: str) -> dict[str, Any] | None:
        """A config for `trial_id`, or None when every configuration has been used."""
        with single_threaded_blas():
            return self._propose(trial_id)

    def _propose(self, trial_id: str) -> dict[str, Any] | None:
        if self._queue:  # the user's values verbatim, completed with the space's constants
            point = self._queue.pop(0)
            row = self.space.row_of(point)
            self._mark_pending(trial_id, row, "point")
            return unflatten({**flatten(self.space.row_config(row)), **flatten(point)})
        if len(self._used) >= self.space.size:
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

    def release(self, trial_id: str) -> bool:
        """Forget a pending trial that will never run (its row may be proposed again); returns
        whether it was pending. For a driver's restore: a trial the searcher issued but the
        restored experiment never recorded."""
        if self._pending.pop(trial_id, None) is None:
            return False
        self._init_caches()  # `used` and its mask are rebuilt without the row
        return True

    def complete(self, trial_id: str, value: float | None,
                 config: Mapping[str, Any] | None = None) -> None:
        """Record a finished trial; `value` None (or non-finite) means it failed."""
        row = self._pending.pop(trial_id, None)
        if row is None and config is not None:
            row = self._row_or_none(config)
        if row is None:
            logger.debug("ignoring the result of unknown trial %s (no config to place it)",
                         trial_id)
            return
        self._mark_used(row)
        if value is None or not math.isfinite(value):
            self._failed.append(row)
        else:
            self._observed.append(row)
            self._values.append(float(value))
            if self.settings.distinct_ties:
                self._ties.add(row, float(value))
        self._model = None
        if self._in_model_phase():
            with single_threaded_blas():
                try:
                    self._ensure_model()
                except CholeskyFailure as err:
                    logger.warning("GP model unavailable, proposing at random: %s", err)

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
            "observed": [list(r) for r in self._observed],
            "values": list(self._values),
            "failed": [list(r) for r in self._failed],
            "pending": [(t, list(r)) for t, r in self._pending.items()],
            "params": None if self._params is None else self._params.to_log_vector().tolist(),
            "params_observations": self._params_observations,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> GPSearchCore:
        if state.get("version") != STATE_VERSION:
            raise SearcherStateError(
                f"searcher state version must be {STATE_VERSION}; got {state.get('version')!r}. "
                "Restore it with the release that saved it, or start a new search.")
        core = cls.__new__(cls)
        core.space = SearchSpace.from_dict(state["space"])
        core.settings = state["settings"]
        core._entropy = int(state["entropy"])
        core._rng = np.random.Generator(np.random.PCG64())
        core._rng.bit_generator.state = state["rng"]
        core._queue = list(state["queue"])
        core._warmup_issued = int(state["warmup_issued"])
        core._model_proposals = int(state["model_proposals"])
        core._observed = [tuple(int(i) for i in r) for r in state["observed"]]
        core._values = [float(v) for v in state["values"]]
        core._failed = [tuple(int(i) for i in r) for r in state["failed"]]
        core._pending = {str(t): tuple(int(i) for i in r) for t, r in state["pending"]}
        params = state["params"]
        core._params = None if params is None else GPHyperparameters.from_log_vector(
            np.asarray(params))
        core._params_observations = int(state["params_observations"])
        core.last_source = ""
        core._init_caches()
        return core

    # ---- proposals -----------------------------------------------------------------------
    def _issue(self, trial_id: str, row: Row, source: str) -> dict[str, Any]:
        self._mark_pending(trial_id, row, source)
        return self.space.row_config(row)

    def _mark_pending(self, trial_id: str, row: Row, source: str) -> None:
        self._pending[trial_id] = row
        self._mark_used(row)
        self.last_source = source

    def _mark_used(self, row: Row) -> None:
        self._used.add(row)
        if self._used_mask is not None:
            self._used_mask[np.ravel_multi_index(row, self.space.shape)] = True

    def _random_free(self) -> Row:
        shape = np.asarray(self.space.shape)
        for _ in range(32):  # rejection sampling is O(1) while the space is mostly free
            row = tuple(int(i) for i in self._rng.integers(shape))
            if row not in self._used:
                return row
        if self._used_mask is None:  # >1M configurations, 32 draws all used: practically never
            raise RuntimeError("no free configuration found in 32 random draws")
        free = np.flatnonzero(~self._used_mask)
        flat = int(free[self._rng.integers(len(free))])
        return tuple(int(i) for i in np.unravel_index(flat, self.space.shape))

    def _in_model_phase(self) -> bool:
        return (not self._queue and self._warmup_issued >= self.settings.warmup_trials
                and len(self._values) >= _MIN_OBSERVATIONS)

    def _row_or_none(self, config: Mapping[str, Any]) -> Row | None:
        try:
            return self.space.row_of(config)
        except (ValueError, TypeError) as err:
            logger.debug("result config does not fit the search space: %s", err)
            return None

    def _model_choice(self) -> Row | None:
        try:
            model = self._ensure_model()
        except CholeskyFailure as err:
            logger.warning("GP model unavailable, proposing at random: %s", err)
            return None
        if len(model.rows) == 0:
            return None
        log_acq = self._batch_scores(model)
        if model.log_feasibility is not None:
            log_acq = log_acq + model.log_feasibility
        used = np.fromiter((tuple(r) in self._used for r in model.rows.tolist()), bool,
                           len(model.rows))
        log_acq[used] = -np.inf
        if self.settings.min_sd_fraction:
            variance = self._believer_variance(model)
            floor = (self.settings.min_sd_fraction ** 2) * model.posterior.params.signal_variance
            log_acq[variance < floor] = -np.inf
        best = self._best_distinct(model, log_acq)
        if best is None:
            return None
        if log_acq[best] < model.outside_bound:
            logger.debug("proposal not certified over the whole space: best %.3g < bound %.3g",
                         log_acq[best], model.outside_bound)
        return tuple(int(i) for i in model.rows[best])

    def _best_distinct(self, model: _Model, log_acq: np.ndarray) -> int | None:
        """Position of the highest finite score whose row is not indistinct (ties.py)."""
        if not self._ties.active:
            best = int(np.argmax(log_acq))
            return best if np.isfinite(log_acq[best]) else None
        used = np.array(list(self._used), dtype=np.int64)
        order = np.argsort(-log_acq)
        for start in range(0, len(order), _TIE_CHUNK):
            chunk = order[start:start + _TIE_CHUNK]
            chunk = chunk[np.isfinite(log_acq[chunk])]
            if len(chunk) == 0:
                return None
            free = ~self._ties.indistinct(model.rows[chunk], used)
            if free.any():
                return int(chunk[np.argmax(free)])
        return None

    def _batch_scores(self, model: _Model) -> np.ndarray:
        """The (log) quantity maximised over the candidates, given the pending trials (M,)."""
        rule = self.settings.batch_rule
        if rule == "mix":
            rule = ("kriging_believer" if len(self._pending) < self.settings.mix_switch
                    else "thompson")
        if rule == "thompson" and model.thompson is None and len(model.rows):
            self._build_thompson(model)  # "mix" crossed its switch since the refit
        if rule == "thompson" and model.thompson is not None:
            scores = np.full(len(model.rows), -np.inf)
            scores[model.thompson.positions] = -model.thompson.draw(self._rng)
            return scores
        variance = self._believer_variance(model) if rule in ("kriging_believer", "qei") else (
            model.variance)
        log_acq = self._log_acquisition(model, model.mean, np.sqrt(variance),
                                        self._model_proposals)
        if rule == "qei" and model.believer.rows:
            return self._log_qei(model, log_acq)
        if rule == "local_penalty":
            for row in self._pending.values():
                log_acq = log_acq + self._log_penalty(model, row)
        return log_acq

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
        observed = np.array(self._observed, dtype=np.int64)  # (n, D)
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
            train = np.concatenate([observed, np.array(self._failed, dtype=np.int64)])
            y = np.concatenate([y, np.full(len(self._failed), y.max())])
        posterior = GPPosterior.condition(self._pair_distances(train), y, self._params, kernel)
        model = _Model(posterior, transform, float(y[:len(values)].min()), train,
                       self._tables(self._params, train), *self._empty_candidates(len(train)))
        if self._exhaustive:
            self._grid_candidates(model)
        else:
            self._sampled_candidates(model)
        self._prepare_batch_rule(model)
        return model

    def _empty_candidates(self, n: int) -> tuple[Any, ...]:
        dims = len(self.space.shape)
        return (np.empty((0, dims), dtype=np.int64), np.empty(0), None, np.empty((n, 0)),
                np.empty(0), -np.inf)

    def _pair_distances(self, points: np.ndarray) -> PairDistances:
        """(n, D) value indices -> their pairwise distances, coded by distinct value pair."""
        n = len(points)
        values, codes = [], np.empty((points.shape[1], n, n), dtype=np.int64)
        for d, dim in enumerate(self.space.dimensions):
            if dim.size**2 <= n * n:  # few values: code every value pair, no sorting
                every = np.arange(dim.size)
                values.append(dim.sqdist(every[:, None], every[None, :]).ravel())
                codes[d] = points[:, d][:, None] * dim.size + points[:, d][None, :]
            else:  # fine continuous resolution: only the pairs present
                plane = dim.sqdist(points[:, d][:, None], points[:, d][None, :])
                unique, inverse = np.unique(plane, return_inverse=True)
                values.append(unique)
                codes[d] = inverse.reshape(n, n)
        return PairDistances(tuple(values), codes)

    def _tables(self, params: GPHyperparameters, points: np.ndarray) -> list[np.ndarray]:
        """Per-dimension correlation tables kappa(values_d, points_d): (V_d, k) each."""
        tables = []
        for d, dim in enumerate(self.space.dimensions):
            sq = dim.sqdist(np.arange(dim.size)[:, None], points[:, d][None, :])
            tables.append(correlation(sq / params.length_scales[d] ** 2, self.settings.kernel))
        return tables

    def _cross(self, model: _Model, rows: np.ndarray) -> np.ndarray:
        """(n, m) prior covariance between the GP's inputs and `rows` (m, D)."""
        params = model.posterior.params
        return params.signal_variance * table_rows(model.train_tables, rows,
                                                   len(model.train_values)).T

    def _feasibility_tables(self, model: _Model) -> tuple[list[np.ndarray], np.ndarray] | None:
        """Correlation tables of the chosen feasibility bandwidth over all trials, and weights."""
        if not (self.settings.feasibility and self._failed):
            return None
        params = model.posterior.params
        trials = np.array(self._observed + self._failed, dtype=np.int64)  # (t, D)
        succeeded = np.arange(len(trials)) < len(self._observed)
        feasibility = self.settings.feasibility_model
        scaled = [replace(params, length_scales=tuple(c * np.asarray(params.length_scales)))
                  for c in feasibility.bandwidths]
        pairs = np.stack([table_rows(self._tables(p, trials), trials, len(trials))
                          for p in scaled])  # (B, t, t)
        chosen = scaled[choose_bandwidth(pairs, succeeded, feasibility)]
        weights = np.stack([succeeded, np.ones(len(trials))], axis=1).astype(float)
        return self._tables(chosen, trials), weights

    def _grid_candidates(self, model: _Model) -> None:
        """Exhaustive: mean of every configuration, the `candidates` best bounds kept."""
        params = model.posterior.params
        grid_mean = grid_sums(self._grid, model.train_tables,
                              (params.signal_variance * model.posterior.alpha)[:, None])[:, 0]
        feasibility = self._feasibility_tables(model)
        grid_log_feasibility = None
        if feasibility is not None:
            counts = grid_sums(self._grid, *feasibility)  # (N, 2)
            grid_log_feasibility = log_feasibility(counts, self.settings.feasibility_model)
        free_mean = grid_mean.copy()
        free_mean[self._used_mask] = np.inf
        n_free = int(np.isfinite(free_mean).sum())
        pool_size = min(_POOL * self.settings.candidates, n_free)
        if pool_size == 0:
            return
        pool = np.argpartition(free_mean, pool_size - 1)[:pool_size]
        pool_feasibility = None if grid_log_feasibility is None else grid_log_feasibility[pool]
        chosen, outside = self._top_bounds(model, grid_mean[pool], pool_feasibility)
        if pool_size < n_free:  # every point outside the pool has a higher mean
            threshold = np.array([free_mean[pool].max()])
            outside = max(outside, float(self._bound(model, threshold, None)[0]))
        chosen = np.sort(pool[chosen])
        self._set_candidates(model, self.space.unravel(chosen), grid_mean[chosen],
                             None if grid_log_feasibility is None
                             else grid_log_feasibility[chosen], outside)

    def _sampled_candidates(self, model: _Model) -> None:
        """Larger spaces: quasi-random + perturbed points, best bounds kept, then local search."""
        settings = self.settings
        rng = np.random.default_rng([self._entropy, len(self._observed), len(self._failed), 1])
        order = np.argsort(self._values)[:_BEST_CENTRES]
        best = np.array([self._observed[i] for i in order], dtype=np.int64)
        pending = np.array(list(self._pending.values()), dtype=np.int64)
        step = np.minimum(_PERTURBATION_STEP * np.asarray(model.posterior.params.length_scales),
                          0.25)
        dims = self.space.dimensions
        pool = np.concatenate([
            quasi_random_rows(self.space.shape, settings.random_candidates, rng),
            perturbed_rows(best, dims, settings.perturbations, step, rng),
            perturbed_rows(pending, dims, settings.pending_perturbations, step, rng)])
        pool = distinct_rows(pool, self._used)
        if len(pool) == 0:
            return
        mean, feasibility = self._mean_and_feasibility(model, pool)
        chosen, outside = self._top_bounds(model, mean, feasibility)
        self._set_candidates(model, pool[chosen], mean[chosen],
                             None if feasibility is None else feasibility[chosen], outside)
        self._local_search(model)

    def _mean_and_feasibility(self, model: _Model,
                              rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Posterior mean (m,) and log p_feasible (m,) or None at `rows` (m, D)."""
        mean = self._cross(model, rows).T @ model.posterior.alpha
        feasibility = self._feasibility_tables(model)
        if feasibility is None:
            return mean, None
        tables, weights = feasibility
        counts = table_rows(tables, rows, len(weights)) @ weights  # (m, 2)
        return mean, log_feasibility(counts, self.settings.feasibility_model)

    def _top_bounds(self, model: _Model, mean: np.ndarray,
                    feasibility: np.ndarray | None) -> tuple[np.ndarray, float]:
        """Positions of the `candidates` highest bounds among m points, and the best left out."""
        bound = self._bound(model, mean, feasibility)
        count = min(self.settings.candidates, len(bound))
        top = np.argpartition(-bound, count - 1)[:count]
        rest = np.ones(len(bound), dtype=bool)
        rest[top] = False
        return top, float(bound[rest].max()) if rest.any() else -np.inf

    def _bound(self, model: _Model, mean: np.ndarray,
               feasibility: np.ndarray | None) -> np.ndarray:
        """Upper bound of the (log) acquisition given the mean: its value at the prior sd."""
        prior_sd = math.sqrt(model.posterior.params.signal_variance)
        proposals = range(len(self.settings.targets) if self.settings.acquisition == "pi" else 1)
        # every target's best points compete for the candidate slots
        bound = np.max(np.stack([self._log_acquisition(model, mean, prior_sd, k)
                                 for k in proposals]), axis=0)
        return bound if feasibility is None else bound + feasibility

    def _set_candidates(self, model: _Model, rows: np.ndarray, mean: np.ndarray,
                        feasibility: np.ndarray | None, outside: float) -> None:
        whitened = model.posterior.whiten(self._cross(model, rows))
        variance = np.maximum(model.posterior.params.signal_variance
                              - np.einsum("ij,ij->j", whitened, whitened), 0.0)
        model.rows, model.mean, model.log_feasibility = rows, mean, feasibility
        model.whitened, model.variance, model.outside_bound = whitened, variance, outside
        model.index = {tuple(r): i for i, r in enumerate(rows.tolist())}

    def _local_search(self, model: _Model) -> None:
        """Coordinate ascent of the acquisition from the best candidates; visited points join."""
        def score(mean: np.ndarray, variance: np.ndarray, feas: np.ndarray | None) -> np.ndarray:
            out = self._log_acquisition(model, mean, np.sqrt(variance), self._model_proposals)
            return out if feas is None else out + feas

        current = score(model.mean, model.variance, model.log_feasibility)
        extra: list[tuple[np.ndarray, ...]] = []
        seen = set(model.index) | self._used
        for start in np.argsort(-current)[:self.settings.local_starts]:
            row, value = model.rows[start], current[start]
            for _ in range(self.settings.local_steps):
                moves = distinct_rows(coordinate_neighbours(row, self.space.dimensions), seen)
                if len(moves) == 0:
                    break
                seen.update(map(tuple, moves.tolist()))
                mean, feas = self._mean_and_feasibility(model, moves)
                _, variance = model.posterior.predict(self._cross(model, moves))
                values = score(mean, variance, feas)
                extra.append((moves, mean, feas))
                best = int(np.argmax(values))
                if values[best] <= value:
                    break
                row, value = moves[best], values[best]
        if extra:
            rows = np.concatenate([model.rows, *(e[0] for e in extra)])
            mean = np.concatenate([model.mean, *(e[1] for e in extra)])
            feas = None if model.log_feasibility is None else np.concatenate(
                [model.log_feasibility, *(e[2] for e in extra)])
            self._set_candidates(model, rows, mean, feas, model.outside_bound)

    # ---- batch rules ---------------------------------------------------------------------
    def _prepare_batch_rule(self, model: _Model) -> None:
        rule = self.settings.batch_rule
        # built at the refit (in on_trial_complete), not in suggest, whenever the next proposal
        # will be a Thompson draw; "mix" below its switch never needs one
        thompson_next = rule == "thompson" or (
            rule == "mix" and len(self._pending) >= self.settings.mix_switch)
        if thompson_next and len(model.rows):
            self._build_thompson(model)
        if rule == "local_penalty" and len(model.rows):
            top = np.argsort(-self._log_acquisition(model, model.mean, np.sqrt(model.variance),
                                                    0))[:_LIPSCHITZ_POINTS]
            model.lipschitz = lipschitz_estimate(model.mean[top], self._scaled(model,
                                                                              model.rows[top]))

    def _build_thompson(self, model: _Model) -> None:
        log_acq = self._log_acquisition(model, model.mean, np.sqrt(model.variance), 0)
        if model.log_feasibility is not None:
            log_acq = log_acq + model.log_feasibility
        positions = np.sort(np.argsort(-log_acq)[:self.settings.thompson_candidates])
        rows = model.rows[positions]
        params = model.posterior.params
        prior = params.signal_variance * table_rows(self._tables(params, rows), rows, len(rows))
        model.thompson = ThompsonSampler.build(positions, model.mean[positions], prior,
                                               model.whitened[:, positions])

    def _scaled(self, model: _Model, rows: np.ndarray) -> np.ndarray:
        """(m, D) encoded coordinates over the length scales (categoricals: index / l)."""
        scales = np.asarray(model.posterior.params.length_scales)
        encoded = np.stack([dim.encoded[rows[:, d]] for d, dim in
                            enumerate(self.space.dimensions)], axis=1)
        return encoded / scales

    def _believer_variance(self, model: _Model) -> np.ndarray:
        """Candidates' variance with every pending point believed observed at its mean."""
        if model.believer_variance is None:
            model.believer_variance = model.variance.copy()
        for row in self._pending.values():
            if row not in model.believer.rows and row not in self._observed:
                self._add_believer_update(model, row)
        return model.believer_variance

    def _add_believer_update(self, model: _Model, row: Row) -> None:
        params, updates = model.posterior.params, model.believer
        point = np.array([row], dtype=np.int64)  # (1, D)
        whitened = model.posterior.whiten(self._cross(model, point))[:, 0]
        tables = self._tables(params, point)
        to_candidates = params.signal_variance * table_rows(tables, model.rows, 1)[:, 0]
        to_earlier = params.signal_variance * table_rows(
            tables, np.array(updates.rows, dtype=np.int64).reshape(-1, point.shape[1]), 1)[:, 0]
        model.believer_variance = updates.add(
            row, whitened, to_candidates, to_earlier, params.signal_variance,
            params.noise_variance, model.whitened, model.believer_variance)

    def _log_qei(self, model: _Model, believer_log_acq: np.ndarray) -> np.ndarray:
        """log of what a candidate adds to the expected improvement of the batch it joins.

        q-EI of {pending} + {x}, estimated on joint posterior samples (fantasies, as BoTorch's and
        Optuna's qLogEI): y_P = mu_P + L_P z (the believer's factors are L_P's rows), y_x | y_P =
        mu_x + A z + sd_x e (A: the believer's columns, sd_x: its shrunk sd), improvement =
        max(best - min(y_P, y_x), 0); the candidate's score is the mean improvement of the batch
        with it minus without it. Only the `qei_candidates` best by the believer's EI are scored
        (the rest keep their EI minus a large constant, so they rank below any scored one).
        Samples come from a generator seeded by the model's state: a restored searcher
        proposes the same.
        """
        updates, settings = model.believer, self.settings
        pending = len(updates.rows)
        lower = np.zeros((pending, pending))  # L_P: Cholesky factor of the pending covariance
        for k, (factors, scale) in enumerate(zip(updates.factors, updates.scales, strict=True)):
            lower[k, :k], lower[k, k] = factors, scale
        mean_pending = np.array([self._pending_moments(model, row)[0] for row in updates.rows])
        rng = np.random.default_rng([self._entropy, len(self._observed), len(self._failed),
                                     pending, 3])
        z = rng.standard_normal((settings.qei_samples, pending))  # (S, P)
        own = rng.standard_normal(settings.qei_samples)  # (S,) the candidate's own residual
        y_pending = mean_pending + z @ lower.T  # (S, P)
        without = np.maximum(model.best - y_pending.min(axis=1), 0.0)  # (S,)
        count = min(settings.qei_candidates, len(believer_log_acq))
        top = np.argpartition(-believer_log_acq, count - 1)[:count]  # O(M): 470,400 on Table 1
        columns = np.stack([column[top] for column in updates.columns], axis=1)  # (m, P)
        sd = np.sqrt(model.believer_variance[top])  # (m,)
        y_candidate = (model.mean[top, None] + columns @ z.T
                       + sd[:, None] * own[None, :])  # (m, S)
        gain = (np.maximum(model.best - y_candidate, without[None, :]).mean(axis=1)
                - without.mean())  # (m,) >= 0
        # ties (no gain, or not scored) are broken by the believer's EI, below every gain
        order = 1e-6 * (believer_log_acq - believer_log_acq[top].max())  # <= 0, tiny
        positive = gain > 0
        lowest = float(np.log(gain[positive]).min()) if positive.any() else 0.0
        scores = lowest - 10.0 + order
        scores[top] = lowest - 2.0 + order[top]
        scores[top[positive]] = np.log(gain[positive])
        return scores

    def _pending_moments(self, model: _Model, row: Row) -> tuple[float, float]:
        """Posterior mean and sd (latent) at a pending configuration, cached per model."""
        if row not in model.pending_moments:
            cross = self._cross(model, np.array([row], dtype=np.int64))
            mean, variance = model.posterior.predict(cross)
            model.pending_moments[row] = (float(mean[0]), float(np.sqrt(variance[0])))
        return model.pending_moments[row]

    def _log_penalty(self, model: _Model, row: Row) -> np.ndarray:
        """log phi(candidates; pending `row`) of local penalisation (batch.py)."""
        mean_p, sd_p = self._pending_moments(model, row)
        scales = np.asarray(model.posterior.params.length_scales)
        sq = np.zeros(len(model.rows))
        for d, dim in enumerate(self.space.dimensions):
            sq += dim.sqdist(model.rows[:, d], row[d]) / scales[d] ** 2
        return log_local_penalty(np.sqrt(sq), mean_p, sd_p, model.best, model.lipschitz)
