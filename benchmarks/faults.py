"""Fault benchmark: inject faults into real runs of mri-tune and print what survived.

Each fault is a function `fault(ctx) -> FaultRow`, listed in FAULTS; a row says what was
injected, what came out, whether that is the expected outcome, how many partial files were left
beside the store, and whether a run hung. All of `unexpected`, `partial files` and `hangs` must
be zero. Subprocess timeouts are a hang detector only: no fault waits a fixed time, each waits
for a state (a file that appears, a process that ends).

Ingest faults (issue 11): SIGTERM during ingest; SIGKILL during ingest, then a rerun; the
file-size limit (`ulimit -f`) reached while staging, and at the store write with the up-front
checks disabled; two concurrent ingests to one --out; each hostile input (DICOM geometry, a gzip
bomb, malformed manifest rows, duplicates, private columns, paths outside the root), run with
`--on-error fail` (a clear error naming the row) and `--on-error skip` (the row skipped and
listed). The ingests use 12 small volumes of the sample set (3 subjects per region), copied into
a scratch root, at --size 32: the whole table takes a few minutes on 2 cores.

Search faults (benchmarks/faults_search.py: driver SIGKILL at 5 random moments each followed by
`--resume`, a trial's worker killed, a full disk while checkpointing) follow, in their own table
with the trials lost and duplicate configurations; `--ingest-only` or `--search-only` runs one
half.

    python benchmarks/faults.py [--samples DIR] [--work DIR] [--only SUBSTRING ...]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataelem import DataElement

from mri_tune.data.samples import find_samples
from mri_tune.data.store import SliceStore

from faults_search import format_table as format_search_table
from faults_search import run_search_faults

REPO = Path(__file__).resolve().parents[1]
HANG_SECONDS = 600
"""A run that takes longer is counted as a hang (a normal one takes seconds)."""
SUBJECTS_PER_REGION = 3
STORE = "store.h5"

# `mri-tune ARGS` that pauses (until a signal) while reading its second row, after writing the
# file READY: the first volume is staged and the lock on --out is held. SIGUSR1 resumes it.
PAUSED = """
import signal, sys
from pathlib import Path
from mri_tune.cli import main
from mri_tune_datasets import ingest as ingest_module
ready, original, calls = Path(sys.argv[1]), ingest_module.read_row, []
signal.signal(signal.SIGUSR1, lambda signum, frame: None)
def paused(item, prep, root):
    calls.append(item)
    if len(calls) == 2:
        ready.write_text("staged")
        signal.pause()
    return original(item, prep, root)
