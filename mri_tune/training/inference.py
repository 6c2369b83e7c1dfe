"""A trained model's outputs: logits and softmax probabilities of uint8 slices, in batches."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mri_tune.errors import InputError
from mri_tune.training.device import DevicePolicy


def logits(model: nn.Module, images: torch.Tensor, policy: DevicePolicy,
           batch_size: int) -> torch.Tensor:
    """(N, classes) fp32 logits on the device for (N, [C,] H, W) uint8 images (no augmentation)."""
    was_training = model.training
    model.eval()
    chunks = []
    with torch.inference_mode(), policy.autocast():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(policy.device, non_blocking=True)
            chunks.append(model(policy.prepare(batch)).float())
    model.train(was_training)
    return torch.cat(chunks)


def predict_proba(model: nn.Module, images: torch.Tensor | np.ndarray,
                  device: torch.device | str | None = None, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, classes) float32 for (N, H, W) or (N, C, H, W) uint8 slices,
    in batches on `device`.

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
    scores = logits(model, images, policy, batch_size)
    return torch.softmax(scores, dim=1).cpu().numpy().astype(np.float32)
