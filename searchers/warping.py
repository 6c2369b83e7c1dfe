"""Monotone transforms of the observed losses before the GP sees them (no Ray import).

Symbols: `values` (n,) observed losses (minimised); the transform maps them, and any target loss,
to standardised units (mean 0, sd 1 over the observations).

    standardize   z = (y - mean) / sd                                    (the paper)
    log           z = standardize(log(y - y_min + delta)), delta = 0.1 * (median - y_min)
                  compresses a heavy tail of bad trials (diverged runs, wrong learning rates)
                  so the GP resolves differences among the good ones; `delta` sets where the
                  log starts to bite, relative to the spread of the typical trial.
    rank          z = Phi^-1((rank + 1/2) / n): a Gaussian copula, immune to outliers.
    auto          the one of {log with delta = 0.1, 1 or 10 x (median - y_min), standardize}
                  under which the observations are most likely as a Gaussian sample, counting
                  the transform's Jacobian (the maximum-likelihood choice of a Box-Cox family):
                  the log where a tail of bad trials is heavy (ML losses), the identity where
                  the good values are the rare ones (a narrow funnel in a plateau, e.g. Ackley).

Values below the best observed (PI targets) are extrapolated linearly from the two best points for
`rank`, and floored at delta / 1000 above y_min for `log`, keeping every transform monotone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import ndtri

OutputTransformName = Literal["standardize", "log", "rank", "auto"]
OUTPUT_TRANSFORMS: tuple[str, ...] = ("standardize", "log", "rank", "auto")
_DELTA_FRACTION = 0.1
_AUTO_DELTA_FRACTIONS = (0.1, 1.0, 10.0)  # "auto": the log's delta candidates, then identity


@dataclass(frozen=True, eq=False)
class OutputTransform:
    kind: OutputTransformName
    reference: np.ndarray  # (n,) the observations the transform was fitted on
    shift: float
    mean: float
    sd: float

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return (self._raw(np.asarray(values, dtype=np.float64)) - self.mean) / self.sd

    def _raw(self, values: np.ndarray) -> np.ndarray:
        if self.kind == "standardize":
            return values
        if self.kind == "log":
            floor = self.shift * 1e-3
            return np.log(np.maximum(values - self.reference.min() + self.shift, floor))
        return _rank_scores(self.reference, values)


def fit_output_transform(values: np.ndarray, kind: OutputTransformName) -> OutputTransform:
    values = np.asarray(values, dtype=np.float64)
    if kind == "auto":
        return _most_likely(values)
    return _fit(values, kind, _DELTA_FRACTION)


def _most_likely(values: np.ndarray) -> OutputTransform:
    """"auto": the candidate transform under which `values` are the likeliest Gaussian sample."""
    candidates = [_fit(values, "log", fraction) for fraction in _AUTO_DELTA_FRACTIONS]
    candidates.append(_fit(values, "standardize", _DELTA_FRACTION))
    if len(values) < 3 or np.ptp(values) == 0:  # nothing to judge a shape by: the plain log
        return candidates[0]
    scores = [_gaussian_log_likelihood(t, values) for t in candidates]
    return candidates[int(np.argmax(scores))]  # ties: the first, the default log


def _gaussian_log_likelihood(transform: OutputTransform, values: np.ndarray) -> float:
    """log p(values) when transform._raw(values) ~ N(mean, sd^2), up to a shared constant."""
    log_jacobian = 0.0
    if transform.kind == "log":  # d/dy log(y - y_min + delta) = 1 / (y - y_min + delta)
        log_jacobian = -float(np.sum(np.log(values - values.min() + transform.shift)))
    return -len(values) * math.log(transform.sd) + log_jacobian


def _fit(values: np.ndarray, kind: OutputTransformName, fraction: float) -> OutputTransform:
    spread = float(np.median(values) - values.min())
    shift = max(fraction * spread, 1e-12 * max(1.0, abs(float(values.min()))), 1e-300)
    probe = OutputTransform(kind, values, shift, 0.0, 1.0)
    raw = probe._raw(values)
    sd = float(raw.std())
    return OutputTransform(kind, values, shift, float(raw.mean()), sd if sd > 0 else 1.0)


def _rank_scores(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Normal scores of the reference's ranks, interpolated (ties share their mean score)."""
    n = len(reference)
    ordered = np.sort(reference)
    scores = ndtri((np.arange(n) + 0.5) / n)
    unique, inverse = np.unique(ordered, return_inverse=True)
    unique_scores = np.bincount(inverse, weights=scores) / np.bincount(inverse)
    if len(unique) == 1:
        return np.where(values < unique[0], -1.0, 0.0) + unique_scores[0]
    out = np.interp(values, unique, unique_scores)
    slope = (unique_scores[1] - unique_scores[0]) / (unique[1] - unique[0])
    below = values < unique[0]
    out[below] = unique_scores[0] - (unique[0] - values[below]) * slope
    return out
