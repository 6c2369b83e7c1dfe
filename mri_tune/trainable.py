"""The Ray Tune function trainable: one trial = one `Trainer` run on the slice store.

Use `make_trainable(TrialSettings(store=...))` and pass the returned function to `tune.Tuner`.
It is a closure over the frozen settings (picklable, no `tune.with_parameters` needed: the settings
are a few numbers and a path; each trial reads the store itself, once, onto its own device).

The config dict holds the Table 1 keys (`num_blocks`, `convs_per_block`, `filters`, `kernel_size`,
`learning_rate`, `batch_size`, `epochs`, `augmentation`); it becomes typed specs on the first lines.

Per epoch the trial reports `EpochMetrics.to_dict()` (epoch, train_loss, train_error, val_loss,
val_error, val_error_<class>, images_per_s, learning_rate, epoch_seconds) plus num_parameters,
with a checkpoint (`checkpoint.pt`, the layout of `mri_tune.train.save_checkpoint`); it resumes from
`tune.get_checkpoint()`, and writes TensorBoard scalars under `<trial dir>/tensorboard`.

Failure policy: an invalid spec, an out-of-memory error or a non-finite loss ends the trial at
once with a last result {"failure": "invalid_spec" | "oom" | "diverged", "failure_message": ...,
"val_loss": NaN, "val_error": NaN} and a normal return, so searchers see the reason in
`on_trial_complete`. Any other exception propagates and Ray marks the trial as errored.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from mri_tune.errors import SpecError, TrainingFailure
from mri_tune.model import CNNSpec
from mri_tune.train import (
    EpochMetrics,
    TrainConfig,
    Trainer,
    build_model,
    failure_policy,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
    specs_from_config,
)

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares (not searched over).

    store: the slice store (made absolute: Ray runs trials in their own working directory).
    device: "auto" (CUDA when the trial sees a GPU), "cpu" or "cuda".
    images_per_epoch: training images per epoch; None = 4 x the training set (the paper).
    epoch_scale: multiplies the config's `epochs` (at least 1 epoch), to run cheaper searches.
    seed: seed of every trial (model initialisation, sampling, augmentation); trials differ only
        by their configs, so their losses compare like for like.
    tensorboard: write TensorBoard scalars in the trial folder.
    """

    store: Path
    device: str = "auto"
    images_per_epoch: int | None = None
    epoch_scale: float = 1.0
    seed: int = 0
    tensorboard: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "store", Path(self.store).expanduser().resolve())
        if not (0.0 < self.epoch_scale < math.inf):
            raise SpecError(f"TrialSettings.epoch_scale must be a finite number > 0. Got "
                            f"{self.epoch_scale!r}; use 1.0 for the paper's epochs.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SpecError(f"TrialSettings.device must be 'auto', 'cpu' or 'cuda'. "
                            f"Got {self.device!r}.")


def trial_specs(config: Mapping[str, Any], settings: TrialSettings) -> tuple[CNNSpec,
                                                                           TrainConfig]:
    """The typed specs of one trial: Table 1 keys from `config`, the rest from `settings`."""
    spec, train = specs_from_config(config, images_per_epoch=settings.images_per_epoch,
                                    seed=settings.seed)
    epochs = max(1, round(train.epochs * settings.epoch_scale))
    return spec, dataclasses.replace(train, epochs=epochs)


def make_trainable(settings: TrialSettings) -> Callable[[dict[str, Any]], None]:
    """A Ray Tune function trainable bound to `settings`."""

    def train_region_cnn(config: dict[str, Any]) -> None:
        run_trial(config, settings)

    return train_region_cnn


def run_trial(config: Mapping[str, Any], settings: TrialSettings) -> None:
    """Train one config, reporting each epoch to Tune; report the failure reason if it fails."""
    try:
        with failure_policy():
            spec, train_config = trial_specs(config, settings)
            _train_and_report(spec, train_config, settings)
    except TrainingFailure as failure:
        reason, message = failure.reason, str(failure)
    else:
        return
    # Outside the except block: the traceback (and the tensors its frames hold) is gone now.
    _release_memory()
    logger.warning("trial ended early (%s): %s", reason, message)
    tune.report(failure_result(reason, message))


def failure_result(reason: str, message: str) -> dict[str, Any]:
    """The last result of a failed trial: the reason, and NaN for the metrics searchers read."""
    return {"failure": reason, "failure_message": message,
            "val_loss": math.nan, "val_error": math.nan}


def _train_and_report(spec: CNNSpec, config: TrainConfig, settings: TrialSettings) -> None:
    from mri_tune.store import SliceStore  # h5py loads in the trial's process only

    device = resolve_device(settings.device)
    store = SliceStore(settings.store)
    spec.feature_size(store.image_size)  # reject an impossible spec before loading any data
    model = build_model(spec, len(store.classes), store.image_size, device, config.seed)
    trainer = Trainer(model, store.load_split("train", device),
                      store.load_split("validation", device), config, store.classes, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_state_dict(read_checkpoint(Path(folder), device))
        logger.info("resumed at epoch %d of %d", trainer.epoch, config.epochs)
    writer = _tensorboard_writer(trainer.epoch) if settings.tensorboard else None
    num_parameters = sum(p.numel() for p in model.parameters())

    def report(metrics: EpochMetrics, trainer: Trainer) -> None:
        if writer is not None:
            _write_scalars(writer, metrics)
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder), trainer)
            tune.report({**metrics.to_dict(), "num_parameters": num_parameters},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        trainer.run(on_epoch=report)
    finally:
        if writer is not None:
            writer.close()


def _tensorboard_writer(epochs_done: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

    folder = Path(tune.get_context().get_trial_dir()) / TENSORBOARD_DIR
    # purge_step drops events a crashed attempt wrote after the checkpoint we resume from.
    return SummaryWriter(log_dir=str(folder), purge_step=epochs_done + 1)


def _write_scalars(writer: Any, metrics: EpochMetrics) -> None:
    step = metrics.epoch
    writer.add_scalar("loss/train", metrics.train_loss, step)
    writer.add_scalar("loss/validation", metrics.val_loss, step)
    writer.add_scalar("error/train", metrics.train_error, step)
    writer.add_scalar("error/validation", metrics.val_error, step)
    for name, error in metrics.val_error_per_class.items():
        if not math.isnan(error):
            writer.add_scalar(f"error/validation_{name}", error, step)
    writer.add_scalar("learning_rate", metrics.learning_rate, step)
    writer.add_scalar("images_per_s", metrics.images_per_s, step)
    writer.flush()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
