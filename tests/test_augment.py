"""Batched augmentation: shapes, value range, reproducibility, and the affine maps themselves."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mri_tune.errors import SpecError
from mri_tune.training.augment import (
    FAMILIES,
    POLICIES,
    AugmentConfig,
    augment,
    bias_field,
    gaussian_blur,
    intensity_remap,
    merged,
    policy,
    random_affine,
)

IDENTITY = AugmentConfig(max_rotation_deg=0.0, max_shear_deg=0.0, max_translation=0.0,
                         zoom_range=(1.0, 1.0), max_noise_std=0.0)


def _batch(seed: int = 0, size: int = 8) -> torch.Tensor:
    return torch.rand(size, 1, 64, 48, generator=torch.Generator().manual_seed(seed))


def test_shape_dtype_and_range_are_kept_under_strong_settings() -> None:
    strong = AugmentConfig(max_rotation_deg=90.0, max_shear_deg=30.0, max_translation=0.3,
                           zoom_range=(0.5, 2.0), max_noise_std=0.5)
    images = _batch()
    out = augment(images, strong, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.allclose(out, images)


def test_same_seed_same_images_other_seed_other_images() -> None:
    images = _batch()
    first = augment(images, AugmentConfig(), torch.Generator().manual_seed(7))
    again = augment(images, AugmentConfig(), torch.Generator().manual_seed(7))
    other = augment(images, AugmentConfig(), torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_identity_settings_leave_images_unchanged() -> None:
    images = _batch()
    out = augment(images, IDENTITY, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_each_image_gets_its_own_transform() -> None:
    theta = random_affine(16, AugmentConfig(), torch.Generator().manual_seed(0))
    assert theta.shape == (16, 2, 3)
    assert len({tuple(t.flatten().tolist()) for t in theta}) == 16


def test_zoom_only_scales_sampling_coordinates() -> None:
    zoom2 = AugmentConfig(max_rotation_deg=0.0, max_shear_deg=0.0, max_translation=0.0,
                          zoom_range=(2.0, 2.0), max_noise_std=0.0)
    theta = random_affine(4, zoom2, torch.Generator().manual_seed(0))
    expected = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]).expand(4, 2, 3)
    torch.testing.assert_close(theta, expected)


def test_rotation_only_is_orthonormal_within_range() -> None:
    rotate = AugmentConfig(max_rotation_deg=20.0, max_shear_deg=0.0, max_translation=0.0,
                           zoom_range=(1.0, 1.0), max_noise_std=0.0)
    theta = random_affine(64, rotate, torch.Generator().manual_seed(1))
    linear = theta[:, :, :2]
    torch.testing.assert_close(linear @ linear.transpose(1, 2), torch.eye(2).expand(64, 2, 2))
    angles = torch.atan2(linear[:, 1, 0], linear[:, 0, 0])
    assert angles.abs().max() <= math.radians(20.0) + 1e-6
    assert theta[:, :, 2].abs().max() == 0.0


def test_translation_moves_a_bright_square() -> None:
    shift = AugmentConfig(max_rotation_deg=0.0, max_shear_deg=0.0, max_translation=0.25,
                          zoom_range=(1.0, 1.0), max_noise_std=0.0)
    image = torch.zeros(1, 1, 64, 64)
    image[..., 28:36, 28:36] = 1.0
    # augment draws its affine map first, so the same seed reproduces it here.
    theta = random_affine(1, shift, torch.Generator().manual_seed(3))
    out = augment(image, shift, torch.Generator().manual_seed(3))
    rows, cols = torch.nonzero(out[0, 0] > 0.5, as_tuple=True)
    # affine_grid samples input at x_in = x_out + t, so content moves by -t * side / 2 pixels.
    moved = torch.stack([rows.float().mean() - 31.5, cols.float().mean() - 31.5])
    expected = -theta[0, :, 2].flip(0) * 32.0  # (row, col) = (y, x)
    torch.testing.assert_close(moved, expected, atol=1.0, rtol=0)


@pytest.mark.parametrize("values", [
    dict(max_rotation_deg=-1.0), dict(max_translation=0.9), dict(zoom_range=(1.2, 1.1)),
    dict(max_noise_std=2.0), dict(zoom_range=(0.0, 1.0)),
])
def test_invalid_ranges_raise(values: dict) -> None:
    with pytest.raises(SpecError):
        AugmentConfig(**values)


# ---- scanner-shift families and named policies -------------------------------------------------

OFF = dict(max_rotation_deg=0.0, max_shear_deg=0.0, max_translation=0.0, zoom_range=(1.0, 1.0),
           max_noise_std=0.0)
"""The paper's families switched off: a test turns on only the family it checks."""


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_keeps_shape_dtype_range_and_device(name: str) -> None:
    images = _batch(size=16)
    out = augment(images, policy(name), torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.device == images.device
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


def test_every_channel_of_an_image_gets_the_same_transform() -> None:
    one = _batch(size=6)
    two = torch.cat([one, one], dim=1)  # (B, 2, H, W): the second channel a copy of the first
    out = augment(two, dataclasses.replace(policy("scanner"), max_noise_std=0.0),
                  torch.Generator().manual_seed(3))
    assert out.shape == two.shape
    torch.testing.assert_close(out[:, 0], out[:, 1])  # same geometry, intensity and blur
    again = augment(two, policy("scanner"), torch.Generator().manual_seed(3))
    assert torch.equal(again, augment(two, policy("scanner"), torch.Generator().manual_seed(3)))


def test_scanner_policy_is_seeded() -> None:
    images = _batch(size=16)
    first = augment(images, policy("scanner"), torch.Generator().manual_seed(5))
    again = augment(images, policy("scanner"), torch.Generator().manual_seed(5))
    other = augment(images, policy("scanner"), torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_policies_name_the_paper_and_add_one_family_each() -> None:
    assert policy("paper") == AugmentConfig()
    for family, fields in FAMILIES.items():
        config = policy(family)
        for name, value in fields.items():
            assert getattr(config, name) == value
        assert config.max_rotation_deg == AugmentConfig().max_rotation_deg
    with pytest.raises(SpecError, match="Unknown augmentation policy"):
        policy("scaner")


def test_merged_joins_families_on_the_paper_policy() -> None:
    assert merged() == policy("paper") and merged(*FAMILIES) == policy("scanner")
    both = merged("intensity", "bias")
    for name, value in {**FAMILIES["intensity"], **FAMILIES["bias"]}.items():
        assert getattr(both, name) == value
    assert both.flip_probability == policy("paper").flip_probability
    with pytest.raises(SpecError, match="Unknown augmentation families"):
        merged("intensity", "nope")


def test_ranges_from_json_lists_become_tuples() -> None:
    config = AugmentConfig(zoom_range=[0.9, 1.1], fov_crop_range=[1.0, 1.5],
                           gamma_range=[0.7, 1.4])
    assert config == AugmentConfig(zoom_range=(0.9, 1.1), fov_crop_range=(1.0, 1.5),
                                   gamma_range=(0.7, 1.4))
    hash(config)


def test_flip_with_probability_one_mirrors_left_right() -> None:
    images = _batch()
    out = augment(images, AugmentConfig(**OFF, flip_probability=1.0),
                  torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images.flip(-1), atol=1e-5, rtol=0)


def test_aspect_keeps_area_and_bounds_the_axis_ratio() -> None:
    config = AugmentConfig(**OFF, max_aspect=1.5)
    linear = random_affine(256, config, torch.Generator().manual_seed(0))[:, :, :2]
    torch.testing.assert_close(torch.linalg.det(linear), torch.ones(256))
    ratio = linear[:, 0, 0] / linear[:, 1, 1]
    assert ratio.min() >= 1 / 1.5 - 1e-5 and ratio.max() <= 1.5 + 1e-5
    assert ratio.max() / ratio.min() > 1.5  # both directions are drawn


def test_fov_crop_window_stays_inside_the_image() -> None:
    config = AugmentConfig(**OFF, fov_crop_range=(1.25, 2.0))
    theta = random_affine(512, config, torch.Generator().manual_seed(0))
    scale = theta[:, 0, 0]  # 1 / crop
    assert scale.min() >= 0.5 - 1e-6 and scale.max() <= 0.8 + 1e-6
    # the sampled window [t - 1/crop, t + 1/crop] lies within [-1, 1] on both axes
    assert (theta[:, :, 2].abs() + scale[:, None] <= 1.0 + 1e-5).all()


def test_gamma_alone_raises_intensities_to_the_drawn_power() -> None:
    images = _batch()
    out = augment(images, AugmentConfig(**OFF, gamma_range=(2.0, 2.0)),
                  torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images**2, atol=1e-5, rtol=0)


def test_bias_field_is_smooth_and_keeps_the_mean_of_a_flat_image() -> None:
    flat = torch.full((8, 1, 32, 32), 0.5)
    out = bias_field(flat, 0.3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.mean(dim=(-2, -1)), torch.full((8, 1), 0.5))
    assert out.std() > 0.01
    # smooth: neighbouring pixels differ far less than the field varies across the image
    step = (out[..., 1:] - out[..., :-1]).abs().max()
    assert step < 0.2 * (out.amax(dim=(-2, -1)) - out.amin(dim=(-2, -1))).max()


def test_remap_keeps_the_background_dark_and_changes_the_contrast() -> None:
    images = _batch()
    images[..., :4, :] = 0.0
    out = intensity_remap(images, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert out[..., :4, :].abs().max() == 0.0
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out - images).abs().mean() > 0.05


def test_blur_spreads_a_point_keeps_its_mass_and_leaves_flat_images_alone() -> None:
    point = torch.zeros(4, 1, 33, 33)
    point[..., 16, 16] = 1.0
    out = gaussian_blur(point, 0.05, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.sum(dim=(-2, -1)), torch.ones(4, 1))
    assert out[..., 16, 16].max() < 1.0
    flat = torch.full((4, 1, 33, 33), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 0.05, torch.Generator().manual_seed(0)), flat)


@pytest.mark.parametrize("values", [
    dict(max_aspect=0.5), dict(fov_crop_range=(0.8, 1.2)), dict(flip_probability=1.5),
    dict(gamma_range=(0.0, 1.0)), dict(max_blur_sigma=0.5), dict(max_remap=2.0),
])
def test_invalid_scanner_ranges_raise(values: dict) -> None:
    with pytest.raises(SpecError):
        AugmentConfig(**values)
