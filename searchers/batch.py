"""How proposals made while other trials are still running differ from them (no Ray import).

The searcher maximises the (log) acquisition over M candidates; with P trials pending, a batch rule
changes what it maximises so that the next proposal does not repeat the information the pending
ones will bring. Symbols: `mean`, `variance` (M,) the candidates' posterior given the completed
trials, in the GP's transformed units; `best` the lowest transformed loss observed.

    exclude            pending points are only masked (the paper: its two targets differ)
    kriging_believer   each pending point is treated as observed at its posterior mean (Ginsbourger
                       et al. 2010): the mean is unchanged and the candidates' variance shrinks by
                       a rank-one term per pending point, var(x) -= c(x, p)^2 / (c(p, p) + s2_n),
                       c the covariance given the completed trials and the earlier pending points
                       (`BelieverUpdates`)
    local_penalty      (Gonzalez et al. 2016, for minimisation) acq(x) * prod_p phi(x; p),
                       phi(x; p) = Phi((L r(x, p) - mu(p) + best) / sigma(p)): the probability
                       that x lies outside the ball around p where, by the Lipschitz constant L of
                       the mean, nothing better than `best` can be; r is the distance in length
                       scales (`log_local_penalty`, `lipschitz_estimate`)
    thompson           each proposal is the minimum of a fresh joint posterior sample over the top
                       candidates (Kandasamy et al. 2018, asynchronous TS): diversity comes from
                       the draws alone (`ThompsonSampler`)
    mix                kriging believer while few trials are pending, Thompson sampling above
                       `mix_switch` pending: the believer's variance shrinkage saturates when many
                       points are pending close together
    qei                fantasised q-EI (the qLogEI of BoTorch and of Optuna's GPSampler, greedy
                       over the pending set): a candidate's score is what it adds to the expected
                       improvement of {pending} + {candidate} on joint posterior samples; the
                       believer's rank-one factors are exactly the Cholesky factor of the pending
                       covariance and the candidates' regressions on it (core._log_qei)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import log_ndtr

from searchers.gp import CholeskyFailure, stable_cholesky

_SD_FLOOR = 1e-9


@dataclass(eq=False)
class BelieverUpdates:
    """Rank-one variance updates of the candidates, one per pending point (kriging believer)."""

    rows: list[tuple[int, ...]] = field(default_factory=list)  # pending points, in order applied
    whitened: list[np.ndarray] = field(default_factory=list)  # v_p = L \ k(X, p), (n,) each
    scales: list[float] = field(default_factory=list)  # sqrt(c(p, p) + s2_n)
    factors: list[np.ndarray] = field(default_factory=list)  # u_l(p_k) for l < k
    columns: list[np.ndarray] = field(default_factory=list)  # u_k(candidates), (M,) each

    def add(self, row: tuple[int, ...], whitened: np.ndarray, to_candidates: np.ndarray,
            to_earlier: np.ndarray, prior_variance: float, noise_variance: float,
            candidate_whitened: np.ndarray, variance: np.ndarray) -> np.ndarray:
        """Condition on pending `row`; returns the candidates' shrunk variance (M,).

        whitened (n,): L \\ k(X, p); to_candidates (M,): k(candidates, p); to_earlier (k,): k(p,
        earlier pending points); candidate_whitened (n, M): L \\ k(X, candidates).
        """
        covariance = to_candidates - candidate_whitened.T @ whitened  # (M,)
        self_covariance = prior_variance - whitened @ whitened
        factors = np.empty(len(self.rows))
        for k, (w, s, f) in enumerate(zip(self.whitened, self.scales, self.factors,
                                          strict=True)):
            factors[k] = (to_earlier[k] - whitened @ w - factors[:k] @ f) / s
        if self.rows:
            covariance = covariance - np.stack(self.columns, axis=1) @ factors
            self_covariance -= factors @ factors
        scale = math.sqrt(max(self_covariance, 0.0) + noise_variance)
        column = covariance / scale
        self.rows.append(row)
        self.whitened.append(whitened)
        self.scales.append(scale)
        self.factors.append(factors)
        self.columns.append(column)
        return np.maximum(variance - column**2, 0.0)


def log_local_penalty(distance: np.ndarray, mean_p: float, sd_p: float, best: float,
                      lipschitz: float) -> np.ndarray:
    """log phi(x; p) = log Phi((L r(x, p) - mu(p) + best) / sigma(p)) for distances r (M,)."""
    return log_ndtr((lipschitz * distance - mean_p + best) / max(sd_p, _SD_FLOOR))


def lipschitz_estimate(mean: np.ndarray, scaled_rows: np.ndarray) -> float:
    """Largest slope |mu(a) - mu(b)| / r(a, b) between m points, at least a small floor.

    mean: (m,); scaled_rows: (m, D) coordinates divided by the length scales (categorical
    dimensions contribute through their 0/1 distance, which this Euclidean proxy approximates).
    """
    diff = np.abs(mean[:, None] - mean[None, :])
    dist = np.sqrt(((scaled_rows[:, None, :] - scaled_rows[None, :, :]) ** 2).sum(-1))
    slopes = diff[dist > 1e-9] / dist[dist > 1e-9]
    return float(max(slopes.max(), 1e-6)) if slopes.size else 1.0


@dataclass(frozen=True, eq=False)
class ThompsonSampler:
    """Joint posterior samples over the top candidates: mean + L z, z ~ N(0, I)."""

    positions: np.ndarray  # (S,) indices into the candidate arrays
    mean: np.ndarray  # (S,)
    lower: np.ndarray  # (S, S) Cholesky factor of the posterior covariance

    @classmethod
    def build(cls, positions: np.ndarray, mean: np.ndarray, prior_covariance: np.ndarray,
              whitened: np.ndarray) -> ThompsonSampler | None:
        """prior_covariance (S, S) k(c, c'); whitened (n, S) L \\ k(X, c); None if singular."""
        covariance = prior_covariance - whitened.T @ whitened
        try:
            lower = stable_cholesky(covariance, float(np.abs(np.diag(prior_covariance)).max()))
        except CholeskyFailure:
            return None
        return cls(positions, mean, lower)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """(S,) one joint sample of the latent loss at the sampled candidates."""
        return self.mean + self.lower @ rng.standard_normal(len(self.mean))
