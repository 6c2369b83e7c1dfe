"""The search record: `mri_tune_search.json` beside Tune's experiment state.

It holds what the ensemble and the report need to know of a search that Tune does not keep: the
settings, the store, the scale's space, the baseline config (trial 0) and where the random warm-up
ends. A resumed search checks it to continue as it started.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mri_tune.errors import InputError
from mri_tune.experiment.settings import ExperimentSettings
from mri_tune.experiment.space import baseline_config, scale_space
from mri_tune_core.files import replace_atomically

SEARCH_RECORD = "mri_tune_search.json"


def write_search_record(settings: ExperimentSettings, warmup_trials: int,
                        experiment_dir: Path) -> None:
    """The settings, store and baseline of a run, beside Tune's experiment state."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings.to_dict(), "store": str(Path(settings.store).resolve()),
              "scale": settings.scale, "warmup_trials": warmup_trials,
              # the baseline runs first (points_to_evaluate), then the random warm-up
              "warmup_end": 1 + warmup_trials,
              "baseline_config": baseline_config(settings.scale),
              "space": scale_space(settings.scale)}
    text = json.dumps(record, indent=1)
    replace_atomically(experiment_dir / SEARCH_RECORD, lambda partial: partial.write_text(text))


def read_search_record(experiment_dir: Path) -> dict[str, Any] | None:
    """The record `write_search_record` left, or None for an experiment run by other means."""
    path = Path(experiment_dir) / SEARCH_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a readable search record ({err}); it was damaged or "
                         "edited. Restore it, or delete it to treat the experiment as a plain "
                         "Tune run.") from err
    if not isinstance(record, dict):
        raise InputError(f"{path} must hold a JSON object; got {type(record).__name__}. "
                         "Restore it, or delete it.")
    return record


def check_same_search(settings: ExperimentSettings) -> None:
    """A resumed search must train as it started: same scale (epochs, images) and store."""
    folder = settings.local_experiment_dir
    record = read_search_record(folder) if folder is not None else None
    if record is None:
        return
    started = (record.get("scale"), str(record.get("store")))
    now = (settings.scale, str(Path(settings.store).resolve()))
    if started != now:
        raise InputError(f"--resume must continue the search as it started: it ran with --scale "
                         f"{started[0]} on the store {started[1]}; got --scale {now[0]} and "
                         f"{now[1]}. Pass the original --scale and --store.")
