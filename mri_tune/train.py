"""The one training loop: typed settings, weighted loss, seeded augmentation, checkpoints.

Every caller trains through `Trainer` (or its wrapper `fit`): the Ray trainable, `mri-tune train`
and the benchmarks. The loop knows nothing of Ray or of files; it takes a model and two sets of
labelled slices already in memory (or on the GPU), and calls `on_epoch(metrics, trainer)` after
each epoch so that callers can report, checkpoint or stop.

Symbols (N training slices, C classes, B = batch_size, t = iteration counted from 0):
    n_c     number of training slices of class c
    w_c     = N / (C * max(n_c, 1)), the class-frequency weight (rare classes count more)
    loss    = sum_i w_{y_i} CE(logits_i, y_i) / sum_i w_{y_i}     (a batch, or the validation set)
    lr_t    = learning_rate / (1 + lr_decay * t)                  (Keras' "decay", per iteration)
SGD uses Nesterov momentum 0.9 (the paper's settings).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mri_tune.augment import AugmentConfig, augment
from mri_tune.errors import InputError, SpecError, TrainingFailure
from mri_tune.model import CNNSpec, RegionCNN, int_from

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT_VERSION = 1
METRICS_FILE = "metrics.json"
TABLE1_KEYS = ("num_blocks", "convs_per_block", "filters", "kernel_size",
               "learning_rate", "batch_size", "epochs", "augmentation")
"""The search space's hyper-parameters, named as in Table 1 of the paper."""

AUGMENTATION_FACTOR = 4
"""Default images per epoch = 4 x the training set (the paper: 80,000 for ~20,000 slices)."""
_CHUNK_IMAGES = 512
"""Slices gathered, converted and augmented together: one set of kernel launches per chunk rather
than per batch keeps small batches from being bound by launch overhead on a GPU."""


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the first four are Table 1's, the rest have fixed defaults."""

    learning_rate: float
    batch_size: int
    epochs: int
    augmentation: bool
    images_per_epoch: int | None = None
    """Training images drawn per epoch; None means AUGMENTATION_FACTOR x the training set."""
    seed: int = 0
    momentum: float = 0.9
    lr_decay: float = 1e-6
    augment: AugmentConfig = AugmentConfig()
    eval_batch_size: int = 256
    divergence_check_every: int = 32
    """Iterations between checks of a finite loss (each check waits for the GPU)."""

    def __post_init__(self) -> None:
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
            raise SpecError(f"TrainConfig.learning_rate must be a finite number > 0. "
                            f"Got {rate!r}; Table 1 uses 1e-7..1.")
        object.__setattr__(self, "learning_rate", float(rate))  # frozen: normalise once, here
        positive = {"batch_size": self.batch_size, "epochs": self.epochs,
                    "eval_batch_size": self.eval_batch_size,
                    "divergence_check_every": self.divergence_check_every}
        if self.images_per_epoch is not None:
            positive["images_per_epoch"] = self.images_per_epoch
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"TrainConfig.{name} must be an int >= 1. Got {value!r}.")
        if not isinstance(self.augmentation, bool):
            raise SpecError(f"TrainConfig.augmentation must be a bool. Got "
                            f"{self.augmentation!r}; pass True or False.")
        if not (0.0 <= self.momentum < 1.0 and self.lr_decay >= 0.0):
            raise SpecError("TrainConfig needs 0 <= momentum < 1 and lr_decay >= 0. Got "
                            f"momentum={self.momentum!r}, lr_decay={self.lr_decay!r}.")

    @classmethod
    def baseline(cls) -> TrainConfig:
        """The paper's baseline: lr 0.001, batch 8, 70 epochs, augmentation on."""
        return cls(learning_rate=1e-3, batch_size=8, epochs=70, augmentation=True)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["augment"]["zoom_range"] = list(self.augment.zoom_range)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        values = dict(values)
        if "augment" in values:
            aug = dict(values["augment"])
            aug["zoom_range"] = tuple(aug.get("zoom_range", AugmentConfig().zoom_range))
            values["augment"] = AugmentConfig(**aug)
        return cls(**values)

    def images_for(self, train_size: int) -> int:
        """Images drawn per epoch for a training set of `train_size` slices."""
        if self.images_per_epoch is not None:
            return self.images_per_epoch
        return AUGMENTATION_FACTOR * train_size


