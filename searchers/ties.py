"""The resolution an objective distinguishes, inferred from exactly equal losses (no Ray import).

A continuous domain is searched at `resolution` points (space.py), but the objective may resolve
it more coarsely: a table, a quantised hyper-parameter inside the trainable, a setting that only
matters in steps. Two successful trials that differ only in continuous dimensions and return
bitwise equal losses show it: real noisy training practically never ties. For every continuous
dimension d the largest such difference seen is its gap g_d (in the [0, 1] encoding); a point is
*indistinct* from a used one (evaluated, failed or pending) when it has the same value in every
other dimension and lies within g_d of it in each continuous dimension d:

    indistinct(x, u) = AND_d [ |e_d(x) - e_d(u)| <= g_d ]     (g_d = 0 where no tie was seen)

The searcher never proposes an indistinct point from its model (core.py): it would cost a trial
to learn a loss it already has. With no ties (g = 0) this is the plain "never repeat a row" rule.

Symbols (D dimensions, n observations, m candidates, u used rows):
    `TieGaps.gaps`   (D,)    g_d, 0 for a dimension that is not continuous or has no tie
    `indistinct`     (m, D), (u, D) value indices -> (m,) bool
"""

from __future__ import annotations

import numpy as np

from searchers.space import Row, SearchSpace

_SLACK = 1e-12  # encoded values are computed, not exact: a gap equal to a step must cover it


class TieGaps:
    """Gaps g_d, updated on every successful trial; rebuilt by replaying the observations."""

    def __init__(self, space: SearchSpace) -> None:
        self._encoded = [d.encoded for d in space.dimensions]
        self._continuous = np.array([d.continuous for d in space.dimensions], dtype=bool)
        self.gaps = np.zeros(len(space.dimensions))  # (D,)
        self._rows_by_value: dict[float, list[Row]] = {}

    @property
    def active(self) -> bool:
        return bool(self.gaps.any())

    def add(self, row: Row, value: float) -> None:
        """Record a successful trial; widen the gaps by every earlier trial it ties with."""
        if not self._continuous.any():
            return
        same_value = self._rows_by_value.setdefault(value, [])
        for other in same_value:
            differ = np.array([a != b for a, b in zip(row, other, strict=True)])
            if differ.any() and not (differ & ~self._continuous).any():
                for d in np.flatnonzero(differ):
                    step = abs(self._encoded[d][row[d]] - self._encoded[d][other[d]])
                    self.gaps[d] = max(self.gaps[d], step)
        same_value.append(row)

    def indistinct(self, rows: np.ndarray, used: np.ndarray) -> np.ndarray:
        """(m,) whether each of `rows` (m, D) is indistinct from one of `used` (u, D)."""
        if len(used) == 0 or len(rows) == 0:
            return np.zeros(len(rows), dtype=bool)
        close = np.ones((len(rows), len(used)), dtype=bool)  # (m, u)
        for d, encoded in enumerate(self._encoded):
            if self.gaps[d] > 0:
                distance = np.abs(encoded[rows[:, d]][:, None] - encoded[used[:, d]][None, :])
                close &= distance <= self.gaps[d] + _SLACK
            else:
                close &= rows[:, d][:, None] == used[:, d][None, :]
        return close.any(axis=1)
