"""The Ray Tune trainable: typed specs, reports, checkpoints, resume, failure policy, Tuner."""

from __future__ import annotations

import json
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
from mri_tune.training.config import TrainConfig
from mri_tune.training.model import CNNSpec, RegionCNN

# A tiny member of the space at 128x128 (4 poolings leave 8x8): cheap on CPU.
TINY = dict(num_blocks=4, convs_per_block=1, filters=4, kernel_size=3, learning_rate=0.01,
            batch_size=16, epochs=2, augmentation=True)


class FakeSession:
    """Stands in for Tune's session: records reports in `reports` and, as Tune's JSON logger
    does, in `folder/result.json`; keeps a copy of each checkpoint as `folder/checkpoint_<n>`."""

    def __init__(self, folder: Path, checkpoint: tune.Checkpoint | None = None,
                 first_index: int = 0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.first_index = first_index
        self.checkpoint = checkpoint
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []

    def report(self, metrics: dict[str, Any], *, checkpoint: tune.Checkpoint | None = None
               ) -> None:
        row = dict(metrics)
        if checkpoint is not None:
            kept = self.folder / f"checkpoint_{self.first_index + len(self.checkpoints)}"
            shutil.copytree(checkpoint.path, kept)
            self.checkpoints.append(kept)
            row["checkpoint_dir_name"] = kept.name
        self.reports.append(row)
        with (self.folder / "result.json").open("a") as rows:
            rows.write(json.dumps(row) + "\n")

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
    assert config.average_weights == TrainConfig.average_weights  # the default
    _, smoke = trial_specs(TINY, TrialSettings(store=Path("s.h5"), average_weights=0.0))
    assert smoke.average_weights == 0.0
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
    (tmp_path / "resumed").mkdir()
    first_row = (tmp_path / "full" / "result.json").read_text().splitlines()[0]
    (tmp_path / "resumed" / "result.json").write_text(first_row + "\n")
    resumed = FakeSession(tmp_path / "resumed",
                          tune.Checkpoint.from_directory(full.checkpoints[0]))
    resumed.install(monkeypatch)
    run_trial(TINY, settings(sample_store))
    assert [r["epoch"] for r in resumed.reports] == [2]
    for key in ("train_loss", "train_error", "val_loss", "val_error"):
        assert resumed.reports[0][key] == full.reports[1][key]


def test_resume_after_a_driver_killed_before_it_saved_its_state(
        sample_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The window of issue 11: Tune registered the epoch-2 checkpoint and deleted the epoch-1
    one, then the driver died before its state (naming epoch 1) and result.json (rows up to
    epoch 1) were saved again; a worker died while copying the epoch-3 checkpoint."""
    full = FakeSession(tmp_path / "full").install(monkeypatch)
    run_trial({**TINY, "epochs": 3}, settings(sample_store))
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    rows = (tmp_path / "full" / "result.json").read_text().splitlines()
    (crashed / "result.json").write_text(rows[0] + "\n")
    shutil.copytree(full.checkpoints[1], crashed / "checkpoint_1")
    (crashed / "checkpoint_2").mkdir()
    (crashed / "checkpoint_2" / "checkpoint.pt").write_bytes(
        (full.checkpoints[2] / "checkpoint.pt").read_bytes()[:1000])  # torn copy

    # Tune's restore found its checkpoint deleted and started the trial without one.
    resumed = FakeSession(crashed, first_index=5).install(monkeypatch)
    run_trial({**TINY, "epochs": 3}, settings(sample_store, experiment_dir=tmp_path))
    assert [r["epoch"] for r in resumed.reports] == [2, 3]  # epoch 2 again, then on
    for again, first in zip(resumed.reports, full.reports[1:], strict=True):
        assert again["val_loss"] == first["val_loss"] and again["train_loss"] == first["train_loss"]
    assert resumed.reports[0]["checkpoint_dir_name"] == "checkpoint_5"  # Tune tracks it now
    assert not (crashed / "checkpoint_2").exists()  # the torn copy is gone
    epochs = [json.loads(r)["epoch"] for r in (crashed / "result.json").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_a_checkpoint_that_would_fill_the_disk_is_refused_as_an_infrastructure_error(
        tmp_path: Path) -> None:
    from ray.exceptions import RayTaskError

    from mri_tune.experiment.resume import is_infrastructure

    free = shutil.disk_usage(tmp_path).free
    trainable_module.check_free_space(tmp_path, 1024)  # plenty of room
    with pytest.raises(OSError, match="No space left on device") as error:
        trainable_module.check_free_space(tmp_path, free)
    assert "--resume" in str(error.value)
    assert is_infrastructure(RayTaskError("train", "...", error.value))


def test_a_restore_from_a_deleted_checkpoint_starts_the_trial_without_one(tmp_path) -> None:
    from ray.train._internal.session import _TrainingResult

    class Base:
        restored: object = None

        def restore(self, checkpoint_path: object) -> None:
            self.restored = checkpoint_path

    class Trainable(trainable_module._TolerantRestore, Base):
        pass

    gone = _TrainingResult(checkpoint=tune.Checkpoint.from_directory(tmp_path / "gone"),
                           metrics={})
    trainable = Trainable()
    trainable.restore(gone)
    assert trainable.restored is None
    (tmp_path / "here").mkdir()
    here = _TrainingResult(checkpoint=tune.Checkpoint.from_directory(tmp_path / "here"),
                           metrics={})
    trainable.restore(here)
    assert trainable.restored is here


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def _scalars(trial_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The TensorBoard scalars of a trial folder's `tensorboard/`, read back as TensorBoard does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trial_dir / trainable_module.TENSORBOARD_DIR))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_trials_under_a_real_tuner_with_actor_reuse(sample_store: Path, tmp_path: Path,
                                                    ray_cluster) -> None:
    """One actor runs every trial in turn (reuse_actors): each trial folder still gets its own
    TensorBoard curves, and an impossible spec ends as a failure, not an error."""
    trial_settings = settings(sample_store, images_per_epoch=16,
                              experiment_dir=tmp_path / "exp")
    tuner = tune.Tuner(
        make_trainable(trial_settings),
        param_space={**TINY, "epochs": 2, "num_blocks": tune.grid_search([4, 8]),
                     "learning_rate": tune.grid_search([0.01, 0.001])},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", reuse_actors=True,
                                    max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="exp", verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 4 and not results.errors
    good = [r for r in results if r.config["num_blocks"] == 4]
    bad = [r for r in results if r.config["num_blocks"] == 8]
    assert len({r.metrics["pid"] for r in results}) == 1  # one actor ran them all
    for result in good:
        assert math.isfinite(result.metrics["val_loss"]) and result.metrics["epoch"] == 2
        assert (Path(result.checkpoint.path) / "checkpoint.pt").is_file()
        scalars = _scalars(Path(result.path))
        for tag in ("loss/train", "loss/validation", "error/validation"):
            assert [step for step, _ in scalars[tag]] == [1, 2], (result.path, scalars.keys())
        reported = [row["val_loss"] for row in result.metrics_dataframe.to_dict("records")]
        assert [v for _, v in scalars["loss/validation"]] == pytest.approx(reported, rel=1e-5)
    for result in bad:
        assert result.metrics["failure"] == "invalid_spec" and result.checkpoint is None
    assert results.get_best_result().config["num_blocks"] == 4
