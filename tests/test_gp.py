"""The GP (searchers/gp.py) and the product-grid sums (searchers/grid.py)."""

from __future__ import annotations

import numpy as np
import pytest

from searchers.gp import (
    FitSettings,
    GPHyperparameters,
    GPPosterior,
    PairDistances,
    correlation,
    fit_hyperparameters,
    log_marginal_likelihood,
    log_prior,
)
from searchers.grid import ProductGrid, grid_sums, table_rows


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.T[:, :, None] - b.T[:, None, :]) ** 2  # (D, n, m)


def _distances(x: np.ndarray) -> PairDistances:
    """Pairwise distances of (n, D) inputs, coded by distinct value as the searcher does."""
    values, codes = [], []
    for plane in _sqdist(x, x):
        unique, inverse = np.unique(plane, return_inverse=True)
        values.append(unique)
        codes.append(inverse.reshape(plane.shape))
    return PairDistances(tuple(values), np.stack(codes))


def _kernel(sqdist: np.ndarray, params: GPHyperparameters, kernel: str) -> np.ndarray:
    scales = np.asarray(params.length_scales)[:, None, None] ** 2
    return params.signal_variance * np.prod(correlation(sqdist / scales, kernel), axis=0)


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_lml_gradient_matches_finite_differences(kernel):
    rng = np.random.default_rng(0)
    x = rng.random((15, 3))
    y = np.sin(4 * x[:, 0]) + x[:, 1] ** 2
    distances = _distances(x)
    theta = np.log([0.4, 0.7, 1.3, 1.1, 0.05])
    _, grad = log_marginal_likelihood(theta, distances, y, kernel)
    step = 1e-6
    for j in range(len(theta)):
        up, down = theta.copy(), theta.copy()
        up[j] += step
        down[j] -= step
        numeric = (log_marginal_likelihood(up, distances, y, kernel)[0]
                   - log_marginal_likelihood(down, distances, y, kernel)[0]) / (2 * step)
        assert grad[j] == pytest.approx(numeric, rel=1e-4, abs=1e-6)


def test_log_prior_gradient_matches_finite_differences():
    theta = np.log([0.05, 0.7, 3.0, 1.1, 0.02])
    _, grad = log_prior(theta)
    step = 1e-6
    for j in range(len(theta)):
        up, down = theta.copy(), theta.copy()
        up[j] += step
        down[j] -= step
        numeric = (log_prior(up)[0] - log_prior(down)[0]) / (2 * step)
        assert grad[j] == pytest.approx(numeric, rel=1e-5)


def test_prior_keeps_length_scales_of_a_symmetric_bowl_off_the_bounds():
    # 12 points of a bowl symmetric in 6 dimensions: the evidence alone sends four length
    # scales to the upper bound (those dimensions "do not matter") and one to 0.12
    x = np.random.default_rng(5).random((12, 6))
    y = -np.exp(-3.0 * ((x - 0.3) ** 2).sum(axis=1))
    y = (y - y.mean()) / y.std()
    upper = FitSettings().bounds.length_scale[1]
    mle = fit_hyperparameters(_distances(x), y, "matern52", FitSettings(prior=False),
                              np.random.default_rng(0))
    assert sum(scale >= 0.99 * upper for scale in mle.length_scales) >= 3
    map_ = fit_hyperparameters(_distances(x), y, "matern52", FitSettings(),
                               np.random.default_rng(0))
    assert 0.1 < min(map_.length_scales) and max(map_.length_scales) < 3.0


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_fitted_gp_interpolates_noise_free_points(kernel):
    rng = np.random.default_rng(1)
    x = rng.random((12, 2))
    y = np.cos(3 * x[:, 0]) * x[:, 1]
    y = (y - y.mean()) / y.std()
    distances = _distances(x)
    params = fit_hyperparameters(distances, y, kernel, FitSettings(), rng)
    assert params.noise_variance < 1e-3  # noise-free data: the evidence drives noise down
    posterior = GPPosterior.condition(distances, y, params, kernel)
    mean, variance = posterior.predict(_kernel(_sqdist(x, x), params, kernel))
    np.testing.assert_allclose(mean, y, atol=0.05)
    assert variance.max() < 1e-2 * params.signal_variance


