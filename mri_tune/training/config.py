"""Training settings as typed values: `TrainConfig`, and the conversion of a Table 1 config dict
(as Ray Tune or a JSON file gives it) into `(CNNSpec, TrainConfig)` on the first lines of a run.

Defaults are the paper's (`mri_tune_core.paper`): its momentum and learning-rate decay, and
`paper.AUGMENTATION_FACTOR` x the training set drawn per epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mri_tune.errors import InputError, SpecError
from mri_tune.training.augment import DEFAULT_POLICY, AugmentConfig, policy
from mri_tune.training.model import CNNSpec, int_from
from mri_tune_core import paper

VALIDATION_LOSSES = ("balanced", "weighted")
SAMPLINGS = ("regions", "slices")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the first four are Table 1's, the rest have fixed defaults."""

    learning_rate: float
    batch_size: int
    epochs: int
    augmentation: bool
    images_per_epoch: int | None = None
    """Training images drawn per epoch; None means paper.AUGMENTATION_FACTOR x the training set."""
    seed: int = 0
    momentum: float = paper.MOMENTUM
    lr_decay: float = paper.LR_DECAY
    augment: AugmentConfig = policy(DEFAULT_POLICY)
    """Ranges of the augmentation when `augmentation` is on; `policy("paper")` is the paper's."""
    validation_loss: str = "balanced"
    """The validation loss (the search's metric): "balanced", the mean over regions of each
    region's mean cross-entropy, so that every region counts alike however few validation slices
    it has; or "weighted", the paper's, with the training split's class-frequency weights."""
    sampling: str = "regions"
    """How an epoch draws its training slices (mri_tune.training.trainer): "regions", every region
    alike (the rare ones as often as the common ones, each draw a new augmented view) with an
    unweighted loss; or "slices", the paper's permutations of the training set with a
    class-weighted loss. "regions" measured ahead on unseen sites
    (benchmarks/RESULTS_generalization.md)."""
    people_power: float = 1.0
    """Within a region, "regions" draws a person by their slice count to this power: 1 draws every
    slice of the region alike, 0 every person alike (so a site with many series of a few people
    does not stand for its region); 1 measured best of 0, 0.5 and 1."""
    average_weights: float = 0.5
    """The share of the last training iterations whose weights are averaged into the model that
    is validated and kept (a tail average of the SGD iterates, as stochastic weight averaging
    does); 0 keeps the last iterate, as the paper does. 0.5 measured level with 0 on unseen sites
    with a third of the spread over seeds, and ahead on unseen people of seen sites
    (benchmarks/RESULTS_generalization.md)."""
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
        if self.validation_loss not in VALIDATION_LOSSES:
            raise SpecError(f"TrainConfig.validation_loss must be one of {VALIDATION_LOSSES}. "
                            f"Got {self.validation_loss!r}.")
        if self.sampling not in SAMPLINGS:
            raise SpecError(f"TrainConfig.sampling must be one of {SAMPLINGS}. "
                            f"Got {self.sampling!r}.")
        power = self.people_power
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 <= power <= 1:
            raise SpecError(f"TrainConfig.people_power must be a number in [0, 1]. Got "
                            f"{power!r}; 1 is the default.")
        share = self.average_weights
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise SpecError(f"TrainConfig.average_weights must be a number in [0, 1] (the share "
                            f"of the last iterations averaged). Got {share!r}; 0 is off.")
        if not (0.0 <= self.momentum < 1.0 and self.lr_decay >= 0.0):
            raise SpecError("TrainConfig needs 0 <= momentum < 1 and lr_decay >= 0. Got "
                            f"momentum={self.momentum!r}, lr_decay={self.lr_decay!r}.")

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
        return paper.AUGMENTATION_FACTOR * train_size


def specs_from_config(config: Mapping[str, Any], **train_overrides: Any) -> tuple[CNNSpec,
                                                                                  TrainConfig]:
    """The typed specs of a Table 1 config dict (as Ray Tune passes it).

    `augmentation` accepts a bool, 0/1 or "yes"/"no"; numeric values may be numpy scalars.
    `train_overrides` set the other TrainConfig fields (images_per_epoch, seed, ...).
    Raises SpecError naming the key when a value is missing or of the wrong kind.
    """
    missing = [key for key in paper.TABLE1_KEYS if key not in config]
    if missing:
        raise SpecError(f"The config lacks the Table 1 keys {missing}; it has {sorted(config)}. "
                        f"A config needs all of {list(paper.TABLE1_KEYS)}.")
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


def baseline_specs(**train_overrides: Any) -> tuple[CNNSpec, TrainConfig]:
    """The paper's baseline network and training settings (`mri_tune_core.paper.BASELINE`),
    with the paper's augmentation, sampling, class-weighted validation loss and last iterate
    unless overridden."""
    paper_recipe = {"augment": policy("paper"), "validation_loss": "weighted",
                    "sampling": "slices", "average_weights": 0.0}
    return specs_from_config(paper.BASELINE, **{**paper_recipe, **train_overrides})


def read_config(source: str | Path) -> tuple[CNNSpec, TrainConfig]:
    """"baseline" -> the paper's recipe (`baseline_specs`); a JSON file -> Table 1 keys over the
    baseline's values, trained with this package's defaults (augmentation policy, loss)."""
    if str(source) == "baseline":
        return baseline_specs()
    values = dict(paper.BASELINE)
    path = Path(source)
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"--config must be 'baseline' or a readable JSON file. Could not "
                         f"read {path}: {err}.") from err
    unknown = sorted(set(loaded) - set(paper.TABLE1_KEYS)) if isinstance(loaded, dict) else None
    if unknown is None or unknown:
        raise InputError(f"{path} must hold a JSON object with keys among "
                         f"{list(paper.TABLE1_KEYS)}. Got {loaded!r} (unknown keys: "
                         f"{unknown}); "
                         "fix the names or drop those keys.")
    values.update(loaded)
    return specs_from_config(values)
