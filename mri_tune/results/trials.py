"""The trials of a Ray Tune experiment folder, read for ranking (reads, never writes).

Trials are ranked by their best validation loss (the minimum over their epochs of the metric the
searcher minimises, `mri_tune_core.paper.METRIC`); ties go to the earlier trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import ExperimentAnalysis

from mri_tune.errors import InputError
from mri_tune_core import paper

METRIC = paper.METRIC


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
    """Every trial of a Tune experiment folder, in creation order (reads, never writes)."""
    experiment_dir = Path(experiment_dir)
    if not any(experiment_dir.glob("experiment_state-*.json")):
        raise InputError(f"{experiment_dir} is not a Ray Tune experiment folder (no "
                         "experiment_state-*.json); pass --storage/--name of a search run, e.g. "
                         "demo_output/ray/mri_tune_demo.")
    analysis = ExperimentAnalysis(str(experiment_dir), default_metric=METRIC,
                                  default_mode=paper.MODE)
    frames = analysis.trial_dataframes
    records = [_record(trial, frames.get(trial.trial_id), analysis) for trial in analysis.trials]
    return sorted(records, key=lambda r: (r.index, r.trial_id))


def _record(trial, frame, analysis) -> TrialRecord:
    # Tune numbers trials in creation order at the head of the experiment tag ("7_lr=0.01,...").
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    index = int(head) if head.isdigit() else 0
    if frame is None or METRIC not in frame or frame[METRIC].isna().all():
        return TrialRecord(trial.trial_id, index, dict(trial.config), str(trial.status),
                           math.nan, math.nan, 0, 0, None)
    best = frame[METRIC].idxmin()
    checkpoint = analysis.get_best_checkpoint(trial, metric=METRIC, mode=paper.MODE)
    return TrialRecord(
        trial.trial_id, index, dict(trial.config), str(trial.status),
        float(frame.loc[best, METRIC]), float(frame.loc[best, "val_error"]),
        int(frame.loc[best, "training_iteration"]), int(frame["training_iteration"].max()),
        None if checkpoint is None else checkpoint.path)


def rank_trials(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Trials with a best checkpoint, best validation loss first (ties: earlier trial first)."""
    return sorted((t for t in trials if t.finished_ok), key=lambda t: (t.best_val_loss, t.index))
