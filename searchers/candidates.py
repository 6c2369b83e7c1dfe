"""Candidate configurations for spaces too large to score exhaustively (no Ray import).

A configuration is a row of value indices (space.py). When the product of the value lists is
larger than `SearchSettings.exhaustive_limit`, the acquisition is maximised over a candidate set
rebuilt at every refit (core.py), made of:

    quasi_random_rows      scrambled Sobol points, each coordinate mapped to floor(u * V_d)
    perturbed_rows         around given centres (the best trials, the pending ones): 1 to 3
                           dimensions moved, ordinal ones by a Gaussian step in [0, 1] encoding
                           whose sd is `step` (a fraction of the GP length scale), categorical
                           ones to another category at random
    coordinate_neighbours  every one-dimension move of a row: +-1, +-2, +-4, ... value indices on
                           ordinal dimensions, every other category on categorical ones; the
                           searcher's local search climbs the acquisition through them

Symbols: `shape` (D,) values per dimension; rows (m, D) int64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import qmc

from searchers.space import Dimension

_MAX_MOVED = 3  # a perturbation changes 1..3 dimensions: enough to leave a plateau, still local


def quasi_random_rows(shape: Sequence[int], count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, D) rows spread evenly over the product of the value lists (scrambled Sobol)."""
    sobol = qmc.Sobol(d=len(shape), scramble=True, seed=rng)
    exponent = max(int(np.ceil(np.log2(max(count, 2)))), 1)
    unit = sobol.random_base2(exponent)[:count]  # (count, D) in [0, 1)
    return np.minimum((unit * np.asarray(shape)).astype(np.int64), np.asarray(shape) - 1)


def perturbed_rows(centres: np.ndarray, dimensions: Sequence[Dimension], per_centre: int,
                   step: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(len(centres) * per_centre, D) rows near `centres` (k, D); step: (D,) sd in [0, 1] units."""
    dims = len(dimensions)
    rows = np.repeat(np.asarray(centres, dtype=np.int64).reshape(-1, dims), per_centre, axis=0)
    if len(rows) == 0:
        return rows
    # each row moves 1..3 distinct dimensions: the first k of a random permutation
    count = rng.integers(1, min(_MAX_MOVED, dims) + 1, size=len(rows))
    order = np.argsort(rng.random((len(rows), dims)), axis=1)
    moved = np.zeros((len(rows), dims), dtype=bool)
    np.put_along_axis(moved, order, np.arange(dims)[None, :] < count[:, None], axis=1)
    for d, dim in enumerate(dimensions):
        which = np.flatnonzero(moved[:, d])
        if dim.size > 1 and len(which):
            rows[which, d] = _move(dim, rows[which, d], float(step[d]), rng)
    return rows


def _move(dim: Dimension, index: np.ndarray, step: float,
          rng: np.random.Generator) -> np.ndarray:
    """New value indices for (m,) `index` of one dimension, never the same value."""
    if dim.scale == "categorical":
        other = rng.integers(dim.size - 1, size=len(index))
        return other + (other >= index)
    target = dim.encoded[index] + rng.normal(0.0, step, size=len(index))
    right = np.clip(np.searchsorted(dim.encoded, target), 1, dim.size - 1)
    nearer_left = target - dim.encoded[right - 1] < dim.encoded[right] - target
    moved = right - nearer_left
    same = moved == index  # a step shorter than the value spacing still moves by one value
    moved[same] = np.clip(index[same] + rng.choice((-1, 1), size=int(same.sum())), 0,
                          dim.size - 1)
    return moved


def coordinate_neighbours(row: np.ndarray, dimensions: Sequence[Dimension]) -> np.ndarray:
    """(m, D) every single-dimension move of `row` (D,): doubling steps, or other categories."""
    out = []
    for d, dim in enumerate(dimensions):
        if dim.scale == "categorical":
            targets = [v for v in range(dim.size) if v != row[d]]
        else:
            steps = 2 ** np.arange(int(np.ceil(np.log2(max(dim.size, 2)))))
            targets = [int(row[d] + s) for s in (*steps, *-steps) if 0 <= row[d] + s < dim.size]
        for value in targets:
            moved = row.copy()
            moved[d] = value
            out.append(moved)
    if not out:
        return np.empty((0, len(row)), dtype=np.int64)
    return np.array(out, dtype=np.int64)


def distinct_rows(rows: np.ndarray, exclude: set[tuple[int, ...]]) -> np.ndarray:
    """The distinct rows of (m, D) `rows` not in `exclude`, in first-seen order."""
    seen = set(exclude)
    keep = []
    for i, row in enumerate(map(tuple, rows.tolist())):
        if row not in seen:
            seen.add(row)
            keep.append(i)
    return rows[keep]
