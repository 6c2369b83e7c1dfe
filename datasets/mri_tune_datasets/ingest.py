"""`mri-tune ingest`: manifest of MR volumes -> HDF5 slice store.

Steps, each failing as early as it can:
1. settings (`IngestSettings`: split fractions, size, planes, modes) and the manifest as a whole
   (`manifest.read_manifest`);
2. the lock on `--out` (`writer.StoreLock`: one ingest per store) and the removal of what a
   killed ingest of this `--out` left (`writer.remove_stale_files`);
3. every row without reading a volume (`_check_rows`): its cells, region, subject, `slices`,
   its path (confined to the root folder, must exist), duplicates by content hash;
4. each row's volume(s): read, reorient to RAS, slice, resize, normalise (`preprocess`), staged
   in the writer, which checks disk space as it goes;
5. the split of the surviving subjects (`split`), then the store (`writer`, atomic).
A bad row stops the ingest (`on_error="fail"`) or is skipped and listed (`"skip"`), in steps 3
and 4 alike. Errors name the manifest row, the file, what was wrong and the fix; paths are
printed and stored relative to the root folder, so no host path reaches the store.

SIGTERM is turned into an interrupt (like Ctrl-C) while ingest runs, and SIGXFSZ (file-size
limit) is ignored so that a write past the limit is an error instead of a kill: either way the
temporary files are removed and `--out` is untouched.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from mri_tune_core import paper
from mri_tune_core.errors import InputError
from mri_tune_datasets.manifest import (
    REGIONS,
    ManifestRow,
    check_row,
    content_sha256,
    file_sha256,
    locate_volume,
    read_manifest,
)
from mri_tune_datasets.preprocess import (
    Preprocessing,
    SliceBatch,
    canonicalise,
    parse_slices,
    volume_to_slices,
)
from mri_tune_datasets.readers import read_volumes
from mri_tune_datasets.split import (
    SPLITS,
    check_split_fractions,
    parse_split_fractions,
    split_subjects,
)
from mri_tune_datasets.writer import StoreLock, StoreWriter, VolumeRecord, remove_stale_files

__all__ = ["IngestInterrupted", "IngestReport", "IngestSettings", "ingest",
           "parse_split_fractions"]

logger = logging.getLogger(__name__)


class IngestInterrupted(KeyboardInterrupt):
    """SIGTERM arrived during an ingest; raised like Ctrl-C so that every cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")
        self.signum = signum


@dataclass(frozen=True)
class IngestSettings:
    """Everything `ingest` needs; validated on construction.

    `keep_columns`: extra manifest columns copied into the volume table (none by default);
    `allow_outside_root`: read paths that lead outside the root folder (off by default).
    """

    manifest: Path
    out: Path
    root: Path | None = None
    size: int = paper.IMAGE_SIZE
    planes: str = "acquisition"
    split: tuple[float, float, float] = paper.SPLIT_FRACTIONS
    seed: int = 0
    on_error: str = "fail"
    max_frames: int = 3
    allow_small_regions: bool = False
    keep_columns: tuple[str, ...] = ()
    allow_outside_root: bool = False
    field_of_view_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise InputError(f"on_error must be 'fail' or 'skip'; got {self.on_error!r}")
        if Path(self.out).suffix.lower() not in (".h5", ".hdf5"):
            raise InputError(f"--out must name an .h5 file; got {self.out}; e.g. --out store.h5")
        check_split_fractions(tuple(self.split))
        if isinstance(self.keep_columns, str) or not all(
                isinstance(c, str) for c in self.keep_columns):
            raise InputError(f"keep_columns must be a tuple of column names; got "
                             f"{self.keep_columns!r}; e.g. --keep-columns site,scanner")
        self.preprocessing()  # validates size, planes, max_frames

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(size=self.size, planes=self.planes, max_frames=self.max_frames,
                             field_of_view_mm=self.field_of_view_mm)

    @property
    def root_folder(self) -> Path:
        """The folder manifest paths are relative to (and confined to)."""
        return Path(self.root) if self.root is not None else Path(self.manifest).parent


@dataclass(frozen=True)
class IngestReport:
    """What an ingest wrote; `slices[split][region]` counts slices."""

    out: Path
    n_volumes: int
    slices: dict[str, dict[str, int]]
    subjects: dict[str, list[str]]
    skipped: list[dict] = field(default_factory=list)
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def n_slices(self) -> int:
        return sum(sum(by_region.values()) for by_region in self.slices.values())

    def summary(self) -> str:
        lines = [f"wrote {self.out}: {self.n_slices} slices of {self.n_volumes} volumes "
                 f"in {self.seconds:.1f} s"]
        for split in SPLITS:
            counts = ", ".join(f"{r} {n}" for r, n in self.slices[split].items())
            lines.append(f"  {split:<10} {len(self.subjects[split]):>3} subjects: {counts}")
        lines.extend(self.warnings)
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} bad row(s):")
            lines.extend(f"  row {s['row']} {s['path']}: {s['reason']}" for s in self.skipped)
        return "\n".join(lines)


