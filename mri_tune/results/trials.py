"""The trials of a search's experiment folder, read for ranking, without unpickling anything.

Ray's `ExperimentAnalysis` unpickles data embedded in `experiment_state-*.json` (a crafted
experiment folder would run code in `mri-tune ensemble` or `report`). This module reads only
JSON and the checkpoints (`torch.load(weights_only=True)` later, in the ensemble):

- the newest `experiment_state-*.json`, parsed as JSON: its `trial_data` holds one JSON object
  per trial whose `trial_id`, `experiment_tag`, `config`, `status` and `relative_logdir` are
  plain values (the pickled ones, hex strings, are never decoded); these are the trials of the
  experiment (a folder without an entry is a trial the driver was creating when it died);
- each trial folder's `result.json` (one row a reported epoch; a torn last line is skipped) and
  its `checkpoint_*` folders;
- `mri_tune_search.json`, which says the folder was written by this project's search.

Ranking, as Tune's: a trial's best validation loss is the minimum of the metric the searcher
minimises (`mri_tune_core.paper.METRIC`) over its rows; its checkpoint is, among the checkpoint
folders that still exist (Tune keeps the best by validation loss and the latest), the one whose
row has the lowest validation loss, as `ExperimentAnalysis.get_best_checkpoint` chooses. Ties go
to the earlier trial.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mri_tune.errors import InputError
from mri_tune.experiment.record import SEARCH_RECORD, read_search_record
from mri_tune.experiment.resume import newest_state_file
from mri_tune.experiment.trainable import result_rows
from mri_tune.training.checkpoint import CHECKPOINT_FILE
from mri_tune_core import paper

METRIC = paper.METRIC
_EXAMPLE = "e.g. demo_output/ray/mri_tune_demo"


@dataclass(frozen=True)
class TrialRecord:
    """One trial of an experiment, as the ranking and the report see it."""

    trial_id: str
    index: int  # order of creation (Tune's trial counter)
    config: dict[str, Any]
    status: str
    best_val_loss: float  # NaN when the trial reported nothing
    best_val_error: float  # val_error at the epoch of the best val_loss
    best_epoch: int
    epochs_run: int
    checkpoint: str | None  # the best checkpoint's folder

    @property
    def finished_ok(self) -> bool:
        return math.isfinite(self.best_val_loss) and self.checkpoint is not None


def load_trials(experiment_dir: Path) -> list[TrialRecord]:
    """Every trial of a search's experiment folder, in creation order (reads, never writes)."""
    experiment_dir = Path(experiment_dir).expanduser().resolve()
    state = _read_state(experiment_dir)
    records = [_record(entry, experiment_dir, state) for entry in _trial_entries(state)]
    return sorted(records, key=lambda r: (r.index, r.trial_id))


def rank_trials(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Trials with a best checkpoint, best validation loss first (ties: earlier trial first)."""
    return sorted((t for t in trials if t.finished_ok), key=lambda t: (t.best_val_loss, t.index))


def distinct_models(ranked: list[TrialRecord]) -> list[TrialRecord]:
    """`ranked` without the trials whose best checkpoint is a model listed before them.

    Two configurations that differ only in their epoch count train the same network epoch for
    epoch; when both reach their best validation loss at the same epoch with bitwise the same
    loss, their best checkpoints hold the same weights, and an ensemble would average one model
    twice (the demo grid's epochs 6 and 8 do this whenever the best epoch is at most 6).
    """
    kept: list[TrialRecord] = []
    seen: set[tuple[str, int, float]] = set()
    for trial in ranked:
        rest = {k: v for k, v in trial.config.items() if k != "epochs"}
        key = (json.dumps(rest, sort_keys=True, default=str), trial.best_epoch,
               trial.best_val_loss)
        if key not in seen:
            seen.add(key)
            kept.append(trial)
    return kept


def _read_state(experiment_dir: Path) -> Path:
    path = newest_state_file(experiment_dir)
    if path is None:
        raise InputError(f"{experiment_dir} is not a Ray Tune experiment folder (no "
                         "experiment_state-*.json); pass the folder of a search run by "
                         f"experiments/run_search.py (its --storage/--name), {_EXAMPLE}.")
    if read_search_record(experiment_dir) is None:
        raise InputError(f"{experiment_dir} holds no {SEARCH_RECORD}: it was not written by "
                         "this project's search (experiments/run_search.py), and mri-tune reads "
                         f"only its own experiments; pass the folder of such a search, {_EXAMPLE}.")
    return path


def _trial_entries(state: Path) -> list[dict[str, Any]]:
    """The per-trial JSON objects of Tune's experiment state (plain JSON only)."""
    try:
        data = json.loads(state.read_text())
        entries = [json.loads(item[0]) for item in data["trial_data"]]
        for entry in entries:
            for key, kind in (("trial_id", str), ("config", dict), ("status", str),
                              ("relative_logdir", str)):
                if not isinstance(entry.get(key), kind):
                    raise TypeError(f"trial entry {key!r} is not a {kind.__name__}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError,
            TypeError) as err:
        raise InputError(f"{state} is not an experiment state mri-tune can read ({err}); it is "
                         "damaged, edited, or from another Ray version. Restore the folder from "
                         "a copy, or rerun the search.") from err
    return entries


def _record(entry: dict[str, Any], experiment_dir: Path, state: Path) -> TrialRecord:
    folder = (experiment_dir / entry["relative_logdir"]).resolve()
    if folder.parent != experiment_dir:
        raise InputError(f"{state} names the trial folder {entry['relative_logdir']!r}, which is "
                         "not inside the experiment folder; the state was edited. Restore it.")
    # Tune numbers trials in creation order at the head of the experiment tag ("7_lr=0.01,...").
    head = str(entry.get("experiment_tag", "")).split("_", 1)[0]
    index = int(head) if head.isdigit() else 0
    trial_id, config, status = entry["trial_id"], entry["config"], entry["status"]
    rows = [r for r in result_rows(folder) if _finite(r.get(METRIC))]
    if not rows:
        return TrialRecord(trial_id, index, config, status, math.nan, math.nan, 0, 0, None)
    best = min(rows, key=lambda r: r[METRIC])  # the first of equal minima, as idxmin
    epochs = [r["epoch"] for r in result_rows(folder) if isinstance(r.get("epoch"), int)]
    return TrialRecord(trial_id, index, config, status, float(best[METRIC]),
                       float(best.get("val_error", math.nan)), int(best.get("epoch", 0)),
                       max(epochs, default=0), _best_checkpoint(folder, rows))


def _best_checkpoint(folder: Path, rows: list[dict[str, Any]]) -> str | None:
    """The kept checkpoint folder whose row has the lowest validation loss."""
    kept = [r for r in rows if _is_checkpoint_name(r.get("checkpoint_dir_name"))
            and (folder / r["checkpoint_dir_name"] / CHECKPOINT_FILE).is_file()]
    if not kept:
        return None
    return str(folder / min(kept, key=lambda r: r[METRIC])["checkpoint_dir_name"])


def _is_checkpoint_name(name: Any) -> bool:
    """Tune's `checkpoint_000003`; anything else (a path, `..`) names no folder of the trial."""
    return (isinstance(name, str) and name.startswith("checkpoint_")
            and name.removeprefix("checkpoint_").isdigit())


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
