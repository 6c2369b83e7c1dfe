"""The Ray Tune function trainable: one trial = one `Trainer` run on the slice store.

Use `make_trainable(TrialSettings(store=...))` and pass the returned class to `tune.Tuner`: Tune's
function trainable of a closure over the frozen settings (picklable, no `tune.with_parameters`
needed: the settings are a few numbers and paths; each trial reads the store itself, once, onto
its own device).

The config dict holds the Table 1 keys (`num_blocks`, `convs_per_block`, `filters`, `kernel_size`,
`learning_rate`, `batch_size`, `epochs`, `augmentation`); it becomes typed specs on the first lines.

Per epoch the trial reports `EpochMetrics.to_dict()` (epoch, train_loss, train_error, val_loss,
val_error, val_error_<class>, images_per_s, learning_rate, epoch_seconds) plus num_parameters,
and a checkpoint (`checkpoint.pt`, the layout of `mri_tune.training.checkpoint.save_checkpoint`);
it writes TensorBoard scalars under `<trial folder>/tensorboard`.

Resume: the trial continues from its newest complete checkpoint, whichever of Tune's and the
`checkpoint_*` folders in its own trial folder that is. Tune deletes a superseded checkpoint as
soon as it registers the next one, but writes the experiment state that names the latest one
to storage later, in the background; a driver killed in between leaves a state that names a
deleted checkpoint (the lost trial of issue 11). `_TolerantRestore` lets such a trial start, and
the trial then takes the newest complete checkpoint of its folder, reports again the epochs of
that checkpoint's history that Tune never recorded (missing from `result.json`), and removes
the incomplete checkpoint folders a killed worker left.

Failure policy: an invalid spec, an out-of-memory error or a non-finite loss ends the trial at
once with a last result {"failure": "invalid_spec" | "oom" | "diverged", "failure_message": ...,
"val_loss": NaN, "val_error": NaN} and a normal return, so searchers see the reason in
`on_trial_complete`. Any other exception propagates and Ray marks the trial as errored.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune.trainable import FunctionTrainable, wrap_function
from torch.utils.tensorboard import SummaryWriter

from mri_tune.data.store import SliceStore
from mri_tune.errors import InputError, SpecError, TrainingFailure
from mri_tune.training.checkpoint import CHECKPOINT_FILE, read_checkpoint, save_checkpoint
from mri_tune.training.config import TrainConfig, specs_from_config
from mri_tune.training.device import resolve_device
from mri_tune.training.failures import failure_policy
from mri_tune.training.model import CNNSpec
from mri_tune.training.run import train_from_store
from mri_tune.training.trainer import EpochMetrics, Trainer

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
RESULT_FILE = "result.json"  # Tune's rows of a trial, one JSON object a line
CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint folders: checkpoint_000003
STORAGE_RESERVE_BYTES = 32 * 2**20  # room left for Tune's state, rows and error files


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares (not searched over).

    store: the slice store (made absolute: Ray runs trials in their own working directory).
    device: "auto" (CUDA when the trial sees a GPU), "cpu" or "cuda".
    images_per_epoch: training images per epoch; None = 4 x the training set (the paper).
    epoch_scale: multiplies the config's `epochs` (at least 1 epoch), to run cheaper searches.
    average_weights: `TrainConfig.average_weights` of every trial.
    seed: seed of every trial (model initialisation, sampling, augmentation); trials differ only
        by their configs, so their losses compare like for like.
    tensorboard: write TensorBoard scalars in the trial folder.
    experiment_dir: the experiment folder when it is on a filesystem the workers see (local
        storage, or a shared one): trials find their own folder in it (`<experiment_dir>/<trial
        folder name>`) for their TensorBoard curves and for resuming. None (storage such as
        s3://): curves go to Tune's trial directory on the worker, and a trial resumes only from
        the checkpoint Tune hands it.
    """

    store: Path
    device: str = "auto"
    images_per_epoch: int | None = None
    epoch_scale: float = 1.0
    average_weights: float = TrainConfig.average_weights
    seed: int = 0
    tensorboard: bool = True
    experiment_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "store", Path(self.store).expanduser().resolve())
        if self.experiment_dir is not None:
            object.__setattr__(self, "experiment_dir",
                               Path(self.experiment_dir).expanduser().resolve())
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
                                    seed=settings.seed, average_weights=settings.average_weights)
    epochs = max(1, round(train.epochs * settings.epoch_scale))
    return spec, dataclasses.replace(train, epochs=epochs)


