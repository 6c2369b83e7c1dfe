"""Gaussian-process regression with a separable ARD kernel, fitted by maximising the evidence.

Symbols (n observations, D dimensions, m query points):
    `sqdist`        (D, n, m)  per-dimension squared distances between inputs (see space.py);
                               for the n x n training pairs stored as `PairDistances`
    `length_scales` (D,)       l_d, one per hyper-parameter
    `signal_variance`           s2, prior variance of the latent function
    `noise_variance`            s2_n, variance of the observation noise
    `y`             (n,)       observed (transformed, standardised) losses

Kernel, a product over dimensions of a 1-D correlation (valid: a product of kernels is a kernel):
    k(x, x') = s2 * prod_d kappa(sqdist_d(x, x') / l_d^2)
    RBF (the paper's Gaussian kernel):  kappa(u) = exp(-u / 2)
    Matern 5/2 per dimension, r = sqrt(u):  kappa(u) = (1 + sqrt5 r + 5/3 r^2) exp(-sqrt5 r)
The RBF product is the usual ARD squared-exponential; the Matern one is the product of 1-D
Matern 5/2 kernels (not the isotropic Matern of the scaled distance), chosen because the product
form lets the whole candidate grid be scored with two small matrix products (grid.py).

Fit: maximise the log marginal likelihood over theta = log(l_1..l_D, s2, s2_n) within bounds, by
L-BFGS-B from several starts, with the analytic gradient of Rasmussen & Williams (2006), eq. 5.9:
    log p(y | X, theta) = -1/2 y^T alpha - sum_i log L_ii - n/2 log 2 pi       (Alg. 2.1, line 7)
    d/d theta_j = 1/2 tr((alpha alpha^T - K^-1) dK/d theta_j)                    (eq. 5.9)
with L = cholesky(K + s2_n I) (Alg. 2.1, line 2) and alpha = L^T \\ (L \\ y) (line 3).

With `FitSettings.prior` (the default) the fit maximises the log posterior instead (MAP), adding
Optuna's GPSampler priors (optuna/_gp/prior.py), for inputs in [0, 1] and standardised outputs:
    log p(theta) = -sum_d 0.1 (l_d^2 + l_d^-2)              (pulls l_d towards 1: 0.01 costs 1,000)
                   + log Gamma(s2; 2, 1) + log Gamma(s2_n; 1.1, 30)
Without it, a fit on few points often put one length scale at its lower bound (every other one
at its upper): a GP that calls every distinct value of that dimension unrelated, so expected
improvement is flat and the proposals are random (seen on hartmann6 with 32 pending, up to 45
observations; benchmarks/RESULTS_searchers.md).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.optimize
from threadpoolctl import ThreadpoolController

logger = logging.getLogger(__name__)

Kernel = Literal["rbf", "matern52"]
_SQRT5 = math.sqrt(5.0)
_JITTER_TRIES = 6  # jitter grows 10x per try: 1e-10 .. 1e-5 of the signal variance


_THREADPOOLS: list[ThreadpoolController] = []  # created on first use: it scans loaded libraries


def single_threaded_blas() -> Any:
    """Context limiting BLAS to one thread.

    The searcher's matrices are small (n <= ~1,000); on a CPU shared with training processes,
    OpenBLAS threads spin-wait for cores and made a 500 x 500 Cholesky 100x slower (measured).
    """
    if not _THREADPOOLS:
        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1, user_api="blas")


class CholeskyFailure(np.linalg.LinAlgError):
    """The kernel matrix stayed non-positive-definite after every jitter retry."""


@dataclass(frozen=True)
class GPBounds:
    """Box bounds of the hyper-parameters (inputs in [0, 1], outputs standardised)."""

    length_scale: tuple[float, float] = (0.01, 20.0)
    signal_variance: tuple[float, float] = (0.05, 20.0)
    noise_variance: tuple[float, float] = (1e-6, 1.0)

    def log_box(self, dims: int) -> list[tuple[float, float]]:
        box = [tuple(math.log(b) for b in self.length_scale)] * dims
        box.append(tuple(math.log(b) for b in self.signal_variance))
        box.append(tuple(math.log(b) for b in self.noise_variance))
        return box  # type: ignore[return-value]


@dataclass(frozen=True)
class GPHyperparameters:
    length_scales: tuple[float, ...]
    signal_variance: float
    noise_variance: float

    def to_log_vector(self) -> np.ndarray:
        return np.log(np.array([*self.length_scales, self.signal_variance, self.noise_variance]))

    @classmethod
    def from_log_vector(cls, theta: np.ndarray) -> GPHyperparameters:
        values = np.exp(theta)
        return cls(tuple(float(v) for v in values[:-2]), float(values[-2]), float(values[-1]))


@dataclass(frozen=True)
class FitSettings:
    """How hard the hyper-parameters are optimised."""

    bounds: GPBounds = GPBounds()
    restarts: int = 2  # random starts besides the default and the previous optimum
    max_iterations: int = 50
    tolerance: float = 1e-7  # relative change of the evidence at which L-BFGS-B stops
    prior: bool = True  # maximise evidence + log_prior (MAP) rather than the evidence alone
    few_observations: int = 40  # above this, warm start only (plus the default every k-th fit)
    restart_every: int = 10
    # above this, the warm start alone: the optimum barely moves with one more of hundreds of
    # points, and a second start would double the fit (0.96 s at 500 observations, measured)
    restart_until: int = 200


def correlation(scaled: np.ndarray, kernel: Kernel) -> np.ndarray:
    """kappa(u) for u = sqdist / l^2, elementwise (any shape)."""
    if kernel == "rbf":
        return np.exp(-0.5 * scaled)
    r = _SQRT5 * np.sqrt(scaled)
    return (1.0 + r + r * r / 3.0) * np.exp(-r)


def _dlog_correlation(scaled: np.ndarray, kernel: Kernel) -> np.ndarray:
    """d log kappa / d log l at u = sqdist / l^2 (elementwise)."""
    if kernel == "rbf":
        return scaled
    r = _SQRT5 * np.sqrt(scaled)  # sqrt5 * distance / l
    return r * r / 3.0 * (1.0 + r) / (1.0 + r + r * r / 3.0)


def stable_cholesky(matrix: np.ndarray, scale: float) -> np.ndarray:
    """Lower Cholesky factor, adding jitter (relative to `scale`) until it succeeds."""
    jitter = 0.0
    for attempt in range(_JITTER_TRIES + 1):
        try:
            return np.linalg.cholesky(matrix + jitter * np.eye(len(matrix)))
        except np.linalg.LinAlgError:
            jitter = scale * 10.0 ** (attempt - 10)
            logger.debug("Cholesky failed; retrying with jitter %.1e", jitter)
    raise CholeskyFailure(
        f"the GP kernel matrix is not positive definite even with jitter {jitter:.1e}; this "
        "happens with many duplicated inputs and a tiny noise bound: raise "
        "GPBounds.noise_variance[0]."
    )


@dataclass(frozen=True, eq=False)
class PairDistances:
    """Per-dimension squared distances between the n training inputs, stored by distinct value.

    A grid dimension with V values has at most V^2 distinct squared distances, so the kernel is
    evaluated on `values[d]` (U_d,) and gathered through `codes[d]` (n, n); the gradient sums the
    weights of equal distances first (`np.bincount`). This makes one evaluation of the evidence
    cost a few passes over n^2 integers instead of D exp/sqrt passes over n^2 floats.
    """

    values: tuple[np.ndarray, ...]  # D arrays (U_d,)
    codes: np.ndarray  # (D, n, n) int

    @property
    def n(self) -> int:
        return self.codes.shape[1]


def training_kernel(distances: PairDistances, params: GPHyperparameters,
                    kernel: Kernel) -> np.ndarray:
    """(n, n) noise-free covariance of the training inputs."""
    out = np.full((distances.n, distances.n), params.signal_variance)
    for d, values in enumerate(distances.values):
        out *= correlation(values / params.length_scales[d] ** 2, kernel)[distances.codes[d]]
    return out


def log_marginal_likelihood(theta: np.ndarray, distances: PairDistances, y: np.ndarray,
                            kernel: Kernel) -> tuple[float, np.ndarray]:
    """Log evidence and its gradient w.r.t. theta = log(l_1..l_D, s2, s2_n).

    distances: of the n inputs; y: (n,). Returns (value, (D + 2,) gradient).
    """
    dims, n = len(distances.values), len(y)
    params = GPHyperparameters.from_log_vector(theta)
    scaled = [v / params.length_scales[d] ** 2 for d, v in enumerate(distances.values)]
    k_noise_free = training_kernel(distances, params, kernel)
    lower = stable_cholesky(k_noise_free + params.noise_variance * np.eye(n),
                            params.signal_variance)  # Alg. 2.1, line 2
    alpha = scipy.linalg.cho_solve((lower, True), y)  # Alg. 2.1, line 3
    value = -0.5 * y @ alpha - np.log(np.diag(lower)).sum() - 0.5 * n * math.log(2 * math.pi)
    inner = np.outer(alpha, alpha) - _inverse_from_cholesky(lower)  # eq. 5.9
    weighted = (inner * k_noise_free).ravel()
    grad = np.empty(dims + 2)
    for d in range(dims):  # dK/dlog l_d = K * dlog kappa_d / dlog l_d, elementwise
        per_value = np.bincount(distances.codes[d].ravel(), weights=weighted,
                                minlength=len(scaled[d]))
        grad[d] = 0.5 * per_value @ _dlog_correlation(scaled[d], kernel)
    grad[dims] = 0.5 * weighted.sum()
    grad[dims + 1] = 0.5 * params.noise_variance * np.trace(inner)
    return float(value), grad


_LENGTH_SCALE_RATE = 0.1  # Optuna's -0.1 (l^2 + 1 / l^2) per dimension
_SIGNAL_GAMMA = (2.0, 1.0)  # (concentration, rate) of Gamma(s2)
_NOISE_GAMMA = (1.1, 30.0)  # of Gamma(s2_n): noise well below the standardised signal


def log_prior(theta: np.ndarray) -> tuple[float, np.ndarray]:
    """log p(theta) of the module docstring (up to a constant) and its gradient (D + 2,)."""
    log_l, log_s2, log_noise = theta[:-2], theta[-2], theta[-1]
    squared = np.exp(2.0 * log_l)
    value = -_LENGTH_SCALE_RATE * (squared + 1.0 / squared).sum()
    grad = np.empty_like(theta)
    grad[:-2] = -2.0 * _LENGTH_SCALE_RATE * (squared - 1.0 / squared)
    for index, log_x, (shape, rate) in ((-2, log_s2, _SIGNAL_GAMMA),
                                        (-1, log_noise, _NOISE_GAMMA)):
        # Gamma(x; a, b) in log x: (a - 1) log x - b x, plus log x for the change of variable
        # (omitted, as Optuna does: it is a prior on x, maximised over log x)
        value += (shape - 1.0) * log_x - rate * math.exp(log_x)
        grad[index] = (shape - 1.0) - rate * math.exp(log_x)
    return float(value), grad


def _inverse_from_cholesky(lower: np.ndarray) -> np.ndarray:
    """(L L^T)^-1 from L; LAPACK potri is about twice as fast as solving against the identity."""
    inverse, info = scipy.linalg.lapack.dpotri(lower, lower=1)
    if info != 0:
        raise CholeskyFailure(f"inverting the kernel matrix failed (LAPACK potri info={info})")
    return np.tril(inverse) + np.tril(inverse, -1).T


def fit_hyperparameters(distances: PairDistances, y: np.ndarray, kernel: Kernel,
                        settings: FitSettings, rng: np.random.Generator,
                        previous: GPHyperparameters | None = None) -> GPHyperparameters:
    """Maximise the log marginal likelihood (+ log_prior) from several starts; the best wins.

    y: (n,) standardised. `previous` (the last optimum) is a warm start.
    """
    dims = len(distances.values)
    box = settings.bounds.log_box(dims)
    low, high = np.array(box).T
    many = previous is None or len(y) <= settings.few_observations
    starts = []
    if previous is not None:  # with many trials the optimum moves little: warm start only
        starts.append(np.clip(previous.to_log_vector(), low, high))
    if many or (len(y) % settings.restart_every == 0 and len(y) <= settings.restart_until):
        starts.append(_default_start(dims, settings.bounds))
    if many:
        starts.extend(rng.uniform(low, high) for _ in range(settings.restarts))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            value, grad = log_marginal_likelihood(theta, distances, y, kernel)
        except CholeskyFailure:
            return 1e25, np.zeros_like(theta)
        if settings.prior:
            prior_value, prior_grad = log_prior(theta)
            value, grad = value + prior_value, grad + prior_grad
        return -value, -grad

    best: tuple[float, np.ndarray] | None = None
    with single_threaded_blas():
        for start in starts:
            result = scipy.optimize.minimize(objective, start, jac=True, method="L-BFGS-B",
                                             bounds=box,
                                             options={"maxiter": settings.max_iterations,
                                                      "ftol": settings.tolerance})
            if np.isfinite(result.fun) and (best is None or result.fun < best[0]):
                best = (float(result.fun), result.x)
    if best is None or best[0] >= 1e25:
        logger.warning("GP fit failed from every start; keeping the default hyper-parameters")
        return GPHyperparameters.from_log_vector(starts[0])
    return GPHyperparameters.from_log_vector(best[1])


def _default_start(dims: int, bounds: GPBounds) -> np.ndarray:
    start = np.log(np.array([0.5] * dims + [1.0, 1e-2]))
    low, high = np.array(bounds.log_box(dims)).T
    return np.clip(start, low, high)


@dataclass(frozen=True, eq=False)
class GPPosterior:
    """The GP conditioned on the observations: what scoring needs (Alg. 2.1, lines 2-3)."""

    params: GPHyperparameters
    kernel: Kernel
    lower: np.ndarray  # (n, n) Cholesky factor of K + s2_n I
    alpha: np.ndarray  # (n,)

    @classmethod
    def condition(cls, distances: PairDistances, y: np.ndarray, params: GPHyperparameters,
                  kernel: Kernel) -> GPPosterior:
        n = len(y)
        matrix = training_kernel(distances, params, kernel) + params.noise_variance * np.eye(n)
        lower = stable_cholesky(matrix, params.signal_variance)
        return cls(params, kernel, lower, scipy.linalg.cho_solve((lower, True), y))

    def whiten(self, cross: np.ndarray) -> np.ndarray:
        """v = L \\ k(X, x*): (n, m) cross-covariances -> (n, m) (Alg. 2.1, line 5)."""
        return scipy.linalg.solve_triangular(self.lower, cross, lower=True, check_finite=False)

    def predict(self, cross: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latent mean and variance at m points from their (n, m) cross-covariances.

        mean = k*^T alpha (Alg. 2.1, line 4); var = s2 - v^T v (line 6), floored at 0.
        """
        whitened = self.whiten(cross)
        variance = self.params.signal_variance - np.einsum("ij,ij->j", whitened, whitened)
        return cross.T @ self.alpha, np.maximum(variance, 0.0)
