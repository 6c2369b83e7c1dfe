"""The ingest manifest: a CSV with one row per volume.

Required columns: `path` (relative to the root folder, a file or a DICOM series folder),
`region` (one of REGIONS), `subject` (pseudonymous id; the split is by subject). Optional:
`slices` ('start:stop' along the acquisition axis, so one volume can feed several regions).
Other columns are read but *not* stored, except those the caller names in `keep_columns`
(a manifest often carries names, accession numbers or free-text notes that must not travel).

The file is parsed in two stages so that `--on-error skip` can skip exactly the bad rows:
`read_manifest` rejects what spoils the whole file (missing, too large, no header, a missing
required column, an unknown kept column); everything wrong with one row (more cells than the
header, bytes that are not UTF-8, a NUL byte, an overlong cell, a row the CSV parser rejects) is
recorded in that row's `problem`, which `check_row` raises together with the checks of its
region, subject and path. `locate_volume` then confines the path to the root folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from mri_tune_core import paper
from mri_tune_core.errors import InputError

REGIONS = paper.REGIONS
"""The anatomical regions, in the order of the store's class indices."""
REQUIRED_COLUMNS = ("path", "region", "subject")
OPTIONAL_COLUMNS = ("slices",)
MAX_CELL_CHARS = 4096
"""Longest cell accepted (a path, an id, a short note); longer ones make the row unusable."""
MAX_MANIFEST_BYTES = 64 * 1024**2
"""Largest manifest file read (about a million rows)."""
_DISPLAY_CHARS = 120


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row; `row` is 1-based over data rows, `line` the file line it ends on.

    `path` is `root / relative_path` as written (not yet checked, see `locate_volume`);
    `metadata` holds only the kept columns; `problem` says why the row is unusable as parsed
    ("" when it parsed cleanly).
    """

    row: int
    path: Path
    relative_path: str
    region: str
    subject: str
    slices: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    line: int = 0
    problem: str = ""
    display_path: str = ""
    """The path cell, printable and short, and relative to the root when it is an absolute
    path under it (outside it: only the file name): safe in a log line, a report or the store."""


def printable(text: str, limit: int = _DISPLAY_CHARS) -> str:
    """`text` with control and undecodable characters escaped, cut to `limit` characters."""
    if not text.isprintable():
        text = text.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} characters)"


def parse_keep_columns(text: str) -> tuple[str, ...]:
    """'site,scanner' -> ('site', 'scanner'); '' -> ()."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


def read_manifest(manifest: Path, root: Path | None = None,
                  keep_columns: tuple[str, ...] = ()) -> list[ManifestRow]:
    """Parse `manifest`; InputError for what spoils the whole file (see the module docstring).

    `keep_columns` names the extra columns copied into each row's `metadata`.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(f"manifest not found: {manifest}; pass --manifest with a CSV file")
    size = manifest.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise InputError(f"manifest {manifest.name} has {size / 1024**2:.0f} MiB; a manifest may "
                         f"have at most {MAX_MANIFEST_BYTES // 1024**2} MiB; split it or remove "
                         "free-text columns")
    # surrogateescape keeps undecodable bytes visible per cell, so one Latin-1 row is one bad row
    text = manifest.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    columns = _header(reader, manifest)
    _check_keep_columns(keep_columns, columns, manifest)
    root = manifest.parent if root is None else Path(root)
    rows: list[ManifestRow] = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            rows.append(ManifestRow(len(rows) + 1, root, "", "", "", line=reader.line_num,
                                    problem=f"the CSV parser rejected the row ({err}); a cell "
                                    "is too long or a quote is not closed: fix the row"))
            continue
        if not any(c.strip() for c in cells):
            continue  # blank line
        rows.append(_row(len(rows) + 1, reader.line_num, cells, columns, root, keep_columns))
    if not rows:
        raise InputError(f"manifest {manifest.name} has no data rows; add one row per volume")
    return rows


def _header(reader, manifest: Path) -> list[str]:
    try:
        columns = [c.strip() for c in next(reader, [])]
    except csv.Error as err:
        raise InputError(f"manifest {manifest.name}: its header line cannot be parsed ({err}); "
                         "the first line must be the column names, e.g. path,region,subject"
                         ) from err
    bad = [printable(c) for c in columns if _cell_problem(c)]
    if bad:
        raise InputError(f"manifest {manifest.name}: the header holds unusable column names "
                         f"{bad}; column names must be short UTF-8 text: save the file as UTF-8")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(
            f"manifest {manifest.name} lacks the required column(s) {missing}; required: "
            f"{list(REQUIRED_COLUMNS)}, found: {columns}; add the columns to its header line")
    repeated = sorted({c for c in columns if columns.count(c) > 1 and c})
    if repeated:
        raise InputError(f"manifest {manifest.name} names the column(s) {repeated} more than "
                         "once; each column name must be unique: rename or remove the repeats")
    return columns


def _check_keep_columns(keep: tuple[str, ...], columns: list[str], manifest: Path) -> None:
    stored = [c for c in keep if c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if stored:
        raise InputError(f"--keep-columns names {stored}, which ingest uses itself; name only "
                         "extra columns to keep (path, region and subject are always stored)")
    unknown = [c for c in keep if c not in columns]
    if unknown:
        raise InputError(f"--keep-columns names {unknown}, but manifest {manifest.name} has no "
                         f"such column; its columns: {columns}; fix the names")


def _row(number: int, line: int, cells: list[str], columns: list[str], root: Path,
         keep: tuple[str, ...]) -> ManifestRow:
    problem = ""
    if any(c.strip() for c in cells[len(columns):]):  # empty trailing cells are harmless
        problem = (f"the row has {len(cells)} cells but the header has {len(columns)} columns; "
                   "quote cells that contain commas (\"a,b\") or add the missing column names")
    for column, cell in zip(columns, cells, strict=False):
        problem = problem or _cell_problem(cell, column)
    values = {c: v.strip() for c, v in zip(columns, cells, strict=False)}
    relative = values.get("path", "")
    return ManifestRow(number, root / relative if not _cell_problem(relative) else root,
                       relative, values.get("region", ""), values.get("subject", ""),
                       values.get("slices", ""), {c: values.get(c, "") for c in keep},
                       line, problem, printable(_shown(relative, root)))


def _shown(cell: str, root: Path) -> str:
    """An absolute path cell without the host's folders (see `ManifestRow.display_path`)."""
    path = Path(cell)
    if not path.is_absolute():
        return cell
    if path.is_relative_to(root.absolute()):
        return path.relative_to(root.absolute()).as_posix()
    return f".../{path.name}"


