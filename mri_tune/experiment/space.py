"""What a search searches at each scale, and the paper's baseline as a point of that space.

Scales:
    paper   Table 1 as published (`mri_tune_core.paper.TABLE1`, 470,400 configurations), the
            paper's images per epoch, 128x128 slices.
    demo    a CPU-sized corner of Table 1 (few epochs of few images, small models, small slices)
            so the default run (search, ensemble, evaluation, report) fits in 10 minutes on 2
            CPU cores.
    smoke   8 small configurations that learn within seconds: tests.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from ray import tune

from mri_tune.errors import InputError
from mri_tune_core import paper

Scale = Literal["demo", "paper", "smoke"]
SCALES: tuple[str, ...] = ("demo", "paper", "smoke")

IMAGES_PER_EPOCH: dict[str, int] = {"paper": paper.IMAGES_PER_EPOCH, "demo": 2048, "smoke": 1024}
"""Training images drawn per epoch at each scale."""

AVERAGE_WEIGHTS: dict[str, float] = {"paper": 0.5, "demo": 0.5, "smoke": 0.0}
"""`TrainConfig.average_weights` of every trial at each scale: the mean of the weights over the
last half of the steps (measured at the demo's budget, benchmarks/RESULTS_generalization.md);
the smoke scale's runs (192-256 steps without augmentation) are still learning fast at half-way,
so they keep the last iterate, as they keep augmentation off."""

STORE_SIZE: dict[str, int] = {"paper": paper.IMAGE_SIZE, "demo": 32, "smoke": 32}
"""Side of the sample store's slices per scale: the paper's at paper scale; the demo and smoke
scales ingest 32x32 slices (16x fewer pixels) so that 2 CPU cores run a whole search in minutes."""

NUM_SAMPLES: dict[str, int] = {"paper": 150, "demo": 20, "smoke": 6}
"""Trials of a search when the command line does not say (paper: about 100 GPU-hours)."""


def scale_space(scale: str) -> dict[str, list]:
    """The value lists searched at each scale (demo and smoke are subsets of Table 1's ranges)."""
    if scale == "paper":
        return {name: list(values) for name, values in paper.TABLE1.items()}
    if scale == "demo":
        # Measured on the sample data (benchmarks/RESULTS_generalization.md): 3 poolings of one
        # convolution each learn within 6-8 epochs of 2,048 images at lr 0.01, while 4-5
        # poolings (the paper's baseline) are still near chance loss after 8, and so were 4 of 7
        # trials with 2 convolutions per block; lr >= 0.1 diverges and <= 1e-3 learns too
        # little in a few thousand images. Augmentation is always on (the "scanner" policy
        # generalised better across sites than the paper's; a search that minimises an
        # in-distribution validation loss would not see that).
        return {"num_blocks": [3], "convs_per_block": [1], "filters": [4, 8, 16],
                "kernel_size": [3, 5], "learning_rate": [1e-2],
                "batch_size": [16, 32], "epochs": [6, 8], "augmentation": [True]}
    if scale == "smoke":
        # 8 configurations that learn the sample data within seconds (measured on the
        # seed-0 split; augmentation slows learning too much for so few epochs).
        return {"num_blocks": [3, 4], "convs_per_block": [1], "filters": [8, 16],
                "kernel_size": [3], "learning_rate": [1e-2], "batch_size": [32],
                "epochs": [6, 8], "augmentation": [False]}
    raise InputError(f"--scale must be one of {', '.join(SCALES)}. Got {scale!r}.")


def param_space(scale: str) -> dict[str, Any]:
    """The scale's space as a Ray Tune param space (one `tune.choice` per hyper-parameter)."""
    return {key: tune.choice(values) for key, values in scale_space(scale).items()}


def baseline_config(scale: str) -> dict[str, Any]:
    """The paper's baseline (`mri_tune_core.paper.BASELINE`) projected onto the scale's space:
    each value is replaced by the nearest value the scale searches (on a log scale), so the
    baseline is a point of the grid."""
    space = scale_space(scale)
    return {key: _nearest(value, space[key]) for key, value in paper.BASELINE.items()}


def _nearest(value: Any, options: list) -> Any:
    if isinstance(value, bool):
        return value if value in options else options[0]
    if value in options:
        return value
    return min(options, key=lambda o: abs(math.log(o) - math.log(value)))
