"""The only code that writes a slice store (format in docs/ARCHITECTURE.md).

Volumes arrive in reading order, before the split is known (the split is computed on the
subjects that survived reading). Their slices are appended to a raw staging file; `finish`
then writes the HDF5 store with every dataset grouped by split (train, validation, test) so
that a split is one contiguous read, into a temporary file beside `out`, and renames it onto
`out` only at the very end (`os.replace` is atomic on one filesystem). On any failure, or an
interrupt, the temporary files are removed and `out` is left untouched. Every step is linear
in the number of slices.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mri_tune_core.store_format import FORMAT_VERSION, PLANES, SPLITS
from mri_tune_datasets.preprocess import SliceBatch

logger = logging.getLogger(__name__)

_STRING = h5py.string_dtype(encoding="utf-8")


@dataclass(frozen=True)
class VolumeRecord:
    """One row of the store's volume table (everything but the split and slice range)."""

    path: str
    region: str
    subject: str
    row: int = 0
    part: str = ""
    format: str = ""
    acquisition_plane: str = ""
    source_shape: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


class StoreWriter:
    """Stage volumes with `add_volume`, then `finish(volume_split, attrs)`; use as a context
    manager so that an exception removes every temporary file."""

    def __init__(self, out: Path, image_size: int) -> None:
        self.out = Path(out)
        self.image_size = int(image_size)
        self.classes: list[str] = []
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.",
                                       suffix=".staging")
        self._staging_path = Path(staging)
        self._staging = os.fdopen(fd, "wb")
        self._tmp_path: Path | None = None
        self._records: list[VolumeRecord] = []
        self._n: list[int] = []
        self._plane: list[np.ndarray] = []
        self._slice_index: list[np.ndarray] = []

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()

    @property
    def n_slices(self) -> int:
        return int(sum(self._n))

    @property
    def records(self) -> list[VolumeRecord]:
        """The staged volumes, in the order they were added."""
        return list(self._records)

    @property
    def slice_counts(self) -> list[int]:
        """Slices of each staged volume, in the order they were added."""
        return list(self._n)

    def add_volume(self, record: VolumeRecord, batches: Sequence[SliceBatch]) -> int:
        """Append one volume's slices (all planes); returns its staging index."""
        size = (self.image_size, self.image_size)
        for b in batches:
            if b.images.dtype != np.uint8 or b.images.shape[1:] != size:
                raise ValueError(f"slices must be uint8 {size}; got {b.images.dtype} "
                                 f"{b.images.shape[1:]}")
            self._staging.write(np.ascontiguousarray(b.images).tobytes())
        self._records.append(record)
        self._n.append(sum(len(b.images) for b in batches))
        self._plane.append(np.concatenate(
            [np.full(len(b.images), PLANES.index(b.plane), np.uint8) for b in batches]
            or [np.zeros(0, np.uint8)]))
        self._slice_index.append(np.concatenate(
            [b.slice_index.astype(np.int32) for b in batches] or [np.zeros(0, np.int32)]))
        return len(self._records) - 1

    def finish(self, volume_split: Sequence[int], classes: Sequence[str],
               attrs: dict[str, Any]) -> Path:
        """Write the store grouped by split and rename it onto `out`; returns `out`.

        `volume_split[i]` is the split code of the i-th added volume; `classes` must hold every
        volume's region (label = index in `classes`); each of `attrs` is stored as JSON.
        """
        if len(volume_split) != len(self._records):
            raise ValueError(f"need one split per volume ({len(self._records)}); "
                             f"got {len(volume_split)}")
        self.classes = list(classes)
        missing = {r.region for r in self._records} - set(self.classes)
        if missing:
            raise ValueError(f"classes {self.classes} lack the regions {sorted(missing)}")
        self._staging.close()
        order = np.argsort(np.asarray(volume_split, dtype=np.int64), kind="stable")
        fd, tmp = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.", suffix=".tmp")
        os.close(fd)
        self._tmp_path = Path(tmp)
        with h5py.File(self._tmp_path, "w") as f:
            ranges = self._write_slices(f, order, volume_split)
            self._write_volume_table(f, order, volume_split)
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["classes"] = json.dumps(self.classes)
            f.attrs["image_size"] = [self.image_size, self.image_size]
            f.attrs["split_ranges"] = json.dumps(ranges)
            for key, value in attrs.items():
                f.attrs[key] = json.dumps(value)
        os.replace(self._tmp_path, self.out)
        self._tmp_path = None
        self.abort()
        logger.info("wrote %s: %d slices of %d volumes", self.out, self.n_slices, len(order))
        return self.out

    def _write_slices(self, f: h5py.File, order: np.ndarray, volume_split: Sequence[int]
                      ) -> dict[str, list[int]]:
        n_total, size = self.n_slices, self.image_size
        images = f.create_dataset("images", (n_total, size, size), dtype=np.uint8)
        staged = np.memmap(self._staging_path, dtype=np.uint8, mode="r",
                           shape=(n_total, size, size)) if n_total else None
        offsets = np.concatenate([[0], np.cumsum(self._n)]).astype(np.int64)
        columns = {"labels": [], "volume": [], "plane": [], "slice_index": [], "split": []}
        ranges = {name: [0, 0] for name in SPLITS}
        dst = 0
        for new_index, v in enumerate(order):
            n = self._n[v]
            if n:
                images[dst:dst + n] = staged[offsets[v]:offsets[v] + n]
            split = int(volume_split[v])
            label = self.classes.index(self._records[v].region)
            columns["labels"].append(np.full(n, label, np.int64))
            columns["volume"].append(np.full(n, new_index, np.int64))
            columns["plane"].append(self._plane[v])
            columns["slice_index"].append(self._slice_index[v])
            columns["split"].append(np.full(n, split, np.uint8))
            ranges[SPLITS[split]] = [ranges[SPLITS[split]][0] if ranges[SPLITS[split]][1]
                                     else dst, dst + n]
            dst += n
        del staged
        dtypes = {"labels": np.int64, "volume": np.int64, "plane": np.uint8,
                  "slice_index": np.int32, "split": np.uint8}
        for name, parts in columns.items():
            data = np.concatenate(parts) if parts else np.zeros(0, dtypes[name])
            f.create_dataset(name, data=data.astype(dtypes[name]))
        return _fill_empty_ranges(ranges)

    def _write_volume_table(self, f: h5py.File, order: np.ndarray,
                            volume_split: Sequence[int]) -> None:
        records = [self._records[v] for v in order]
        n = np.asarray([self._n[v] for v in order], dtype=np.int64)
        stop = np.cumsum(n)
        table = f.create_group("volumes")
        text = {
            "path": [r.path for r in records], "part": [r.part for r in records],
            "region": [r.region for r in records], "subject": [r.subject for r in records],
            "format": [r.format for r in records],
            "acquisition_plane": [r.acquisition_plane for r in records],
            "source_shape": [json.dumps(list(r.source_shape)) for r in records],
            "notes": [json.dumps(list(r.notes)) for r in records],
            "metadata": [json.dumps(r.metadata) for r in records],
        }
        for name, values in text.items():
            table.create_dataset(name, data=np.asarray(values, dtype=object), dtype=_STRING)
        table.create_dataset("row", data=np.asarray([r.row for r in records], dtype=np.int64))
        table.create_dataset("split", data=np.asarray([volume_split[v] for v in order], np.uint8))
        table.create_dataset("n_slices", data=n)
        table.create_dataset("start", data=stop - n)
        table.create_dataset("stop", data=stop)

    def abort(self) -> None:
        """Remove the staging and temporary files (idempotent); `out` is never touched here."""
        if not self._staging.closed:
            self._staging.close()
        for path in (self._staging_path, self._tmp_path):
            if path is not None and path.exists():
                path.unlink()


def _fill_empty_ranges(ranges: dict[str, list[int]]) -> dict[str, list[int]]:
    """An empty split gets the empty range at the end of the previous one."""
    end = 0
    for name in SPLITS:
        if ranges[name][1] == 0:
            ranges[name] = [end, end]
        end = ranges[name][1]
    return ranges