def specs_from_config(config: Mapping[str, Any], **train_overrides: Any) -> tuple[CNNSpec,
                                                                                  TrainConfig]:
    """The typed specs of a Table 1 config dict (as Ray Tune passes it).

    `augmentation` accepts a bool, 0/1 or "yes"/"no"; numeric values may be numpy scalars.
    `train_overrides` set the other TrainConfig fields (images_per_epoch, seed, ...).
    Raises SpecError naming the key when a value is missing or of the wrong kind.
    """
    missing = [key for key in TABLE1_KEYS if key not in config]
    if missing:
        raise SpecError(f"The config lacks the Table 1 keys {missing}; it has {sorted(config)}. "
                        f"A config needs all of {list(TABLE1_KEYS)}.")
    spec = CNNSpec.from_dict(config)
    try:
        learning_rate = float(config["learning_rate"])
    except (TypeError, ValueError) as err:
        raise SpecError("learning_rate must be a number. "
                        f"Got {config['learning_rate']!r}.") from err
    train = TrainConfig(
        learning_rate=learning_rate,
        batch_size=int_from(config, "batch_size"),
        epochs=int_from(config, "epochs"),
        augmentation=_as_bool(config["augmentation"]),
        **train_overrides,
    )
    return spec, train


def _as_bool(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
        return value.lower() in ("yes", "true")
    if isinstance(value, (bool, np.bool_)) or value in (0, 1):
        return bool(value)
    raise SpecError(f"augmentation must be a bool, 0/1 or 'yes'/'no'. Got {value!r}.")


class LabelledSlices(Protocol):
    """What the loop needs of a split: `mri_tune.store.SplitData` satisfies it."""

    images: torch.Tensor  # (N, H, W) uint8
    labels: torch.Tensor  # (N,) int64


@dataclass(frozen=True)
class Slices:
    """Plain labelled slices (tests, benchmarks): images (N, H, W) uint8, labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class DevicePolicy:
    """Numerics chosen from the device: bf16 autocast on CUDA only (fp32 elsewhere); channels_last
    everywhere (tensor cores want it, and oneDNN ran the CPU training step 1.2-1.8x faster)."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def for_device(cls, device: torch.device | str) -> DevicePolicy:
        device = torch.device(device)
        on_cuda = device.type == "cuda"
        return cls(device, torch.bfloat16 if on_cuda else None, channels_last=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def prepare(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, H, W) uint8 on the device -> (B, 1, H, W) float in [0, 1], in the model's layout."""
        images = images_uint8[:, None].float().div_(255.0)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


def resolve_device(name: str | torch.device | None) -> torch.device:
    """"auto"/None -> CUDA when available, else CPU; "cuda" without a GPU is an InputError."""
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"The device {name!r} was requested but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use --device cpu or install a CUDA build.")
    if device.type == "cuda" and device.index is None:
        # An explicit index keeps tensors, generators and comparisons on one named device.
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,) float weights w_c = N / (C * max(n_c, 1)) from (N,) training labels."""
    counts = torch.bincount(labels.to(torch.int64), minlength=num_classes).double()
    if (counts == 0).any():
        logger.warning("classes %s have no training slices; their weight is capped",
                       (counts == 0).nonzero().flatten().tolist())
    return (labels.numel() / (num_classes * counts.clamp(min=1))).float()


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_{y_i} CE_i / sum_i w_{y_i} for logits (B, C), labels (B,), weights (C,); fp32."""
    return F.cross_entropy(logits.float(), labels, weight=weights)


