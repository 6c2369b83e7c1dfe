"""What `--resume` continues besides Tune's unfinished trials: trials the infrastructure killed.

Tune records a trial as errored both when its own code raised and when its worker process, its
node or the driver's connection to them died. Only the first is the trial's failure; the second
says nothing of its configuration, so `--resume` continues such a trial from its checkpoint like
an unfinished one, whatever `--on-error` says; so does a trial that failed because the storage
was full (its checkpoint could not be written) (`--on-error` decides only for exceptions of the
trial's own code). The trial's own known failures (`oom`, `invalid_spec`, `diverged`) are normal
completions with a `failure` key and are never errors.

`settle_searcher` makes the searcher's saved state agree with Tune's. Tune writes the experiment
state and the searcher's state as two files, one after the other: a driver killed between the two
writes can leave a trial pending in the searcher that the experiment state already has finished
(or never recorded). The restored experiment never reports such a trial again, so the searcher
would hold it pending forever, and with the cap on pending proposals (a quarter of the remaining
budget) it would propose nothing more: the resumed search would wait for ever. Before
`Tuner.restore`, each such trial is completed from its last result row (its folder's
result.json, what Tune itself would have passed to `on_trial_complete`), completed as failed
when it errored and will not be retried, or released when the experiment never recorded it;
and the trial generator's count, saved with the searcher, is raised to the trials the
experiment recorded, or the search would end with more than num_samples trials.

`reopen_infrastructure_errors` marks those trials unfinished in Tune's newest experiment state
(`experiment_state-*.json`, a JSON list of per-trial JSON objects whose `status` is a plain
string) before `Tuner.restore` reads it. It reads each errored trial's `error.pkl`, the pickled
exception Tune wrote: a `--resume` already trusts the experiment folder as much as Tune does
(`Tuner.restore` unpickles its state), so this adds no new exposure.
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from typing import Any

import ray.cloudpickle
from ray.exceptions import (
    ActorUnavailableError,
    NodeDiedError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from mri_tune.errors import InputError
from mri_tune.experiment.trainable import result_rows
from mri_tune_core.files import replace_atomically
from searchers import GPSearch

logger = logging.getLogger(__name__)

STATE_GLOB = "experiment_state-*.json"
SEARCHER_GLOB = "searcher-state-*.pkl"  # Ray's Searcher.CKPT_FILE_TMPL; Tune restores the max()
GENERATOR_GLOB = "search_gen_state-*.json"  # Ray's SearchGenerator.CKPT_FILE_TMPL (a pickle)
ERROR_PICKLE = "error.pkl"
ERROR_TEXT = "error.txt"
# A worker or actor process that died (killed, segfault, lost connection), a node that died,
# or Ray's memory monitor killing a worker: none of them is the trial's own code.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    RayActorError, ActorUnavailableError, WorkerCrashedError, NodeDiedError, OutOfMemoryError)
# The storage full: the trial's checkpoint could not be written, which says nothing of it.
FULL_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_STORAGE_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")
_LOST_CHECKPOINT = "Could not recover from checkpoint as it does not exist"
_UNFINISHED = "PENDING"


def newest_state_file(experiment_dir: Path) -> Path | None:
    """The experiment state Tune restores from (the newest by its timestamped name)."""
    files = sorted(Path(experiment_dir).glob(STATE_GLOB))
    return files[-1] if files else None


def is_infrastructure_error(trial_dir: Path) -> bool:
    """Whether the trial's last recorded error is a dead worker, actor or node."""
    path = trial_dir / ERROR_PICKLE
    if not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            error = ray.cloudpickle.load(f)
    except Exception as err:  # noqa: BLE001 - any unreadable pickle: not provably a crash
        logger.warning("cannot read %s (%s: %s); the trial stays an error", path,
                       type(err).__name__, err)
        return False
    return is_infrastructure(error)


def is_infrastructure(error: object) -> bool:
    """A dead worker, actor or node, or full storage (not the trial's own code)."""
    if isinstance(error, INFRASTRUCTURE_ERRORS):
        return True
    cause = error.cause if isinstance(error, RayTaskError) else error
    if isinstance(cause, INFRASTRUCTURE_ERRORS):
        return True
    if isinstance(cause, ValueError) and _LOST_CHECKPOINT in str(cause):
        return True  # Tune's restore from a checkpoint it had deleted (before trainable.py)
    return isinstance(cause, OSError) and (
        cause.errno in FULL_STORAGE_ERRNOS or any(t in str(cause) for t in _FULL_STORAGE_TEXT))


def infrastructure_errors(experiment_dir: Path) -> list[str]:
    """The folders of the errored trials that `reopen_infrastructure_errors` would continue."""
    path = newest_state_file(experiment_dir)
    if path is None:
        return []
    _, trials, _ = _read_state(path)
    return [str(t["relative_logdir"]) for t in trials if _is_crashed(t, Path(experiment_dir))]


