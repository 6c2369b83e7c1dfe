"""Offline problems for benchmarks/searcher_bench.py: every configuration's loss tabulated once.

Each problem is a Ray Tune param space, its finite grid (searchers.space with a stated
resolution) and a table of losses over that grid (NaN = the trial fails). A searcher's proposal is
snapped to the nearest grid point and looked up, so a 100-trial run costs no training.

scikit-learn problems (validation log-loss on a fixed stratified 70/30 split of a bundled dataset;
tables cached in benchmarks/tables/, built on first use, ~2-5 minutes each on 2 cores):
    svm_digits   SVC(C, gamma, kernel, class_weight) on digits      log-uniform x2 + categorical
    gbm_cancer   HistGradientBoosting(learning_rate, max_leaf_nodes, min_samples_leaf,
                 l2_regularization) on breast_cancer                      log + log-int + choices
    rf_wine      RandomForest(n_estimators, max_depth, max_features, min_samples_leaf, criterion)
                 on wine                                                   int + choices

    knn_digits   KNeighbors(n_neighbors log-int 1..64, weights, p) on digits     log-int + choices
    et_cancer    ExtraTrees(n_estimators q-int, max_depth int, max_features, min_samples_leaf
                 log-int, bootstrap) on breast_cancer          q-int + int + log-int + choices
    sgd_digits   SGDClassifier(alpha log-uniform, loss, penalty, max_iter q-int) on digits
                                                                      log + choices + q-int

Closed-form functions (minimised, known optimum; proposals are not snapped, so a duplicate is an
exactly repeated point): branin (2-d), hartmann6 (6-d on [0, 1]^6), levy10 (10-d on [-10, 10]^10).
Development functions (`DEVELOPMENT`, outside both halves, run only when named): six-hump camel,
log Goldstein-Price and Beale (2-d); log(1 + Rosenbrock) 4-d on [-2, 2], Styblinski-Tang 6-d on
[-5, 5], Ackley 5-d on [-5, 10], Griewank 8-d on [-50, 100] (for changes to the candidate-set
path, which only spaces of 3 or more continuous dimensions take); hgb_wine, a tabulated
HistGradientBoosting on wine whose four choices are all unevenly spaced numbers.

cnn_paper (SYNTHETIC): the 470,400 configurations of `paper_space()` (Table 1 of the paper) with a
made-up but plausible validation loss, NOT measured training runs:
    loss = 0.12 + learning-rate bowl around an optimum that grows with sqrt(batch size)
           + under-capacity penalty exp(-(log2 filters + log2 convolutions - 6))
           + too few poolings 0.04 (5 - num_blocks)^2 + under-training 0.3 exp(-updates / 40k)
           + over-fitting without augmentation + deterministic noise N(0, 0.015)
    a learning rate of 1 diverges (chance-level log-loss ln 4); the trial FAILS (out of memory)
    when batch_size * filters * convs_per_block * (kernel_size / 3)^2 > 92,000, i.e. above ~16 GiB
    of activations for 128x128 inputs (5.8% of the grid: big filters x batch, next to the best).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from sklearn.exceptions import ConvergenceWarning

from searchers.gp_search import paper_space
from searchers.space import SearchSpace, SpaceSettings, build_space

logger = logging.getLogger(__name__)
TABLES = Path(__file__).resolve().parent / "tables"
_OOM_THRESHOLD = 92_000  # batch x filters x convs x (k/3)^2: ~16 GiB of activations at 128x128


@dataclass(frozen=True, eq=False)
class Problem:
    """A tabulated problem: a proposal is snapped to the nearest grid point and looked up."""

    name: str
    param_space: dict[str, Any]
    space: SearchSpace
    losses: np.ndarray  # (N,) NaN where the trial fails
    resolution: int

    @property
    def best(self) -> float:
        return float(np.nanmin(self.losses))

    def evaluate(self, config: dict[str, Any]) -> tuple[float, Any]:
        """(loss, NaN if the trial fails; the table cell, the duplicate key)."""
        index = self.space.index_of(config)
        return float(self.losses[index]), index


@dataclass(frozen=True, eq=False)
class FunctionProblem:
    """A closed-form function on a box: any point is its own configuration (no snapping)."""

    name: str
    param_space: dict[str, Any]
    function: Callable[[np.ndarray], float]
    best: float  # the known global minimum

    def evaluate(self, config: dict[str, Any]) -> tuple[float, Any]:
        x = np.array([config[f"x{i}"] for i in range(len(self.param_space))], dtype=np.float64)
        return float(self.function(x)), tuple(x.tolist())


def _sklearn_problem(name: str, param_space: dict[str, Any], resolution: int,
                     evaluate: Callable[[dict[str, Any]], float]) -> Problem:
    space = build_space(param_space, SpaceSettings(resolution=resolution))
    path = TABLES / f"{name}.npy"
    if path.exists():
        losses = np.load(path)
    else:
        logger.warning("tabulating %s: %d configurations (once; cached in %s)", name,
                       space.size, path)
        losses = np.array([evaluate(space.config(i)) for i in range(space.size)])
        TABLES.mkdir(exist_ok=True)
        np.save(path, losses.astype(np.float32))
    if len(losses) != space.size:
        raise RuntimeError(f"{path} holds {len(losses)} losses for a grid of {space.size}: "
                           "delete it to rebuild")
    return Problem(name, param_space, space, np.asarray(losses, dtype=np.float64), resolution)


def _split(loader: Callable[..., Any]) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = loader(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.3, stratify=y,
                                                      random_state=0)
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_val), y_train, y_val


def _log_loss(model: Any, data: tuple[np.ndarray, ...]) -> float:
    from sklearn.metrics import log_loss

    x_train, x_val, y_train, y_val = data
    model.fit(x_train, y_train)
    return float(log_loss(y_val, model.predict_proba(x_val), labels=np.unique(y_train)))


def svm_digits() -> Problem:
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    data = _split(load_digits)
    space = {"C": tune.loguniform(1e-2, 1e3), "gamma": tune.loguniform(1e-5, 1e0),
             "kernel": tune.choice(["rbf", "sigmoid"]),
             "class_weight": tune.choice([None, "balanced"])}
    return _sklearn_problem("svm_digits", space, 12, lambda c: _log_loss(
        SVC(probability=True, random_state=0, **c), data))


def gbm_cancer() -> Problem:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import HistGradientBoostingClassifier

    data = _split(load_breast_cancer)
    space = {"learning_rate": tune.loguniform(1e-3, 1.0),
             "max_leaf_nodes": tune.choice([2, 4, 8, 16, 32, 64]),
             "min_samples_leaf": tune.choice([1, 4, 16, 64]),
             "l2_regularization": tune.choice([0.0, 0.1, 1.0, 10.0])}
    return _sklearn_problem("gbm_cancer", space, 8, lambda c: _log_loss(
        HistGradientBoostingClassifier(max_iter=40, random_state=0, **c), data))


def hgb_wine() -> Problem:
    """Development only: the choices users write by hand, unevenly spaced ([0.01, 0.03, ...])."""
    from sklearn.datasets import load_wine
    from sklearn.ensemble import HistGradientBoostingClassifier

    data = _split(load_wine)
    space = {"learning_rate": tune.choice([0.01, 0.03, 0.1, 0.3, 1.0]),
             "l2_regularization": tune.choice([0.0, 0.01, 0.1, 1.0, 10.0]),
             "max_depth": tune.choice([2, 3, 5, 8]),
             "min_samples_leaf": tune.choice([1, 5, 20])}
    return _sklearn_problem("hgb_wine", space, 8, lambda c: _log_loss(
        HistGradientBoostingClassifier(max_iter=30, random_state=0, **c), data))


def rf_wine() -> Problem:
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier

    data = _split(load_wine)
    space = {"n_estimators": tune.choice([5, 10, 20, 40, 80]),
             "max_depth": tune.randint(1, 9),
             "max_features": tune.choice([0.1, 0.25, 0.5, 1.0]),
             "min_samples_leaf": tune.choice([1, 2, 4, 8, 16]),
             "criterion": tune.choice(["gini", "entropy"])}
    return _sklearn_problem("rf_wine", space, 8, lambda c: _log_loss(
        RandomForestClassifier(random_state=0, n_jobs=1, **c), data))


def cnn_paper() -> Problem:
    """The SYNTHETIC loss surface over paper_space() described in the module docstring."""
    param_space = paper_space()
    space = build_space(param_space)
    index = space.unravel(np.arange(space.size))
    value = {d.name: np.asarray(d.values, dtype=np.float64)[index[:, k]]
             for k, d in enumerate(space.dimensions)}
    losses = _synthetic_cnn_loss(value)
    memory = (value["batch_size"] * value["filters"] * value["convs_per_block"]
              * (value["kernel_size"] / 3.0) ** 2)
    losses[memory > _OOM_THRESHOLD] = np.nan
    return Problem("cnn_paper", param_space, space, losses, space.size)


def _synthetic_cnn_loss(v: dict[str, np.ndarray]) -> np.ndarray:
    log_lr, batch = np.log10(v["learning_rate"]), v["batch_size"]
    best_log_lr = -3.0 + 0.5 * np.log10(batch / 8.0)
    lr_term = 0.06 * (log_lr - best_log_lr) ** 2
    capacity = np.log2(v["filters"]) + np.log2(v["num_blocks"] * v["convs_per_block"])
    under_capacity = 0.5 * np.exp(-(capacity - 6.0))
    poolings = 0.04 * (5.0 - v["num_blocks"]) ** 2
    updates = v["epochs"] * 80_000 / batch
    under_training = 0.3 * np.exp(-updates / 40_000)
    overfit = (1.0 - v["augmentation"]) * (0.08 + 0.03 * np.maximum(capacity - 8.0, 0.0))
    kernel = np.where(v["num_blocks"] <= 3, -0.01, 0.01) * (v["kernel_size"] == 5)
    noise = np.random.default_rng(1234).normal(0.0, 0.015, len(log_lr))
    loss = 0.12 + lr_term + under_capacity + poolings + under_training + overfit + kernel + noise
    return np.where(log_lr >= 0.0, math.log(4.0), np.maximum(loss, 0.01))


def knn_digits() -> Problem:
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier

    data = _split(load_digits)
    space = {"n_neighbors": tune.lograndint(1, 65), "weights": tune.choice(["uniform", "distance"]),
             "p": tune.choice([1, 2])}
    return _sklearn_problem("knn_digits", space, 2, lambda c: _log_loss(
        KNeighborsClassifier(n_jobs=1, **c), data))


def et_cancer() -> Problem:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import ExtraTreesClassifier

    data = _split(load_breast_cancer)
    space = {"n_estimators": tune.qrandint(10, 50, 10), "max_depth": tune.randint(1, 11),
             "max_features": tune.choice(["sqrt", 0.5, 1.0]),
             "min_samples_leaf": tune.lograndint(1, 9), "bootstrap": tune.choice([True, False])}
    return _sklearn_problem("et_cancer", space, 2, lambda c: _log_loss(
        ExtraTreesClassifier(random_state=0, n_jobs=1, **c), data))


def sgd_digits() -> Problem:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import SGDClassifier

    data = _split(load_digits)
    space = {"alpha": tune.loguniform(1e-6, 1.0), "loss": tune.choice(["log_loss",
                                                                      "modified_huber"]),
             "penalty": tune.choice(["l2", "l1", "elasticnet"]),
             "max_iter": tune.qrandint(5, 50, 5)}

    def evaluate(config: dict[str, Any]) -> float:
        with warnings.catch_warnings():  # few iterations do not converge: that is the point
            warnings.simplefilter("ignore", ConvergenceWarning)
            return _log_loss(SGDClassifier(random_state=0, tol=None, **config), data)
    return _sklearn_problem("sgd_digits", space, 10, evaluate)


def branin() -> FunctionProblem:
    def f(x: np.ndarray) -> float:
        b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
        return float((x[1] - b * x[0] ** 2 + c * x[0] - 6) ** 2
                     + 10 * (1 - t) * math.cos(x[0]) + 10)
    space = {"x0": tune.uniform(-5.0, 10.0), "x1": tune.uniform(0.0, 15.0)}
    return FunctionProblem("branin", space, f, 0.397887357729738)


_HARTMANN_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                        [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_HARTMANN_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886],
                               [2329, 4135, 8307, 3736, 1004, 9991],
                               [2348, 1451, 3522, 2883, 3047, 6650],
                               [4047, 8828, 8732, 5743, 1091, 381]])
_HARTMANN_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6() -> FunctionProblem:
    def f(x: np.ndarray) -> float:
        inner = (_HARTMANN_A * (x[None, :] - _HARTMANN_P) ** 2).sum(axis=1)
        return float(-(_HARTMANN_ALPHA * np.exp(-inner)).sum())
    space = {f"x{i}": tune.uniform(0.0, 1.0) for i in range(6)}
    return FunctionProblem("hartmann6", space, f, -3.32237)


def levy10() -> FunctionProblem:
    def f(x: np.ndarray) -> float:
        w = 1 + (x - 1) / 4
        middle = ((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(math.pi * w[:-1] + 1) ** 2)).sum()
        last = (w[-1] - 1) ** 2 * (1 + np.sin(2 * math.pi * w[-1]) ** 2)
        return float(np.sin(math.pi * w[0]) ** 2 + middle + last)
    space = {f"x{i}": tune.uniform(-10.0, 10.0) for i in range(10)}
    return FunctionProblem("levy10", space, f, 0.0)


def sixhump() -> FunctionProblem:
    def f(x: np.ndarray) -> float:
        return float((4 - 2.1 * x[0] ** 2 + x[0] ** 4 / 3) * x[0] ** 2 + x[0] * x[1]
                     + (-4 + 4 * x[1] ** 2) * x[1] ** 2)
    space = {"x0": tune.uniform(-3.0, 3.0), "x1": tune.uniform(-2.0, 2.0)}
    return FunctionProblem("sixhump", space, f, -1.0316284534898774)


def goldstein() -> FunctionProblem:
    def f(x: np.ndarray) -> float:  # the log of Goldstein-Price: its range spans 6 decades
        a, b = x
        first = 1 + (a + b + 1) ** 2 * (19 - 14 * a + 3 * a * a - 14 * b + 6 * a * b + 3 * b * b)
        second = 30 + (2 * a - 3 * b) ** 2 * (18 - 32 * a + 12 * a * a + 48 * b - 36 * a * b
                                              + 27 * b * b)
        return float(math.log(first * second))
    space = {"x0": tune.uniform(-2.0, 2.0), "x1": tune.uniform(-2.0, 2.0)}
    return FunctionProblem("goldstein", space, f, math.log(3.0))


def beale() -> FunctionProblem:
    def f(x: np.ndarray) -> float:
        a, b = x
        return float((1.5 - a + a * b) ** 2 + (2.25 - a + a * b * b) ** 2
                     + (2.625 - a + a * b ** 3) ** 2)
    space = {"x0": tune.uniform(-4.5, 4.5), "x1": tune.uniform(-4.5, 4.5)}
    return FunctionProblem("beale", space, f, 0.0)


def rosenbrock4() -> FunctionProblem:
    def f(x: np.ndarray) -> float:  # log(1 + ...): the raw range spans 6 decades
        return float(np.log1p(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)))
    space = {f"x{i}": tune.uniform(-2.0, 2.0) for i in range(4)}
    return FunctionProblem("rosenbrock4", space, f, 0.0)


def styblinski6() -> FunctionProblem:
    def f(x: np.ndarray) -> float:
        return float(np.sum(x ** 4 - 16 * x ** 2 + 5 * x) / 2)
    space = {f"x{i}": tune.uniform(-5.0, 5.0) for i in range(6)}
    return FunctionProblem("styblinski6", space, f, -39.16616570377142 * 6)


def ackley5() -> FunctionProblem:
    def f(x: np.ndarray) -> float:
        return float(-20 * np.exp(-0.2 * np.sqrt(np.mean(x ** 2)))
                     - np.exp(np.mean(np.cos(2 * np.pi * x))) + 20 + math.e)
    space = {f"x{i}": tune.uniform(-5.0, 10.0) for i in range(5)}
    return FunctionProblem("ackley5", space, f, 0.0)


def griewank8() -> FunctionProblem:
    def f(x: np.ndarray) -> float:
        return float(np.sum(x ** 2) / 4000
                     - np.prod(np.cos(x / np.sqrt(np.arange(1, len(x) + 1)))) + 1)
    space = {f"x{i}": tune.uniform(-50.0, 100.0) for i in range(8)}
    return FunctionProblem("griewank8", space, f, 0.0)


PROBLEMS: dict[str, Callable[[], Problem | FunctionProblem]] = {
    "cnn_paper": cnn_paper, "gbm_cancer": gbm_cancer, "knn_digits": knn_digits,
    "branin": branin, "levy10": levy10,
    "svm_digits": svm_digits, "rf_wine": rf_wine, "et_cancer": et_cancer,
    "sgd_digits": sgd_digits, "hartmann6": hartmann6,
}
TUNING = ("cnn_paper", "gbm_cancer", "knn_digits", "branin", "levy10")
"""The problems the defaults were chosen on; the other half is held out (reported separately)."""
HELD_OUT = tuple(name for name in PROBLEMS if name not in TUNING)
DEVELOPMENT: dict[str, Callable[[], Problem | FunctionProblem]] = {
    "sixhump": sixhump, "goldstein": goldstein, "beale": beale,
    "rosenbrock4": rosenbrock4, "styblinski6": styblinski6, "ackley5": ackley5,
    "griewank8": griewank8, "hgb_wine": hgb_wine,
}
"""Outside the benchmark, run only when named: where a change is screened before either half."""
