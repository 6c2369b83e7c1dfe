"""The ingest manifest: a CSV with one row per volume.

Required columns: `path` (relative to the root folder, a file or a DICOM series folder),
`region` (one of REGIONS), `subject` (pseudonymous id; the split is by subject). Optional:
`slices` ('start:stop' along the acquisition axis, so one volume can feed several regions).
Every other column is kept as per-volume metadata.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from mri_tune_core import paper
from mri_tune_core.errors import InputError

REGIONS = paper.REGIONS
"""The anatomical regions, in the order of the store's class indices."""
REQUIRED_COLUMNS = ("path", "region", "subject")


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row; `row` is 1-based over data rows (the CSV header is line 1)."""

    row: int
    path: Path
    relative_path: str
    region: str
    subject: str
    slices: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def line(self) -> int:
        return self.row + 1


def read_manifest(manifest: Path, root: Path | None = None) -> list[ManifestRow]:
    """Parse `manifest`; raises InputError for a missing file or a missing required column.

    Per-row problems (empty or unknown region, empty subject) are checked by `check_row`, so
    that `--on-error skip` can skip only the bad rows.
    """
    if not manifest.is_file():
        raise InputError(f"manifest not found: {manifest}; pass --manifest with a CSV file")
    root = manifest.parent if root is None else root
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise InputError(
                f"manifest {manifest} lacks the required column(s) {missing}; required: "
                f"{list(REQUIRED_COLUMNS)}, found: {columns}; add the columns to its header line")
        rows = []
        for i, raw in enumerate(reader, start=1):
            cells = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            extra = {k: v for k, v in cells.items()
                     if k not in REQUIRED_COLUMNS and k != "slices" and k}
            rows.append(ManifestRow(i, root / cells["path"], cells["path"], cells["region"],
                                    cells["subject"], cells.get("slices", ""), extra))
    if not rows:
        raise InputError(f"manifest {manifest} has no data rows; add one row per volume")
    return rows


def check_row(row: ManifestRow) -> None:
    """Raise InputError when a row's region or subject is unusable."""
    if row.region not in REGIONS:
        raise InputError(f"region must be one of {list(REGIONS)}; got {row.region!r}; "
                         "fix the region column")
    if not row.subject:
        raise InputError("subject is empty; every row needs a subject id (the split is by subject)")
    if not row.relative_path:
        raise InputError("path is empty; every row needs the path of its volume")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
