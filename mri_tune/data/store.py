"""Reading the HDF5 slice store (format: docs/ARCHITECTURE.md; written only by
`mri_tune_datasets.writer`).

`SliceStore` reads the store's attributes once on construction (a short-lived handle, closed
again) and opens the data lazily, once per process: a handle is never carried across a fork or
a pickle (Ray workers, DataLoader workers). A split is stored contiguously, so `load_split` is
one contiguous read per dataset, into memory or onto a torch device.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from mri_tune_core.errors import InputError, StoreError
from mri_tune_core.store_format import (
    FORMAT_VERSION,
    PLANES,
    REQUIRED_DATASETS,
    SPLITS,
    SUPPORTED_FORMAT_VERSIONS,
)

__all__ = ["FORMAT_VERSION", "PLANES", "SPLITS", "SliceStore", "SplitData", "format_info",
           "person_of_volume"]


@dataclass(frozen=True)
class SplitData:
    """One split in memory (or on a device); row i of every tensor is the same slice."""

    images: torch.Tensor  # (N, H, W) uint8, or (N, C, H, W) for a store of C channels
    labels: torch.Tensor  # (N,) int64, index into SliceStore.classes
    volume: torch.Tensor  # (N,) int64, row of SliceStore.volumes()
    plane: torch.Tensor  # (N,) uint8, index into PLANES
    slice_index: torch.Tensor  # (N,) int32, position along the plane's axis

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def person_of_volume(volumes: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """(V,) int64: for each row of a volume table (`SliceStore.volumes()`, in index order), the
    rank of its subject among the table's sorted subjects; `person[split.volume]` gives each
    slice's person."""
    subjects = [str(row["subject"]) for row in volumes]
    rank = {name: i for i, name in enumerate(sorted(set(subjects)))}
    return torch.tensor([rank[name] for name in subjects], dtype=torch.int64)


