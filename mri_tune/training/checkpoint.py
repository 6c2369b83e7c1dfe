"""Checkpoints of a training run, and a run's metrics file.

A checkpoint is one `torch.save` dict, loadable with `weights_only=True` (no pickled code runs on
load): the model's spec and shape, the class names, the training config, the store's
preprocessing (so that `predict` can prepare new volumes for a single model), and the trainer's
state (weights, optimizer, counters, RNG states, history).
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mri_tune.errors import InputError, SpecError
from mri_tune.training.config import TrainConfig
from mri_tune.training.model import CNNSpec, RegionCNN
from mri_tune.training.trainer import EpochMetrics, Trainer
from mri_tune_core.files import replace_atomically

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT_VERSION = 1
METRICS_FILE = "metrics.json"
REQUIRED_KEYS = ("format_version", "spec", "num_classes", "image_size", "class_names",
                 "train_config", "model", "epoch", "history")
_FIX = ("Use a checkpoint.pt written by mri-tune (`mri-tune train --out DIR`, or a trial's "
        "checkpoint_* folder of a search), or retrain.")


def save_checkpoint(directory: Path, trainer: Trainer,
                    preprocessing: Mapping[str, Any] | None = None) -> Path:
    """Write `directory/checkpoint.pt` atomically; the trainer's model must be a RegionCNN.

    Layout (a torch.save dict, loadable with weights_only=True): format_version, spec (CNNSpec
    dict), num_classes, image_size, in_channels (1 when absent), class_names, train_config
    (TrainConfig dict), preprocessing
    (the store's, for `predict`; {} when unknown), and the `Trainer.state_dict()` keys: model,
    optimizer, epoch, iteration, rng, history.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return save_atomically(checkpoint_payload(trainer, preprocessing), directory / CHECKPOINT_FILE)


def save_atomically(payload: dict[str, Any], path: Path) -> Path:
    """torch.save by `replace_atomically`: a crash mid-write never leaves a truncated checkpoint
    (and an earlier one at `path` survives it)."""
    return replace_atomically(path, lambda partial: torch.save(payload, partial))


def checkpoint_payload(trainer: Trainer,
                       preprocessing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dict `save_checkpoint` writes (layout there); the trainer's model must be a RegionCNN."""
    model = trainer.model
    if not isinstance(model, RegionCNN):
        raise SpecError(f"save_checkpoint describes a RegionCNN. Got {type(model).__name__}; "
                        "save other models with Trainer.state_dict().")
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "spec": model.spec.to_dict(),
        "num_classes": model.num_classes,
        "image_size": list(model.image_size),
        "in_channels": model.in_channels,
        "class_names": list(trainer.class_names),
        "train_config": trainer.config.to_dict(),
        "preprocessing": dict(preprocessing or {}),
        **trainer.state_dict(),
    }


def read_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict of a file or of a folder holding `checkpoint.pt`."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise InputError(f"No checkpoint at {path}: expected a {CHECKPOINT_FILE} file or a "
                         "folder holding one (mri-tune train --out DIR, or a Tune trial's "
                         "checkpoint_* folder).")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses anything but tensors and plain values: a pickle of other
        # objects, or bytes that are no pickle at all. Either way nothing of it has run.
        raise InputError(f"{path} is not an mri-tune checkpoint: it holds data that is not "
                         f"tensors and plain values, or is no checkpoint at all "
                         f"({_first_line(err)}); it was not loaded. {_FIX}") from err
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path} is not a readable checkpoint: it is truncated or corrupt "
                         f"({_first_line(err)}). {_FIX}") from err
    except Exception as err:  # noqa: BLE001 - the weights-only unpickler ran nothing
        # Bytes that are no pickle can stop that unpickler anywhere (an empty stack, an unknown
        # memo key, a broken string): corrupt, like the cases above.
        raise InputError(f"{path} is not a readable checkpoint: it is corrupt "
                         f"({type(err).__name__}: {_first_line(err)}). {_FIX}") from err
    if not isinstance(payload, dict):
        raise InputError(f"{path} holds a {type(payload).__name__}, not an mri-tune checkpoint "
                         f"dict. {_FIX}")
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise InputError(f"{path} has checkpoint format {version!r}; this mri-tune reads "
                         f"format {CHECKPOINT_FORMAT_VERSION}. Retrain or use a matching version.")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise InputError(f"{path} lacks the checkpoint entries {missing}; it was edited or "
                         f"written by another program. {_FIX}")
    return payload


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


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
    try:
        spec = CNNSpec.from_dict(payload["spec"])
        image_size = (int(payload["image_size"][0]), int(payload["image_size"][1]))
        model = RegionCNN(spec, int(payload["num_classes"]), image_size,
                          in_channels=int(payload.get("in_channels", 1)), device="meta")
        model.load_state_dict(payload["model"], assign=True)  # no throw-away initialisation
        model.to(device).eval()
        return LoadedModel(model, spec, list(payload["class_names"]), image_size,
                           TrainConfig.from_dict(payload["train_config"]),
                           int(payload["epoch"]), list(payload["history"]),
                           dict(payload.get("preprocessing") or {}))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as err:
        raise InputError(f"{path} is not a consistent mri-tune checkpoint: its model does not "
                         f"match its description ({type(err).__name__}: {_first_line(err)}). "
                         f"{_FIX}") from err


def write_metrics(path: Path, history: Sequence[EpochMetrics]) -> None:
    """A JSON list of `EpochMetrics.to_dict()`; NaN (a class without slices) becomes null."""
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in m.to_dict().items()} for m in history]
    Path(path).write_text(json.dumps(rows, indent=1))
