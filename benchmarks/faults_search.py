"""Search faults of issue 11: kill the search's processes, fill its disk, count what is lost.

The search half of `benchmarks/faults.py` (which holds the ingest faults): each fault is a
function `fault(ctx) -> SearchFaultRow`, listed in SEARCH_FAULTS. Every fault runs
`experiments/run_search.py --scale smoke` (6 trials on the sample store at 32x32, a local Ray
started by the driver in its own process group) and ends with a `--resume` that must finish the
search. A row counts:

- trials lost: of the `--num-samples` trials, those that did not end with all their epochs
  (or with one of their own failures, `oom`, `invalid_spec`, `diverged`);
- duplicate configs: trials that ran a configuration another trial ran;
- partial files: incomplete checkpoint folders and temporary files left in the experiment;
- hang: a run that did not end within HANG_SECONDS (a hang detector only: every fault waits for
  a state, a result row or a process that ends, never for a fixed time).

Faults:
- driver SIGKILL at 5 random moments (after a random number of result rows, drawn with
  `--seed`), each followed by `--resume`;
- a trial's worker process SIGKILLed half way through the trial: Tune records the trial as
  errored, and `--resume` continues it (a dead worker is not the trial's failure);
- a full disk while checkpointing: the storage folder is a small tmpfs (mounted here, which needs
  root; the row says so when it cannot be mounted), filled while a trial is half way until
  FILL_LEAVES_MB are free, less than a checkpoint needs; the trials stop with "no space left"
  (a copy under way may really run out), the space is freed, and `--resume` continues. A disk
  filled to the last byte is not recoverable this way: Ray's syncer then leaves a torn
  experiment state on the storage, which Tune cannot restore.

    python benchmarks/faults_search.py [--work DIR] [--only SUBSTRING ...] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mri_tune.data.samples import ensure_store
from mri_tune.errors import InputError
from mri_tune.experiment.space import NUM_SAMPLES, scale_space
from mri_tune.results.trials import load_trials
from mri_tune.training.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
RUN_SEARCH = REPO / "experiments" / "run_search.py"
HANG_SECONDS = 1200
"""A leg of the search that takes longer is counted as a hang (a whole smoke search takes a few
minutes on 2 busy cores)."""
KILLS = 5
EXPERIMENT = Path("ray") / "mri_tune_smoke"
DISK_MB = 800  # the tmpfs of the full-disk fault: room for the search (2 checkpoints a trial)
FILL_LEAVES_MB = 20  # free space left by the filler: Tune's state fits, a checkpoint does not


@dataclass(frozen=True)
class SearchFaultRow:
    """One line of the table."""

    fault: str
    outcome: str
    expected: bool
    trials_lost: int
    duplicate_configs: int
    partial_files: int
    hang: bool


@dataclass(frozen=True)
class SearchContext:
    work: Path
    store: Path
    rng: np.random.Generator

    def out_folder(self, fault: str) -> Path:
        folder = self.work / fault.replace(" ", "_")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def args(self, out: Path, *extra: str) -> list[str]:
        return [sys.executable, str(RUN_SEARCH), "--scale", "smoke", "--out", str(out),
                "--store", str(self.store), *extra]


class Leg:
    """One run of run_search.py in its own process group (its local Ray runs in it too)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("a") as out:
            self.process = subprocess.Popen(args, cwd=REPO, env=_env(), start_new_session=True,
                                            stdout=out, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        self.hang = False

    def running(self) -> bool:
        if self.process.poll() is not None:
            return False
        if time.monotonic() - self.started > HANG_SECONDS:
            self.hang = True
            self.kill()
            return False
        return True

    def wait_until(self, condition: Callable[[], bool]) -> bool:
        """Poll a state of the files until it holds (True) or the leg ends (False)."""
        while self.running():
            if condition():
                return True
            time.sleep(0.2)  # polling for a state, not waiting a duration
        return condition()

    def finish(self) -> int:
        while self.running():
            time.sleep(0.5)
        self.kill()  # whatever the driver left in its group
        return self.process.returncode if not self.hang else -1

    def kill(self) -> None:
        """SIGKILL the driver, then what is left of its process group (Ray's processes)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        _kill_group(self.process.pid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the group is empty (a hang detector only)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _env() -> dict[str, str]:
    paths = [str(REPO), str(REPO / "datasets"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "RAY_AUTH_MODE": "disabled"}


def _rows(experiment: Path) -> list[list[dict]]:
    """The epoch rows of each trial folder's result.json (torn lines skipped)."""
    trials = []
    for folder in experiment.glob("train_region_cnn_*"):
        rows = []
        path = folder / "result.json"
        for line in (path.read_text(errors="replace").splitlines() if path.is_file() else []):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "epoch" in row:
                rows.append(row)
        trials.append(rows)
    return trials


def _epochs_done(experiment: Path) -> int:
    return sum(len(rows) for rows in _rows(experiment))


def _half_way_row(experiment: Path) -> dict | None:
    """The last row of a trial that has reported an epoch and has at least two left."""
    for folder in experiment.glob("train_region_cnn_*"):
        try:
            target = int(json.loads((folder / "params.json").read_text())["epochs"])
        except (OSError, ValueError, KeyError):
            continue
        rows = [r for r in _rows_of(folder) if "epoch" in r]
        if rows and len(rows) < target - 1:
            return rows[-1]
    return None


def _rows_of(folder: Path) -> list[dict]:
    path = folder / "result.json"
    rows = []
    for line in (path.read_text(errors="replace").splitlines() if path.is_file() else []):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _count(experiment: Path, num_samples: int) -> tuple[int, int, int, str]:
    """(trials lost, duplicate configs, partial files, a note) of a finished experiment."""
    trials = load_trials(experiment)
    complete, notes = 0, []
    for trial in trials:
        folder = next(experiment.glob(f"train_region_cnn_{trial.trial_id}_*"), None)
        rows = _rows_of(folder) if folder else []
        epochs = [r["epoch"] for r in rows if "epoch" in r]
        if any(r.get("failure") for r in rows):
            complete += 1  # the trial's own failure: a normal end
        elif epochs == list(range(1, int(trial.config["epochs"]) + 1)):
            complete += 1
        else:
            notes.append(f"{trial.trial_id} {trial.status} epochs {epochs}")
    configs = {json.dumps(t.config, sort_keys=True) for t in trials}
    partial = [p for p in experiment.rglob("*")
               if p.name.endswith((".partial", ".tmp")) or (
                   p.is_dir() and p.name.startswith("checkpoint_") and not _readable(p))]
    notes += [f"partial: {p.relative_to(experiment)}" for p in partial]
    return (num_samples - complete, len(trials) - len(configs), len(partial),
            "; ".join(notes))


def _readable(checkpoint: Path) -> bool:
    try:
        read_checkpoint(checkpoint)
    except InputError:
        return False
    return True


def _row(fault: str, outcome: str, experiment: Path, hang: bool,
         final_rc: int) -> SearchFaultRow:
    lost, duplicates, partial, notes = _count(experiment, NUM_SAMPLES["smoke"])
    outcome = f"{outcome}; final --resume rc {final_rc}" + (f" ({notes})" if notes else "")
    expected = final_rc == 0 and not (lost or duplicates or partial or hang)
    return SearchFaultRow(fault, outcome, expected, lost, duplicates, partial, hang)


# ---- the faults -----------------------------------------------------------------------------


def driver_sigkill_at_random_moments(ctx: SearchContext) -> SearchFaultRow:
    name = "driver SIGKILL at 5 random moments, each followed by --resume"
    out = ctx.out_folder("driver_kills")
    experiment, log = out / EXPERIMENT, out / "legs.log"
    total = min(scale_space("smoke")["epochs"]) * NUM_SAMPLES["smoke"]  # reached in any run
    moments = sorted(ctx.rng.choice(np.arange(1, total), size=KILLS, replace=False))
    kills, hang, args = [], False, ctx.args(out)
    for moment in moments:
        leg = Leg(args, log)
        reached = leg.wait_until(lambda m=moment: _epochs_done(experiment) >= m)
        hang |= leg.hang
        if not reached:  # the leg finished first: no kill left to make in this search
            leg.finish()
            break
        leg.kill()
        kills.append(_epochs_done(experiment))
        args = ctx.args(out, "--resume")
    final = Leg(ctx.args(out, "--resume"), log)
    rc = final.finish()
    hang |= final.hang
    return _row(name, f"killed after {kills} epochs done", experiment, hang, rc)


def trial_worker_sigkill(ctx: SearchContext) -> SearchFaultRow:
    name = "a trial's worker process SIGKILLed, then --resume"
    out = ctx.out_folder("worker_kill")
    experiment, log = out / EXPERIMENT, out / "legs.log"
    leg = Leg(ctx.args(out), log)
    found = leg.wait_until(lambda: _half_way_row(experiment) is not None)
    row = _half_way_row(experiment)
    outcome = "no trial was half way"
    if found and row is not None:
        os.kill(int(row["pid"]), signal.SIGKILL)
        outcome = f"killed worker {row['pid']} at epoch {row['epoch']} of trial {row['trial_id']}"
    first = leg.finish()
    final = Leg(ctx.args(out, "--resume"), log)
    rc = final.finish()
    return _row(name, f"{outcome}; first run rc {first}", experiment, leg.hang or final.hang,
                rc)


def full_disk_while_checkpointing(ctx: SearchContext) -> SearchFaultRow:
    name = "full disk while checkpointing (tmpfs storage), space freed, --resume"
    out = ctx.out_folder("full_disk")
    disk = out / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs",
                              str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        return SearchFaultRow(name, f"not run: cannot mount a tmpfs ({mounted.stderr.strip()})",
                              False, 0, 0, 0, False)
    try:
        experiment, log = disk / "mri_tune_smoke", out / "legs.log"
        storage = ["--storage", str(disk), "--name", "mri_tune_smoke"]
        leg = Leg(ctx.args(out, *storage), log)
        found = leg.wait_until(lambda: _half_way_row(experiment) is not None)
        filler = disk / "filler"
        if found:
            _fill(filler)
        first = leg.finish()
        filler.unlink(missing_ok=True)
        final = Leg(ctx.args(out, *storage, "--resume"), log)
        rc = final.finish()
        return _row(name, f"disk filled: {found}; first run rc {first}", experiment,
                    leg.hang or final.hang, rc)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(path: Path) -> None:
    """Write zeros into `path` until FILL_LEAVES_MB are free on its disk."""
    chunk = b"\0" * (1 << 20)
    with path.open("wb") as f:
        while shutil.disk_usage(path.parent).free > FILL_LEAVES_MB * 2**20:
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())