ingest_module.read_row = paused
sys.exit(main(sys.argv[2:]))
"""

# `mri-tune ARGS` with the up-front space checks disabled: the store write itself meets the limit.
PAST_THE_CHECKS = """
import sys
from mri_tune.cli import main
from mri_tune_datasets import writer
writer.check_space = lambda *args: None
sys.exit(main(sys.argv[1:]))
"""


@dataclass(frozen=True)
class FaultRow:
    """One line of the table."""

    fault: str
    outcome: str
    expected: bool
    partial_files: int
    hang: bool


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    hang: bool


@dataclass(frozen=True)
class Context:
    """The scratch root (12 sample volumes), their manifest rows, where each fault writes, and
    the sample folder."""

    root: Path
    rows: list[tuple[str, str, str]]
    work: Path
    samples: Path

    def out_folder(self, fault: str) -> Path:
        folder = self.work / "out" / fault.replace(" ", "_").replace("/", "_")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def manifest(self, name: str, rows: list[tuple[str, ...]], header: str = "path,region,subject",
                 raw_line: bytes = b"") -> Path:
        path = self.root / f"{name}.csv"
        with open(path, "w", newline="") as handle:
            handle.write(header + "\n")
            csv.writer(handle, lineterminator="\n").writerows(rows)
        if raw_line:
            with open(path, "ab") as handle:
                handle.write(raw_line)
        return path

    def ingest_args(self, manifest: Path, out: Path, *extra: str) -> list[str]:
        return ["ingest", "--manifest", str(manifest), "--out", str(out), "--size", "32", *extra]


def _env() -> dict[str, str]:
    paths = [str(REPO), str(REPO / "datasets"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _cli(args: list[str], script: str | None = None, file_limit: int | None = None) -> Run:
    command = ([sys.executable, "-c", script] if script else [sys.executable, "-m", "mri_tune"])

    def limit() -> None:
        if file_limit is not None:
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, hard))

    try:
        done = subprocess.run([*command, *args], env=_env(), capture_output=True, text=True,
                              timeout=HANG_SECONDS, preexec_fn=limit)
    except subprocess.TimeoutExpired as timeout:
        return Run(-1, str(timeout.stdout or ""), str(timeout.stderr or ""), True)
    return Run(done.returncode, done.stdout, done.stderr, False)


def _staged(folder: Path) -> bool:
    """Whether a staging file in `folder` holds slices."""
    for path in folder.glob("*.staging"):
        try:
            if path.stat().st_size > 0:
                return True
        except FileNotFoundError:  # removed as we looked
            continue
    return False


def _partial(folder: Path) -> int:
    """Files beside the store: staging, temporary and lock files."""
    return sum(1 for p in folder.iterdir() if p.name != STORE)


def _start_paused(args: list[str], ready: Path) -> subprocess.Popen | None:
    """`mri-tune ARGS`, paused at its second row (the READY file is removed once seen), or None
    when it never got there."""
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, str(ready), *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + HANG_SECONDS
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            return None
        time.sleep(0.01)  # polling for a state, not waiting a duration
    ready.unlink()
    return proc


def _signalled_row(name: str, proc: subprocess.Popen, out: Path, before: bytes) -> FaultRow:
    """The row of an ingest stopped by SIGTERM: exit 143, the old store untouched."""
    run = _wait(proc)
    intact = out.read_bytes() == before
    ok = run.returncode == 143 and intact and "Traceback" not in run.stderr
    return FaultRow(name, f"rc {run.returncode}, old store intact: {intact}", ok,
                    _partial(out.parent), run.hang)


def _wait(proc: subprocess.Popen) -> Run:
    try:
        out, err = proc.communicate(timeout=HANG_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return Run(-1, out, err, True)
    return Run(proc.returncode, out, err, False)


def _with_old_store(ctx: Context, fault: str) -> tuple[Path, Path, bytes]:
    """(manifest of the 12 volumes, --out holding an older store, that store's bytes)."""
    folder = ctx.out_folder(fault)
    manifest = ctx.manifest("subset", ctx.rows)
    old = _cli(ctx.ingest_args(manifest, folder / STORE, "--size", "16"))
    if old.returncode != 0:
        raise RuntimeError(f"the reference ingest failed: {old.stderr[-2000:]}")
    return manifest, folder / STORE, (folder / STORE).read_bytes()


def _error(run: Run, after: str) -> str:
    """`rc N: ...` with the part of the CLI's error line from `after` on."""
    lines = [line for line in run.stderr.splitlines() if "error:" in line]
    text = lines[-1] if lines else ""
    return f"rc {run.returncode}: {text[text.find(after):][:60] if after in text else '?'}"


# ------------------------------------------------------------------------------ process faults

def sigterm_during_ingest(ctx: Context) -> FaultRow:
    name = "SIGTERM during ingest"
    manifest, out, before = _with_old_store(ctx, name)
    proc = _start_paused(ctx.ingest_args(manifest, out), out.parent / "ready")
    if proc is None:
        return FaultRow(name, "ingest never reached its second row", False, _partial(out.parent),
                        False)
    proc.send_signal(signal.SIGTERM)
    return _signalled_row(name, proc, out, before)


def sigterm_at_first_staged_bytes(ctx: Context) -> FaultRow:
    """The plain CLI, signalled as soon as its staging file holds slices (wherever it is then:
    in torch, nibabel or a write)."""
    name = "SIGTERM, unpaused CLI"
    manifest, out, before = _with_old_store(ctx, name)
    proc = subprocess.Popen([sys.executable, "-m", "mri_tune", *ctx.ingest_args(manifest, out)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + HANG_SECONDS
    while proc.poll() is None and time.monotonic() < deadline and not _staged(out.parent):
        time.sleep(0.002)  # polling for a state, not waiting a duration
    proc.send_signal(signal.SIGTERM)
    return _signalled_row(name, proc, out, before)


def sigkill_then_rerun(ctx: Context) -> FaultRow:
    name = "SIGKILL during ingest, rerun"
    manifest, out, before = _with_old_store(ctx, name)
    proc = _start_paused(ctx.ingest_args(manifest, out), out.parent / "ready")
    if proc is None:
        return FaultRow(name, "ingest never reached its second row", False, _partial(out.parent),
                        False)
    proc.kill()
    killed = _wait(proc)
    left, intact = _partial(out.parent), out.read_bytes() == before
    rerun = _cli(ctx.ingest_args(manifest, out))
    ok = intact and rerun.returncode == 0 and len(SliceStore(out)) > 0
    return FaultRow(name, f"kill left {left} file(s), old store intact: {intact}; rerun rc "
                    f"{rerun.returncode}", ok, _partial(out.parent), killed.hang or rerun.hang)


def ulimit_while_staging(ctx: Context) -> FaultRow:
    """The issue's reproduction: `ulimit -f 4860` (KiB), the whole sample set at --size 64."""
    name = "ulimit -f 4860, all samples"
    _, out, before = _with_old_store(ctx, name)
    run = _cli([*ctx.ingest_args(ctx.samples / "manifest.csv", out), "--size", "64"],
               file_limit=4860 * 1024)
    ok = (run.returncode == 2 and "ulimit -f" in run.stderr and out.read_bytes() == before)
    return FaultRow(name, _error(run, "the file-size limit"), ok, _partial(out.parent),
                    run.hang)


def ulimit_at_store_write(ctx: Context) -> FaultRow:
    name = "ulimit -f at the HDF5 write"
    manifest, out, before = _with_old_store(ctx, name)
    run = _cli(ctx.ingest_args(manifest, out), script=PAST_THE_CHECKS, file_limit=1024**2)
    ok = (run.returncode == 2 and "ulimit -f" in run.stderr and out.read_bytes() == before)
    return FaultRow(name, _error(run, "the file-size limit"), ok, _partial(out.parent), run.hang)


def concurrent_ingests(ctx: Context) -> FaultRow:
    name = "two concurrent ingests"
    folder = ctx.out_folder(name)
    manifest, out = ctx.manifest("subset", ctx.rows), folder / STORE
    first = _start_paused(ctx.ingest_args(manifest, out), folder / "ready")
    if first is None:
        return FaultRow(name, "first ingest never reached its second row", False,
                        _partial(folder), False)
    second = _cli(ctx.ingest_args(manifest, out))
    first.send_signal(signal.SIGUSR1)  # resume the first
    done = _wait(first)
    refused = second.returncode == 2 and f"another ingest (process {first.pid})" in second.stderr
    ok = refused and done.returncode == 0 and len(SliceStore(out)) > 0
    return FaultRow(name, f"first rc {done.returncode}, second rc {second.returncode}"
                    f"{' (names the first)' if refused else ''}", ok, _partial(folder),
                    done.hang or second.hang)


# ----------------------------------------------------------------------------- hostile inputs

@dataclass(frozen=True)
class Hostile:
    """A manifest with one hostile row (`row`, 1-based), and what its error must say."""

    manifest: Path
    row: int
    says: str
    secrets: tuple[bytes, ...] = ()


def _head_rows(ctx: Context) -> list[tuple[str, str, str]]:
    return [r for r in ctx.rows if r[1] == "head"]


def _hostile_dicom(ctx: Context, name: str, tag: int, value: tuple[str, object]) -> Path:
    """A copy of a sample DICOM whose `tag` is replaced by (VR, value)."""
    source = next(ctx.root.rglob("*.dcm"))
    target = ctx.root / "hostile" / f"{name}.dcm"
    target.parent.mkdir(exist_ok=True)
    ds = pydicom.dcmread(source)
    ds[tag] = DataElement(tag, *value)
    ds.save_as(target)
    return target


def _dicom_case(name: str, tag: int, value: tuple[str, object], says: str
                ) -> Callable[[Context], Hostile]:
    def build(ctx: Context) -> Hostile:
        path = _hostile_dicom(ctx, name, tag, value).relative_to(ctx.root).as_posix()
        rows = [*_head_rows(ctx), (path, "head", "hostile")]
        return Hostile(ctx.manifest(name, rows), len(rows), says)
    return build


def _bomb(ctx: Context) -> Hostile:
    """A 1 MB .nii.gz that expands to 1 GiB."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape((1024, 1024, 1024))
    block = gzip.compress(bytes(16 * 1024**2), compresslevel=9)
    path = ctx.root / "hostile" / "bomb.nii.gz"
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(header.binaryblock + b"\0" * 4))
        handle.writelines(block for _ in range(64))
    rows = [*_head_rows(ctx), ("hostile/bomb.nii.gz", "head", "hostile")]
    return Hostile(ctx.manifest("bomb", rows), len(rows), "voxels")


def _raw_row(name: str, line: bytes, says: str) -> Callable[[Context], Hostile]:
    def build(ctx: Context) -> Hostile:
        rows = _head_rows(ctx)
        return Hostile(ctx.manifest(name, rows, raw_line=line), len(rows) + 1, says)
    return build


def _duplicate(other_subject: bool) -> Callable[[Context], Hostile]:
    def build(ctx: Context) -> Hostile:
        rows = _head_rows(ctx)
        first = rows[0]
        copy = (first[0], first[1], "someone-else" if other_subject else first[2])
        return Hostile(ctx.manifest("duplicate", [*rows, copy]), len(rows) + 1, "duplicate")
    return build


def _private_columns(ctx: Context) -> Hostile:
    """Columns a manifest should not carry into the store; the last row's path is missing."""
    rows = [(*r, f"Doe^Jane{i}", f"ACC-77{i}", "20190101", f"PatientID PID-555{i}")
            for i, r in enumerate(_head_rows(ctx))]
    rows.append((str(ctx.root / "missing.nii.gz"), "head", "x", "Doe^John", "ACC-9", "", ""))
    manifest = ctx.manifest("private", rows, "path,region,subject,patient_name,accession,"
                                             "study_date,notes")
    return Hostile(manifest, len(rows), "not found",
                   (b"Doe^J", b"ACC-7", b"20190101", b"PID-555", str(ctx.root).encode()))


def _outside(path_of: Callable[[Context], str], says: str) -> Callable[[Context], Hostile]:
    def build(ctx: Context) -> Hostile:
        rows = [*_head_rows(ctx), (path_of(ctx), "head", "outsider")]
        return Hostile(ctx.manifest("outside", rows), len(rows), says)
    return build


def _nhdr_to_passwd(ctx: Context) -> str:
    (ctx.root / "hostile").mkdir(exist_ok=True)
    (ctx.root / "hostile" / "evil.nhdr").write_text(
        "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8 8 4\nencoding: raw\n"
        "data file: /etc/passwd\n\n")
    return "hostile/evil.nhdr"


def _outside_file(ctx: Context) -> Path:
    path = ctx.work / "outside.nii.gz"
    shutil.copyfile(ctx.root / _head_rows(ctx)[0][0], path)
    return path


def hostile_fault(name: str, build: Callable[[Context], Hostile]) -> Callable[[Context], FaultRow]:
    """`--on-error fail` must name the row; `--on-error skip` must skip and list it, and keep
    the hostile row's secrets (if any) out of the store."""
    def fault(ctx: Context) -> FaultRow:
        folder = ctx.out_folder(name)
        case = build(ctx)
        out = folder / STORE
        failed = _cli(ctx.ingest_args(case.manifest, out))
        named = (failed.returncode == 2 and f"manifest row {case.row} " in failed.stderr
                 and case.says in failed.stderr and "Traceback" not in failed.stderr)
        skipped = _cli(ctx.ingest_args(case.manifest, out, "--on-error", "skip"))
        listed = skipped.returncode == 0 and [s["row"] for s in SliceStore(out).skipped] == [
            case.row]
        clean = listed and not any(s in out.read_bytes() for s in case.secrets)
        outcome = (f"fail: {'clear error' if named else 'rc ' + str(failed.returncode)}; skip: "
                   f"{'row skipped, listed' if listed else 'rc ' + str(skipped.returncode)}"
                   f"{'' if clean or not listed else ', secrets stored'}")
        return FaultRow(name, outcome, named and clean, _partial(folder),
                        failed.hang or skipped.hang)
    fault.__name__ = name
    return fault


HOSTILE = [
    ("DICOM orientation all zeros", _dicom_case("iop_zero", 0x00200037, ("DS", [0.0] * 6),
                                                "orthogonal unit vectors")),
    ("DICOM orientation as text", _dicom_case("iop_text", 0x00200037,
                                              ("LO", "left\\up\\x\\y\\z\\w"),
                                              "ImageOrientationPatient must be 6")),
    ("DICOM pixel spacing 0", _dicom_case("spacing_zero", 0x00280030, ("DS", [0.0, 0.0]),
                                          "PixelSpacing must be two positive")),
    ("1 MB .nii.gz -> 1 GiB", _bomb),
    ("row with more cells", _raw_row("cells", b"a.nii.gz,head,s9,extra,cells\n", "5 cells")),
    ("Latin-1 row", _raw_row("latin1", "a.nii.gz,head,Jos\u00e9\n".encode("latin-1"),
                             "not UTF-8")),
    ("NUL byte in a cell", _raw_row("nul", b"a.nii.gz,head,s\x009\n", "NUL byte")),
    ("200 kB cell", _raw_row("huge", b"a.nii.gz,head," + b"x" * 200_000 + b"\n",
                             "CSV parser rejected")),
    ("same file twice", _duplicate(other_subject=False)),
    ("same file, two subjects", _duplicate(other_subject=True)),
    ("private columns, host path", _private_columns),
    ("path with ..", _outside(lambda ctx: "../outside.nii.gz" if _outside_file(ctx) else "",
                              "outside the root")),
    ("absolute path outside root", _outside(lambda ctx: str(_outside_file(ctx)),
                                            "outside the root")),
    (".nhdr data file /etc/passwd", _outside(_nhdr_to_passwd, "points outside the root")),
]

FAULTS: list[Callable[[Context], FaultRow]] = [
    sigterm_during_ingest, sigterm_at_first_staged_bytes, sigkill_then_rerun,
    ulimit_while_staging, ulimit_at_store_write, concurrent_ingests,
    *(hostile_fault(name, build) for name, build in HOSTILE),
]
"""Every fault, in table order; search faults are appended the same way."""


# ----------------------------------------------------------------------------------- the table

def subset(samples: Path, root: Path) -> list[tuple[str, str, str]]:
    """Copy the smallest volume of the first SUBJECTS_PER_REGION subjects of each region into
    `root`; returns their manifest rows."""
    with open(samples / "manifest.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: int(r["size_bytes"]))
    chosen: dict[tuple[str, str], dict] = {}
    for row in rows:
        region_subjects = {s for r, s in chosen if r == row["region"]}
        if (row["region"], row["subject"]) not in chosen and \
                len(region_subjects) < SUBJECTS_PER_REGION:
            chosen[(row["region"], row["subject"])] = row
    for row in chosen.values():
        source, target = samples / row["path"], root / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)
    return [(r["path"], r["region"], r["subject"]) for r in chosen.values()]


def format_table(rows: list[FaultRow]) -> str:
    width = max(len(r.fault) for r in rows)
    lines = [f"| {'fault':<{width}} | outcome | expected | partial files | hang |",
             f"|{'-' * (width + 2)}|---|---|---|---|"]
    lines += [f"| {r.fault:<{width}} | {r.outcome} | {'yes' if r.expected else 'NO'} | "
              f"{r.partial_files} | {'YES' if r.hang else 'no'} |" for r in rows]
    lines.append(f"\nfaults {len(rows)}, unexpected outcomes "
                 f"{sum(not r.expected for r in rows)}, partial files "
                 f"{sum(r.partial_files for r in rows)}, hangs {sum(r.hang for r in rows)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=None,
                        help="the sample folder (default: as the tests find it)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--only", nargs="*", default=[],
                        help="run only the faults whose name contains one of these")
    half = parser.add_mutually_exclusive_group()
    half.add_argument("--ingest-only", action="store_true", help="skip the search faults")
    half.add_argument("--search-only", action="store_true", help="skip the ingest faults")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search's kill moments")
    args = parser.parse_args()
    samples = args.samples or find_samples()
    if samples is None:
        parser.error("no sample folder found; pass --samples")
    work = args.work or Path(tempfile.mkdtemp(prefix="mri_tune_faults_"))
    try:
        root = work / "root"
        root.mkdir(parents=True, exist_ok=True)
        ctx = Context(root, subset(samples, root), work, samples)
        rows, search_rows = [], []
        for fault in [] if args.search_only else FAULTS:
            name = fault.__name__.replace("_", " ")
            if args.only and not any(s in name for s in args.only):
                continue
            rows.append(fault(ctx))
            print(f"done: {rows[-1].fault}", file=sys.stderr, flush=True)
        (work / "faults.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1))
        if not args.ingest_only:
            search_work = work / "search"
            search_work.mkdir(exist_ok=True)
            search_rows = run_search_faults(search_work, args.only, args.seed)
        if rows:
            print("Ingest faults\n\n" + format_table(rows))
        if search_rows:
            print("\nSearch faults\n\n" + format_search_table(search_rows))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in rows if not r.expected or r.partial_files or r.hang]
    bad += [r for r in search_rows if not r.expected or r.trials_lost or r.duplicate_configs
            or r.partial_files or r.hang]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
