"""Issue 11, ingest half: signals, a full disk, the file-size limit and concurrent writers leave
`--out` as it was and nothing beside it. Each fault runs a real ingest in a subprocess; the test
waits for a state (a file the paused ingest writes), never for a fixed time; the timeouts only
detect a hang."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mri_tune.data.store import SliceStore
from mri_tune_datasets import writer as writer_module
from mri_tune_datasets.ingest import IngestSettings, ingest
from mri_tune_datasets.writer import StoreLock, StoreWriteError, remove_stale_files

HANG_SECONDS = 300  # far above any run on a loaded machine: only a hang reaches it

# Runs `mri-tune ingest ARGS` and pauses (until a signal) while reading the second row, after
# writing READY: by then the first volume is staged and the lock on --out is held.
PAUSED_INGEST = """
import signal, sys
from pathlib import Path
from mri_tune.cli import main
from mri_tune_datasets import ingest as ingest_module
ready, original, calls = Path(sys.argv[1]), ingest_module.read_row, []
def paused(item, prep, root):
    calls.append(item)
    if len(calls) == 2:
        ready.write_text("staged")
        signal.pause()
    return original(item, prep, root)
ingest_module.read_row = paused
sys.exit(main(sys.argv[2:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@pytest.fixture
def setup(tiny) -> tuple[list[str], Path, bytes]:
    """(CLI arguments of an ingest of 4 tiny volumes, --out, the bytes of an older store there)."""
    manifest = tiny.manifest(tiny.good_rows("head", 4))
    out = tiny.folder / "out" / "store.h5"
    ingest(IngestSettings(manifest=manifest, out=out, size=16))
    return (["ingest", "--manifest", str(manifest), "--out", str(out), "--size", "32"], out,
            out.read_bytes())


def _start_paused(args: list[str], ready: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_INGEST, str(ready), *args],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + HANG_SECONDS
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"the ingest ended before pausing: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the ingest hung before its second row")
        time.sleep(0.01)  # polling a state, not waiting a duration
    return proc


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_sigterm_cleans_up_like_sigint(setup, tiny) -> None:
    args, out, before = setup
    proc = _start_paused(args, tiny.folder / "ready")
    assert any(n.endswith(".staging") for n in _listing(out.parent))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_SECONDS)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted (terminated by signal SIGTERM)" in err and "Traceback" not in err
    assert _listing(out.parent) == ["store.h5"] and out.read_bytes() == before


def test_sigkill_leftovers_are_removed_by_the_next_run(setup, tiny) -> None:
    args, out, before = setup
    proc = _start_paused(args, tiny.folder / "ready")
    proc.kill()
    proc.communicate(timeout=HANG_SECONDS)
    left = _listing(out.parent)
    assert any(n.endswith(".staging") for n in left) and out.read_bytes() == before
    report = ingest(IngestSettings(manifest=Path(args[2]), out=out, size=32))
    assert report.n_volumes == 4 and _listing(out.parent) == ["store.h5"]


def test_second_concurrent_ingest_fails_naming_the_first(setup, tiny) -> None:
    args, out, before = setup
    proc = _start_paused(args, tiny.folder / "ready")
    try:
        with pytest.raises(StoreWriteError, match=rf"another ingest \(process {proc.pid}\) is "
                                                  r"writing store.h5"):
            ingest(IngestSettings(manifest=Path(args[2]), out=out, size=32))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=HANG_SECONDS)
    assert _listing(out.parent) == ["store.h5"] and out.read_bytes() == before


def test_lock_is_released_and_its_file_removed(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    with StoreLock(out) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        with pytest.raises(StoreWriteError, match="another ingest"):
            StoreLock(out).__enter__()
    assert _listing(tmp_path) == []
    with StoreLock(out):  # free again
        pass


def test_only_stale_files_of_this_out_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f".s.h5.{gone.stdout.strip()}.abc.staging"
    live_owner = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                  stdin=subprocess.PIPE)
    try:
        live = tmp_path / f".s.h5.{live_owner.pid}.abc.tmp"
        other = tmp_path / f".t.h5.{gone.stdout.strip()}.abc.staging"  # another store's
        for path in (dead, live, other):
            path.write_bytes(b"x")
        assert remove_stale_files(out) == [dead]
        assert _listing(tmp_path) == sorted([live.name, other.name])
    finally:
        live_owner.communicate(b"")


def _limit_file_size(n_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, resource.getrlimit(
            resource.RLIMIT_FSIZE)[1]))
    return apply


def test_file_size_limit_is_a_clear_error_checked_up_front(setup) -> None:
    """`ulimit -f` used to kill the ingest (SIGXFSZ) or crash HDF5 (rc 139)."""
    args, out, before = setup
    run = subprocess.run([sys.executable, "-m", "mri_tune", *args], env=_env(),
                         capture_output=True, text=True, timeout=HANG_SECONDS,
                         preexec_fn=_limit_file_size(1024**2))
    assert run.returncode == 2, run.stderr
    assert "file-size limit of this process (ulimit -f) is 1.0 MiB" in run.stderr
    assert _listing(out.parent) == ["store.h5"] and out.read_bytes() == before


# The up-front checks disabled: the store's preallocation is what meets the limit.
PAST_THE_CHECKS = """
import sys
from mri_tune.cli import main
from mri_tune_datasets import writer
writer.check_space = lambda *args: None
sys.exit(main(sys.argv[1:]))
"""


def test_a_failed_store_write_never_reaches_hdf5(setup) -> None:
    args, out, before = setup
    run = subprocess.run([sys.executable, "-c", PAST_THE_CHECKS, *args], env=_env(),
                         capture_output=True, text=True, timeout=HANG_SECONDS,
                         preexec_fn=_limit_file_size(1024**2))
    assert run.returncode == 2, run.stderr  # not 139: HDF5 never saw a failed write
    assert "the file-size limit (ulimit -f) was reached" in run.stderr
    assert _listing(out.parent) == ["store.h5"] and out.read_bytes() == before


def test_full_disk_is_a_clear_error(setup, monkeypatch) -> None:
    args, out, before = setup
    usage = writer_module.shutil.disk_usage(out.parent)
    monkeypatch.setattr(writer_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=100 * 1024))
    with pytest.raises(StoreWriteError, match=r"not enough free disk space .* has 0.1 MiB free"):
        ingest(IngestSettings(manifest=Path(args[2]), out=out, size=32))
    assert _listing(out.parent) == ["store.h5"] and out.read_bytes() == before
    assert len(SliceStore(out)) > 0
