"""Monotone transforms of the observed losses before the GP sees them (no Ray import).

Symbols: `values` (n,) observed losses (minimised); the transform maps them, and any target loss,
to standardised units (mean 0, sd 1 over the observations).

    standardize   z = (y - mean) / sd                                    (the paper)
    log           z = standardize(log(y - y_min + delta)), delta = 0.1 * (median - y_min)
                  compresses a heavy tail of bad trials (diverged runs, wrong learning rates)
                  so the GP resolves differences among the good ones; `delta` sets where the
                  log starts to bite, relative to the spread of the typical trial.
    rank          z = Phi^-1((rank + 1/2) / n): a Gaussian copula, immune to outliers.

Values below the best observed (PI targets) are extrapolated linearly from the two best points for
`rank`, and floored at delta / 1000 above y_min for `log`, keeping every transform monotone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import ndtri

OutputTransformName = Literal["standardize", "log", "rank"]
_DELTA_FRACTION = 0.1


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
    spread = float(np.median(values) - values.min())
    shift = max(_DELTA_FRACTION * spread, 1e-12 * max(1.0, abs(float(values.min()))), 1e-300)
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
