"""Batched, seeded augmentation on the model's device, as in the paper (affine maps + noise).

Each image of a batch gets its own random affine map (rotation, shear, zoom, translation),
applied by one `affine_grid` + `grid_sample` call for the whole batch, then additive Gaussian
noise. Nothing runs per image or on the CPU when the batch lives on a GPU, and every draw comes
from the `torch.Generator` passed in, so a seed fixes the augmented stream.

Symbols (B images of H x W, coordinates normalised to [-1, 1] as in `affine_grid`):
    angle    (B,)    rotation in radians, uniform in [-max_rotation, max_rotation]
    shear    (B,)    horizontal shear angle, uniform in [-max_shear, max_shear]
    zoom     (B,)    scale, log-uniform in zoom_range (> 1 magnifies)
    shift    (B, 2)  translation, uniform in [-max_translation, max_translation] x image side
    theta    (B, 2, 3) output-to-input sampling map: [R(angle) S(shear) / zoom | 2 * shift]
    sigma    (B,)    noise standard deviation, uniform in [0, max_noise_std]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mri_tune.errors import SpecError


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transformations; intensities are in [0, 1]."""

    max_rotation_deg: float = 15.0
    max_shear_deg: float = 10.0
    max_translation: float = 0.1
    """Largest shift, as a fraction of the image side."""
    zoom_range: tuple[float, float] = (0.9, 1.1)
    max_noise_std: float = 0.03
    """Largest standard deviation of the additive noise, in units of the full intensity range."""

    def __post_init__(self) -> None:
        ranges = {"max_rotation_deg": (0.0, 180.0), "max_shear_deg": (0.0, 60.0),
                  "max_translation": (0.0, 0.5), "max_noise_std": (0.0, 1.0)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise SpecError(f"AugmentConfig.{name} must be in [{low}, {high}]. "
                                f"Got {value!r}.")
        low, high = self.zoom_range
        if not 0.0 < low <= high:
            raise SpecError("AugmentConfig.zoom_range must be (low, high) with 0 < low <= high. "
                            f"Got {self.zoom_range!r}.")


def random_affine(
    batch: int, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """(B, 2, 3) sampling maps for `affine_grid`, drawn on the generator's device."""
    device = generator.device

    def uniform(*shape: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

    angle = uniform(batch, low=-1.0, high=1.0) * math.radians(config.max_rotation_deg)
    shear = uniform(batch, low=-1.0, high=1.0) * math.radians(config.max_shear_deg)
    log_low, log_high = (math.log(z) for z in config.zoom_range)
    zoom = torch.exp(uniform(batch, low=log_low, high=log_high))
    shift = uniform(batch, 2, low=-1.0, high=1.0) * (2.0 * config.max_translation)

    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # R(angle) @ [[1, tan], [0, 1]], divided by zoom: sampling nearer the centre magnifies.
    linear = torch.stack([
        torch.stack([cos, cos * tan - sin], dim=-1),
        torch.stack([sin, sin * tan + cos], dim=-1),
    ], dim=-2) / zoom[:, None, None]  # (B, 2, 2)
    return torch.cat([linear, shift[:, :, None]], dim=-1)  # (B, 2, 3)


def augment(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Randomly transformed copies of a batch.

    images: (B, 1, H, W) float in [0, 1], on the same device as `generator`.
    returns: (B, 1, H, W) float in [0, 1]; outside the original field of view is 0 (background).
    """
    if images.device.type != generator.device.type:  # "cuda" and "cuda:0" are one device
        raise SpecError(f"augment needs the images and the generator on one device. Got images "
                        f"on {images.device} and the generator on {generator.device}; create "
                        "the generator with torch.Generator(device=images.device).")
    batch = images.shape[0]
    theta = random_affine(batch, config, generator).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    sigma = config.max_noise_std * torch.rand(batch, 1, 1, 1, generator=generator,
                                              device=images.device, dtype=images.dtype)
    noise = torch.randn(warped.shape, generator=generator, device=images.device,
                        dtype=images.dtype)
    return (warped + sigma * noise).clamp_(0.0, 1.0)
