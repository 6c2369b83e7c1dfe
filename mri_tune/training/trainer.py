"""The one training loop: weighted loss, seeded on-device augmentation, per-epoch validation.

Every caller trains through `Trainer`, by way of `mri_tune.training.run.train_from_store`: the Ray
trainable, `mri-tune train`, the generalisation benchmark. The loop knows nothing of Ray or of
files; it takes a model and two sets of labelled slices already in memory (or on the GPU), and
calls `on_epoch(metrics, trainer)` after each epoch so that callers can report, checkpoint or stop.

Symbols (N training slices, C classes, B = batch_size, t = iteration counted from 0):
    n_c     number of training slices of class c
    w_c     = N / (C * max(n_c, 1)), the class-frequency weight (rare classes count more)
    loss    = sum_i w_{y_i} CE(logits_i, y_i) / sum_i w_{y_i}     (a batch, or the validation set)
    v_c     = 1 / max(m_c, 1) for m_c validation slices of class c: with these weights the
              validation loss is the mean over present classes of each class's mean CE
              (validation_loss="balanced"); "weighted" uses w_c, the paper's
    lr_t    = learning_rate / (1 + lr_decay * t)                  (Keras' "decay", per iteration)
SGD uses Nesterov momentum (`mri_tune_core.paper.MOMENTUM`, `NESTEROV`).

How an epoch draws its slices (`TrainConfig.sampling`):
    "slices"   whole permutations of the training set, the loss weighted by w_c (the paper's)
    "regions"  with replacement, slice i with probability p_i, the loss unweighted:
               p_i = (1 / C') * (s_g ** a / sum_{h in c} s_h ** a) / s_g
               for slice i of class c and person g, C' classes present, s_g the slices of person
               g in class c, a = people_power. Every region is drawn alike, as w_c weighs them
               alike, but a rare region is seen as many new augmented views rather than as few
               heavily weighted ones; a = 1 draws the slices of a region alike, a = 0 its people.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mri_tune.errors import InputError, TrainingFailure
from mri_tune.training import inference
from mri_tune.training.augment import augment
from mri_tune.training.config import TrainConfig
from mri_tune.training.device import DevicePolicy
from mri_tune.training.model import CNNSpec, RegionCNN
from mri_tune_core import paper

logger = logging.getLogger(__name__)

_CHUNK_IMAGES = 512
"""Slices gathered, converted and augmented together: one set of kernel launches per chunk rather
than per batch keeps small batches from being bound by launch overhead on a GPU."""


class LabelledSlices(Protocol):
    """What the loop needs of a split: `mri_tune.store.SplitData` satisfies it."""

    images: torch.Tensor  # (N, H, W) uint8
    labels: torch.Tensor  # (N,) int64


@dataclass(frozen=True)
class Slices:
    """Plain labelled slices: images (N, H, W) uint8, labels (N,) int64, and optionally people
    (N,) int64, an id of the person each slice shows (what people_power < 1 weighs; without them
    every slice counts as its own person)."""

    images: torch.Tensor
    labels: torch.Tensor
    people: torch.Tensor | None = None


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,) float weights w_c = N / (C * max(n_c, 1)) from (N,) training labels."""
    counts = torch.bincount(labels.to(torch.int64), minlength=num_classes).double()
    if (counts == 0).any():
        logger.warning("classes %s have no training slices; their weight is capped",
                       (counts == 0).nonzero().flatten().tolist())
    return (labels.numel() / (num_classes * counts.clamp(min=1))).float()


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,) weights v_c = 1 / max(m_c, 1): a weighted CE with them is the mean over the classes
    present in `labels` (N,) of each class's mean cross-entropy."""
    counts = torch.bincount(labels.to(torch.int64), minlength=num_classes).float()
    return 1.0 / counts.clamp(min=1.0)


