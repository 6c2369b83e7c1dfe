"""Probability that a configuration runs at all (no OOM, no divergence), from past failures.

A kernel-weighted (Nadaraya-Watson) estimate with a Beta-like prior:

    p_feasible(x) = (sum_{j ok} kappa_c(x, x_j) + a * p0) / (sum_j kappa_c(x, x_j) + a)

kappa_c is the GP's correlation with every length scale multiplied by a bandwidth factor c, chosen
among `bandwidths` by the leave-one-out log likelihood of the trials' own outcomes (the loss GP
says which dimensions matter; c lets a failing region be wider or sharper than the loss's
wiggles). `a` (`prior_weight`) is a pseudo-count and p0 the prior probability of success: far
from every trial p_feasible -> p0; next to a failure it drops to about a / (1 + a). The searcher
multiplies the acquisition by it (adds its log), so a region that failed again and again stops
being proposed, while a single failure only dents it.

Why not a GP classifier: it needs a Laplace or EP fit per refit; this estimate costs one extra
pass over the trials per bandwidth and two extra columns in the grid sums (grid.py). Failed points
themselves are never proposed again whatever this says (the searcher masks them).

Symbols: `pair_correlations` (B, t, t) correlations between the t trials for each of B bandwidths;
`succeeded` (t,) bool; `correlation_sums` (m, 2): sums over successes and over all trials.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeasibilitySettings:
    prior_weight: float = 0.25  # one failure at distance 0 -> p_feasible = 0.2
    prior_success: float = 1.0  # unexplored regions are assumed feasible
    bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # multiples of the GP length scales


def probability_feasible(correlation_sums: np.ndarray,
                         settings: FeasibilitySettings) -> np.ndarray:
    """(m, 2) [sum over successes, sum over all] -> (m,) p_feasible."""
    ok, total = correlation_sums[..., 0], correlation_sums[..., 1]
    a = settings.prior_weight
    return (ok + a * settings.prior_success) / (total + a)


def log_feasibility(correlation_sums: np.ndarray, settings: FeasibilitySettings) -> np.ndarray:
    """(m, 2) -> (m,) log p_feasible."""
    return np.log(np.clip(probability_feasible(correlation_sums, settings), 1e-12, 1.0))


def choose_bandwidth(pair_correlations: np.ndarray, succeeded: np.ndarray,
                     settings: FeasibilitySettings) -> int:
    """Index of the bandwidth with the best leave-one-out log likelihood of the outcomes."""
    scores = []
    for corr in pair_correlations:  # (t, t)
        off = corr - np.diag(np.diag(corr))  # leave each trial out of its own estimate
        sums = np.stack([off @ succeeded.astype(float), off.sum(axis=1)], axis=-1)
        p = np.clip(probability_feasible(sums, settings), 1e-6, 1 - 1e-6)
        scores.append(np.where(succeeded, np.log(p), np.log1p(-p)).sum())
    return int(np.argmax(scores))
