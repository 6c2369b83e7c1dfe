"""The Ray Tune function trainable: one trial = one `Trainer` run on the slice store.

Use `make_trainable(TrialSettings(store=...))` and pass the returned function to `tune.Tuner`.
It is a closure over the frozen settings (picklable, no `tune.with_parameters` needed: the settings
are a few numbers and a path; each trial reads the store itself, once, onto its own device).

The config dict holds the Table 1 keys (`num_blocks`, `convs_per_block`, `filters`, `kernel_size`,
`learning_rate`, `batch_size`, `epochs`, `augmentation`); it becomes typed specs on the first lines.

Per epoch the trial reports `EpochMetrics.to_dict()` (epoch, train_loss, train_error, val_loss,
val_error, val_error_<class>, images_per_s, learning_rate, epoch_seconds) plus num_parameters,
and a checkpoint (`checkpoint.pt`, the layout of `mri_tune.training.checkpoint.save_checkpoint`);
it resumes from
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
from torch.utils.tensorboard import SummaryWriter

from mri_tune.data.store import SliceStore
from mri_tune.errors import SpecError, TrainingFailure
from mri_tune.training.checkpoint import read_checkpoint, save_checkpoint
from mri_tune.training.config import TrainConfig, specs_from_config
from mri_tune.training.device import resolve_device
from mri_tune.training.failures import failure_policy
from mri_tune.training.model import CNNSpec
from mri_tune.training.run import train_from_store
from mri_tune.training.trainer import EpochMetrics, Trainer

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
    device = resolve_device(settings.device)
    store = SliceStore(settings.store)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = read_checkpoint(Path(folder), device)
        logger.info("resuming at epoch %d of %d", resume["epoch"], config.epochs)
    reporter = _Reporter(store.preprocessing, settings.tensorboard)
    try:
        train_from_store(store, spec, config, device=device, on_epoch=reporter, resume=resume)
    finally:
        reporter.close()


class _Reporter:
    """The trial's `on_epoch`: TensorBoard scalars, and `tune.report` with a checkpoint.

    Every epoch checkpoints, so that a resumed trial continues from its last epoch; Tune keeps the
    best one by validation loss (for the ensemble) and the latest (for a resume).
    """

    def __init__(self, preprocessing: dict[str, Any], tensorboard: bool) -> None:
        self.preprocessing = preprocessing
        self.tensorboard = tensorboard
        self.writer: SummaryWriter | None = None

    def __call__(self, metrics: EpochMetrics, trainer: Trainer) -> None:
        if self.tensorboard:
            _write_scalars(self._writer(metrics.epoch), metrics)
        result = {**metrics.to_dict(),
                  "num_parameters": sum(p.numel() for p in trainer.model.parameters())}
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder), trainer, self.preprocessing)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))

    def _writer(self, epoch: int) -> SummaryWriter:
        if self.writer is None:
            folder = Path(tune.get_context().get_trial_dir()) / TENSORBOARD_DIR
            # purge_step drops events a crashed attempt wrote after the checkpoint we resume from.
            self.writer = SummaryWriter(log_dir=str(folder), purge_step=epoch)
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
