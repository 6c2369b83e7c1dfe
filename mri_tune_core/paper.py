"""Every number and symbol of the paper, in one place; the rest of the code imports them.

Bertrand, Perrot, Ardon, Bloch, "Classification of MRI data using Deep Learning and Gaussian
Process-based Model Selection", ISBI 2017, arXiv:1701.04355. Each symbol names the part of the
paper it comes from (docs/DESIGN.md, "The paper in numbers", lists them the same way).

Data (the paper's dataset section)
    REGIONS              the four anatomical classes
    IMAGE_SIZE           slices resized to IMAGE_SIZE x IMAGE_SIZE
    SPLIT_FRACTIONS      train / validation / test fractions, split by volume (here: by subject)

Baseline network and training (the baseline section)
    BASELINE             the baseline's value of each Table 1 hyper-parameter
    HIDDEN_UNITS         the two fully connected layers after the convolution blocks
    MOMENTUM, NESTEROV   SGD with Nesterov momentum 0.9
    LR_DECAY             learning rate at iteration t: lr / (1 + LR_DECAY * t)
    AUGMENTATION_FACTOR  images generated per epoch = AUGMENTATION_FACTOR x the training set
    IMAGES_PER_EPOCH     80,000 generated images per epoch (4 x about 20,000 training slices)

Search space (Table 1)
    TABLE1               hyper-parameter -> the list of its values (470,400 configurations)
    TABLE1_KEYS          the hyper-parameters, in the table's order

Model selection (the Gaussian-process section)
    WARMUP_TRIALS        random configurations trained before the first GP fit
    TARGETS              PI targets as relative improvements of the best loss so far: the best
                         loss itself (0) and a 25% improvement on it (0.25);
                         PI(x) = Phi((target - mu(x)) / sigma(x))
    METRIC, MODE         the loss the search minimises: the validation loss

Results (the results section)
    TOP_K                models averaged into the final classifier (average of softmax outputs)
    DECISION_THRESHOLD   a slice of a volume's profile is labelled only where one class has a
                         probability above it; a volume's label is the majority vote of its slices
"""

from __future__ import annotations

from typing import Any

# --- Data
REGIONS: tuple[str, ...] = ("head", "abdomen", "pelvis", "spine")
IMAGE_SIZE = 128
SPLIT_FRACTIONS: tuple[float, float, float] = (0.5, 0.25, 0.25)

# --- Search space (Table 1): 5 x 7 x 6 x 2 x 8 x 7 x 10 x 2 = 470,400 configurations
TABLE1: dict[str, list[Any]] = {
    "num_blocks": [1, 2, 3, 4, 5],
    "convs_per_block": [1, 2, 3, 4, 5, 6, 7],
    "filters": [2**r for r in range(2, 8)],  # 4..128
    "kernel_size": [3, 5],
    "learning_rate": [10.0**exponent for exponent in range(-7, 1)],  # 1e-7..1
    "batch_size": [2**a for a in range(2, 9)],  # 4..256
    "epochs": list(range(10, 101, 10)),
    "augmentation": [True, False],
}
TABLE1_KEYS: tuple[str, ...] = tuple(TABLE1)
CNN_KEYS: tuple[str, ...] = ("num_blocks", "convs_per_block", "filters", "kernel_size")
"""The architecture part of Table 1; the other four keys are training settings."""

# --- Baseline network and training
BASELINE: dict[str, Any] = {"num_blocks": 5, "convs_per_block": 1, "filters": 64,
                            "kernel_size": 3, "learning_rate": 1e-3, "batch_size": 8,
                            "epochs": 70, "augmentation": True}
HIDDEN_UNITS: tuple[int, int] = (4096, 1024)
MOMENTUM = 0.9
NESTEROV = True
LR_DECAY = 1e-6
AUGMENTATION_FACTOR = 4
IMAGES_PER_EPOCH = 80_000

# --- Model selection
WARMUP_TRIALS = 47
TARGETS: tuple[float, float] = (0.0, 0.25)
METRIC = "val_loss"
MODE = "min"

# --- Results
TOP_K = 10
DECISION_THRESHOLD = 0.7