class _TolerantRestore:
    """Mixin of the function trainable: a restore whose checkpoint no longer exists starts the
    trial without one instead of failing it (see the module docstring); `run_trial` then finds
    the newest complete checkpoint in the trial folder."""

    def restore(self, checkpoint_path: Any) -> None:
        checkpoint = getattr(checkpoint_path, "checkpoint", checkpoint_path)
        path = getattr(checkpoint, "path", None)
        filesystem = getattr(checkpoint, "filesystem", None)
        if (path is not None and filesystem is not None
                and filesystem.type_name == "local" and not Path(path).exists()):
            logger.warning("the experiment state names the deleted checkpoint %s (the driver "
                           "died before it saved its state); the trial resumes from the newest "
                           "complete checkpoint of its folder", path)
            return
        super().restore(checkpoint_path)  # type: ignore[misc]


def make_trainable(settings: TrialSettings) -> type[FunctionTrainable]:
    """A Ray Tune function trainable bound to `settings` (a class, as `tune.Tuner` takes)."""

    def train_region_cnn(config: dict[str, Any]) -> None:
        run_trial(config, settings)

    train_region_cnn.__mixins__ = (_TolerantRestore,)  # type: ignore[attr-defined]
    return wrap_function(train_region_cnn)


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


def trial_folder(settings: TrialSettings) -> Path:
    """This trial's folder: in the experiment folder when the workers see it, else Tune's trial
    directory on this worker (whose last component is the trial folder's name; under actor
    reuse Tune moves it to a working directory that is never synced to the experiment)."""
    tune_dir = Path(tune.get_context().get_trial_dir())
    if settings.experiment_dir is None:
        return tune_dir
    return settings.experiment_dir / tune_dir.name


def _train_and_report(spec: CNNSpec, config: TrainConfig, settings: TrialSettings) -> None:
    device = resolve_device(settings.device)
    store = SliceStore(settings.store)
    folder = trial_folder(settings)
    resume = _resume_point(folder, device)
    reporter = _Reporter(store.preprocessing, folder if settings.tensorboard else None,
                         folder if settings.experiment_dir is not None else None)
    try:
        if resume is not None:
            logger.info("resuming at epoch %d of %d from %s", resume.payload["epoch"],
                        config.epochs, resume.folder)
        if resume is not None and settings.experiment_dir is not None:
            # Only where the trial folder is the experiment's: elsewhere (remote storage) this
            # worker does not see the result.json that says which epochs Tune recorded.
            _report_unrecorded_epochs(resume, folder)
        train_from_store(store, spec, config, device=device, on_epoch=reporter,
                         resume=None if resume is None else resume.payload)
    finally:
        reporter.close()


@dataclass(frozen=True)
class _ResumePoint:
    folder: Path  # the checkpoint folder
    payload: dict[str, Any]  # read_checkpoint's dict


def _resume_point(folder: Path, device: torch.device) -> _ResumePoint | None:
    """The newest complete checkpoint of the trial: Tune's, or a newer one in its folder."""
    given = tune.get_checkpoint()
    if given is not None and not Path(given.path).exists():  # remote storage: Tune's copy
        with given.as_directory() as local:
            return _ResumePoint(Path(given.path), read_checkpoint(Path(local), device))
    given_path = None if given is None else Path(given.path)
    named = {row.get("checkpoint_dir_name") for row in result_rows(folder)}
    candidates = sorted(folder.glob(f"{CHECKPOINT_PREFIX}*"), reverse=True)  # newest first
    if given_path is not None and given_path not in candidates:
        candidates.append(given_path)
    for candidate in candidates:
        try:
            payload = read_checkpoint(candidate, device)
        except InputError as err:
            if candidate.name not in named and candidate != given_path:
                # A worker killed while Tune copied its checkpoint leaves an incomplete folder
                # that no result names: remove it.
                logger.warning("removing the incomplete checkpoint %s (%s)", candidate, err)
                shutil.rmtree(candidate, ignore_errors=True)
            continue
        return _ResumePoint(candidate, payload)
    return None


