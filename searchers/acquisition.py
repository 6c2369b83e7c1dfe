"""Acquisition functions for minimisation, in log space so that tiny values still rank (no Ray).

Symbols (m candidates): `mean` (m,) and `sd` (m,) of the latent GP in the units of the fitted
(transformed, standardised) losses; `target` and `best` in the same units.

    probability_of_improvement   PI(x) = Phi((target - mu(x)) / sigma(x))
        the paper's criterion: the probability that the loss at x is below `target`. Bertrand et
        al. use two targets in parallel: the best loss so far and a 25% improvement on it.
    expected_improvement         EI(x) = sigma(x) (z Phi(z) + phi(z)), z = (best - mu(x)) / sigma(x)

Each function is increasing in sigma for a fixed mu, which the searcher uses to bound the value of
every grid point by its value at the prior standard deviation (see core.py).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erfcx, log_ndtr, ndtr

_SD_FLOOR = 1e-12  # a zero posterior sd (an observed point) makes z infinite
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def probability_of_improvement(mean: np.ndarray, sd: np.ndarray, target: float) -> np.ndarray:
    """PI(x) = Phi((target - mu(x)) / sigma(x)).

    E.g. mu 0, sigma 1: target -1.96 -> 0.025 (a loss 1.96 sd below the mean is improbable);
    a maximised metric is negated at the searcher's boundary, so "P(f >= 1.96)" is this call.
    """
    return np.exp(log_probability_of_improvement(mean, sd, target))


def log_probability_of_improvement(mean: np.ndarray, sd: np.ndarray,
                                   target: float) -> np.ndarray:
    """log PI, exact far into the tail (scipy's log_ndtr)."""
    return log_ndtr((target - mean) / np.maximum(sd, _SD_FLOOR))


def log_expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """log EI; for z < -1, z Phi(z) + phi(z) = phi(z) (1 + z sqrt(pi/2) erfcx(-z / sqrt2)) avoids
    underflow."""
    sd = np.maximum(sd, _SD_FLOOR)
    z = np.broadcast_to((best - mean) / sd, np.broadcast(mean, sd).shape)
    out = np.empty(z.shape)
    upper = z > -1.0  # no underflow there: evaluate directly
    zu = z[upper]
    out[upper] = np.log(zu * ndtr(zu) + np.exp(-0.5 * zu * zu - _LOG_SQRT_2PI))
    zl = z[~upper]
    mills = zl * math.sqrt(math.pi / 2) * erfcx(-zl / math.sqrt(2))  # z Phi(z) / phi(z)
    out[~upper] = -0.5 * zl * zl - _LOG_SQRT_2PI + np.log(np.maximum(1.0 + mills, 1e-300))
    return np.log(sd) + out
