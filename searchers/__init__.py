"""GP search over any Ray Tune space, as a Ray Tune Searcher.

`GPSearch` (gp_search.py) is the only part that imports Ray; it is loaded lazily so that the math
modules (space, gp, grid, acquisition, batch, candidates, feasibility, warping, ties, core) import
without Ray. The default preset acquires with EI and preset "paper" with the paper's dual-target
PI, so the class is named for the GP, not for one acquisition (formerly `GPPISearch`).
"""

from __future__ import annotations

from typing import Any

from searchers.settings import PRESETS, SearchSettings, resolve_settings
from searchers.space import SearchSpace, SpaceSettings, build_space

__all__ = ["GPSearch", "PRESETS", "SearchSettings", "SearchSpace",
           "SpaceSettings", "build_space", "paper_space", "resolve_settings"]


def __getattr__(name: str) -> Any:
    if name in ("GPSearch", "paper_space"):
        from searchers import gp_search  # deferred: importing Ray takes ~1 s

        return getattr(gp_search, name)
    raise AttributeError(f"module 'searchers' has no attribute {name!r}")
