"""Names and version of the HDF5 slice store (the format is described in docs/ARCHITECTURE.md).

`mri_tune_datasets.writer` is the only code that writes a store; `mri_tune.store` reads it. Both
take the names below from here, so a change of the format is one change.
"""

from __future__ import annotations

FORMAT_VERSION = 1
"""The store format this code writes and reads."""
SUPPORTED_FORMAT_VERSIONS = (1,)
SPLITS = ("train", "validation", "test")
"""Split names, indexed by the store's `split` code."""
PLANES = ("axial", "coronal", "sagittal")
"""Plane names (canonical RAS frame), indexed by the store's `plane` code."""
REQUIRED_DATASETS = ("images", "labels", "volume", "plane", "slice_index", "split", "volumes")
"""The datasets every store holds (row i of the first six is one slice)."""
