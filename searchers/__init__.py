"""GP search over a finite grid of configurations, as a Ray Tune Searcher.

`GPPISearch` (gp_pi_search.py) is the only part that imports Ray; it is loaded lazily so that the
math modules (space, gp, grid, acquisition, feasibility, warping, core) import without Ray.
"""

from __future__ import annotations

from typing import Any

from searchers.settings import PRESETS, SearchSettings, resolve_settings
from searchers.space import SearchSpace, SpaceSettings, build_space, paper_space

__all__ = ["GPPISearch", "PRESETS", "SearchSettings", "SearchSpace",
           "SpaceSettings", "build_space", "paper_space", "resolve_settings"]


def __getattr__(name: str) -> Any:
    if name == "GPPISearch":
        from searchers.gp_pi_search import GPPISearch

        return GPPISearch
    raise AttributeError(f"module 'searchers' has no attribute {name!r}")
