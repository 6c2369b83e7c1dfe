"""The base of the project's error hierarchy, shared by every layer.

Every error a user can cause derives from `MriTuneError`, so the command line can print it as one
clean message (what was wrong, the constraint, what was received, how to fix) and exit non-zero.
Each layer above adds its own small types (`searchers.errors`, `mri_tune.errors`); they subclass
these, never the other way.
"""

from __future__ import annotations


class MriTuneError(Exception):
    """Base of every error mri-tune raises on purpose."""


class InputError(MriTuneError, ValueError):
    """Bad user input: a manifest row, a volume file, a command-line value."""


class StoreError(MriTuneError):
    """A slice store that cannot be read: missing, corrupt, or of an unknown format version."""