def region_draw_weights(labels: torch.Tensor, people: torch.Tensor | None,
                        power: float) -> torch.Tensor:
    """(N,) float64 probabilities p_i of drawing each training slice (module docstring) from
    (N,) labels and (N,) person ids; people=None counts each slice as its own person."""
    labels = labels.to(torch.int64).cpu()
    people = (torch.arange(labels.numel()) if people is None
              else torch.as_tensor(people, dtype=torch.int64).cpu())
    if people.shape != labels.shape:
        raise InputError(f"Drawing by people needs one person id per training slice. Got "
                         f"{tuple(people.shape)} ids for {tuple(labels.shape)} labels.")
    # One group per (class, person) pair present: s_g slices each.
    pairs, group, sizes = torch.unique(torch.stack([labels, people], dim=1), dim=0,
                                       return_inverse=True, return_counts=True)
    group_class = pairs[:, 0]  # (G,)
    mass = sizes.double() ** power  # (G,) s_g ** a
    class_mass = torch.zeros(int(group_class.max()) + 1, dtype=torch.float64
                             ).index_add_(0, group_class, mass)  # (C,) sum over the class
    classes_present = int((class_mass > 0).sum())
    per_slice = mass / class_mass[group_class] / sizes / classes_present  # (G,)
    return per_slice[group]


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_{y_i} CE_i / sum_i w_{y_i} for logits (B, C), labels (B,), weights (C,); fp32."""
    return F.cross_entropy(logits.float(), labels, weight=weights)


def build_model(spec: CNNSpec, num_classes: int, image_size: tuple[int, int],
                device: torch.device | str, seed: int, in_channels: int = 1) -> RegionCNN:
    """A RegionCNN initialised on `device` from a generator seeded with `seed`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return RegionCNN(spec, num_classes, image_size, in_channels=in_channels, device=device,
                     generator=generator)


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
        self.draw_weights: torch.Tensor | None = None  # (N,) p_i, "regions" sampling only
        self.loss_weights = self.weights  # (C,) of the training loss
        if config.sampling == "regions":
            self.draw_weights = region_draw_weights(
                self.train_labels, getattr(train, "people", None), config.people_power)
            self.loss_weights = torch.ones_like(self.weights)  # the draws balance the regions
        self.val_weights = (balanced_weights(self.val_labels, len(self.class_names))
                            if config.validation_loss == "balanced" else self.weights)  # (C,)
        self.images_per_epoch = config.images_for(len(self.train_labels))
        self.iterations_per_epoch = max(1, self.images_per_epoch // config.batch_size)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate,
                                         momentum=config.momentum, nesterov=paper.NESTEROV)
        self.sampler = torch.Generator().manual_seed(config.seed)
        # A distinct stream: augmentation draws must not repeat the sampler's numbers.
        self.augmenter = torch.Generator(device=dev).manual_seed(config.seed + 1)
        self.epoch = 0
        self.iteration = 0
        self.history: list[EpochMetrics] = []
        # Tail average of the weights (config.average_weights): the mean of the iterates after
        # iteration `average_start`, and how many it holds.
        total = self.iterations_per_epoch * config.epochs
        self.average_start = total - round(config.average_weights * total)
        self.average: list[torch.Tensor] | None = None
        self.averaged = 0

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
            val_loss, val_error, per_class = validation_metrics(
                self._validated_model(), Slices(self.val_images, self.val_labels),
                self.val_weights, self.class_names, self.policy, self.config.eval_batch_size)
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
        iterations = self.iterations_per_epoch
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
        if self.draw_weights is not None:
            return torch.multinomial(self.draw_weights, count, replacement=True,
                                     generator=self.sampler)
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
        loss = weighted_cross_entropy(logits, labels, self.loss_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        if self.iteration > self.average_start:
            self._add_to_average()
        return loss.detach(), (logits.detach().argmax(dim=1) != labels).sum()

    def _add_to_average(self) -> None:
        weights = [p.detach() for p in self.model.parameters()]
        if self.average is None:
            self.average = [w.clone() for w in weights]
        else:
            for mean, w in zip(self.average, weights, strict=True):
                mean.lerp_(w, 1.0 / (self.averaged + 1))
        self.averaged += 1

    def _load_average(self, model: nn.Module) -> None:
        with torch.no_grad():
            for p, mean in zip(model.parameters(), self.average, strict=True):
                p.copy_(mean)

    def _validated_model(self) -> nn.Module:
        """The model validation scores: the weights' average once it has begun, else the model.
        After the last epoch the average becomes the model itself; before it, a copy holds it
        and training goes on from the current weights."""
        if self.average is None:
            return self.model
        last = self.epoch + 1 == self.config.epochs
        model = self.model if last else copy.deepcopy(self.model)
        self._load_average(model)
        return model

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
            "average": None if self.average is None else {
                "weights": [w.clone() for w in self.average], "count": self.averaged},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.iteration = int(state["iteration"])
        self.sampler.set_state(state["rng"]["sampler"].cpu())
        self.augmenter.set_state(state["rng"]["augmenter"].cpu())
        self.history = [EpochMetrics.from_dict(m, self.class_names) for m in state["history"]]
        average = state.get("average")  # absent in checkpoints of earlier versions
        self.average = (None if average is None
                        else [w.to(self.device) for w in average["weights"]])
        self.averaged = 0 if average is None else int(average["count"])


def _on_device(split: LabelledSlices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.as_tensor(split.images)
    if images.dtype != torch.uint8 or images.ndim not in (3, 4):
        raise InputError(f"Training slices must be a (N, H, W) or (N, C, H, W) uint8 tensor. "
                         f"Got {tuple(images.shape)} {images.dtype}; load them from a slice "
                         "store.")
    return images.to(device), torch.as_tensor(split.labels, dtype=torch.int64).to(device)


def validation_metrics(model: nn.Module, split: LabelledSlices, weights: torch.Tensor,
             class_names: Sequence[str], policy: DevicePolicy,
             batch_size: int = 256) -> tuple[float, float, dict[str, float]]:
    """(weighted loss, error rate, per-class error rates; NaN for a class without slices)."""
    labels = torch.as_tensor(split.labels, dtype=torch.int64).to(policy.device)
    scores = inference.logits(model, torch.as_tensor(split.images), policy, batch_size)
    loss = weighted_cross_entropy(scores, labels, weights.to(policy.device))
    wrong = (scores.argmax(dim=1) != labels).double()
    num_classes = len(class_names)
    counts = torch.bincount(labels, minlength=num_classes).double()
    errors = torch.bincount(labels, weights=wrong, minlength=num_classes) / counts  # NaN if 0/0
    per_class = dict(zip(class_names, errors.tolist(), strict=True))
    return float(loss), float(wrong.mean()), per_class