class SliceStore:
    """A slice store on disk. Cheap to construct and to pickle; data is read on demand."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"store not found: {self.path}; build one with `mri-tune ingest`")
        try:
            with h5py.File(self.path, "r") as f:
                attrs = dict(f.attrs)
                missing = [name for name in REQUIRED_DATASETS if name not in f]
                image_dims = f["images"].ndim if "images" in f else 3
                channels = f["images"].shape[1] if image_dims == 4 else 1
        except OSError as err:
            raise StoreError(f"{self.path} is not a readable HDF5 store ({err}); rebuild it with "
                             "`mri-tune ingest`") from err
        version = attrs.get("format_version")
        version = version.item() if isinstance(version, np.generic) else version
        if not isinstance(version, int) or version not in SUPPORTED_FORMAT_VERSIONS:
            raise StoreError(
                f"{self.path} has store format version {version!r}; this mri-tune reads "
                f"{list(SUPPORTED_FORMAT_VERSIONS)}; re-ingest it with this version of mri-tune")
        if missing:
            raise StoreError(f"{self.path} lacks the dataset(s) {missing}; the store is "
                             "incomplete, re-ingest it")
        self.format_version = int(version)
        self.channels = int(channels)
        """Image channels per slice: 1, or 2 with a field of view (images (N, 2, H, W))."""
        try:
            self.classes: list[str] = _json_attr(attrs, "classes", list)
            self.image_size: tuple[int, int] = tuple(int(v) for v in attrs["image_size"])
            self.split_ranges: dict[str, tuple[int, int]] = {
                k: (int(a), int(b))
                for k, (a, b) in _json_attr(attrs, "split_ranges", dict).items()}
            self.provenance: dict[str, Any] = _json_attr(attrs, "provenance", dict, "{}")
            self.skipped: list[dict] = _json_attr(attrs, "skipped", list, "[]")
            self.warnings: list[str] = _json_attr(attrs, "warnings", list, "[]")
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as err:
            raise StoreError(f"{self.path} has a damaged or hand-edited attribute "
                             f"({type(err).__name__}: {err}); only `mri-tune ingest` writes "
                             "stores. Re-ingest it with `mri-tune ingest`") from err
        if len(self.image_size) != 2 or any(k not in SPLITS for k in self.split_ranges) or any(
                not 0 <= a <= b for a, b in self.split_ranges.values()):
            raise StoreError(f"{self.path} has inconsistent attributes (image_size "
                             f"{self.image_size}, split_ranges {self.split_ranges}); it was "
                             "edited. Re-ingest it with `mri-tune ingest`")
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Parameters that `mri_tune_datasets.preprocess.volume_file_to_slices` takes to
        preprocess a new volume exactly as this store's slices were."""
        return dict(self.provenance.get("preprocessing", {}))

    def __len__(self) -> int:
        return max(stop for _, stop in self.split_ranges.values())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None  # never pickle an open handle
        return state

    def _handle(self) -> h5py.File:
        """The process's own read handle, opened on first use (and again after a fork)."""
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    def split_size(self, split: str) -> int:
        """Slices of one split (0 for a split the store does not have)."""
        start, stop = self.split_ranges.get(split, (0, 0))
        return stop - start

    def load_split(self, split: str, device: torch.device | str | None = None) -> SplitData:
        """Read one split in one contiguous read per dataset; onto `device` if given."""
        if split not in SPLITS:
            raise InputError(f"split must be one of {list(SPLITS)}; got {split!r}")
        start, stop = self.split_ranges.get(split, (0, 0))
        f = self._handle()
        names = ("images", "labels", "volume", "plane", "slice_index")
        if any(stop > f[name].shape[0] for name in names):
            raise StoreError(f"{self.path} says its {split} split ends at slice {stop}, past the "
                             f"end of its datasets ({min(f[n].shape[0] for n in names)} slices); "
                             "it was edited or truncated. Re-ingest it with `mri-tune ingest`")
        arrays = {name: np.empty((stop - start,) + f[name].shape[1:], dtype=f[name].dtype)
                  for name in names}
        for name, array in arrays.items():
            if stop > start:
                f[name].read_direct(array, np.s_[start:stop])
        tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
        if device is not None:
            tensors = {name: t.to(device) for name, t in tensors.items()}
        return SplitData(**tensors)

    def volumes(self, split: str | None = None) -> list[dict[str, Any]]:
        """Rows of the volume table (index = the `volume` id of its slices), optionally of one
        split: path, part, region, subject, split, row, format, acquisition_plane, n_slices,
        start, stop, source_shape, notes, metadata."""
        table = self._handle()["volumes"]
        columns = {name: table[name][()] for name in table}
        rows = []
        for i in range(len(columns["split"])):
            row = {"index": i}
            for name, values in columns.items():
                value = values[i]
                if isinstance(value, bytes):
                    value = value.decode("utf-8")
                    if name in ("source_shape", "notes", "metadata"):
                        value = json.loads(value)
                elif isinstance(value, np.generic):
                    value = value.item()
                row[name] = value
            row["split"] = SPLITS[row["split"]]
            if split is None or row["split"] == split:
                rows.append(row)
        return rows

    def info(self) -> dict[str, Any]:
        """The `store-info --json` summary."""
        f = self._handle()
        labels, split_codes = f["labels"][()], f["split"][()]
        planes = f["plane"][()]
        volumes = self.volumes()
        info: dict[str, Any] = {
            "n_slices": int(len(labels)),
            "image_size": list(self.image_size),
            "classes": list(self.classes),
            "splits": {}, "subjects": {}, "planes": {},
            "skipped": self.skipped,
            "provenance": self.provenance,
            "format_version": self.format_version,
            "n_volumes": len(volumes),
            "warnings": self.warnings,
        }
        for code, split in enumerate(SPLITS):
            in_split = split_codes == code
            counts = np.bincount(labels[in_split], minlength=len(self.classes))
            info["splits"][split] = {c: int(n) for c, n in zip(self.classes, counts, strict=True)}
            plane_counts = np.bincount(planes[in_split], minlength=len(PLANES))
            info["planes"][split] = {p: int(n) for p, n in zip(PLANES, plane_counts, strict=True)}
            info["subjects"][split] = sorted({v["subject"] for v in volumes if v["split"] == split})
        return info


def _json_attr(attrs: dict[str, Any], name: str, kind: type, default: str | None = None
               ) -> Any:
    """A JSON-string attribute of the store, of the expected JSON type."""
    raw = attrs[name] if default is None else attrs.get(name, default)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    value = json.loads(raw)
    if not isinstance(value, kind):
        raise TypeError(f"attribute {name!r} must be a JSON {kind.__name__}, got "
                        f"{type(value).__name__}")
    return value


def format_info(info: dict[str, Any]) -> str:
    """Human summary of `SliceStore.info()`."""
    h, w = info["image_size"]
    lines = [f"{info['n_slices']} slices of {h}x{w} from {info.get('n_volumes', '?')} volumes, "
             f"classes: {', '.join(info['classes'])}"]
    for split in SPLITS:
        counts = ", ".join(f"{c} {n}" for c, n in info["splits"][split].items())
        lines.append(f"  {split:<10} {len(info['subjects'][split]):>3} subjects, "
                     f"{sum(info['splits'][split].values()):>6} slices: {counts}")
    prep = info["provenance"].get("preprocessing", {})
    if prep:
        lines.append("preprocessing: " + ", ".join(f"{k}={v}" for k, v in prep.items()))
    lines.extend(info.get("warnings", []))
    if info["skipped"]:
        lines.append(f"skipped {len(info['skipped'])} row(s):")
        lines.extend(f"  row {s['row']} {s['path']}: {s['reason']}" for s in info["skipped"])
    return "\n".join(lines)
