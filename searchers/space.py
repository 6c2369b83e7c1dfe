"""A Ray Tune param space as a product of finite value lists (no Ray import).

Each Ray Tune domain becomes a finite, ordered tuple of distinct values (its canonical values:
after `q` rounding, integer casting and log grids) and an encoding of those values in [0, 1]. A
configuration is identified by its value indices, one per dimension (a `Row`), so two proposals
that the space would round to the same configuration are the same row. The searcher scores the
whole product when it is small (core.py) and a candidate set otherwise (candidates.py).

| domain | values | scale |
|---|---|---|
| `randint(a, b)`, `qrandint(a, b, q)` | every allowed integer | linear |
| `lograndint(a, b)`, `qlograndint` | every allowed integer | log |
| `uniform(a, b)` | `resolution` evenly spaced points, ends included | linear |
| `loguniform(a, b)` | `resolution` geometrically spaced points, ends included | log |
| `quniform`, `qloguniform` | every multiple of q in [a, b] | linear / log |
| `choice([...])` of numbers | the numbers, sorted | log if geometric, else linear or rank (below) |
| `randn(m, s)`, `qrandn` | `resolution` points (multiples of q) in m +- 3 s | linear |
| `choice([...])` of anything else | the distinct categories, in order | categorical |
| a plain value | a constant, not a dimension | - |

A choice of numbers that is neither evenly nor geometrically spaced (e.g. [0, 0.1, 1, 10]) is
placed at its values ("linear") or, with `SpaceSettings.uneven_choices="rank"`, at evenly spaced
ranks ("rank"), so that 0, 0.1 and 1 do not look almost the same to the GP.

`grid_search` and `sample_from` are rejected, as Ray's Optuna and HyperOpt searchers reject them:
a grid search has no place in a model-based search and a function of other parameters cannot be
enumerated. A domain with more than
`max_values_per_dimension` values is thinned to that many evenly spaced values (on its scale).

Symbols (D dimensions, V_d values in dimension d, N = prod V_d configurations):
    `SearchSpace.shape`        (D,)   V_d
    `Dimension.encoded`        (V_d,) position of each value in [0, 1] (categorical: unused;
                               rank: evenly spaced)
    `SearchSpace.unravel(i)`   (n,) flat grid indices -> (n, D) value indices
    `Dimension.sqdist(u, v)`   squared distance between value indices: (e_u - e_v)^2, or [u != v]
                               for a categorical dimension (one length scale for the whole choice).

The distance is separable over dimensions, which is what lets the GP score the whole grid fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from searchers.errors import SearchSpaceError

Scale = Literal["linear", "log", "rank", "categorical"]
UnevenChoices = Literal["linear", "rank"]
UNEVEN_CHOICES: tuple[str, ...] = ("linear", "rank")
Row = tuple[int, ...]  # one value index per dimension: a configuration's canonical identity

DEFAULT_RESOLUTION = 64  # points per continuous domain: 1.6% steps (measured: RESULTS_searchers.md)
DEFAULT_MAX_VALUES = 1000  # values kept per dimension, so per-dimension tables stay small
_NORMAL_WIDTH = 3.0  # randn(m, s) is searched over m +- 3 s (99.7% of its mass)
_SEP = "/"  # Ray's flattened-key separator for nested param spaces


@dataclass(frozen=True)
class SpaceSettings:
    """How continuous domains are discretised."""

    resolution: int = DEFAULT_RESOLUTION
    max_values_per_dimension: int = DEFAULT_MAX_VALUES
    # > 0: continuous domains get as many points as keep the whole space at most this many
    # configurations (never fewer than `resolution`, never more than `max_values_per_dimension`)
    fine_limit: int = 0
    # a choice of numbers neither evenly nor geometrically spaced, e.g. [0, 0.1, 1, 10]: placed
    # at their values ("linear": 0, 0.1 and 1 nearly coincide) or at evenly spaced ranks ("rank")
    uneven_choices: UnevenChoices = "linear"

    def __post_init__(self) -> None:
        if self.resolution < 2:
            raise SearchSpaceError(
                "resolution must be an int >= 2 (points per continuous domain); "
                f"got {self.resolution}. Use e.g. 20."
            )
        if self.max_values_per_dimension < 2:
            raise SearchSpaceError(
                "max_values_per_dimension must be an int >= 2; "
                f"got {self.max_values_per_dimension}."
            )
        if self.fine_limit < 0:
            raise SearchSpaceError(
                f"fine_limit must be an int >= 0 (0: off); got {self.fine_limit}."
            )
        if self.uneven_choices not in UNEVEN_CHOICES:
            raise SearchSpaceError(
                f"uneven_choices must be one of {UNEVEN_CHOICES}; got {self.uneven_choices!r}."
            )


@dataclass(frozen=True, eq=False)
class Dimension:
    """One searched hyper-parameter: its ordered values and their [0, 1] encoding."""

    name: str
    values: tuple[Any, ...]
    scale: Scale
    encoded: np.ndarray = field(repr=False)  # (V,)
    continuous: bool = False  # values are `resolution` points of a continuous domain (ours)

    @property
    def size(self) -> int:
        return len(self.values)

    def sqdist(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Squared distance between value indices `u` and `v` (broadcast together)."""
        if self.scale == "categorical":
            return (np.asarray(u) != np.asarray(v)).astype(np.float64)
        return (self.encoded[u] - self.encoded[v]) ** 2

    def nearest(self, value: Any) -> int:
        """Index of the value closest to `value` (exact match for a categorical dimension)."""
        if self.scale == "categorical":
            for i, candidate in enumerate(self.values):
                if candidate == value and type(candidate) is type(value):
                    return i
            raise SearchSpaceError(
                f"value {value!r} of '{self.name}' is not one of its choices {list(self.values)}; "
                "give one of the choices."
            )
        numeric = np.asarray(self.values, dtype=np.float64)
        if self.scale == "log" and value > 0:
            return int(np.argmin(np.abs(np.log(numeric) - math.log(value))))
        return int(np.argmin(np.abs(numeric - float(value))))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": list(self.values), "scale": self.scale,
                "continuous": self.continuous}


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """The finite grid: the product of the dimensions' values, plus constant entries."""

    dimensions: tuple[Dimension, ...]
    constants: Mapping[str, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(d.size for d in self.dimensions)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def unravel(self, flat: np.ndarray) -> np.ndarray:
        """(n,) flat indices -> (n, D) value indices (C order, first dimension slowest)."""
        return np.stack(np.unravel_index(np.asarray(flat, dtype=np.int64), self.shape), axis=-1)

    def config(self, flat: int) -> dict[str, Any]:
        """The nested Ray config dict of grid point `flat`, with Python scalars."""
        return self.row_config(tuple(int(i) for i in self.unravel(np.array([flat]))[0]))

    def row_config(self, row: Row) -> dict[str, Any]:
        """The nested Ray config dict of the configuration with value indices `row`."""
        flat_config = dict(self.constants)
        for dim, i in zip(self.dimensions, row, strict=True):
            flat_config[dim.name] = _python_scalar(dim.values[int(i)])
        return unflatten(flat_config)

    def row_of(self, config: Mapping[str, Any]) -> Row:
        """Value indices of the configuration nearest to `config` (nested or `a/b` keys)."""
        flat_config = flatten(config)
        missing = [d.name for d in self.dimensions if d.name not in flat_config]
        if missing:
            raise SearchSpaceError(
                f"config lacks the searched parameters {missing}; every point must set all of "
                f"{list(self.names)}. Got keys {sorted(flat_config)}."
            )
        return tuple(d.nearest(flat_config[d.name]) for d in self.dimensions)

    def index_of(self, config: Mapping[str, Any]) -> int:
        """Flat grid index of the configuration nearest to `config` (small spaces only)."""
        return int(np.ravel_multi_index(self.row_of(config), self.shape))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data definition (values and scales): enough to rebuild the grid exactly."""
        return {"dimensions": [d.to_dict() for d in self.dimensions],
                "constants": dict(self.constants)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        dims = tuple(_dimension(d["name"], tuple(d["values"]), d["scale"],
                                d.get("continuous", False)) for d in data["dimensions"])
        return cls(dimensions=dims, constants=dict(data["constants"]))


def build_space(param_space: Mapping[str, Any],
                settings: SpaceSettings | None = None) -> SearchSpace:
    """Enumerate a Ray Tune param space (possibly nested dicts) into a `SearchSpace`."""
    settings = settings or SpaceSettings()
    space = _build_space(param_space, settings)
    resolution = _fine_resolution(space, settings)
    if resolution > settings.resolution:
        space = _build_space(param_space, replace(settings, resolution=resolution))
    return space


def _fine_resolution(space: SearchSpace, settings: SpaceSettings) -> int:
    """Points per continuous domain that keep the space within `fine_limit` (0: no change)."""
    continuous = sum(d.continuous for d in space.dimensions)
    if settings.fine_limit <= 0 or continuous == 0:
        return settings.resolution
    others = math.prod(len(d.values) for d in space.dimensions if not d.continuous)
    per_dimension = int((settings.fine_limit / others) ** (1.0 / continuous) + 1e-9)
    return min(per_dimension, settings.max_values_per_dimension)


def _build_space(param_space: Mapping[str, Any], settings: SpaceSettings) -> SearchSpace:
    dims: list[Dimension] = []
    constants: dict[str, Any] = {}
    for name, domain in flatten(param_space, keep_grid_search=True).items():
        kind = type(domain).__name__
        if isinstance(domain, Mapping) and "grid_search" in domain:
            raise SearchSpaceError(
                f"'{name}' is a grid_search; the GP searcher builds its own grid and cannot mix "
                "in a grid search. Use tune.choice(values) instead."
            )
        if kind == "Function":
            raise SearchSpaceError(
                f"'{name}' is a sample_from / function domain, which cannot be enumerated into a "
                "finite grid. Use randint, choice, uniform or loguniform (and their q/log forms)."
            )
        if kind in ("Integer", "Float", "Categorical"):
            values, scale, continuous = _domain_values(name, domain, settings)
            dims.append(_dimension(name, values, scale, continuous))
        else:
            constants[name] = domain
    if not dims:
        raise SearchSpaceError(
            "the param space has no searchable domain (all entries are constants); add e.g. "
            "tune.choice or tune.randint entries."
        )
    return SearchSpace(dimensions=tuple(dims), constants=constants)


def flatten(config: Mapping[str, Any], prefix: str = "",
            keep_grid_search: bool = False) -> dict[str, Any]:
    """Nested dict -> {"a/b": value}; a {"grid_search": ...} dict stays a leaf if asked."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not (keep_grid_search and "grid_search" in value):
            out.update(flatten(value, f"{name}{_SEP}", keep_grid_search))
        else:
            out[name] = value
    return out


def unflatten(flat_config: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat_config.items():
        node = out
        *parents, leaf = name.split(_SEP)
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def _domain_values(name: str, domain: Any,
                   settings: SpaceSettings) -> tuple[tuple[Any, ...], Scale, bool]:
    """(values, scale, whether the values are our discretisation of a continuous domain)."""
    kind = type(domain).__name__
    if kind == "Categorical":
        return (*_choice_values(name, tuple(domain.categories), settings.uneven_choices), False)
    sampler = domain.get_sampler()
    quantum = getattr(sampler, "q", None)
    base = type(getattr(sampler, "sampler", sampler)).__name__.lstrip("_")
    if base not in ("Uniform", "LogUniform", "Normal"):
        raise SearchSpaceError(
            f"'{name}' uses the {base} sampler, which has no finite range to enumerate; use a "
            "uniform or log-uniform domain with bounds."
        )
    scale: Scale = "log" if base == "LogUniform" else "linear"
    lower, upper = domain.lower, domain.upper
    if base == "Normal":
        inner = getattr(sampler, "sampler", sampler)
        lower = inner.mean - _NORMAL_WIDTH * inner.sd
        upper = inner.mean + _NORMAL_WIDTH * inner.sd
    continuous = kind != "Integer" and quantum is None
    if kind == "Integer":
        values = _integer_values(lower, upper, quantum)
    elif quantum is not None:
        values = _quantized_float_values(lower, upper, quantum)
    else:
        values = _continuous_values(lower, upper, scale, settings.resolution)
    if not values:
        raise SearchSpaceError(
            f"'{name}' has no value in [{lower}, {upper}] (q={quantum}); widen "
            "the bounds or lower q."
        )
    return _thin(values, scale, settings.max_values_per_dimension), scale, continuous


def _integer_values(lower: int, upper: int, quantum: int | None) -> tuple[int, ...]:
    # Ray: randint / lograndint exclude the upper bound; q > 1 makes it inclusive.
    if quantum is None or quantum == 1:
        return tuple(range(int(lower), int(upper)))
    start = math.ceil(lower / quantum) * quantum
    return tuple(range(int(start), int(upper) + 1, int(quantum)))


def _quantized_float_values(lower: float, upper: float, quantum: float) -> tuple[float, ...]:
    first, last = math.ceil(lower / quantum - 1e-9), math.floor(upper / quantum + 1e-9)
    return tuple(round(k * quantum, 12) for k in range(first, last + 1))


def _continuous_values(lower: float, upper: float, scale: Scale,
                       resolution: int) -> tuple[float, ...]:
    if scale == "log":
        points = np.geomspace(lower, upper, resolution)
    else:
        points = np.linspace(lower, upper, resolution)
    return tuple(float(p) for p in points)


def _thin(values: tuple[Any, ...], scale: Scale, limit: int) -> tuple[Any, ...]:
    if len(values) <= limit:
        return values
    numeric = np.asarray(values, dtype=np.float64)
    axis = np.log(numeric) if scale == "log" else numeric
    wanted = np.linspace(axis[0], axis[-1], limit)
    keep = sorted({int(np.argmin(np.abs(axis - w))) for w in wanted})
    return tuple(values[i] for i in keep)


def _choice_values(name: str, categories: tuple[Any, ...],
                   uneven: UnevenChoices = "linear") -> tuple[tuple[Any, ...], Scale]:
    if not categories:
        raise SearchSpaceError(f"'{name}' is an empty choice; give it at least one category.")
    categories = _distinct(categories)
    numeric = all(isinstance(c, (int, float, np.number)) and not isinstance(c, (bool, np.bool_))
                  for c in categories)
    if not numeric or len(set(categories)) != len(categories):
        return categories, "categorical"
    values = tuple(sorted(categories))
    array = np.asarray(values, dtype=np.float64)
    if len(values) >= 3 and array[0] > 0:
        ratios = np.diff(np.log(array))
        if np.allclose(ratios, ratios[0], rtol=1e-6) and ratios[0] > 0:
            return values, "log"
    steps = np.diff(array)
    if len(values) >= 3 and uneven == "rank" and not np.allclose(steps, steps[0], rtol=1e-6):
        return values, "rank"
    return values, "linear"


def _distinct(categories: tuple[Any, ...]) -> tuple[Any, ...]:
    """The categories without repeats (1 and True stay distinct), in their first order."""
    out: list[Any] = []
    for category in categories:
        if not any(c == category and type(c) is type(category) for c in out):
            out.append(category)
    return tuple(out)


def _dimension(name: str, values: tuple[Any, ...], scale: Scale,
               continuous: bool = False) -> Dimension:
    if scale in ("categorical", "rank") or len(values) == 1:
        encoded = np.arange(len(values), dtype=np.float64) / max(len(values) - 1, 1)
    else:
        axis = np.asarray(values, dtype=np.float64)
        axis = np.log(axis) if scale == "log" else axis
        encoded = (axis - axis[0]) / (axis[-1] - axis[0])
    return Dimension(name=name, values=values, scale=scale, encoded=encoded,
                     continuous=continuous)


def _python_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
