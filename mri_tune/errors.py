"""The project's error hierarchy.

Every error a user can cause derives from `MriTuneError`, so the command line can print it as one
clean message (what was wrong, the constraint, what was received, how to fix) and exit non-zero.
"""

from __future__ import annotations


class MriTuneError(Exception):
    """Base of every error mri-tune raises on purpose."""


class InputError(MriTuneError, ValueError):
    """Bad user input: a manifest row, a volume file, a command-line value."""


class StoreError(MriTuneError):
    """A slice store that cannot be read: missing, corrupt, or of an unknown format version."""


class SpecError(MriTuneError, ValueError):
    """A CNN or training specification that cannot work (e.g. too many poolings for the image)."""


class SearchSpaceError(MriTuneError, ValueError):
    """A search space the GP searcher cannot enumerate (grid_search, sample_from, empty domain)."""


class TrainingFailure(MriTuneError):
    """A trial ended early for a known reason; `reason` is one of FAILURE_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


FAILURE_REASONS = ("oom", "invalid_spec", "diverged")
