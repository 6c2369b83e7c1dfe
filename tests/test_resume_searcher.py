"""`--resume` settles the searcher's pending trials that Tune will never report again.

Tune writes its experiment state and the searcher's state one after the other; a driver killed
between the two leaves a trial pending in the searcher that the experiment already has finished
(CI met it: the resumed smoke search then proposed nothing and waited for ever).
"""

from __future__ import annotations

import json
from pathlib import Path

import ray.cloudpickle
from ray import tune

from mri_tune.experiment.resume import settle_searcher
from searchers import GPSearch

SPACE = {"a": tune.choice([1, 2, 3, 4]), "b": tune.choice(["x", "y"])}
BUDGET = 6


def _searcher() -> GPSearch:
    # run_search's settings: at most a quarter of the remaining budget pending
    return GPSearch(space=SPACE, metric="val_loss", mode="min", seed=0, budget=BUDGET,
                    pending_fraction=0.25)


def _write_experiment(folder: Path, trials: dict[str, tuple[str, list[float] | None]],
                      searcher: GPSearch) -> Path:
    """Tune's files: the experiment state (one trial per entry, with a result.json of its rows)
    and the searcher's saved state."""
    entries = []
    for trial_id, (status, losses) in trials.items():
        (folder / trial_id).mkdir()
        if losses is not None:
            rows = [{"val_loss": loss, "training_iteration": i + 1, "config": {}}
                    for i, loss in enumerate(losses)]
            text = "".join(json.dumps(row) + "\n" for row in rows)
            (folder / trial_id / "result.json").write_text(text + '{"val_loss": 0.0, "trai')
        trial = {"trial_id": trial_id, "status": status, "relative_logdir": trial_id}
        entries.append([json.dumps(trial), json.dumps({})])
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": entries, "runner_data": {}}))
    path = folder / "searcher-state-2026-01-01_00-00-00.pkl"
    searcher.save(str(path))
    return path


def _restored(path: Path) -> GPSearch:
    searcher = GPSearch()
    searcher.restore(str(path))
    return searcher


def test_a_trial_finished_before_the_crash_is_given_its_result(tmp_path) -> None:
    searcher = _searcher()
    searcher.on_trial_complete("t0", {"val_loss": 0.5, "config": searcher.suggest("t0")})
    first = searcher.suggest("t1")
    # the crash: Tune recorded t1 TERMINATED (last row 0.3, then a row cut short), the
    # searcher's file still has it pending
    path = _write_experiment(tmp_path, {"t0": ("TERMINATED", [0.5]),
                                        "t1": ("TERMINATED", [0.9, 0.3])}, searcher)
    # Tune's trial generator, saved with the searcher, had counted one trial only
    generator = tmp_path / "search_gen_state-2026-01-01_00-00-00.json"
    generator.write_bytes(ray.cloudpickle.dumps(
        {"counter": 1, "total_samples": BUDGET, "finished": False, "experiment": None}))
    stuck = _restored(path)
    assert list(stuck.core.pending) == ["t1"]
    assert stuck.suggest("t3") is None  # 1 pending of a cap of 1: it would wait for ever

    lines = settle_searcher(tmp_path, errors_retried=False)
    assert lines == ["t1: finished before the crash, its result given to the searcher",
                     "trial count 1 -> 2, the trials the experiment recorded"]
    assert ray.cloudpickle.loads(generator.read_bytes()) == {
        "counter": 2, "total_samples": BUDGET, "finished": False, "experiment": None}
    settled = _restored(path)
    assert settled.core.pending == {}
    assert settled.core.n_observed == 2 and settled.core.n_failed == 0
    assert settled.core.get_state()["values"] == [0.5, 0.3]
    assert settled.core.get_state()["observed"][1] == list(settled.core.space.row_of(first))
    assert isinstance(settled.suggest("t3"), dict)  # the search goes on
    assert settle_searcher(tmp_path, errors_retried=False) == []  # nothing left to settle
    assert not list(tmp_path.glob(".*partial"))


def test_errored_trials_fail_unless_retried_and_unrecorded_ones_are_released(tmp_path) -> None:
    pair = {"a": tune.choice([1, 2])}  # two configurations, both issued before the crash
    searcher = GPSearch(space=pair, metric="val_loss", mode="min", seed=0)
    searcher.suggest("t1")
    issued = searcher.suggest("t2")
    assert searcher.suggest("t3") == GPSearch.FINISHED  # every configuration is used
    path = _write_experiment(tmp_path, {"t1": ("ERROR", [0.9])}, searcher)  # t2 never recorded

    retried = tmp_path / "retried"
    retried.mkdir()
    again = _write_experiment(retried, {"t1": ("ERROR", [0.9])}, _restored(path))
    assert settle_searcher(retried, errors_retried=True) == [
        "t2: issued but never recorded by Tune, released"]
    assert list(_restored(again).core.pending) == ["t1"]  # Tune runs t1 again: still pending

    assert settle_searcher(tmp_path, errors_retried=False) == [
        "t1: errored before the crash, recorded as failed",
        "t2: issued but never recorded by Tune, released"]
    settled = _restored(path)
    assert settled.core.pending == {} and settled.core.n_failed == 1
    assert settled.suggest("t3") == issued  # the released configuration is free again


def test_running_trials_and_other_folders_are_left_alone(tmp_path) -> None:
    searcher = _searcher()
    searcher.suggest("t1")
    path = _write_experiment(tmp_path, {"t1": ("RUNNING", [0.9])}, searcher)
    before = path.read_bytes()
    assert settle_searcher(tmp_path, errors_retried=False) == []  # Tune continues it
    assert path.read_bytes() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert settle_searcher(empty, errors_retried=False) == []  # no experiment: nothing to do
