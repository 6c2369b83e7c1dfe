"""`mri-tune ingest`: manifest of MR volumes -> HDF5 slice store.

Steps: read the manifest; for each row read its volume(s), reorient to RAS, slice, resize,
normalise (`preprocess`); bad rows stop the ingest (`on_error="fail"`) or are skipped and
listed (`"skip"`); split the surviving subjects (`split`); write the store (`writer`, the only
writer, atomic). Errors name the manifest row, the file, what was wrong and the fix.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mri_tune_core import paper
from mri_tune_core.errors import InputError
from mri_tune_datasets.manifest import REGIONS, ManifestRow, check_row, file_sha256, read_manifest
from mri_tune_datasets.preprocess import (
    Preprocessing,
    SliceBatch,
    canonicalise,
    parse_slices,
    volume_to_slices,
)
from mri_tune_datasets.readers import read_volumes
from mri_tune_datasets.split import SPLITS, parse_split_fractions, split_subjects
from mri_tune_datasets.writer import StoreWriter, VolumeRecord

__all__ = ["IngestReport", "IngestSettings", "ingest", "parse_split_fractions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestSettings:
    """Everything `ingest` needs; validated on construction."""

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

    def __post_init__(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise InputError(f"on_error must be 'fail' or 'skip'; got {self.on_error!r}")
        if Path(self.out).suffix.lower() not in (".h5", ".hdf5"):
            raise InputError(f"--out must name an .h5 file; got {self.out}; e.g. --out store.h5")
        parse_split_fractions(",".join(str(v) for v in self.split))
        self.preprocessing()  # validates size, planes, max_frames

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(size=self.size, planes=self.planes, max_frames=self.max_frames)


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


def read_row(row: ManifestRow, prep: Preprocessing) -> list[_Volume]:
    """Every volume of one manifest row, preprocessed; InputError if any part is unusable."""
    check_row(row)
    slices = parse_slices(row.slices)
    volumes = []
    for raw in read_volumes(row.path, prep.max_frames):
        try:
            canonical = canonicalise(raw, slices, prep)
        except InputError as err:
            raise InputError(f"{raw.part}: {err}" if raw.part else str(err)) from err
        for note in canonical.notes:
            logger.info("row %d %s%s: %s", row.row, row.relative_path,
                        f" ({raw.part})" if raw.part else "", note)
        batches = volume_to_slices(canonical, prep, raw.part)
        if not batches:
            raise InputError(f"{raw.part or 'volume'}: every slice is (nearly) constant after "
                             "normalisation, so none can be stored; remove the row")
        record = VolumeRecord(
            path=row.relative_path, region=row.region, subject=row.subject, row=row.row,
            part=raw.part, format=raw.format, acquisition_plane=canonical.acquisition_plane,
            source_shape=raw.source_shape, notes=canonical.notes, metadata=row.metadata)
        volumes.append(_Volume(record, batches))
    return volumes


def _read_all(rows: list[ManifestRow], settings: IngestSettings, writer: StoreWriter
              ) -> list[dict]:
    """Stage every usable row's volumes in `writer`; returns the skipped rows."""
    prep, skipped = settings.preprocessing(), []
    for row in rows:
        try:
            volumes = read_row(row, prep)
        except (InputError, OSError) as err:
            message = f"manifest row {row.row} (line {row.line}), {row.relative_path}: {err}"
            if settings.on_error == "fail":
                raise InputError(message + " (or pass --on-error skip)") from err
            logger.warning("skipping %s", message)
            skipped.append({"row": row.row, "path": row.relative_path, "reason": str(err)})
            continue
        for volume in volumes:
            writer.add_volume(volume.record, volume.batches)
        logger.debug("row %d: %d volume(s)", row.row, len(volumes))
    return skipped


def ingest(settings: IngestSettings) -> IngestReport:
    """Build the store at `settings.out`; nothing is left at `out` if this raises."""
    start = time.perf_counter()
    root = Path(settings.root) if settings.root is not None else None
    rows = read_manifest(Path(settings.manifest), root)
    with StoreWriter(Path(settings.out), settings.size) as writer:
        skipped = _read_all(rows, settings, writer)
        records = writer.records
        if not records:
            raise InputError(f"no usable volume in {settings.manifest}: all {len(rows)} rows were "
                             "skipped (see the warnings above); fix the manifest or the files")
        result = split_subjects([(r.subject, r.region) for r in records], settings.split,
                                np.random.default_rng(settings.seed), settings.allow_small_regions)
        volume_split = [result.assignment[r.subject] for r in records]
        classes = [r for r in REGIONS if any(rec.region == r for rec in records)]
        attrs = {"provenance": _provenance(settings), "skipped": skipped,
                 "warnings": list(result.warnings)}
        writer.finish(volume_split, classes, attrs)
        counts = _counts(records, writer.slice_counts, volume_split, classes)
    subjects = {s: sorted({r.subject for r, v in zip(records, volume_split, strict=True)
                           if SPLITS[v] == s}) for s in SPLITS}
    return IngestReport(Path(settings.out), len(records), counts, subjects, skipped,
                        result.warnings, time.perf_counter() - start)


def _counts(records: list[VolumeRecord], n_slices: list[int], volume_split: list[int],
            classes: list[str]) -> dict[str, dict[str, int]]:
    counts = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    for record, n, split in zip(records, n_slices, volume_split, strict=True):
        counts[SPLITS[split]][record.region] += n
    return counts


def _provenance(settings: IngestSettings) -> dict:
    from importlib.metadata import PackageNotFoundError, version

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
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
