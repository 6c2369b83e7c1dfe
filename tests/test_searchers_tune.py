"""GPSearch inside a real Ray Tune Tuner: 8 GPU slots, interruption and Tuner.restore."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import cloudpickle, tune

from searchers import GPSearch

pytestmark = pytest.mark.slow
NUM_SAMPLES = 20


@pytest.fixture(scope="module")
def ray_cluster():
    # 8 fake GPUs: Tune only counts them, so the test runs on a CPU-only machine
    ray.init(num_cpus=2, num_gpus=8, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    # Ray's workers cannot import a test module: ship the trainable by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


def space() -> dict:
    return {"lr": tune.loguniform(1e-4, 1e-1), "width": tune.choice([16, 32, 64, 128]),
            "depth": tune.randint(1, 6), "augment": tune.choice([True, False]),
            "label": "test"}  # a constant: passes through the searcher unchanged


def trainable(config: dict) -> None:
    """A cheap stand-in for a training run."""
    loss = (abs(config["depth"] - 3) * 0.1 + abs(config["width"] - 64) / 256
            + (0.0 if config["augment"] else 0.2) + abs(config["lr"] - 0.01) * 10)
    tune.report({"loss": loss})


class InterruptAfter(tune.Callback):
    """Sends the driver SIGINT (like Ctrl+C or a preempted head node) after `trials` results,
    while the marker file exists: Tune saves its state and stops with trials still pending."""

    def __init__(self, trials: int, marker: Path) -> None:
        self.trials, self.marker, self.seen = trials, marker, 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.seen += 1
        if self.seen == self.trials and self.marker.exists():
            os.kill(os.getpid(), signal.SIGINT)


def _tuner(storage: Path, name: str, callbacks: list | None = None) -> tune.Tuner:
    return tune.Tuner(
        tune.with_resources(trainable, {"gpu": 1}),
        param_space=space(),
        tune_config=tune.TuneConfig(search_alg=GPSearch(seed=0, warmup_trials=6),
                                    metric="loss", mode="min", num_samples=NUM_SAMPLES,
                                    max_concurrent_trials=8, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0,
                                  callbacks=callbacks),
    )


def _configs(results: tune.ResultGrid) -> list[tuple]:
    return [tuple(sorted(r.config.items())) for r in results
            if r.error is None and r.metrics and "loss" in r.metrics]


def test_tuner_with_8_gpu_slots_completes_with_distinct_configs(ray_cluster, tmp_path):
    results = _tuner(tmp_path, "plain").fit()
    configs = _configs(results)
    assert len(results) == NUM_SAMPLES and results.num_errors == 0
    assert len(set(configs)) == NUM_SAMPLES


def test_interrupted_tuner_restores_the_searcher_and_finishes(ray_cluster, tmp_path):
    marker = tmp_path / "interrupt"
    marker.touch()
    first = _tuner(tmp_path, "resumed", [InterruptAfter(10, marker)]).fit()
    done_before = [r for r in first if r.metrics and "loss" in r.metrics]
    assert 10 <= len(done_before) < NUM_SAMPLES  # interrupted with trials left to run
    marker.unlink()  # the restored run carries the same callback: disarm it
    path = str(tmp_path / "resumed")
    assert tune.Tuner.can_restore(path)
    results = tune.Tuner.restore(path, tune.with_resources(trainable, {"gpu": 1}),
                                 resume_errored=True).fit()
    configs = _configs(results)
    assert results.num_errors == 0 and len(results) == NUM_SAMPLES
    # a searcher that lost its state would re-draw the same seeded warm-up: duplicates
    assert len(set(configs)) == len(configs) == NUM_SAMPLES


def continuous_trainable(config: dict) -> None:
    tune.report({"loss": sum((config[f"x{i}"] - 0.3) ** 2 for i in range(8))})


def test_continuous_space_beyond_enumeration_runs_under_a_tuner(ray_cluster, tmp_path):
    # 64^8 configurations: the candidate-set path, inside a real Tuner
    param_space = {f"x{i}": tune.uniform(0.0, 1.0) for i in range(8)}
    searcher = GPSearch(seed=0, warmup_trials=4)
    results = tune.Tuner(
        continuous_trainable, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, metric="loss", mode="min",
                                    num_samples=10, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="continuous", verbose=0),
    ).fit()
    configs = _configs(results)
    assert results.num_errors == 0 and len(set(configs)) == len(configs) == 10
