"""The application's error types, on top of the ground layer's (`mri_tune_core.errors`).

`MriTuneError`, `InputError` and `StoreError` are the ground layer's, re-exported here so that
application code names one module; the searcher's `SearchSpaceError` lives in `searchers.errors`.
"""

from __future__ import annotations

from mri_tune_core.errors import InputError, MriTuneError, StoreError

__all__ = ["FAILURE_REASONS", "InputError", "MriTuneError", "SpecError", "StoreError",
           "TrainingFailure"]


class SpecError(MriTuneError, ValueError):
    """A CNN or training specification that cannot work (e.g. too many poolings for the image)."""


class TrainingFailure(MriTuneError):
    """A trial ended early for a known reason; `reason` is one of FAILURE_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


FAILURE_REASONS = ("oom", "invalid_spec", "diverged")