def build_model(spec: CNNSpec, num_classes: int, image_size: tuple[int, int],
                device: torch.device | str, seed: int) -> RegionCNN:
    """A RegionCNN initialised on `device` from a generator seeded with `seed`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return RegionCNN(spec, num_classes, image_size, device=device, generator=generator)


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch reports (the trainable's and metrics.json's keys, see `to_dict`)."""

    epoch: int
    train_loss: float
    train_error: float
    """Error rate on the epoch's (augmented) training batches, as the model saw them."""
    val_loss: float
    val_error: float
    val_error_per_class: dict[str, float]
    """Error rate of each class's validation slices; NaN when a class has none."""
    images_per_s: float
    learning_rate: float
    seconds: float = 0.0

    def to_dict(self) -> dict[str, float | int]:
        """Flat dict: epoch, train_loss, train_error, val_loss, val_error, val_error_<class>,
        images_per_s, learning_rate, epoch_seconds."""
        flat: dict[str, float | int] = {
            "epoch": self.epoch, "train_loss": self.train_loss, "train_error": self.train_error,
            "val_loss": self.val_loss, "val_error": self.val_error,
        }
        flat.update({f"val_error_{name}": err for name, err in self.val_error_per_class.items()})
        flat.update(images_per_s=self.images_per_s, learning_rate=self.learning_rate,
                    epoch_seconds=self.seconds)
        return flat

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any], class_names: Sequence[str]) -> EpochMetrics:
        return cls(
            epoch=int(flat["epoch"]), train_loss=flat["train_loss"],
            train_error=flat["train_error"], val_loss=flat["val_loss"], val_error=flat["val_error"],
            val_error_per_class={c: flat[f"val_error_{c}"] for c in class_names},
            images_per_s=flat["images_per_s"], learning_rate=flat["learning_rate"],
            seconds=flat.get("epoch_seconds", 0.0),
        )


EpochCallback = Callable[[EpochMetrics, "Trainer"], None]