@dataclass(frozen=True)
class _Volume:
    record: VolumeRecord
    batches: list[SliceBatch]


@dataclass(frozen=True)
class _CheckedRow:
    """A row that passed every check that needs no volume: `path` resolved, `stored_path`
    relative to the root, `slices` parsed, `digest` the content hash."""

    row: ManifestRow
    path: Path
    stored_path: str
    slices: slice | None
    digest: str


class _Rows:
    """Turns a row's error into the skipped-list entry, or (on_error="fail") into an
    InputError naming the manifest, row, line and file; paths under the root are printed
    relative to it."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.manifest_name = Path(settings.manifest).name
        root = settings.root_folder
        self._prefixes = sorted({f"{root.resolve()}{os.sep}", f"{root.absolute()}{os.sep}"},
                                key=len, reverse=True)
        self.skipped: list[dict] = []

    def relative(self, text: str) -> str:
        for prefix in self._prefixes:
            text = text.replace(prefix, "")
        return text

    def bad(self, row: ManifestRow, err: Exception, shown_path: str | None = None) -> None:
        shown = row.display_path if shown_path is None else shown_path
        reason = self.relative(str(err) if isinstance(err, InputError) else _unexpected(err))
        message = (f"manifest row {row.row} (line {row.line} of {self.manifest_name}), "
                   f"{shown}: {reason}")
        if self.settings.on_error == "fail":
            raise InputError(message + " (or pass --on-error skip)") from err
        logger.warning("skipping %s", message)
        self.skipped.append({"row": row.row, "path": shown, "reason": reason})


def _unexpected(err: Exception) -> str:
    # Not swallowed: the row is listed with the error's type and text, and the traceback logged.
    logger.debug("unexpected error", exc_info=err)
    return (f"unexpected {type(err).__name__} while reading it ({err}); the file is probably "
            "corrupt in a way mri-tune does not recognise: check or re-export it, and report "
            "the file's kind if it opens elsewhere")


def _check_rows(rows: list[ManifestRow], settings: IngestSettings, bad: _Rows
                ) -> list[_CheckedRow]:
    """Every check that needs no volume read; the rows that pass, in manifest order."""
    checked = []
    for row in rows:
        try:
            check_row(row)
            slices = parse_slices(row.slices)
            path, stored = locate_volume(row, settings.root_folder, settings.allow_outside_root)
            checked.append(_CheckedRow(row, path, stored, slices, content_sha256(path)))
        except (InputError, OSError) as err:
            bad.bad(row, err if isinstance(err, InputError) else InputError(
                f"cannot read it ({err.strerror}); check its permissions"))
    return _drop_duplicates(checked, bad)


def _drop_duplicates(checked: list[_CheckedRow], bad: _Rows) -> list[_CheckedRow]:
    """Keep the first of rows with the same content, unless they are one subject's disjoint
    `slices` ranges of one volume (one long volume feeding two regions)."""
    kept: list[_CheckedRow] = []
    by_digest: dict[str, list[_CheckedRow]] = {}
    for item in checked:
        earlier = next((e for e in by_digest.get(item.digest, [])
                        if e.row.subject != item.row.subject
                        or _overlap(e.slices, item.slices)), None)
        if earlier is None:
            kept.append(item)
            by_digest.setdefault(item.digest, []).append(item)
            continue
        same = "is the same file as" if earlier.path == item.path else "has the same content as"
        whom = ("under another subject" if earlier.row.subject != item.row.subject
                else "with overlapping slices")
        bad.bad(item.row, InputError(
            f"duplicate: it {same} row {earlier.row.row} ({earlier.stored_path}), {whom}; the "
            "same slices would land in two splits or count twice: remove one of the rows"),
            item.stored_path)
    return kept


def _overlap(a: slice | None, b: slice | None) -> bool:
    a_start, a_stop = (0, None) if a is None else (a.start or 0, a.stop)
    b_start, b_stop = (0, None) if b is None else (b.start or 0, b.stop)
    return ((a_stop is None or b_start < a_stop) and (b_stop is None or a_start < b_stop))


def read_row(item: _CheckedRow, prep: Preprocessing, root: Path | None = None
             ) -> list[_Volume]:
    """Every volume of one checked row, preprocessed; InputError if any part is unusable.
    `root`: readers refuse files outside it that the volume points to (None: no limit)."""
    row, volumes = item.row, []
    for raw in read_volumes(item.path, prep.max_frames, root):
        try:
            canonical = canonicalise(raw, item.slices, prep)
        except InputError as err:
            raise InputError(f"{raw.part}: {err}" if raw.part else str(err)) from err
        for note in canonical.notes:
            logger.info("row %d %s%s: %s", row.row, item.stored_path,
                        f" ({raw.part})" if raw.part else "", note)
        batches = volume_to_slices(canonical, prep, raw.part)
        if not batches:
            raise InputError(f"{raw.part or 'volume'}: every slice is (nearly) constant after "
                             "normalisation, so none can be stored; remove the row")
        record = VolumeRecord(
            path=item.stored_path, region=row.region, subject=row.subject, row=row.row,
            part=raw.part, format=raw.format, acquisition_plane=canonical.acquisition_plane,
            source_shape=raw.source_shape, notes=canonical.notes, metadata=row.metadata)
        volumes.append(_Volume(record, batches))
    return volumes


def _read_all(checked: list[_CheckedRow], settings: IngestSettings, writer: StoreWriter,
              bad: _Rows) -> None:
    """Stage every usable row's volumes in `writer`; bad rows go to `bad`."""
    prep = settings.preprocessing()
    root = None if settings.allow_outside_root else settings.root_folder
    for item in checked:
        try:
            volumes = read_row(item, prep, root)
        except (InputError, OSError) as err:
            bad.bad(item.row, err if isinstance(err, InputError) else InputError(
                f"cannot read it ({err}); check the file"), item.stored_path)
            continue
        except Exception as err:  # noqa: BLE001 - listed per row (see _unexpected), never lost
            bad.bad(item.row, err, item.stored_path)
            continue
        for volume in volumes:
            writer.add_volume(volume.record, volume.batches)
        logger.debug("row %d: %d volume(s)", item.row.row, len(volumes))


