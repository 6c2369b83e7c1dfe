"""`--resume` continues trials the infrastructure killed, and only those of the errored ones."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import ray.cloudpickle
from ray.exceptions import ActorDiedError, RayTaskError, WorkerCrashedError

from mri_tune.experiment.resume import (
    infrastructure_errors,
    is_infrastructure,
    reopen_infrastructure_errors,
)


def _task_error(cause: BaseException) -> RayTaskError:
    return RayTaskError("train", "Traceback (most recent call last): ...", cause)


def _experiment(tmp_path: Path, errors: dict[str, BaseException | None]) -> Path:
    """An experiment state of one trial per entry: ERROR with that error.pkl, or RUNNING."""
    entries = []
    for name, error in errors.items():
        folder = tmp_path / name
        folder.mkdir()
        trial = {"trial_id": name, "status": "ERROR" if error else "RUNNING",
                 "relative_logdir": name, "storage": {"_type": "CLOUDPICKLE_FALLBACK",
                                                      "value": "80054e2e"}}
        meta = {"error_filename": "error.txt" if error else None,
                "pickled_error_filename": "error.pkl" if error else None}
        if error is not None:
            (folder / "error.pkl").write_bytes(ray.cloudpickle.dumps(error))
        entries.append([json.dumps(trial), json.dumps(meta)])
    state = tmp_path / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text(json.dumps({"trial_data": entries, "runner_data": {"x": 1}}))
    return state


def test_only_trials_the_infrastructure_killed_are_reopened(tmp_path) -> None:
    state = _experiment(tmp_path, {
        "actor_died": ActorDiedError(),
        "worker_crashed": WorkerCrashedError(),
        "disk_full": _task_error(OSError(errno.ENOSPC, "No space left on device")),
        "own_bug": _task_error(ValueError("a bug in the trial's code")),
        "lost_checkpoint": _task_error(ValueError(
            "Could not recover from checkpoint as it does not exist on storage anymore.")),
        "own_missing_file": _task_error(FileNotFoundError(errno.ENOENT, "no such file")),
        "running": None,
    })
    crashed = ["actor_died", "disk_full", "lost_checkpoint", "worker_crashed"]
    assert sorted(infrastructure_errors(tmp_path)) == crashed  # what run_search reports
    reopened = reopen_infrastructure_errors(tmp_path)
    assert sorted(reopened) == crashed
    data = json.loads(state.read_text())
    statuses = {json.loads(t)["trial_id"]: json.loads(t)["status"] for t, _ in data["trial_data"]}
    assert statuses == {"actor_died": "PENDING", "worker_crashed": "PENDING",
                        "disk_full": "PENDING", "lost_checkpoint": "PENDING",
                        "own_bug": "ERROR", "own_missing_file": "ERROR", "running": "RUNNING"}
    for trial, meta in data["trial_data"]:
        if json.loads(trial)["status"] == "PENDING":
            assert json.loads(meta) == {"error_filename": None, "pickled_error_filename": None}
        # the values Tune pickled stay as they were
        assert json.loads(trial)["storage"] == {"_type": "CLOUDPICKLE_FALLBACK",
                                                "value": "80054e2e"}
    assert data["runner_data"] == {"x": 1}
    assert reopen_infrastructure_errors(tmp_path) == []  # nothing left to reopen
    assert infrastructure_errors(tmp_path) == []


def test_an_unreadable_error_pickle_keeps_the_trial_an_error(tmp_path) -> None:
    _experiment(tmp_path, {"garbled": ActorDiedError()})
    (tmp_path / "garbled" / "error.pkl").write_bytes(b"not a pickle")
    assert reopen_infrastructure_errors(tmp_path) == []


def test_user_errors_are_not_infrastructure() -> None:
    assert not is_infrastructure(_task_error(RuntimeError("CUDA error: device-side assert")))
    assert not is_infrastructure(ValueError("x"))
    assert is_infrastructure(_task_error(OSError(errno.EDQUOT, "Disk quota exceeded")))
