"""CNNSpec validation and RegionCNN shapes over the corners of the paper's search space."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from mri_tune.errors import SpecError
from mri_tune.training.model import CNNSpec, RegionCNN
from mri_tune_core.paper import BASELINE

SIZE = (128, 128)
CORNERS = [CNNSpec(*values) for values in
           itertools.product(range(1, 6), (1, 7), (4, 128), (3, 5))]


def test_every_corner_of_table1_builds_with_the_right_shapes_quickly() -> None:
    start = time.perf_counter()
    for spec in CORNERS:
        model = RegionCNN(spec, 4, SIZE, device="meta")
        logits = model(torch.empty(1, 1, *SIZE, device="meta"))
        assert logits.shape == (1, 4), spec
        built = sum(p.numel() for p in model.parameters())
        assert built == spec.num_parameters(4, SIZE), spec
    # 40 corners, some with 2.1e9 parameters: shapes only, so building must not allocate.
    assert time.perf_counter() - start < 20.0


@pytest.mark.parametrize("num_blocks", [1, 3, 5])
def test_forward_on_cpu_gives_finite_logits(num_blocks: int) -> None:
    spec = CNNSpec(num_blocks=num_blocks, convs_per_block=1, filters=4, kernel_size=5)
    model = RegionCNN(spec, 4, SIZE, generator=torch.Generator().manual_seed(0))
    images = torch.rand(1, 1, *SIZE, generator=torch.Generator().manual_seed(1))
    logits = model(images)
    assert logits.shape == (1, 4)
    assert torch.isfinite(logits).all()


def test_baseline_is_the_papers_and_counts_parameters() -> None:
    spec = CNNSpec.from_dict(BASELINE)
    assert (spec.num_blocks, spec.convs_per_block, spec.filters, spec.kernel_size) == (5, 1, 64, 3)
    # 5 convs 3x3 (1->64, then 64->64), flatten 64*4*4 -> 4096 -> 1024 -> 4, computed by hand.
    convs = (9 * 1 + 1) * 64 + 4 * (9 * 64 + 1) * 64
    dense = (1024 + 1) * 4096 + (4096 + 1) * 1024 + (1024 + 1) * 4
    assert spec.num_parameters(4, SIZE) == convs + dense


def test_feature_map_shrinks_by_two_per_block() -> None:
    assert CNNSpec(3, 2, 8, 3).feature_size((128, 96)) == (16, 12)
    model = RegionCNN(CNNSpec(3, 2, 8, 3), 3, (128, 96), device="meta")
    features = model.features(torch.empty(2, 1, 128, 96, device="meta"))
    assert features.shape == (2, 8, 16, 12)


def test_same_generator_seed_gives_same_weights() -> None:
    spec = CNNSpec(2, 1, 4, 3)

    def weights(seed: int) -> torch.Tensor:
        model = RegionCNN(spec, 4, (32, 32), generator=torch.Generator().manual_seed(seed))
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(weights(3), weights(3))
    assert not torch.equal(weights(3), weights(4))


def test_too_many_blocks_for_the_image_is_rejected_with_advice() -> None:
    with pytest.raises(SpecError, match=r"num_blocks <= 4"):
        RegionCNN(CNNSpec(5, 1, 4, 3), 4, (16, 16))
    with pytest.raises(SpecError, match="at least 256 pixels"):
        CNNSpec(8, 1, 4, 3).feature_size(SIZE)


@pytest.mark.parametrize("values", [
    dict(num_blocks=0, convs_per_block=1, filters=4, kernel_size=3),
    dict(num_blocks=1, convs_per_block=1, filters=-4, kernel_size=3),
    dict(num_blocks=1, convs_per_block=1, filters=4, kernel_size=4),
    dict(num_blocks=1.0, convs_per_block=1, filters=4, kernel_size=3),
    dict(num_blocks=True, convs_per_block=1, filters=4, kernel_size=3),
])
def test_invalid_specs_raise_spec_error(values: dict) -> None:
    with pytest.raises(SpecError):
        CNNSpec(**values)


def test_from_dict_accepts_numpy_ints_and_rejects_fractions() -> None:
    values = dict(num_blocks=np.int64(2), convs_per_block=np.int32(3), filters=16.0,
                  kernel_size=5, learning_rate=0.1)
    assert CNNSpec.from_dict(values) == CNNSpec(2, 3, 16, 5)
    assert CNNSpec.from_dict(CNNSpec(2, 3, 16, 5).to_dict()) == CNNSpec(2, 3, 16, 5)
    with pytest.raises(SpecError, match="filters must be an integer"):
        CNNSpec.from_dict({**values, "filters": 16.5})
    with pytest.raises(SpecError, match="lacks the key 'kernel_size'"):
        CNNSpec.from_dict({k: v for k, v in values.items() if k != "kernel_size"})


def test_model_module_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = "import sys, mri_tune.training.model, mri_tune.training.run; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