def _cell_problem(cell: str, column: str = "") -> str:
    """Why a cell cannot be used ("" if it can)."""
    where = f"cell {printable(column, 40)!r}" if column else "a cell"
    bad_byte = next((ord(ch) - 0xDC00 for ch in cell if "\udc80" <= ch <= "\udcff"), None)
    if bad_byte is not None:
        return (f"{where} is not UTF-8 text (byte 0x{bad_byte:02x}); a manifest must be UTF-8: "
                "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    if "\x00" in cell:
        return f"{where} contains a NUL byte; a manifest is plain text: remove the byte"
    if len(cell) > MAX_CELL_CHARS:
        return (f"{where} has {len(cell)} characters; a cell may have at most {MAX_CELL_CHARS}: "
                "shorten it (free text does not belong in the manifest)")
    return ""


def check_row(row: ManifestRow) -> None:
    """Raise InputError when a row is unusable as parsed, or its region, subject or path is."""
    if row.problem:
        raise InputError(row.problem)
    if row.region not in REGIONS:
        raise InputError(f"region must be one of {list(REGIONS)}; got {printable(row.region)!r}; "
                         "fix the region column")
    if not row.subject:
        raise InputError("subject is empty; every row needs a subject id (the split is by subject)")
    if not row.relative_path:
        raise InputError("path is empty; every row needs the path of its volume")


def locate_volume(row: ManifestRow, root: Path, allow_outside_root: bool) -> tuple[Path, str]:
    """(resolved path to read, path to store and print) of a checked row.

    The path must lead to an existing file or folder under `root` once `..` and symbolic links
    are resolved, unless `allow_outside_root`. The stored path is relative to `root` (POSIX
    separators); only a path outside `root` (allowed explicitly) is stored as written.
    """
    root = root.resolve()
    resolved = (root / row.relative_path).resolve()
    inside = resolved.is_relative_to(root)
    if not inside and not allow_outside_root:
        raise InputError(
            f"path {row.display_path!r} leads outside the root folder (the manifest's folder, or "
            "--root); ingest reads only files under the root: move the file under it, pass a "
            "--root that holds it, or pass --allow-outside-root if you trust this manifest")
    if resolved.is_dir() and not allow_outside_root:
        links = [p.name for p in resolved.iterdir() if not p.resolve().is_relative_to(root)]
        if links:
            raise InputError(
                f"{len(links)} file(s) of the series folder (e.g. {printable(links[0], 40)}) are "
                "links to files outside the root folder (the manifest's folder, or --root); copy "
                "them into the folder, or pass --allow-outside-root if you trust them")
    if not resolved.exists():
        raise InputError(f"file not found: {row.display_path}; check the path (the manifest's "
                         "path column, relative to the manifest's folder or --root)")
    stored = resolved.relative_to(root).as_posix() if inside else row.relative_path
    return resolved, posixpath.normpath(stored)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a DICOM series folder (its visible files' hashes, in name order)."""
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(file_sha256(item).encode())
    return digest.hexdigest()
