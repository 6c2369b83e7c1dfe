"""Batched augmentation: shapes, value range, reproducibility, and the affine maps themselves."""

from __future__ import annotations

import math

import pytest
import torch

from mri_tune.errors import SpecError
from mri_tune.training.augment import AugmentConfig, augment, random_affine

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
