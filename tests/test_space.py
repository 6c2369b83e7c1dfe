"""Ray Tune param space -> finite grid (searchers/space.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ray import tune

from mri_tune_core.paper import BASELINE
from searchers.errors import SearchSpaceError
from searchers.gp_search import paper_space
from searchers.settings import resolve_settings
from searchers.space import SpaceSettings, build_space


def test_paper_space_is_table_1_of_the_paper():
    space = build_space(paper_space())
    assert space.size == 470_400
    values = {d.name: d.values for d in space.dimensions}
    assert values["num_blocks"] == (1, 2, 3, 4, 5)
    assert values["convs_per_block"] == tuple(range(1, 8))
    assert values["filters"] == (4, 8, 16, 32, 64, 128)
    assert values["kernel_size"] == (3, 5)
    assert values["learning_rate"] == tuple(10.0**e for e in range(-7, 1))
    assert values["batch_size"] == (4, 8, 16, 32, 64, 128, 256)
    assert values["epochs"] == tuple(range(10, 101, 10))
    assert set(values["augmentation"]) == {True, False}
    scales = {d.name: d.scale for d in space.dimensions}
    assert scales["filters"] == scales["learning_rate"] == scales["batch_size"] == "log"
    assert scales["augmentation"] == "categorical"
    assert space.config(space.index_of(BASELINE)) == BASELINE


def test_log_scale_encodes_powers_of_two_evenly():
    space = build_space({"filters": tune.choice([4, 8, 16, 32]), "n": tune.lograndint(1, 101)})
    filters, n = space.dimensions
    np.testing.assert_allclose(filters.encoded, [0, 1 / 3, 2 / 3, 1])
    assert n.scale == "log" and n.values == tuple(range(1, 101))
    assert n.encoded[9] == pytest.approx(math.log(10) / math.log(100))


def test_integer_and_quantized_bounds_follow_ray():
    space = build_space({"a": tune.randint(0, 3), "b": tune.qrandint(10, 30, 10),
                         "c": tune.quniform(0.0, 1.0, 0.25)})
    a, b, c = space.dimensions
    assert a.values == (0, 1, 2)  # upper exclusive
    assert b.values == (10, 20, 30)  # q > 1: upper inclusive
    assert c.values == (0.0, 0.25, 0.5, 0.75, 1.0)


def test_continuous_domains_use_the_configured_resolution():
    space = build_space({"lr": tune.loguniform(1e-4, 1e-1), "m": tune.uniform(0, 1)},
                        SpaceSettings(resolution=4))
    lr, m = space.dimensions
    np.testing.assert_allclose(lr.values, [1e-4, 1e-3, 1e-2, 1e-1])
    np.testing.assert_allclose(m.values, [0, 1 / 3, 2 / 3, 1])
    assert space.size == 16


def test_fine_limit_refines_continuous_domains_as_far_as_the_space_allows():
    space = {"x": tune.uniform(-5, 10), "y": tune.uniform(0, 15), "k": tune.choice([1, 2, 3, 4])}
    coarse = build_space(space, SpaceSettings(resolution=8, fine_limit=0))
    fine = build_space(space, SpaceSettings(resolution=8, fine_limit=4 * 100))
    assert coarse.shape == (8, 8, 4)
    assert fine.shape == (10, 10, 4)  # floor(sqrt(400 / 4)) points per continuous domain
    np.testing.assert_allclose(fine.dimensions[0].values, np.linspace(-5, 10, 10))
    assert fine.dimensions[2].values == (1, 2, 3, 4)  # discrete domains are not touched
    # never below the resolution, never above the per-dimension cap
    assert build_space(space, SpaceSettings(resolution=8, fine_limit=16)).shape == (8, 8, 4)
    capped = SpaceSettings(resolution=8, fine_limit=10**9, max_values_per_dimension=50)
    assert build_space(space, capped).shape == (50, 50, 4)
    with pytest.raises(SearchSpaceError, match="fine_limit"):
        SpaceSettings(fine_limit=-1)


def test_the_default_preset_refines_a_small_continuous_space_and_the_paper_preset_does_not():
    box = {"x": tune.uniform(-5, 10), "y": tune.uniform(0, 15)}
    default = build_space(box, resolve_settings("default").space_settings)
    paper = build_space(box, resolve_settings("paper").space_settings)
    assert default.shape == (128, 128)  # 16,384 configurations, the default's limit
    assert paper.shape == (64, 64)
    wide = {f"x{i}": tune.uniform(0, 1) for i in range(6)}  # 64^6 is already over the limit
    assert build_space(wide, resolve_settings("default").space_settings).shape == (64,) * 6


def test_uneven_numeric_choices_are_placed_at_evenly_spaced_ranks_when_asked():
    space = {"l2": tune.choice([10.0, 0.0, 1.0, 0.1]),  # 0 then decades: neither even nor geometric
             "lr": tune.choice([0.01, 0.03, 0.1, 0.3]),  # hand-written, not exactly geometric
             "depth": tune.choice([2, 4, 6, 8]),  # evenly spaced: linear either way
             "width": tune.choice([8, 16, 32, 64])}  # geometric: log either way
    linear = build_space(space, SpaceSettings(uneven_choices="linear"))
    rank = build_space(space, SpaceSettings(uneven_choices="rank"))
    l2_linear, l2_rank = linear.dimensions[0], rank.dimensions[0]
    assert l2_linear.values == l2_rank.values == (0.0, 0.1, 1.0, 10.0)
    np.testing.assert_allclose(l2_linear.encoded, [0.0, 0.01, 0.1, 1.0])
    assert l2_rank.scale == "rank"
    np.testing.assert_allclose(l2_rank.encoded, [0.0, 1 / 3, 2 / 3, 1.0])
    assert rank.dimensions[1].scale == "rank" and linear.dimensions[1].scale == "linear"
    for name, scale in (("depth", "linear"), ("width", "log")):
        a = next(d for d in linear.dimensions if d.name == name)
        b = next(d for d in rank.dimensions if d.name == name)
        assert a.scale == b.scale == scale
        np.testing.assert_allclose(a.encoded, b.encoded)
    # a value between the choices snaps to the nearest number, a choice to itself
    assert l2_rank.nearest(0.4) == 1 and l2_rank.nearest(10.0) == 3
    # a restored search keeps the encoding it was saved with
    again = type(rank).from_dict(rank.to_dict())
    np.testing.assert_allclose(again.dimensions[0].encoded, l2_rank.encoded)
    with pytest.raises(SearchSpaceError, match="uneven_choices"):
        SpaceSettings(uneven_choices="sorted")


def test_the_default_preset_ranks_uneven_choices_and_the_paper_preset_does_not():
    space = {"l2": tune.choice([0.0, 0.1, 1.0, 10.0])}
    assert build_space(space, resolve_settings("default").space_settings).dimensions[0].scale \
        == "rank"
    assert build_space(space, resolve_settings("paper").space_settings).dimensions[0].scale \
        == "linear"


@pytest.mark.parametrize("domain, words", [
    (tune.grid_search([1, 2]), "grid_search"),
    (tune.sample_from(lambda spec: 1), "sample_from"),
])
def test_unenumerable_domains_are_rejected_with_advice(domain, words):
    with pytest.raises(SearchSpaceError, match=words):
        build_space({"x": domain, "y": tune.randint(0, 2)})


def test_nested_spaces_and_constants_round_trip():
    model = {"depth": tune.randint(1, 4), "act": tune.choice(["relu", "gelu"])}
    space = build_space({"model": model, "seed": 7})
    config = space.config(3)
    assert config["seed"] == 7 and set(config["model"]) == {"depth", "act"}
    assert space.index_of(config) == 3
    assert space.index_of({"model/depth": config["model"]["depth"],
                           "model/act": config["model"]["act"]}) == 3
    with pytest.raises(SearchSpaceError, match="lacks"):
        space.index_of({"model": {"depth": 1}})


def test_definition_round_trips_through_plain_data():
    space = build_space(paper_space())
    again = type(space).from_dict(space.to_dict())
    assert again.shape == space.shape
    for a, b in zip(space.dimensions, again.dimensions, strict=True):
        np.testing.assert_array_equal(a.encoded, b.encoded)


def test_normal_domains_are_searched_over_three_sd_and_big_spaces_are_not_refused():
    space = build_space({"z": tune.randn(1.0, 2.0), "q": tune.qrandn(0.0, 1.0, 0.5)}
                        | {f"x{i}": tune.uniform(0, 1) for i in range(8)},
                        SpaceSettings(resolution=5))
    assert space.dimensions[0].values == (-5.0, -2.0, 1.0, 4.0, 7.0)
    assert space.dimensions[1].values == (-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0,
                                          1.5, 2.0, 2.5, 3.0)
    assert space.size == 5 * 13 * 5**8  # enumerable or not, the space is accepted


def test_canonical_values_merge_what_the_space_rounds_together():
    space = build_space({"n": tune.qrandint(8, 64, 8), "lr": tune.qloguniform(1e-3, 1e-1, 1e-3),
                         "act": tune.choice(["relu", "relu", "gelu"])})
    n, lr, act = space.dimensions
    assert act.values == ("relu", "gelu")  # a repeated category is one configuration
    assert space.row_of({"n": 17, "lr": 0.0104, "act": "relu"}) == space.row_of(
        {"n": 16, "lr": 0.01, "act": "relu"})
    assert space.row_config(space.row_of({"n": 17, "lr": 0.0104, "act": "gelu"})) == {
        "n": 16, "lr": 0.01, "act": "gelu"}
