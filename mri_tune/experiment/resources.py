"""What a trial asks of the cluster, and how many trials can run at once.

A trial asks for `cpus_per_trial` CPUs and, with GPUs, a share of one GPU chosen from the model's
size when `--gpus-per-trial` is not given (`gpu_share`): small models share a GPU (four batch-8
trainings on one H200 reach 3.1x the throughput of one, docs/DESIGN.md), large ones get a whole GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.tune import PlacementGroupFactory

from mri_tune.training.model import CNNSpec

# GPU share per trial (docs/DESIGN.md measurements on one H200): a trial whose convolutions cost
# under SMALL_GMACS per image and whose activations fit in SMALL_ACTIVATION_GB shares a GPU four
# ways; under MEDIUM_* two ways; anything larger gets a whole GPU.
SMALL_GMACS, SMALL_ACTIVATION_GB = 1.0, 8.0
MEDIUM_GMACS, MEDIUM_ACTIVATION_GB = 4.0, 20.0
GPU_SHARES = (0.25, 0.5, 1.0)
_BYTES_PER_ACTIVATION = 2 * 3  # bf16, kept about three times for backward (input, ReLU, grad)


def estimated_cost(config: Mapping[str, Any], image_size: tuple[int, int]) -> tuple[float, float]:
    """(GMACs of the convolutions per image, activation GB of one batch) of a Table 1 config."""
    macs, activations = CNNSpec.from_dict(config).convolution_cost(image_size)
    batch_gb = activations * int(config["batch_size"]) * _BYTES_PER_ACTIVATION / 1e9
    return macs / 1e9, batch_gb


def gpu_share(config: Mapping[str, Any], image_size: tuple[int, int]) -> float:
    """The fraction of a GPU a trial asks for when --gpus-per-trial is not given."""
    gmacs, gb = estimated_cost(config, image_size)
    if gmacs <= SMALL_GMACS and gb <= SMALL_ACTIVATION_GB:
        return GPU_SHARES[0]
    if gmacs <= MEDIUM_GMACS and gb <= MEDIUM_ACTIVATION_GB:
        return GPU_SHARES[1]
    return GPU_SHARES[2]


def trial_resources(cpus_per_trial: float, gpus_per_trial: float | None, uses_gpus: bool,
                    image_size: tuple[int, int]):
    """The per-trial resource request Tune calls with each config (a PlacementGroupFactory)."""

    def request(config: Mapping[str, Any]) -> PlacementGroupFactory:
        bundle: dict[str, float] = {"CPU": cpus_per_trial}
        if uses_gpus:
            bundle["GPU"] = gpus_per_trial or gpu_share(config, image_size)
        return PlacementGroupFactory([bundle])

    return request


def task_resources(cpus_per_trial: float, gpus_per_trial: float | None, uses_gpus: bool,
                   image_size: tuple[int, int]):
    """The same request as `trial_resources`, as Ray task options (the ensemble's refits)."""

    def request(config: Mapping[str, Any]) -> dict[str, float]:
        gpus = (gpus_per_trial or gpu_share(config, image_size)) if uses_gpus else 0.0
        return {"num_cpus": cpus_per_trial, "num_gpus": gpus}

    return request


def concurrent_slots(cluster_cpus: float, cpus_per_trial: float, gpus: float,
                     gpus_per_trial: float | None) -> int:
    """Trials that can actually run at once: the GPU slots (GPUs / the smallest share a trial
    asks for) capped by the CPU slots (every trial also needs its CPUs)."""
    cpu_slots = max(1, int(cluster_cpus / cpus_per_trial + 1e-9))
    if gpus <= 0:
        return cpu_slots
    gpu_slots = max(1, int(gpus / (gpus_per_trial or GPU_SHARES[0]) + 1e-9))
    return min(gpu_slots, cpu_slots)