@contextlib.contextmanager
def _signals_as_errors() -> Iterator[None]:
    """SIGTERM -> IngestInterrupted, SIGXFSZ ignored (a write past `ulimit -f` then fails with
    EFBIG instead of killing the process); main thread only, restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise IngestInterrupted(signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
    if hasattr(signal, "SIGXFSZ"):
        previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def ingest(settings: IngestSettings) -> IngestReport:
    """Build the store at `settings.out`; nothing is left beside `out`, and an older store at
    `out` is untouched, if this raises (or is interrupted)."""
    start = time.perf_counter()
    out = Path(settings.out)
    rows = read_manifest(Path(settings.manifest), settings.root_folder, settings.keep_columns)
    bad = _Rows(settings)
    with _signals_as_errors(), StoreLock(out):
        remove_stale_files(out)
        checked = _check_rows(rows, settings, bad)
        with StoreWriter(out, settings.size, settings.preprocessing().channels) as writer:
            _read_all(checked, settings, writer, bad)
            records = writer.records
            if not records:
                raise InputError(f"no usable volume in {Path(settings.manifest).name}: all "
                                 f"{len(rows)} rows were skipped (see the warnings above); fix "
                                 "the manifest or the files")
            result = split_subjects([(r.subject, r.region) for r in records], settings.split,
                                    np.random.default_rng(settings.seed),
                                    settings.allow_small_regions)
            volume_split = [result.assignment[r.subject] for r in records]
            classes = [r for r in REGIONS if any(rec.region == r for rec in records)]
            skipped = sorted(bad.skipped, key=lambda s: s["row"])
            attrs = {"provenance": _provenance(settings), "skipped": skipped,
                     "warnings": list(result.warnings)}
            writer.finish(volume_split, classes, attrs)
            counts = _counts(records, writer.slice_counts, volume_split, classes)
    subjects = {s: sorted({r.subject for r, v in zip(records, volume_split, strict=True)
                           if SPLITS[v] == s}) for s in SPLITS}
    return IngestReport(out, len(records), counts, subjects, skipped, result.warnings,
                        time.perf_counter() - start)


def _counts(records: list[VolumeRecord], n_slices: list[int], volume_split: list[int],
            classes: list[str]) -> dict[str, dict[str, int]]:
    counts = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    for record, n, split in zip(records, n_slices, volume_split, strict=True):
        counts[SPLITS[split]][record.region] += n
    return counts


def _provenance(settings: IngestSettings) -> dict:
    try:
        package_version = version("mri-tune")
    except PackageNotFoundError:
        package_version = "unknown"
    return {
        "package_version": package_version,
        "manifest": Path(settings.manifest).name,
        "manifest_sha256": file_sha256(Path(settings.manifest)),
        "preprocessing": settings.preprocessing().to_dict(),
        "split_fractions": list(settings.split),
        "seed": settings.seed,
        "on_error": settings.on_error,
        "allow_small_regions": settings.allow_small_regions,
        "keep_columns": list(settings.keep_columns),
        "allow_outside_root": settings.allow_outside_root,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
