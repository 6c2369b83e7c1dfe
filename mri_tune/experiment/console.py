"""A console a person can read: one line when a trial starts and when it ends, and the best so far.

`SearchProgress` is a Tune `Callback`. It takes a `write` function (the script passes `print`), so
that the library never prints by itself. Example lines:

    trial   3 start  blocks 4x2 f16 k5 lr 1e-02 batch 32 epochs 6 aug
    trial   3 done   val_loss 0.4123 val_error 0.112   14 s | best 0.3980 (trial 1) | 17 left
    trial   5 failed oom: Out of GPU memory ... | best 0.3980 (trial 1) | 15 left
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from ray.tune import Callback

from mri_tune_core import paper


def short_config(config: Mapping[str, Any]) -> str:
    """A Table 1 config in one short phrase (other keys, if any, follow as key=value)."""
    parts = []
    if all(key in config for key in paper.CNN_KEYS):
        parts.append(f"blocks {config['num_blocks']}x{config['convs_per_block']} "
                     f"f{config['filters']} k{config['kernel_size']}")
    if "learning_rate" in config:
        parts.append(f"lr {float(config['learning_rate']):.0e}")
    for key, label in (("batch_size", "batch"), ("epochs", "epochs")):
        if key in config:
            parts.append(f"{label} {config[key]}")
    if "augmentation" in config:
        parts.append(f"aug {config['augmentation']}" if not isinstance(config["augmentation"], bool)
                     else ("aug" if config["augmentation"] else "no aug"))
    parts += [f"{key}={value}" for key, value in config.items() if key not in paper.TABLE1_KEYS]
    return " ".join(parts)


class SearchProgress(Callback):
    """Prints a line per trial start and end, with the best loss of the trials that ended so far
    and the number of trials left."""

    def __init__(self, num_samples: int, write: Callable[[str], None],
                 metric: str = paper.METRIC) -> None:
        self.num_samples = num_samples
        self.write = write
        self.metric = metric
        self.best: dict[str, float] = {}  # trial id -> best metric so far
        self.ended: set[str] = set()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.write(f"trial {_number(trial):>3} start  {short_config(trial.config)}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.best[trial.trial_id] = min(value, self.best.get(trial.trial_id, math.inf))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        # A resumed trial may end without a new result in this run (the driver died after its
        # last epoch): Tune's own summary of all its results still has the minimum.
        recorded = (getattr(trial, "metric_analysis", None) or {}).get(self.metric, {})
        value = recorded.get("min") if isinstance(recorded, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.best[trial.trial_id] = min(value, self.best.get(trial.trial_id, math.inf))
        if result.get("failure"):
            outcome = f"failed {result['failure']}: {_first_line(result.get('failure_message'))}"
        else:
            outcome = (f"done   {self.metric} {self.best.get(trial.trial_id, math.nan):.4f} "
                       f"val_error {result.get('val_error', math.nan):.3f} "
                       f"{result.get('time_total_s', 0.0):5.0f} s")
        self._end(trials, trial, outcome)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = getattr(trial, "error_file", None) or "see the trial's error.txt"
        self._end(trials, trial, f"error  the trial raised an exception ({error})")

    def _end(self, trials: list, trial: Any, outcome: str) -> None:
        self.ended.add(trial.trial_id)
        # On a resumed search, trials that ended before the crash count too.
        self.ended |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        left = max(0, self.num_samples - len(self.ended))
        self.write(f"trial {_number(trial):>3} {outcome} | {self._best_phrase(trials)} | "
                   f"{left} left")

    def _best_phrase(self, trials: list) -> str:
        ended = {t: loss for t, loss in self.best.items() if t in self.ended}
        if not ended:
            return "best -"
        trial_id = min(ended, key=ended.get)
        number = next((_number(t) for t in trials if t.trial_id == trial_id), trial_id)
        return f"best {self.best[trial_id]:.4f} (trial {number})"


def _number(trial: Any) -> str:
    """Tune's creation counter, at the head of the experiment tag ("7_lr=0.01,...")."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return head if head.isdigit() else str(trial.trial_id)


def _first_line(message: Any) -> str:
    text = str(message or "").strip()
    return text.splitlines()[0][:120] if text else ""


class _OncePerMessage(logging.Filter):
    """Lets the first record of each message through and drops its repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = record.getMessage().split("\n", 1)[0]
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def show_once(logger_names: tuple[str, ...] = ("ray", "")) -> None:
    """Show each message of Ray's loggers once: Tune repeats some warnings (the experiment
    snapshot after each checkpoint) for every trial, which buries the search's own lines.

    A filter on a logger sees only that logger's own records, so it goes on the handlers that
    Ray's records reach (Ray's own, and the root's); call it after `ray.init`.
    """
    once = _OncePerMessage()
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(once)