def test_duplicated_inputs_with_tiny_noise_still_factorise():
    x = np.zeros((6, 2))  # six identical points: a rank-one kernel matrix
    distances = _distances(x)
    params = GPHyperparameters((0.5, 0.5), 1.0, 1e-12)
    posterior = GPPosterior.condition(distances, np.ones(6), params, "rbf")
    assert np.all(np.isfinite(posterior.alpha))


def test_grid_sums_equal_brute_force_kernel_sums():
    rng = np.random.default_rng(2)
    shape = (3, 4, 2, 5)
    grid = ProductGrid.for_shape(shape)
    n = 7
    train = np.stack([rng.integers(0, s, n) for s in shape], axis=1)  # (n, D)
    encoded = [np.linspace(0, 1, s) for s in shape]
    tables = [correlation((encoded[d][:, None] - encoded[d][train[:, d]][None]) ** 2 / 0.3,
                          "matern52") for d in range(len(shape))]
    weights = rng.standard_normal((n, 2))
    every = np.stack(np.unravel_index(np.arange(grid.size), shape), axis=1)
    expected = table_rows(tables, every, n) @ weights
    np.testing.assert_allclose(grid_sums(grid, tables, weights), expected, rtol=1e-12)


@pytest.mark.parametrize("kind", ["standardize", "log", "rank", "auto"])
def test_output_transforms_are_monotone_and_standardised(kind):
    from searchers.warping import fit_output_transform

    losses = np.array([0.30, 0.25, 2.3, 0.26, 0.9, 0.25, 0.41])
    transform = fit_output_transform(losses, kind)
    z = transform(losses)
    assert z.mean() == pytest.approx(0.0, abs=1e-9) and z.std() == pytest.approx(1.0, rel=1e-9)
    probe = np.array([0.1, 0.2, 0.25, 0.255, 0.3, 1.0, 3.0])  # incl. PI targets below the best
    assert np.all(np.diff(transform(probe)) >= 0)
    assert transform(np.array([0.15]))[0] < transform(np.array([0.25]))[0]


def test_auto_transform_takes_the_log_for_a_heavy_tail_and_identity_for_a_rare_dip():
    """"auto" keeps the shape that makes the losses likeliest as a Gaussian sample."""
    from searchers.warping import fit_output_transform

    rng = np.random.default_rng(0)
    # ML losses: most trials near the best, a long tail of diverged ones
    tail = 0.2 + rng.lognormal(-2.0, 1.5, size=60)
    chosen = fit_output_transform(tail, "auto")
    assert chosen.kind == "log" and chosen.shift == pytest.approx(0.1 * (np.median(tail)
                                                                          - tail.min()))
    # a plateau with a few good values below it (Ackley's funnel): the log would stretch them
    dip = 12.0 - rng.lognormal(-1.0, 1.0, size=60)
    assert fit_output_transform(dip, "auto").kind == "standardize"
    # a symmetric bell: identity, or a log so wide that it is nearly linear
    bell = rng.normal(0.0, 1.0, size=200)
    chosen = fit_output_transform(bell, "auto")
    assert chosen.kind == "standardize" or chosen.shift >= np.median(bell) - bell.min()
    # too few values to judge a shape: the plain log, as "log" gives
    few = np.array([0.3, 0.5])
    assert fit_output_transform(few, "auto").shift == fit_output_transform(few, "log").shift


@pytest.mark.parametrize("n, starts", [(39, 4), (41, 1), (50, 2), (190, 2), (210, 1), (220, 1)])
def test_fit_starts_shrink_to_the_warm_start_as_observations_grow(monkeypatch, n, starts):
    """All starts up to `few_observations`; then the warm start, plus the default start every
    `restart_every`-th fit up to `restart_until`; beyond it the warm start alone."""
    import scipy.optimize

    calls = []
    real = scipy.optimize.minimize

    def counting(fun, x0, **kwargs):
        calls.append(np.array(x0))
        return real(fun, x0, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", counting)
    rng = np.random.default_rng(0)
    x = rng.random((n, 2))
    y = np.sin(4 * x[:, 0]) + x[:, 1]
    y = (y - y.mean()) / y.std()
    previous = GPHyperparameters(length_scales=(0.3, 0.7), signal_variance=1.0,
                                 noise_variance=1e-3)
    settings = FitSettings(max_iterations=3)
    fit_hyperparameters(_distances(x), y, "matern52", settings, rng, previous=previous)
    assert len(calls) == starts
    np.testing.assert_allclose(calls[0], previous.to_log_vector())
