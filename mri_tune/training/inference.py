"""A trained model's outputs: logits and softmax probabilities of uint8 slices, in batches.

Test-time views: `predict_proba(..., views=...)` averages the softmax over altered copies of the
slices (`TEST_VIEWS`), each of them an alteration the training augmentation also draws:
    identity   the slice as stored
    flip       mirrored along its first image axis (the training flip)
    zoom_in    the central 1/ZOOM of the field enlarged to the full image (a field-of-view crop)
    zoom_out   the slice shrunk by 1/ZOOM and centred on zero padding (as ingest pads)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mri_tune.errors import InputError
from mri_tune.training.device import DevicePolicy

TEST_VIEWS = ("identity", "flip", "zoom_in", "zoom_out")
ZOOM = 1.15


def _check_view(name: str) -> None:
    if name not in TEST_VIEWS:
        raise InputError(f"unknown test-time view {name!r}; choose from {', '.join(TEST_VIEWS)}")


def apply_view(images: torch.Tensor, name: str) -> torch.Tensor:
    """(N, [C,] H, W) uint8 -> the same shape and dtype, altered as TEST_VIEWS[name] says."""
    _check_view(name)
    if name == "identity":
        return images
    if name == "flip":
        return images.flip(-1)
    height, width = images.shape[-2:]
    x = images.reshape(-1, 1, height, width).float()
    h, w = round(height / ZOOM), round(width / ZOOM)  # the centred box, 1/ZOOM of each side
    top, left = (height - h) // 2, (width - w) // 2
    if name == "zoom_in":
        out = F.interpolate(x[..., top:top + h, left:left + w], size=(height, width),
                            mode="bilinear", align_corners=False)
    else:
        out = torch.zeros_like(x)
        out[..., top:top + h, left:left + w] = F.interpolate(
            x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8).reshape(images.shape)


def logits(model: nn.Module, images: torch.Tensor, policy: DevicePolicy,
           batch_size: int, view: str = "identity") -> torch.Tensor:
    """(N, classes) fp32 logits on the device for (N, [C,] H, W) uint8 images (no augmentation;
    each batch altered on the device as the test-time `view` says)."""
    _check_view(view)  # before the model changes mode
    was_training = model.training
    model.eval()
    chunks = []
    with torch.inference_mode(), policy.autocast():
        for start in range(0, images.shape[0], batch_size):
            batch = apply_view(images[start:start + batch_size].to(policy.device,
                                                                   non_blocking=True), view)
            chunks.append(model(policy.prepare(batch)).float())
    model.train(was_training)
    return torch.cat(chunks)


def predict_proba(model: nn.Module, images: torch.Tensor | np.ndarray,
                  device: torch.device | str | None = None, batch_size: int = 256,
                  views: tuple[str, ...] = ("identity",)) -> np.ndarray:
    """Softmax probabilities (N, classes) float32 for (N, H, W) or (N, C, H, W) uint8 slices,
    in batches on `device`; with several `views` (TEST_VIEWS), their mean.

    `device` defaults to the model's; the images may live anywhere (each batch is moved).
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim not in (3, 4):
        raise InputError(f"predict_proba needs (N, H, W) or (N, C, H, W) uint8 slices as the "
                         f"store holds them. Got {tuple(images.shape)} {images.dtype}.")
    channels = 1 if images.ndim == 3 else images.shape[1]
    expected = getattr(model, "in_channels", channels)
    if channels != expected:
        raise InputError(f"The model takes {expected} image channel(s) per slice and was given "
                         f"{channels}: preprocess the slices as the model's store was ingested "
                         "(its checkpoint records it; --field-of-view adds the second channel).")
    policy = DevicePolicy.for_device(
        device if device is not None else next(model.parameters()).device)
    model.to(policy.device)
    if not views:
        raise InputError("predict_proba needs at least one test-time view, e.g. ('identity',)")
    total = sum(torch.softmax(logits(model, images, policy, batch_size, name), dim=1)
                for name in views)
    return (total / len(views)).cpu().numpy().astype(np.float32)