def reopen_infrastructure_errors(experiment_dir: Path) -> list[str]:
    """Mark errored trials whose worker or node died as unfinished; returns their folders."""
    path = newest_state_file(experiment_dir)
    if path is None:
        return []
    state, trials, metadata = _read_state(path)
    reopened = []
    for trial, meta, entry in zip(trials, metadata, state["trial_data"], strict=True):
        if not _is_crashed(trial, Path(experiment_dir)):
            continue
        trial["status"] = _UNFINISHED
        meta.update(error_filename=None, pickled_error_filename=None)
        entry[0], entry[1] = json.dumps(trial), json.dumps(meta)
        reopened.append(str(trial["relative_logdir"]))
    if reopened:
        text = json.dumps(state)  # a crash while writing leaves the old state, never half a file
        replace_atomically(path, lambda partial: partial.write_text(text))
    return reopened


def _read_state(path: Path) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """The state, and its per-trial JSON objects and run metadata (plain JSON only)."""
    try:
        state = json.loads(path.read_text())
        entries = state["trial_data"]
        trials = [json.loads(entry[0]) for entry in entries]
        metadata = [json.loads(entry[1]) for entry in entries]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError,
            TypeError) as err:
        raise InputError(f"{path} is not a Tune experiment state this version reads ({err}); "
                         "restore the file from a backup, or start a new search without "
                         "--resume.") from err
    return state, trials, metadata


def _is_crashed(trial: dict[str, Any], experiment_dir: Path) -> bool:
    if trial.get("status") != "ERROR" or not isinstance(trial.get("relative_logdir"), str):
        return False
    return is_infrastructure_error(experiment_dir / trial["relative_logdir"])


def settle_searcher(experiment_dir: Path, errors_retried: bool) -> list[str]:
    """Complete or release the saved searcher's pending trials that Tune will not report again
    (module docstring); returns a line per trial settled. Call after
    `reopen_infrastructure_errors` and before `Tuner.restore`; `errors_retried`: whether the
    restore resumes errored trials (--on-error retry)."""
    experiment_dir = Path(experiment_dir)
    state_path = newest_state_file(experiment_dir)
    saved = sorted(experiment_dir.glob(SEARCHER_GLOB))
    if state_path is None or not saved:
        return []
    path = saved[-1]
    searcher = GPSearch()
    try:
        searcher.restore(str(path))
        pending = searcher.core.pending
    except Exception as err:  # noqa: BLE001  (a state Tune's own restore will judge)
        logger.warning("left the searcher state %s as it is: %s", path, err)
        return []
    _, trials, _ = _read_state(state_path)
    by_id = {str(t.get("trial_id")): t for t in trials}
    settled = []
    for trial_id in pending:
        trial = by_id.get(trial_id)
        status = None if trial is None else trial.get("status")
        if trial is None:
            searcher.core.release(trial_id)
            settled.append(f"{trial_id}: issued but never recorded by Tune, released")
        elif status == "TERMINATED":
            rows = result_rows(experiment_dir / str(trial.get("relative_logdir", "")))
            result = rows[-1] if rows else None  # what Tune would have passed
            searcher.on_trial_complete(trial_id, result=result, error=result is None)
            settled.append(f"{trial_id}: finished before the crash, its result given to the "
                           "searcher" if result is not None else
                           f"{trial_id}: finished without a result, recorded as failed")
        elif status == "ERROR" and not errors_retried:
            searcher.on_trial_complete(trial_id, error=True)
            settled.append(f"{trial_id}: errored before the crash, recorded as failed")
    if settled:
        replace_atomically(path, lambda partial: searcher.save(str(partial)))
    counted = _count_recorded_trials(experiment_dir, len(trials))
    if counted:
        settled.append(counted)
    return settled


def _count_recorded_trials(experiment_dir: Path, recorded: int) -> str | None:
    """Tune's trial generator counts the trials it created (search_gen_state-*.json, saved with
    the searcher): behind the experiment state, it would create more than num_samples trials.
    Raise its count to the trials the experiment recorded; returns a line, or None."""
    saved = sorted(experiment_dir.glob(GENERATOR_GLOB))
    if not saved:
        return None
    path = saved[-1]  # the max(), as Tune restores
    try:
        state = ray.cloudpickle.loads(path.read_bytes())
        counter = int(state["counter"])
    except Exception as err:  # noqa: BLE001  (a state Tune's own restore will judge)
        logger.warning("left the trial generator's state %s as it is: %s", path, err)
        return None
    if counter >= recorded:
        return None
    state["counter"] = recorded
    data = ray.cloudpickle.dumps(state)
    replace_atomically(path, lambda partial: partial.write_bytes(data))
    return f"trial count {counter} -> {recorded}, the trials the experiment recorded"
