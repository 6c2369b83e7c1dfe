"""Acquisition functions (searchers/acquisition.py) against known values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from searchers.acquisition import (
    log_expected_improvement,
    log_probability_of_improvement,
    probability_of_improvement,
)


def test_pi_known_value():
    # mean 0, sd 1: P(f >= 1.96) = 0.025; a maximised metric is negated at the boundary,
    # so it is the loss target -1.96; the loss target +1.96 is the complement.
    assert probability_of_improvement(np.array([0.0]), np.array([1.0]), -1.96)[0] == \
        pytest.approx(0.025, abs=1e-4)
    assert probability_of_improvement(np.array([0.0]), np.array([1.0]), 1.96)[0] == \
        pytest.approx(0.975, abs=1e-4)


def test_log_pi_is_finite_far_in_the_tail():
    value = log_probability_of_improvement(np.array([50.0]), np.array([1.0]), 0.0)[0]
    assert np.isfinite(value) and value == pytest.approx(norm.logcdf(-50.0), rel=1e-9)


def test_ei_matches_its_closed_form_and_stays_finite():
    mean, sd, best = np.array([0.3, -0.2, 1.5]), np.array([0.5, 1.0, 0.2]), 0.1
    z = (best - mean) / sd
    expected = sd * (z * norm.cdf(z) + norm.pdf(z))
    np.testing.assert_allclose(np.exp(log_expected_improvement(mean, sd, best)), expected,
                               rtol=1e-9)
    tail = log_expected_improvement(np.array([40.0]), np.array([1.0]), 0.0)
    assert np.isfinite(tail[0]) and tail[0] < -700  # would underflow to log(0) naively
