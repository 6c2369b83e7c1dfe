"""One training run on a slice store: the entry point of `mri-tune train`, the Ray trainable and
the benchmarks (none of them builds a `Trainer` itself). `train_on_slices` is the same run on
slices already in memory (the folds of `mri_tune.results.generalization`).

`train_from_store` checks the spec against the store, loads the training and validation splits
once onto the device, builds the model from the seed, continues a checkpoint when given one, and
runs the loop, calling `on_epoch(metrics, trainer)` after each epoch. Known failures (an impossible
spec, out of memory, a non-finite loss) come out as `TrainingFailure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mri_tune.data.store import SliceStore, person_of_volume
from mri_tune.errors import InputError
from mri_tune.training.checkpoint import METRICS_FILE, save_checkpoint, write_metrics
from mri_tune.training.config import TrainConfig
from mri_tune.training.device import resolve_device
from mri_tune.training.failures import failure_policy
from mri_tune.training.model import CNNSpec
from mri_tune.training.trainer import (
    EpochCallback,
    EpochMetrics,
    LabelledSlices,
    Slices,
    Trainer,
    build_model,
)


def train_from_store(store: Path | SliceStore, spec: CNNSpec, config: TrainConfig, *,
                     device: str | torch.device | None = None,
                     on_epoch: EpochCallback | None = None,
                     resume: Mapping[str, Any] | None = None,
                     train_splits: Sequence[str] = ("train",)) -> Trainer:
    """Train `spec` with `config` on the store's training split, validating on its validation
    split; `resume` is a checkpoint dict (`read_checkpoint`) to continue from. Returns the
    trainer after its last epoch (`trainer.history` holds every epoch's metrics).

    `train_splits` ("train", "validation") trains on both splits (the refit of a chosen
    configuration, mri_tune.results.refit); its validation metrics are then in-sample."""
    slices = store if isinstance(store, SliceStore) else SliceStore(store)
    dev = resolve_device(device)
    with failure_policy():
        spec.feature_size(slices.image_size)  # reject an impossible spec before loading data
        for split in ("train", "validation"):
            if slices.split_size(split) == 0:
                sizes = {name: slices.split_size(name) for name in slices.split_ranges}
                raise InputError(
                    f"{slices.path} has no {split} slices (slices per split: {sizes}); "
                    "training needs both. Re-ingest it with a --split that gives every split "
                    "subjects, e.g. --split 0.5,0.25,0.25.")
        loaded = {split: slices.load_split(split, dev)  # each split read once
                  for split in dict.fromkeys((*train_splits, "validation"))}
        parts = [loaded[split] for split in train_splits]
        person = person_of_volume(slices.volumes())  # (V,)
        train = Slices(_joined([p.images for p in parts]), _joined([p.labels for p in parts]),
                       person[_joined([p.volume for p in parts]).cpu()])
        return train_on_slices(train, loaded["validation"], slices.classes,
                               spec, config, device=dev, on_epoch=on_epoch, resume=resume)


def _joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One tensor of the splits' rows; a single split is not copied (it may fill a GPU)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def train_on_slices(train: LabelledSlices, validation: LabelledSlices, classes: Sequence[str],
                    spec: CNNSpec, config: TrainConfig, *,
                    device: str | torch.device | None = None,
                    on_epoch: EpochCallback | None = None,
                    resume: Mapping[str, Any] | None = None) -> Trainer:
    """`train_from_store` on labelled slices in memory: (N, H, W) or (N, C, H, W) uint8
    images, (N,) labels."""
    dev = resolve_device(device)
    image_size = tuple(int(side) for side in train.images.shape[-2:])
    channels = 1 if train.images.dim() == 3 else int(train.images.shape[1])
    with failure_policy():
        model = build_model(spec, len(classes), image_size, dev, config.seed, channels)
        trainer = Trainer(model, train, validation, config, classes, dev)
        if resume is not None:
            trainer.load_state_dict(resume)
        trainer.run(on_epoch)
    return trainer


def save_each_epoch(out: Path, preprocessing: Mapping[str, Any]) -> EpochCallback:
    """An `on_epoch` that keeps `out/checkpoint.pt` and `out/metrics.json` up to date."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def save(metrics: EpochMetrics, trainer: Trainer) -> None:
        write_metrics(out / METRICS_FILE, trainer.history)
        save_checkpoint(out, trainer, preprocessing)

    return save
