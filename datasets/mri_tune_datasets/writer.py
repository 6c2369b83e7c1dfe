"""The only code that writes a slice store (format in docs/ARCHITECTURE.md).

Volumes arrive in reading order, before the split is known (the split is computed on the
subjects that survived reading). Their slices are appended to a raw staging file; `finish`
then writes the HDF5 store with every dataset grouped by split (train, validation, test) so
that a split is one contiguous read, into a temporary file beside `out`, and renames it onto
`out` only at the very end (`os.replace` is atomic on one filesystem). On any failure, or an
interrupt, the temporary files are removed and `out` is left untouched. Every step is linear
in the number of slices.

Failures that leave no trace:
- Disk space and the file-size limit (`ulimit -f`) are checked before each volume is staged
  (staging + the store to come must fit), and the HDF5 file is preallocated to its estimated
  size before HDF5 writes a byte: HDF5 never meets a failed write (after one, the library
  crashes the interpreter at exit), and a full disk is a `StoreWriteError` naming the shortfall.
- Temporary names carry the writer's process id (`.NAME.PID.xxxx.staging`), so that the next
  run removes the leftovers of a killed one (`remove_stale_files`) and spares a live one's.
- `StoreLock` (an `fcntl` lock on `.NAME.lock` beside `out`) lets one writer at a time build a
  given `out`; the second fails at once naming the first's process id.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import resource
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from mri_tune_core.errors import StoreError
from mri_tune_core.store_format import FORMAT_VERSION, PLANES, SPLITS
from mri_tune_datasets.preprocess import SliceBatch

logger = logging.getLogger(__name__)

_STRING = h5py.string_dtype(encoding="utf-8")
# Bytes per slice of the per-slice columns (labels, volume int64; plane, split uint8; index int32)
_COLUMN_BYTES = 8 + 8 + 1 + 1 + 4
# HDF5 metadata, attributes and the volume table: a fixed part and a part per volume (text)
_STORE_OVERHEAD = 4 * 1024**2
_VOLUME_OVERHEAD = 16 * 1024
_MiB = 1024**2


class StoreWriteError(StoreError):
    """The store could not be written: disk full, file-size limit, no permission, or another
    ingest is writing the same `--out`."""


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / _MiB:.1f} MiB"


def estimate_store_bytes(n_slices: int, image_size: int, n_volumes: int, channels: int = 1
                         ) -> int:
    """An upper bound of the HDF5 store's size (images + per-slice columns + metadata)."""
    per_slice = channels * image_size * image_size + _COLUMN_BYTES
    return n_slices * per_slice + n_volumes * _VOLUME_OVERHEAD + _STORE_OVERHEAD


def check_space(folder: Path, new_bytes: int, largest_file: int, what: str) -> None:
    """StoreWriteError unless `folder`'s disk has `new_bytes` free and this process may write a
    file of `largest_file` bytes (RLIMIT_FSIZE, i.e. `ulimit -f`)."""
    free = shutil.disk_usage(folder).free
    if new_bytes > free:
        raise StoreWriteError(
            f"not enough free disk space for {what}: it needs about {_mib(new_bytes)} more, the "
            f"disk of {folder} has {_mib(free)} free; free some space, write --out to another "
            "disk, or make the store smaller (--size, fewer rows)")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and largest_file > limit:
        raise StoreWriteError(
            f"the file-size limit of this process (ulimit -f) is {_mib(limit)}, but {what} "
            f"needs a file of about {_mib(largest_file)}; raise the limit (ulimit -f "
            "unlimited) or make the store smaller (--size, fewer rows)")


def _write_error(err: OSError, out: Path) -> StoreWriteError:
    """An OSError of a write (staging or store file beside `out`), worded for the user."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "the disk is full: free some space or write --out to another disk"
    elif err.errno == errno.EFBIG:
        hint = "the file-size limit (ulimit -f) was reached: raise it or make the store smaller"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "no permission to write there: choose an --out in a writable folder"
    else:
        hint = "check the disk and the folder of --out"
    return StoreWriteError(f"writing the store {out} failed ({err.strerror or err}): {hint}; "
                           f"{out.name} was not changed and no temporary file is left")


def _temporary_prefix(out: Path) -> str:
    return f".{out.name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_stale_files(out: Path) -> list[Path]:
    """Remove the `.staging` and `.tmp` files of `out` left by writers that are gone (killed);
    returns them. Files of a live process, and files whose name carries no process id, stay."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    prefix, removed = _temporary_prefix(out), []
    for path in out.parent.iterdir():
        name = path.name
        if not (name.startswith(prefix) and name.endswith((".staging", ".tmp"))):
            continue
        owner = name[len(prefix):].split(".", 1)[0]
        if not owner.isdigit():
            logger.warning("%s: cannot tell which process wrote it; remove it by hand if no "
                           "ingest to %s is running", name, out.name)
            continue
        if int(owner) != os.getpid() and not _pid_alive(int(owner)):
            path.unlink(missing_ok=True)
            removed.append(path)
            logger.info("removed %s, left by ingest process %s (no longer running)", name, owner)
    return removed


