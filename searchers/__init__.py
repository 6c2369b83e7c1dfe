"""GP search over any Ray Tune space, as a Ray Tune Searcher.

`GPSearch` (gp_search.py) is the only part that imports Ray; it is loaded lazily so that the math
modules (space, gp, grid, acquisition, batch, candidates, feasibility, warping, core) import
without Ray. `GPPISearch` is the former name of `GPSearch`, kept for the application until it
renames its import (the default preset acquires with EI; preset "paper" with dual-target PI).
"""

from __future__ import annotations

from typing import Any

from searchers.settings import PRESETS, SearchSettings, resolve_settings
from searchers.space import SearchSpace, SpaceSettings, build_space, paper_space

__all__ = ["GPPISearch", "GPSearch", "PRESETS", "SearchSettings", "SearchSpace",
           "SpaceSettings", "build_space", "paper_space", "resolve_settings"]


def __getattr__(name: str) -> Any:
    if name in ("GPSearch", "GPPISearch"):
        from searchers.gp_search import GPSearch  # deferred: importing Ray takes ~1 s

        return GPSearch
    raise AttributeError(f"module 'searchers' has no attribute {name!r}")