def result_rows(folder: Path) -> list[dict[str, Any]]:
    """The trial's rows in Tune's result.json (a torn last line is skipped)."""
    path = folder / RESULT_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _report_unrecorded_epochs(resume: _ResumePoint, folder: Path) -> None:
    """Report the epochs of the checkpoint's history that Tune never recorded (its state and
    result.json reached storage before the checkpoint did), the last one with the checkpoint
    itself so that Tune tracks it."""
    recorded = {row.get("epoch") for row in result_rows(folder)}
    missing = [row for row in resume.payload["history"] if row["epoch"] not in recorded]
    if not missing:
        return
    num_parameters = sum(t.numel() for t in resume.payload["model"].values())
    logger.warning("reporting epochs %s again from %s: the driver died before it recorded "
                   "them", [row["epoch"] for row in missing], resume.folder)
    for row in missing[:-1]:
        tune.report({**row, "num_parameters": num_parameters})
    # From a copy: Tune's stale checkpoint counter may name the very folder we resume from.
    with tempfile.TemporaryDirectory() as copy:
        shutil.copy2(resume.folder / CHECKPOINT_FILE, Path(copy) / CHECKPOINT_FILE)
        tune.report({**missing[-1], "num_parameters": num_parameters},
                    checkpoint=tune.Checkpoint.from_directory(copy))


class _Reporter:
    """The trial's `on_epoch`: TensorBoard scalars, and `tune.report` with a checkpoint.

    Every epoch checkpoints, so that a resumed trial continues from its last epoch; Tune keeps the
    best one by validation loss (for the ensemble) and the latest (for a resume).
    """

    def __init__(self, preprocessing: dict[str, Any], folder: Path | None,
                 storage: Path | None) -> None:
        self.preprocessing = preprocessing
        self.folder = folder  # the trial folder; None: no TensorBoard curves
        self.storage = storage  # the trial folder when this worker sees it: its free space
        self.writer: SummaryWriter | None = None

    def __call__(self, metrics: EpochMetrics, trainer: Trainer) -> None:
        if self.folder is not None:
            _write_scalars(self._writer(metrics.epoch), metrics)
        result = {**metrics.to_dict(),
                  "num_parameters": sum(p.numel() for p in trainer.model.parameters())}
        with tempfile.TemporaryDirectory() as folder:
            path = save_checkpoint(Path(folder), trainer, self.preprocessing)
            if self.storage is not None:
                check_free_space(self.storage, path.stat().st_size)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))

    def _writer(self, epoch: int) -> SummaryWriter:
        if self.writer is None:
            # One writer per trial, created in the trial (a reused actor runs several trials);
            # purge_step drops events a crashed attempt wrote after the checkpoint we resume from.
            self.writer = SummaryWriter(log_dir=str(self.folder / TENSORBOARD_DIR),
                                        purge_step=epoch)
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def check_free_space(folder: Path, checkpoint_bytes: int) -> None:
    """Refuse to checkpoint onto a disk that cannot take it and still leave Tune room.

    Tune copies the checkpoint into the trial folder, then writes the experiment state, result
    rows and error files beside it; a disk that fills during those writes leaves torn files that
    Tune cannot restore from. Raises OSError(ENOSPC): the trial ends as an error of the
    infrastructure, and `--resume` continues it from its last checkpoint once space is freed.
    """
    need = checkpoint_bytes + max(2 * checkpoint_bytes, STORAGE_RESERVE_BYTES)
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device for the checkpoint of this trial: "
                      f"{free / 2**20:.0f} MiB free at {folder}, a checkpoint and Tune's state "
                      f"need {need / 2**20:.0f} MiB. Free space, then run the search again "
                      "with --resume: the trial continues from its last checkpoint")


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
