"""Batched, seeded augmentation on the model's device: the paper's, and the shifts between scanners.

Each image of a batch gets its own random transformation; every step is one batched tensor
operation (one `affine_grid` + `grid_sample` for the geometry, grouped convolutions for blur),
nothing runs per image or on the CPU when the batch lives on a GPU, and every draw comes from the
`torch.Generator` passed in, so a seed fixes the augmented stream. The geometry is drawn first, so
`random_affine(batch, config, generator)` reproduces the map that `augment` applied.

Steps, in order (B images of H x W, intensities x in [0, 1], coordinates normalised to [-1, 1]):
    geometry   x <- x sampled at theta @ (u, v, 1): rotation, shear, zoom, translation (the
               paper's), anisotropic scale (pixel spacing), field-of-view crop, left-right flip
    bias       x <- x * exp(f) / mean(exp(f)), f a smooth random field (coil sensitivity)
    remap      x <- (1 - s) x + s LUT(x): a random piecewise-linear intensity curve with LUT(0) = 0
               (another sequence's contrast: fat, fluid and muscle change order)
    gamma      x <- x ** gamma (contrast)
    blur       x <- Gaussian blur, sigma_x and sigma_y drawn apart (resolution loss, thick slices)
    noise      x <- clamp(x + sigma * n, 0, 1), n ~ N(0, 1) (the paper's)

Symbols of the geometry:
    angle    (B,)    rotation in radians, uniform in [-max_rotation, max_rotation]
    shear    (B,)    horizontal shear angle, uniform in [-max_shear, max_shear]
    zoom     (B,)    scale, log-uniform in zoom_range (> 1 magnifies)
    aspect   (B,)    x / y scale ratio, log-uniform in [1 / max_aspect, max_aspect]
    crop     (B,)    field-of-view magnification, log-uniform in fov_crop_range; the window
                     1 / crop of the side moves by up to 1 - 1 / crop so it stays in the image
    flip     (B,)    -1 with probability flip_probability (left-right in axial and coronal slices)
    shift    (B, 2)  translation, uniform in [-max_translation, max_translation] x image side
    theta    (B, 2, 3) output-to-input sampling map:
                     [R(angle) S(shear) diag(flip * aspect^1/2, aspect^-1/2) / (zoom crop) | t]

Named policies (`policy(name)`): "paper" is the paper's augmentation (`AugmentConfig()`); the
others add one family of scanner shifts to it, or all of them ("scanner", DEFAULT_POLICY: what
`TrainConfig` uses unless told otherwise, chosen by benchmarks/generalization.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mri_tune.errors import SpecError

_RANGES = ("zoom_range", "fov_crop_range", "gamma_range")
_BIAS_GRID = 4
"""Control points per side of the bias field: a field smoother than the anatomy."""
_REMAP_KNOTS = 6
"""Interior knots of the random intensity curve."""


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transformations; intensities are in [0, 1]. The defaults are the
    paper's augmentation (affine maps and additive noise); every other family is off."""

    max_rotation_deg: float = 15.0
    max_shear_deg: float = 10.0
    max_translation: float = 0.1
    """Largest shift, as a fraction of the image side."""
    zoom_range: tuple[float, float] = (0.9, 1.1)
    max_noise_std: float = 0.03
    """Largest standard deviation of the additive noise, in units of the full intensity range."""
    max_aspect: float = 1.0
    """Largest anisotropic scale ratio (1: none): sources resample to square slices differently."""
    fov_crop_range: tuple[float, float] = (1.0, 1.0)
    """Magnification of a random field-of-view window ((1, 1): none; 1.5: 2/3 of the side)."""
    flip_probability: float = 0.0
    """Probability of a left-right flip (the image's first axis): a region keeps its meaning."""
    max_bias_log: float = 0.0
    """Largest standard deviation of the log bias field (0: none; 0.3: about +-35%)."""
    max_remap: float = 0.0
    """Largest weight s of the random intensity curve mixed into the image (0: none; 1: all)."""
    gamma_range: tuple[float, float] = (1.0, 1.0)
    """Range of the gamma exponent, drawn log-uniformly ((1, 1): none)."""
    max_blur_sigma: float = 0.0
    """Largest Gaussian blur per axis, as a fraction of the image side (0: none)."""

    def __post_init__(self) -> None:
        for name in _RANGES:  # JSON and from_dict give lists: keep the dataclass hashable
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        ranges = {"max_rotation_deg": (0.0, 180.0), "max_shear_deg": (0.0, 60.0),
                  "max_translation": (0.0, 0.5), "max_noise_std": (0.0, 1.0),
                  "max_aspect": (1.0, 4.0), "flip_probability": (0.0, 1.0),
                  "max_bias_log": (0.0, 2.0), "max_remap": (0.0, 1.0),
                  "max_blur_sigma": (0.0, 0.1)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise SpecError(f"AugmentConfig.{name} must be in [{low}, {high}]. "
                                f"Got {value!r}.")
        for name, floor in (("zoom_range", 0.0), ("fov_crop_range", 1.0), ("gamma_range", 0.0)):
            low, high = getattr(self, name)
            if not (floor < low or (floor == low == 1.0)) or low > high:
                raise SpecError(f"AugmentConfig.{name} must be (low, high) with "
                                f"{floor} {'<=' if floor == 1.0 else '<'} low <= high. "
                                f"Got {getattr(self, name)!r}.")


def _uniform(generator: torch.Generator, *shape: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator, device=generator.device)


def _log_uniform(generator: torch.Generator, batch: int, low: float, high: float) -> torch.Tensor:
    return torch.exp(_uniform(generator, batch, low=math.log(low), high=math.log(high)))


def random_affine(
    batch: int, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """(B, 2, 3) sampling maps for `affine_grid`, drawn on the generator's device."""
    angle = _uniform(generator, batch, low=-1.0, high=1.0) * math.radians(config.max_rotation_deg)
    shear = _uniform(generator, batch, low=-1.0, high=1.0) * math.radians(config.max_shear_deg)
    zoom = _log_uniform(generator, batch, *config.zoom_range)
    shift = _uniform(generator, batch, 2, low=-1.0, high=1.0) * (2.0 * config.max_translation)
    aspect = _log_uniform(generator, batch, 1.0 / config.max_aspect, config.max_aspect)
    crop = _log_uniform(generator, batch, *config.fov_crop_range)
    window = _uniform(generator, batch, 2, low=-1.0, high=1.0) * (1.0 - 1.0 / crop)[:, None]
    flip = torch.where(_uniform(generator, batch, low=0.0, high=1.0) < config.flip_probability,
                       -1.0, 1.0)

    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # R(angle) @ [[1, tan], [0, 1]], divided by zoom: sampling nearer the centre magnifies.
    linear = torch.stack([
        torch.stack([cos, cos * tan - sin], dim=-1),
        torch.stack([sin, sin * tan + cos], dim=-1),
    ], dim=-2) / (zoom * crop)[:, None, None]  # (B, 2, 2)
    scale = torch.stack([flip * aspect.sqrt(), aspect.rsqrt()], dim=-1)  # (B, 2): x, y columns
    linear = linear * scale[:, None, :]
    return torch.cat([linear, (shift + window)[:, :, None]], dim=-1)  # (B, 2, 3)


def bias_field(images: torch.Tensor, max_log: float, generator: torch.Generator) -> torch.Tensor:
    """Images (B, C, H, W) times a smooth random field of mean 1 (per image)."""
    batch = images.shape[0]
    strength = _uniform(generator, batch, 1, 1, 1, low=0.0, high=max_log)
    coarse = torch.randn(batch, 1, _BIAS_GRID, _BIAS_GRID, generator=generator,
                         device=images.device) * strength
    field = torch.exp(F.interpolate(coarse, size=images.shape[-2:], mode="bicubic",
                                    align_corners=True)).to(images.dtype)  # (B, 1, H, W)
    return images * field / field.mean(dim=(-2, -1), keepdim=True)


def intensity_remap(images: torch.Tensor, max_weight: float,
                    generator: torch.Generator) -> torch.Tensor:
    """(1 - s) x + s LUT(x) with a random piecewise-linear LUT per image; LUT(0) = 0, so the
    background stays dark, and the curve need not be monotone (another sequence's contrast)."""
    batch = images.shape[0]
    device = images.device
    knots = torch.rand(batch, _REMAP_KNOTS + 1, generator=generator, device=device)
    lut = torch.cat([torch.zeros(batch, 1, device=device), knots], dim=1)  # (B, K + 2)
    weight = _uniform(generator, batch, 1, low=0.0, high=max_weight)  # (B, 1)
    flat = images.reshape(batch, -1).clamp(0.0, 1.0).float()  # (B, H W)
    position = flat * (_REMAP_KNOTS + 1)
    left = position.floor().clamp_(max=_REMAP_KNOTS).long()
    frac = position - left
    curve = torch.lerp(lut.gather(1, left), lut.gather(1, left + 1), frac)
    mixed = torch.lerp(flat, curve, weight)
    return mixed.to(images.dtype).reshape(images.shape)


def gaussian_blur(images: torch.Tensor, max_sigma: float,
                  generator: torch.Generator) -> torch.Tensor:
    """A separable Gaussian blur whose sigma along each axis is drawn per image, uniform in
    [0, max_sigma x side]: one grouped convolution per axis for the whole batch."""
    batch, channels, height, width = images.shape
    out = images
    for axis, side in ((-1, width), (-2, height)):
        sigma = _uniform(generator, batch, 1, low=0.0, high=max_sigma * side).clamp_(min=1e-3)
        radius = max(1, math.ceil(3.0 * max_sigma * side))
        offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)  # (B, 2 radius + 1)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(images.dtype)
        kernel = kernel.repeat_interleave(channels, dim=0)  # one per image and channel
        shape = (batch * channels, 1, 1, -1) if axis == -1 else (batch * channels, 1, -1, 1)
        pad = (radius, radius, 0, 0) if axis == -1 else (0, 0, radius, radius)
        padded = F.pad(out.reshape(1, batch * channels, height, width), pad, mode="replicate")
        out = F.conv2d(padded, kernel.reshape(shape), groups=batch * channels
                       ).reshape(images.shape)
    return out


def augment(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Randomly transformed copies of a batch.

    images: (B, C, H, W) float in [0, 1], on the same device as `generator`; every channel of
    an image gets the same transform (the second channel, when there is one, is the same slice
    at a fixed physical scale).
    returns: (B, C, H, W) float in [0, 1]; outside the original field of view is 0 (background).
    """
    if images.device.type != generator.device.type:  # "cuda" and "cuda:0" are one device
        raise SpecError(f"augment needs the images and the generator on one device. Got images "
                        f"on {images.device} and the generator on {generator.device}; create "
                        "the generator with torch.Generator(device=images.device).")
    batch = images.shape[0]
    theta = random_affine(batch, config, generator).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    if config.max_bias_log > 0.0:
        out = bias_field(out, config.max_bias_log, generator).clamp_(0.0, 1.0)
    if config.max_remap > 0.0:
        out = intensity_remap(out, config.max_remap, generator)
    if config.gamma_range != (1.0, 1.0):
        gamma = _log_uniform(generator, batch, *config.gamma_range).to(images.dtype)
        out = out.clamp(min=0.0) ** gamma[:, None, None, None]
    if config.max_blur_sigma > 0.0:
        out = gaussian_blur(out, config.max_blur_sigma, generator)
    sigma = config.max_noise_std * torch.rand(batch, 1, 1, 1, generator=generator,
                                              device=images.device, dtype=images.dtype)
    noise = torch.randn(out.shape, generator=generator, device=images.device,
                        dtype=images.dtype)
    return (out + sigma * noise).clamp_(0.0, 1.0)


PAPER = AugmentConfig()
"""The paper's augmentation: rotation, shear, zoom, translation, additive noise."""
FAMILIES: dict[str, dict[str, object]] = {
    "intensity": {"max_remap": 0.5, "gamma_range": (0.6, 1.6)},
    "bias": {"max_bias_log": 0.3},
    "resolution": {"max_blur_sigma": 0.02},
    "fov": {"max_aspect": 1.3, "fov_crop_range": (1.0, 1.5)},
    "flip": {"flip_probability": 0.5},
}
"""Each family of scanner shifts, as AugmentConfig fields added to the paper's policy."""


def merged(*families: str) -> AugmentConfig:
    """The paper's policy plus the named families (FAMILIES), e.g. merged("intensity", "bias")."""
    unknown = [family for family in families if family not in FAMILIES]
    if unknown:
        raise SpecError(f"Unknown augmentation families {unknown}; use names of "
                        f"{sorted(FAMILIES)}.")
    fields: dict[str, object] = {}
    for family in families:
        fields.update(FAMILIES[family])
    return dataclasses.replace(PAPER, **fields)


POLICIES: dict[str, AugmentConfig] = {
    "paper": PAPER,
    **{family: merged(family) for family in FAMILIES},
    "scanner": merged(*FAMILIES),
}
"""Named augmentation policies: the paper's, the paper's plus one family, or all ("scanner")."""


DEFAULT_POLICY = "scanner"
"""The policy `TrainConfig` (and so every search trial with augmentation on, and the shipped recipe
of benchmarks/generalization.py) uses. On leave-one-site-out it beats no augmentation (3 seeds) and
the paper's policy (1 seed); no single-family policy beat it beyond the seed spread
(benchmarks/RESULTS_generalization.md)."""


def policy(name: str) -> AugmentConfig:
    """The AugmentConfig of a named policy (POLICIES)."""
    if name not in POLICIES:
        raise SpecError(f"Unknown augmentation policy {name!r}; use one of {sorted(POLICIES)}.")
    return POLICIES[name]