class StoreLock:
    """An exclusive `fcntl.flock` on `.NAME.lock` beside `out`, held while a store is built;
    the lock file is removed on release (a killed holder's lock dies with it, and its file is
    reused by the next run)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out.parent / f".{self.out.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        while self._fd is None:
            try:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise _write_error(err, self.out) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise StoreWriteError(
                    f"another ingest (process {holder}) is writing {self.out.name} in "
                    f"{self.out.parent}; two ingests must not build one store: wait for it to "
                    "end, or choose another --out") from None
            if not self._same_file(fd):
                os.close(fd)  # the holder removed the file as we opened it: take the new one
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: no one locks a removed file
            os.close(self._fd)
            self._fd = None


class _Preallocated:
    """A file object over a preallocated file for h5py's file-object driver: the end of file
    HDF5 sees is what it wrote, not the reserved size (so it creates a fresh file)."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.eof = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            return self._handle.seek(self.eof + offset)
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def readinto(self, buffer) -> int:
        room = max(0, self.eof - self._handle.tell())
        return self._handle.readinto(memoryview(buffer).cast("B")[:room])

    def read(self, n: int = -1) -> bytes:
        room = max(0, self.eof - self._handle.tell())
        return self._handle.read(room if n < 0 else min(n, room))

    def write(self, data) -> int:
        written = self._handle.write(data)
        self.eof = max(self.eof, self._handle.tell())
        return written

    def truncate(self, size: int | None = None) -> int:
        self.eof = self._handle.tell() if size is None else size
        return self.eof

    def flush(self) -> None:
        self._handle.flush()


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

    def __init__(self, out: Path, image_size: int, channels: int = 1) -> None:
        self.out = Path(out)
        self.image_size = int(image_size)
        self.channels = int(channels)
        size = (self.image_size, self.image_size)
        self.slice_shape = size if self.channels == 1 else (self.channels, *size)
        self.slice_bytes = self.channels * self.image_size**2
        self.classes: list[str] = []
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.out.exists() and not self.out.is_file():
            raise StoreWriteError(f"--out {self.out} exists and is not a file; name a new "
                                  ".h5 file or an existing store to replace")
        self._prefix = f"{_temporary_prefix(self.out)}{os.getpid()}."
        try:
            fd, staging = tempfile.mkstemp(dir=self.out.parent, prefix=self._prefix,
                                           suffix=".staging")
        except OSError as err:
            raise _write_error(err, self.out) from err
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
        for b in batches:
            if b.images.dtype != np.uint8 or b.images.shape[1:] != self.slice_shape:
                raise ValueError(f"slices must be uint8 {self.slice_shape}; got "
                                 f"{b.images.dtype} {b.images.shape[1:]}")
        n_new = sum(len(b.images) for b in batches)
        staged = (self.n_slices + n_new) * self.slice_bytes
        store = estimate_store_bytes(self.n_slices + n_new, self.image_size,
                                     len(self._records) + 1, self.channels)
        # the staging file grows by this volume, and the store will need its own room next to it
        check_space(self.out.parent, n_new * self.slice_bytes + store, max(staged, store),
                    f"the store {self.out.name} ({self.n_slices + n_new} slices so far)")
        try:
            for b in batches:
                self._staging.write(np.ascontiguousarray(b.images).tobytes())
            self._staging.flush()
        except OSError as err:
            raise _write_error(err, self.out) from err
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
        texts = {key: json.dumps(value) for key, value in attrs.items()}
        reserve = (estimate_store_bytes(self.n_slices, self.image_size, len(self._records),
                                        self.channels)
                   + sum(len(t.encode()) for t in texts.values()))
        try:
            fd, tmp = tempfile.mkstemp(dir=self.out.parent, prefix=self._prefix, suffix=".tmp")
            self._tmp_path = Path(tmp)
            with os.fdopen(fd, "w+b") as handle:
                self._reserve(handle, reserve)
                target = _Preallocated(handle)
                with h5py.File(target, "w") as f:
                    ranges = self._write_slices(f, order, volume_split)
                    self._write_volume_table(f, order, volume_split)
                    f.attrs["format_version"] = FORMAT_VERSION
                    f.attrs["classes"] = json.dumps(self.classes)
                    f.attrs["image_size"] = [self.image_size, self.image_size]
                    f.attrs["split_ranges"] = json.dumps(ranges)
                    for key, text in texts.items():
                        f.attrs[key] = text
                handle.truncate(target.eof)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(self._tmp_path, self.out)
        except OSError as err:
            raise _write_error(err, self.out) from err
        self._tmp_path = None
        self.abort()
        logger.info("wrote %s: %d slices of %d volumes", self.out, self.n_slices, len(order))
        return self.out

    def _reserve(self, handle: BinaryIO, n_bytes: int) -> None:
        """Allocate the store's disk space before HDF5 writes (see the module docstring)."""
        check_space(self.out.parent, n_bytes, n_bytes, f"the store {self.out.name}")
        if not hasattr(os, "posix_fallocate"):  # macOS: the check above is all there is
            return
        try:
            os.posix_fallocate(handle.fileno(), 0, n_bytes)
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystem without fallocate
                return
            raise _write_error(err, self.out) from err

    def _write_slices(self, f: h5py.File, order: np.ndarray, volume_split: Sequence[int]
                      ) -> dict[str, list[int]]:
        n_total = self.n_slices
        images = f.create_dataset("images", (n_total, *self.slice_shape), dtype=np.uint8)
        staged = np.memmap(self._staging_path, dtype=np.uint8, mode="r",
                           shape=(n_total, *self.slice_shape)) if n_total else None
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
