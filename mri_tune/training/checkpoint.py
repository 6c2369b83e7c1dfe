"""Checkpoints of a training run, and a run's metrics file.

A checkpoint is one `torch.save` dict, loadable with `weights_only=True` (no pickled code runs on
load): the model's spec and shape, the class names, the training config, the store's
preprocessing (so that `predict` can prepare new volumes for a single model), and the trainer's
state (weights, optimizer, counters, RNG states, history).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mri_tune.errors import InputError, SpecError
from mri_tune.training.config import TrainConfig
from mri_tune.training.model import CNNSpec, RegionCNN
from mri_tune.training.trainer import EpochMetrics, Trainer

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT_VERSION = 1
METRICS_FILE = "metrics.json"


def save_checkpoint(directory: Path, trainer: Trainer,
                    preprocessing: Mapping[str, Any] | None = None) -> Path:
    """Write `directory/checkpoint.pt` atomically; the trainer's model must be a RegionCNN.

    Layout (a torch.save dict, loadable with weights_only=True): format_version, spec (CNNSpec
    dict), num_classes, image_size, class_names, train_config (TrainConfig dict), preprocessing
    (the store's, for `predict`; {} when unknown), and the `Trainer.state_dict()` keys: model,
    optimizer, epoch, iteration, rng, history.
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
        "preprocessing": dict(preprocessing or {}),
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
    preprocessing: dict[str, Any]
    """The ingest parameters of the store it was trained on ({} for an older checkpoint)."""


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
                       list(payload["history"]), dict(payload.get("preprocessing", {})))


def write_metrics(path: Path, history: Sequence[EpochMetrics]) -> None:
    """A JSON list of `EpochMetrics.to_dict()`; NaN (a class without slices) becomes null."""
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in m.to_dict().items()} for m in history]
    Path(path).write_text(json.dumps(rows, indent=1))