SEARCH_FAULTS = [driver_sigkill_at_random_moments, trial_worker_sigkill,
                 full_disk_while_checkpointing]


def format_table(rows: list[SearchFaultRow]) -> str:
    lines = ["| fault | outcome | expected | trials lost | duplicate configs | partial files "
             "| hang |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.fault} | {r.outcome} | {'yes' if r.expected else 'NO'} | {r.trials_lost} "
              f"| {r.duplicate_configs} | {r.partial_files} | {'YES' if r.hang else 'no'} |"
              for r in rows]
    lines.append(f"\nfaults {len(rows)}, trials lost {sum(r.trials_lost for r in rows)}, "
                 f"duplicate configs {sum(r.duplicate_configs for r in rows)}, partial files "
                 f"{sum(r.partial_files for r in rows)}, hangs {sum(r.hang for r in rows)}")
    return "\n".join(lines)


def run_search_faults(work: Path, only: list[str], seed: int = 0) -> list[SearchFaultRow]:
    """Every search fault (or those whose name holds one of `only`), each a table row."""
    rows: list[SearchFaultRow] = []
    store = ensure_store(work / "sample_store_32.h5", 32)
    ctx = SearchContext(work, store, np.random.default_rng(seed))
    for fault in SEARCH_FAULTS:
        if only and not any(s in fault.__name__ for s in only):
            continue
        try:
            rows.append(fault(ctx))
        except Exception as err:  # noqa: BLE001 - the table must still come out
            rows.append(SearchFaultRow(fault.__name__, f"benchmark failed: {err!r}"[:300],
                                       False, -1, -1, -1, False))
        print(f"done: {rows[-1]}", file=sys.stderr, flush=True)
    (work / "faults_search.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--only", nargs="*", default=[],
                        help="run only the faults whose name contains one of these")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mri_tune_search_faults_"))
    try:
        rows = run_search_faults(work, args.only, args.seed)
        print(format_table(rows))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.expected for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
