"""The search's console: one line per trial start and end, the best so far, the trials left."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from mri_tune.experiment.console import SearchProgress, _OncePerMessage, short_config
from mri_tune.experiment.space import baseline_config


@dataclass
class FakeTrial:
    """What the callback reads of a Tune Trial."""

    trial_id: str
    experiment_tag: str
    config: dict
    status: str = "RUNNING"
    last_result: dict = field(default_factory=dict)
    metric_analysis: dict = field(default_factory=dict)


def test_short_config_names_every_table1_value() -> None:
    assert short_config(baseline_config("paper")) == \
        "blocks 5x1 f64 k3 lr 1e-03 batch 8 epochs 70 aug"
    assert short_config({"x": 1.5}) == "x=1.5"


def test_one_line_per_trial_start_and_end_with_the_best_and_the_trials_left() -> None:
    lines: list[str] = []
    progress = SearchProgress(num_samples=3, write=lines.append)
    first = FakeTrial("a", "1_lr=0.01", baseline_config("demo"))
    second = FakeTrial("b", "2_lr=0.001", baseline_config("demo"))
    trials = [first, second]
    progress.on_trial_start(0, trials, first)
    progress.on_trial_start(0, trials, second)
    for loss in (0.9, 0.5, 0.7):
        progress.on_trial_result(0, trials, first, {"val_loss": loss})
    first.last_result = {"val_loss": 0.7, "val_error": 0.25, "time_total_s": 12.0}
    progress.on_trial_complete(0, trials, first)
    first.status = "TERMINATED"
    second.last_result = {"failure": "oom", "failure_message": "Out of GPU memory\nmore",
                          "val_loss": math.nan}
    progress.on_trial_complete(0, trials, second)
    assert len(lines) == 4
    assert lines[0].startswith("trial   1 start  blocks")
    assert "done   val_loss 0.5000 val_error 0.250" in lines[2]
    assert lines[2].endswith("| best 0.5000 (trial 1) | 2 left")
    assert "failed oom: Out of GPU memory |" in lines[3]
    assert lines[3].endswith("| best 0.5000 (trial 1) | 1 left")


def test_a_trial_resumed_after_its_last_epoch_shows_its_best_loss() -> None:
    lines: list[str] = []
    progress = SearchProgress(num_samples=2, write=lines.append)
    trial = FakeTrial("a", "1_x", {})
    trial.last_result = {"val_loss": 0.7, "val_error": 0.25, "time_total_s": 12.0}
    trial.metric_analysis = {"val_loss": {"min": 0.6, "max": 0.9, "last": 0.7}}
    progress.on_trial_complete(0, [trial], trial)  # no result in this run
    assert "done   val_loss 0.6000" in lines[0] and "best 0.6000 (trial 1)" in lines[0]


def test_a_repeated_warning_is_shown_once() -> None:
    once = _OncePerMessage()
    record = logging.LogRecord("ray.tune", logging.WARNING, __file__, 1,
                               "snapshotting has been triggered\\ndetails", None, None)
    assert once.filter(record) is True
    assert once.filter(record) is False
