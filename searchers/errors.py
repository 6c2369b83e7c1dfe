"""The searcher's own error types (it depends only on the ground layer, mri_tune_core)."""

from __future__ import annotations

from mri_tune_core.errors import MriTuneError


class SearchSpaceError(MriTuneError, ValueError):
    """A search space or searcher setting that cannot work (sample_from, empty domain, ...)."""


class SearcherStateError(MriTuneError, ValueError):
    """A saved searcher state that this release cannot continue from."""
