"""The paper's CNN family, built from four typed numbers.

Bertrand et al. (ISBI 2017): `num_blocks` blocks, each one made of `convs_per_block`
convolutions of `filters` filters of size `kernel_size` x `kernel_size` with ReLU, followed by a
2x2 max-pooling; then fully connected layers of 4096 and 1024 units with ReLU; then a linear layer
over the classes (the softmax lives in the loss and in `predict_proba`).

Shapes, for a batch of B images of H x W and k = num_blocks:
    input             (B, 1, H, W)           float intensities in [0, 1]
    after block i     (B, filters, H // 2**i, W // 2**i)
    flattened         (B, filters * (H // 2**k) * (W // 2**k))
    logits            (B, num_classes)

Convolutions pad by kernel_size // 2 ("same"), so only the poolings shrink the image; a spec is
valid for an image size when k poolings leave at least one pixel on each side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from mri_tune.errors import SpecError
from mri_tune_core import paper

HIDDEN_UNITS = paper.HIDDEN_UNITS
"""Widths of the two fully connected layers of the paper."""

_POOL = 2


@dataclass(frozen=True)
class CNNSpec:
    """Architecture hyper-parameters of Table 1 (names as in the paper).

    num_blocks: convolution blocks, each ending in a 2x2 max-pooling (Table 1: 1..5).
    convs_per_block: convolutions (each followed by ReLU) per block (Table 1: 1..7).
    filters: output channels of every convolution (Table 1: 4..128, powers of two).
    kernel_size: odd side of the square kernels (Table 1: 3 or 5).
    """

    num_blocks: int
    convs_per_block: int
    filters: int
    kernel_size: int

    def __post_init__(self) -> None:
        for name in ("num_blocks", "convs_per_block", "filters", "kernel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(
                    f"CNNSpec.{name} must be an int >= 1. Got {value!r}; "
                    "pass a positive integer (Table 1 ranges: num_blocks 1..5, convs_per_block "
                    "1..7, filters 4..128, kernel_size 3 or 5)."
                )
        if self.kernel_size % 2 == 0:
            raise SpecError(
                f"CNNSpec.kernel_size must be odd so that 'same' padding keeps the image size. "
                f"Got {self.kernel_size}; use 3 or 5."
            )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CNNSpec:
        """Build from a dict holding (at least) the four Table 1 keys; numpy ints are accepted."""
        return cls(**{name: int_from(values, name) for name in
                      ("num_blocks", "convs_per_block", "filters", "kernel_size")})

    def feature_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(H', W') of the last block's output; raises SpecError when a side would reach 0."""
        height, width = image_size
        shrink = _POOL**self.num_blocks
        out = (height // shrink, width // shrink)
        if min(out) < 1:
            raise SpecError(
                f"A CNN with num_blocks={self.num_blocks} halves the image {self.num_blocks} "
                f"times, so each side must be at least {shrink} pixels. Got an image size of "
                f"{height}x{width}; use num_blocks <= {_max_blocks(min(height, width))} or a "
                "store ingested at a larger --size."
            )
        return out

    def num_parameters(self, num_classes: int, image_size: tuple[int, int]) -> int:
        """Exact count of trainable parameters, without building the model (a cost estimate)."""
        height, width = self.feature_size(image_size)
        k2 = self.kernel_size**2
        convs = self.num_blocks * self.convs_per_block
        conv_params = (k2 * 1 + 1) * self.filters  # first conv sees one channel
        conv_params += (convs - 1) * (k2 * self.filters + 1) * self.filters
        widths = (self.filters * height * width, *HIDDEN_UNITS, num_classes)
        dense = sum((w_in + 1) * w_out for w_in, w_out in zip(widths[:-1], widths[1:], strict=True))
        return conv_params + dense

    def convolution_cost(self, image_size: tuple[int, int]) -> tuple[float, float]:
        """(multiply-accumulates, activation values) of the convolutions for one image.

        Convolution i of block b (0-based) works on (H / 2^b) x (W / 2^b) pixels:
            MACs = H_b W_b k^2 c_in filters;  activations = sum over convolutions of filters H_b W_b
        """
        height, width = image_size
        k2 = self.kernel_size**2
        macs = activations = 0.0
        channels = 1
        for block in range(self.num_blocks):
            pixels = (height >> block) * (width >> block)
            for _ in range(self.convs_per_block):
                macs += pixels * k2 * channels * self.filters
                activations += pixels * self.filters
                channels = self.filters
        return macs, activations


def int_from(values: Mapping[str, Any], name: str) -> int:
    """values[name] as an int; SpecError when missing or not integral (numpy ints accepted)."""
    if name not in values:
        raise SpecError(f"The configuration lacks the key {name!r}; it has {sorted(values)}. "
                        f"Add {name!r}.")
    value = values[name]
    try:
        as_int = int(value)
    except (TypeError, ValueError) as err:
        raise SpecError(f"{name} must be an integer. Got {value!r}.") from err
    if as_int != value:
        raise SpecError(f"{name} must be an integer. Got {value!r}; round it before passing it.")
    return as_int


def _max_blocks(side: int) -> int:
    blocks = 0
    while side >= _POOL:
        side //= _POOL
        blocks += 1
    return blocks


class RegionCNN(nn.Module):
    """The CNN of the paper for one `CNNSpec`: a plain module, no config dicts, no Ray.

    Built on the "meta" device first and then materialised once on `device`, so a huge layer
    (1 block of 128 filters at 128x128 feeds 524,288 features into the 4096-unit layer) is
    allocated and initialised once, directly where it will train. Weights are Glorot-uniform and
    biases zero, as in Keras (the paper's framework), so Table 1's learning rates mean what they
    meant there (He initialisation made lr >= 0.01 diverge on the sample data). All draws come
    from `generator` (which must live on `device`). With device="meta" the
    module only carries shapes (cheap checks of the search space).
    """

    def __init__(
        self,
        spec: CNNSpec,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        in_channels: int = 1,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise SpecError(f"A classifier needs at least 2 classes. Got {num_classes}.")
        self.spec = spec
        self.num_classes = num_classes
        self.in_channels = int(in_channels)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        height, width = spec.feature_size(self.image_size)
        with torch.device("meta"):
            self.features = nn.Sequential(*_blocks(spec, self.in_channels))
            widths = (spec.filters * height * width, *HIDDEN_UNITS)
            self.classifier = nn.Sequential(
                nn.Flatten(),
                nn.Linear(widths[0], widths[1]), nn.ReLU(inplace=True),
                nn.Linear(widths[1], widths[2]), nn.ReLU(inplace=True),
                nn.Linear(widths[2], num_classes),
            )
        if torch.device(device).type != "meta":
            self.to_empty(device=device)
            self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Glorot-uniform weights (Keras' default) from `generator`, zero biases."""
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(layer.weight, generator=generator)
                nn.init.zeros_(layer.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch.

        images: (B, in_channels, H, W) float, intensities in [0, 1] (uint8 slices / 255).
        returns: (B, num_classes) logits.
        """
        centred = images * 2.0 - 1.0  # zero-centred inputs keep the first ReLUs half active
        return self.classifier(self.features(centred))


def _blocks(spec: CNNSpec, in_channels: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(spec.num_blocks):
        for _ in range(spec.convs_per_block):
            layers += [nn.Conv2d(channels, spec.filters, spec.kernel_size,
                                 padding=spec.kernel_size // 2),
                       nn.ReLU(inplace=True)]
            channels = spec.filters
        layers.append(nn.MaxPool2d(_POOL))
    return layers