class Trainer:
    """Trains one model on one training split, validating after each epoch.

    The training split is moved to the device once; each epoch draws `images_per_epoch` slices
    (whole permutations of the training set, repeated) from a CPU generator, and augments them on
    the device from a device generator: both generators are seeded from `config.seed` and saved
    in checkpoints, so a resumed run continues the same stream.
    """

    def __init__(self, model: nn.Module, train: LabelledSlices, validation: LabelledSlices,
                 config: TrainConfig, class_names: Sequence[str],
                 device: torch.device | str | None = None, *,
                 policy: DevicePolicy | None = None) -> None:
        if policy is None:
            policy = DevicePolicy.for_device(
                device if device is not None else next(model.parameters()).device)
        self.policy = policy  # tests pass CUDA's policy (bf16, channels_last) on the CPU
        dev = self.policy.device
        memory_format = torch.channels_last if self.policy.channels_last else torch.preserve_format
        self.model = model.to(device=dev, memory_format=memory_format)
        self.config = config
        self.class_names = list(class_names)
        self.train_images, self.train_labels = _on_device(train, dev)  # (N, H, W), (N,)
        self.val_images, self.val_labels = _on_device(validation, dev)
        self.weights = class_weights(self.train_labels, len(self.class_names)).to(dev)  # (C,)
        self.images_per_epoch = config.images_for(len(self.train_labels))
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate,
                                         momentum=config.momentum, nesterov=True)
        self.sampler = torch.Generator().manual_seed(config.seed)
        # A distinct stream: augmentation draws must not repeat the sampler's numbers.
        self.augmenter = torch.Generator(device=dev).manual_seed(config.seed + 1)
        self.epoch = 0
        self.iteration = 0
        self.history: list[EpochMetrics] = []

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def learning_rate(self) -> float:
        """lr_t = learning_rate / (1 + lr_decay * t) at the current iteration t."""
        return self.config.learning_rate / (1.0 + self.config.lr_decay * self.iteration)

    def run(self, on_epoch: EpochCallback | None = None) -> list[EpochMetrics]:
        """Train from the current epoch to `config.epochs`; returns the whole history.

        Raises TrainingFailure("diverged") as soon as a training loss is not finite.
        """
        while self.epoch < self.config.epochs:
            start = time.perf_counter()
            train_loss, train_error, images_per_s = self._train_epoch()
            val_loss, val_error, per_class = evaluate(
                self.model, Slices(self.val_images, self.val_labels), self.weights,
                self.class_names, self.policy, self.config.eval_batch_size)
            self.epoch += 1
            metrics = EpochMetrics(self.epoch, train_loss, train_error, val_loss, val_error,
                                   per_class, images_per_s, self.learning_rate(),
                                   time.perf_counter() - start)
            self.history.append(metrics)
            logger.info("epoch %d: train_loss %.4f val_loss %.4f val_error %.4f (%.0f images/s)",
                        metrics.epoch, train_loss, val_loss, val_error, images_per_s)
            if on_epoch is not None:
                on_epoch(metrics, self)
        return self.history

    def _train_epoch(self) -> tuple[float, float, float]:
        """One epoch of SGD; returns (mean training loss, training error, images per second)."""
        batch = self.config.batch_size
        iterations = max(1, self.images_per_epoch // batch)
        order = self._draw_order(iterations * batch).to(self.device)  # (iterations * B,)
        per_chunk = max(1, _CHUNK_IMAGES // batch) * batch
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        self.model.train()
        start = time.perf_counter()
        for first in range(0, order.numel(), per_chunk):
            index = order[first:first + per_chunk]
            images = self._inputs(index)  # (chunk, 1, H, W)
            for x, y in zip(images.split(batch), self.train_labels[index].split(batch),
                            strict=True):
                loss, batch_wrong = self._step(x, y)
                loss_sum += loss
                wrong += batch_wrong
                if self.iteration % self.config.divergence_check_every == 0:
                    self._check_finite(loss_sum)
        mean_loss = self._check_finite(loss_sum) / iterations  # waits for the device
        images = iterations * batch
        return mean_loss, int(wrong) / images, images / (time.perf_counter() - start)

    def _draw_order(self, count: int) -> torch.Tensor:
        size = self.train_labels.numel()
        repeats = -(-count // size)
        perms = [torch.randperm(size, generator=self.sampler) for _ in range(repeats)]
        return torch.cat(perms)[:count]

    def _inputs(self, index: torch.Tensor) -> torch.Tensor:
        images = self.policy.prepare(self.train_images[index])
        if self.config.augmentation:
            images = augment(images, self.config.augment, self.augmenter)
            if self.policy.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _step(self, images: torch.Tensor,
              labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD update on (B, 1, H, W) images; returns (batch loss, misclassified count),
        both still on the device so that no step waits for it."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        with self.policy.autocast():
            logits = self.model(images)
        loss = weighted_cross_entropy(logits, labels, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        return loss.detach(), (logits.detach().argmax(dim=1) != labels).sum()

    def _check_finite(self, loss_sum: torch.Tensor) -> float:
        value = float(loss_sum)
        if not math.isfinite(value):
            raise TrainingFailure(
                "diverged",
                f"The training loss became {value} at iteration {self.iteration} (epoch "
                f"{self.epoch + 1}) with learning_rate={self.config.learning_rate}; the loss "
                "must stay finite. Lower the learning rate.")
        return value

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: weights, optimizer, counters, RNG states, history."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "rng": {"sampler": self.sampler.get_state(), "augmenter": self.augmenter.get_state()},
            "history": [m.to_dict() for m in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.iteration = int(state["iteration"])
        self.sampler.set_state(state["rng"]["sampler"].cpu())
        self.augmenter.set_state(state["rng"]["augmenter"].cpu())
        self.history = [EpochMetrics.from_dict(m, self.class_names) for m in state["history"]]


def _on_device(split: LabelledSlices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.as_tensor(split.images)
    if images.dtype != torch.uint8 or images.ndim != 3:
        raise InputError(f"Training slices must be a (N, H, W) uint8 tensor. Got "
                         f"{tuple(images.shape)} {images.dtype}; load them from a slice store.")
    return images.to(device), torch.as_tensor(split.labels, dtype=torch.int64).to(device)


def fit(model: nn.Module, train: LabelledSlices, validation: LabelledSlices,
        config: TrainConfig, class_names: Sequence[str], *,
        device: torch.device | str | None = None, on_epoch: EpochCallback | None = None,
        resume_from: Path | None = None) -> list[EpochMetrics]:
    """Train `model` for `config.epochs` epochs (continuing a checkpoint when given)."""
    trainer = Trainer(model, train, validation, config, class_names, device)
    if resume_from is not None:
        trainer.load_state_dict(read_checkpoint(resume_from, trainer.device))
    return trainer.run(on_epoch)


def _logits(model: nn.Module, images: torch.Tensor, policy: DevicePolicy,
            batch_size: int) -> torch.Tensor:
    """(N, C) fp32 logits on the device for (N, H, W) uint8 images (no augmentation)."""
    was_training = model.training
    model.eval()
    chunks = []
    with torch.inference_mode(), policy.autocast():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(policy.device, non_blocking=True)
            chunks.append(model(policy.prepare(batch)).float())
    model.train(was_training)
    return torch.cat(chunks)


def evaluate(model: nn.Module, split: LabelledSlices, weights: torch.Tensor,
             class_names: Sequence[str], policy: DevicePolicy,
             batch_size: int = 256) -> tuple[float, float, dict[str, float]]:
    """(weighted loss, error rate, per-class error rates; NaN for a class without slices)."""
    labels = torch.as_tensor(split.labels, dtype=torch.int64).to(policy.device)
    logits = _logits(model, torch.as_tensor(split.images), policy, batch_size)
    loss = weighted_cross_entropy(logits, labels, weights.to(policy.device))
    wrong = (logits.argmax(dim=1) != labels).double()
    num_classes = len(class_names)
    counts = torch.bincount(labels, minlength=num_classes).double()
    errors = torch.bincount(labels, weights=wrong, minlength=num_classes) / counts  # NaN if 0/0
    per_class = dict(zip(class_names, errors.tolist(), strict=True))
    return float(loss), float(wrong.mean()), per_class


def predict_proba(model: nn.Module, images: torch.Tensor | np.ndarray,
                  device: torch.device | str | None = None, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, C) float32 for (N, H, W) uint8 slices, in batches on `device`.

    `device` defaults to the model's; the images may live anywhere (each batch is moved).
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 3:
        raise InputError(f"predict_proba needs (N, H, W) uint8 slices as the store holds them. "
                         f"Got {tuple(images.shape)} {images.dtype}.")
    policy = DevicePolicy.for_device(
        device if device is not None else next(model.parameters()).device)
    model.to(policy.device)
    logits = _logits(model, images, policy, batch_size)
    return torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)


# ---- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(directory: Path, trainer: Trainer) -> Path:
    """Write `directory/checkpoint.pt` atomically; the trainer's model must be a RegionCNN.

    Layout (a torch.save dict, loadable with weights_only=True): format_version, spec (CNNSpec
    dict), num_classes, image_size, class_names, train_config (TrainConfig dict), and the
    `Trainer.state_dict()` keys: model, optimizer, epoch, iteration, rng, history.
    """
    model = trainer.model
    if not isinstance(model, RegionCNN):
        raise SpecError(f"save_checkpoint describes a RegionCNN. Got {type(model).__name__}; "
                        "save other models with Trainer.state_dict().")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "spec": model.spec.to_dict(),
        "num_classes": model.num_classes,
        "image_size": list(model.image_size),
        "class_names": list(trainer.class_names),
        "train_config": trainer.config.to_dict(),
        **trainer.state_dict(),
    }
    path = directory / CHECKPOINT_FILE
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    os.replace(partial, path)  # a crash mid-write never leaves a truncated checkpoint
    return path


def read_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict of a file or of a folder holding `checkpoint.pt`."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise InputError(f"No checkpoint at {path}: expected a {CHECKPOINT_FILE} file or a "
                         "folder holding one (mri-tune train --out DIR, or a Tune trial's "
                         "checkpoint_* folder).")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise InputError(f"{path} has checkpoint format {version!r}; this mri-tune reads "
                         f"format {CHECKPOINT_FORMAT_VERSION}. Retrain or use a matching version.")
    return payload


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready for inference: `model` is in eval mode on the requested device."""

    model: RegionCNN
    spec: CNNSpec
    class_names: list[str]
    image_size: tuple[int, int]
    train_config: TrainConfig
    epoch: int
    history: list[dict[str, Any]]


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the model of a checkpoint (file or folder) for inference on `device`."""
    payload = read_checkpoint(path, map_location=device)
    spec = CNNSpec.from_dict(payload["spec"])
    image_size = (int(payload["image_size"][0]), int(payload["image_size"][1]))
    model = RegionCNN(spec, int(payload["num_classes"]), image_size, device="meta")
    model.load_state_dict(payload["model"], assign=True)  # no throw-away initialisation
    model.to(device).eval()
    return LoadedModel(model, spec, list(payload["class_names"]), image_size,
                       TrainConfig.from_dict(payload["train_config"]), int(payload["epoch"]),
                       list(payload["history"]))


# ---- failure policy and one-off runs -----------------------------------------------------------


@contextlib.contextmanager
def failure_policy() -> Iterator[None]:
    """Turn the known ways a trial cannot finish into TrainingFailure(reason).

    SpecError -> "invalid_spec"; CUDA (or CPU allocator) out-of-memory -> "oom"; a non-finite loss
    already raises TrainingFailure("diverged") inside the loop. Anything else propagates.
    """
    try:
        yield
    except SpecError as err:
        raise TrainingFailure("invalid_spec", str(err)) from err
    except torch.OutOfMemoryError as err:
        raise TrainingFailure("oom", f"Out of GPU memory: {_first_line(err)}. Use a smaller "
                              "batch_size or model, or fewer trials per GPU.") from err
    except RuntimeError as err:
        if "can't allocate memory" not in str(err):  # the CPU allocator's wording
            raise
        raise TrainingFailure("oom", f"Out of memory: {_first_line(err)}. Use a smaller "
                              "batch_size or model.") from err


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def read_config(source: str | Path) -> tuple[CNNSpec, TrainConfig]:
    """"baseline" -> the paper's specs; a JSON file -> Table 1 keys over the baseline's values."""
    values = {**CNNSpec.baseline().to_dict(), **_table1(TrainConfig.baseline())}
    if str(source) != "baseline":
        path = Path(source)
        try:
            loaded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"--config must be 'baseline' or a readable JSON file. Could not "
                             f"read {path}: {err}.") from err
        unknown = sorted(set(loaded) - set(TABLE1_KEYS)) if isinstance(loaded, dict) else None
        if unknown is None or unknown:
            raise InputError(f"{path} must hold a JSON object with keys among "
                             f"{list(TABLE1_KEYS)}. Got {loaded!r} (unknown keys: {unknown}); "
                             "fix the names or drop those keys.")
        values.update(loaded)
    return specs_from_config(values)


def _table1(config: TrainConfig) -> dict[str, Any]:
    return {"learning_rate": config.learning_rate, "batch_size": config.batch_size,
            "epochs": config.epochs, "augmentation": config.augmentation}


def write_metrics(path: Path, history: Sequence[EpochMetrics]) -> None:
    """A JSON list of `EpochMetrics.to_dict()`; NaN (a class without slices) becomes null."""
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in m.to_dict().items()} for m in history]
    Path(path).write_text(json.dumps(rows, indent=1))


def train_from_store(store: Path, spec: CNNSpec, config: TrainConfig, out: Path,
                     device: str | torch.device | None = None) -> list[EpochMetrics]:
    """Train one model outside Ray; writes out/metrics.json and out/checkpoint.pt every epoch.

    This is how the paper's baseline is trained and how a configuration is debugged.
    Raises TrainingFailure (an MriTuneError) when the run cannot finish.
    """
    from mri_tune.store import SliceStore  # h5py stays out of the loop's import

    dev = resolve_device(device)
    slices = SliceStore(store)
    out = Path(out)

    def on_epoch(metrics: EpochMetrics, trainer: Trainer) -> None:
        write_metrics(out / METRICS_FILE, trainer.history)
        save_checkpoint(out, trainer)

    with failure_policy():
        spec.feature_size(slices.image_size)  # reject an impossible spec before loading data
        out.mkdir(parents=True, exist_ok=True)
        model = build_model(spec, len(slices.classes), slices.image_size, dev, config.seed)
        trainer = Trainer(model, slices.load_split("train", dev),
                          slices.load_split("validation", dev), config, slices.classes, dev)
        return trainer.run(on_epoch)
