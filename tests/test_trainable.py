"""The Ray Tune trainable: typed specs, reports, checkpoints, resume, failure policy, Tuner."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from ray import tune

from mri_tune.errors import SpecError
from mri_tune.experiment import trainable as trainable_module
from mri_tune.experiment.trainable import TrialSettings, make_trainable, run_trial, trial_specs
from mri_tune.training.model import CNNSpec, RegionCNN

# A tiny member of the space at 128x128 (4 poolings leave 8x8): cheap on CPU.
TINY = dict(num_blocks=4, convs_per_block=1, filters=4, kernel_size=3, learning_rate=0.01,
            batch_size=16, epochs=2, augmentation=True)


class FakeSession:
    """Stands in for Tune's session: records reports and keeps a copy of each checkpoint."""

    def __init__(self, folder: Path, checkpoint: tune.Checkpoint | None = None) -> None:
        self.folder = folder
        self.checkpoint = checkpoint
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []

    def report(self, metrics: dict[str, Any], *, checkpoint: tune.Checkpoint | None = None
               ) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            kept = self.folder / f"checkpoint_{len(self.checkpoints)}"
            shutil.copytree(checkpoint.path, kept)
            self.checkpoints.append(kept)

    def get_trial_dir(self) -> str:
        return str(self.folder)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeSession:
        monkeypatch.setattr(trainable_module.tune, "report", self.report)
        monkeypatch.setattr(trainable_module.tune, "get_checkpoint", lambda: self.checkpoint)
        monkeypatch.setattr(trainable_module.tune, "get_context", lambda: self)
        return self


def settings(store: Path, **overrides: Any) -> TrialSettings:
    return TrialSettings(store=store, device="cpu", **{"images_per_epoch": 32, **overrides})


def test_trial_specs_scale_epochs_and_take_settings() -> None:
    spec, config = trial_specs(TINY, TrialSettings(store=Path("s.h5"), epoch_scale=0.25,
                                                   images_per_epoch=10, seed=3))
    assert spec == CNNSpec(4, 1, 4, 3)
    assert (config.epochs, config.images_per_epoch, config.seed) == (1, 10, 3)
    assert TrialSettings(store=Path("s.h5")).store.is_absolute()
    with pytest.raises(SpecError, match="epoch_scale"):
        TrialSettings(store=Path("s.h5"), epoch_scale=0.0)


def test_an_impossible_spec_ends_the_trial_with_invalid_spec(
        sample_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session = FakeSession(tmp_path).install(monkeypatch)
    run_trial({**TINY, "num_blocks": 8}, settings(sample_store))
    assert len(session.reports) == 1
    last = session.reports[-1]
    assert last["failure"] == "invalid_spec" and "num_blocks <= 7" in last["failure_message"]
    assert math.isnan(last["val_loss"])


def test_out_of_memory_ends_the_trial_with_oom(
        sample_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(self, images):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 36.00 GiB")

    monkeypatch.setattr(RegionCNN, "forward", out_of_memory)
    session = FakeSession(tmp_path).install(monkeypatch)
    run_trial(TINY, settings(sample_store))
    assert [r.get("failure") for r in session.reports] == ["oom"]


def test_a_diverging_learning_rate_ends_the_trial_with_diverged(
        sample_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session = FakeSession(tmp_path).install(monkeypatch)
    run_trial({**TINY, "learning_rate": 1e8, "epochs": 20}, settings(sample_store))
    assert session.reports[-1]["failure"] == "diverged"
    assert len(session.reports) <= 2  # stopped in its first epochs, not after 20


def test_reports_checkpoints_tensorboard_and_resume(
        sample_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = FakeSession(tmp_path / "full").install(monkeypatch)
    run_trial(TINY, settings(sample_store))
    assert [r["epoch"] for r in full.reports] == [1, 2]
    first = full.reports[0]
    expected = {"train_loss", "train_error", "val_loss", "val_error", "images_per_s",
                "learning_rate", "num_parameters", "val_error_head", "val_error_spine"}
    assert expected <= set(first) and "failure" not in first
    assert all(math.isfinite(r["val_loss"]) for r in full.reports)
    assert list((tmp_path / "full" / "tensorboard").glob("events.out.tfevents.*"))

    # A crash after epoch 1: Tune hands the epoch-1 checkpoint to a fresh run.
    resumed = FakeSession(tmp_path / "resumed",
                          tune.Checkpoint.from_directory(full.checkpoints[0]))
    resumed.install(monkeypatch)
    run_trial(TINY, settings(sample_store))
    assert [r["epoch"] for r in resumed.reports] == [2]
    for key in ("train_loss", "train_error", "val_loss", "val_error"):
        assert resumed.reports[0][key] == full.reports[1][key]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_two_trials_under_a_real_tuner(sample_store: Path, tmp_path: Path, ray_cluster) -> None:
    trial_settings = settings(sample_store, images_per_epoch=16)
    tuner = tune.Tuner(
        make_trainable(trial_settings),
        param_space={**TINY, "epochs": 1, "num_blocks": tune.grid_search([4, 8])},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min"),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="exp", verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 2 and not results.errors
    by_blocks = {r.config["num_blocks"]: r for r in results}
    good, bad = by_blocks[4], by_blocks[8]
    assert math.isfinite(good.metrics["val_loss"]) and good.metrics["epoch"] == 1
    assert good.checkpoint is not None
    assert (Path(good.checkpoint.path) / "checkpoint.pt").is_file()
    assert list((Path(good.path) / "tensorboard").glob("events.out.tfevents.*"))
    assert bad.metrics["failure"] == "invalid_spec" and bad.checkpoint is None
    assert results.get_best_result().config["num_blocks"] == 4
