"""The search on Ray: a session, a fresh Tuner or a restored one.

Files under `storage/name/`: Tune's experiment state and trial folders (checkpoints and each
trial's TensorBoard curves) and the search record (`record.py`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from mri_tune.data.samples import ensure_store
from mri_tune.data.store import SliceStore
from mri_tune.errors import InputError
from mri_tune.experiment.console import SearchProgress, show_once
from mri_tune.experiment.record import check_same_search, write_search_record
from mri_tune.experiment.resources import concurrent_slots, task_resources, trial_resources
from mri_tune.experiment.resume import (
    infrastructure_errors,
    reopen_infrastructure_errors,
    settle_searcher,
)
from mri_tune.experiment.settings import ExperimentSettings
from mri_tune.experiment.space import (
    AVERAGE_WEIGHTS,
    IMAGES_PER_EPOCH,
    STORE_SIZE,
    baseline_config,
    param_space,
)
from mri_tune.experiment.trainable import TrialSettings, make_trainable
from mri_tune_core import paper
from searchers import GPSearch, resolve_settings

logger = logging.getLogger(__name__)

PENDING_FRACTION = 0.25
"""Most trials pending at once, as a share of the trials left (measured on the searcher benchmark:
32 slots, budget 50: score 23.5 without the cap, 60.4 with it, at about 4x the wall time; at 8
slots it changed nothing)."""


def prepare(settings: ExperimentSettings) -> Path:
    """Check that a --resume has an experiment to restore, and build the store when absent."""
    if settings.resume:
        if not tune.Tuner.can_restore(settings.experiment_dir):
            raise InputError(f"--resume found no experiment to restore at "
                             f"{settings.experiment_dir}; check --storage and --name (or --out), "
                             "or run without --resume to start one.")
        check_same_search(settings)
    return ensure_store(settings.store, STORE_SIZE[settings.scale], settings.samples)


def warmup_trials(settings: ExperimentSettings) -> int:
    """The random trials before the GP: --warmup-trials, else the searcher preset's own."""
    return resolve_settings(settings.searcher_preset,
                            warmup_trials=settings.warmup_trials).warmup_trials


def tensorboard_command(settings: ExperimentSettings) -> str:
    return f"tensorboard --logdir {settings.experiment_dir}"


def local_experiment_dir(settings: ExperimentSettings) -> Path:
    """The experiment folder on this machine; the ensemble and the report read it from here."""
    folder = settings.local_experiment_dir
    if folder is None:
        raise InputError(f"The experiment lives at {settings.experiment_dir}, not on this "
                         "machine; copy it to a local folder and run `mri-tune ensemble "
                         "--experiment DIR` and `mri-tune report` on the copy.")
    return folder


class RaySession:
    """ray.init on entry (local or --address), ray.shutdown on exit; yields the cluster's CPUs.

    Also writes the search record next to Tune's state on a fresh run.
    """

    def __init__(self, settings: ExperimentSettings) -> None:
        self.settings = settings

    def __enter__(self) -> float:
        folder = self.settings.local_experiment_dir
        if folder is not None and not self.settings.resume:
            write_search_record(self.settings, warmup_trials(self.settings), folder)
        if not self.settings.verbose:
            # Tune's new console prints an experiment box and paths even at verbose=0; its
            # legacy reporter at verbose=0 prints nothing, leaving the console to SearchProgress.
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        ray.init(**ray_init_kwargs(self.settings), log_to_driver=self.settings.verbose)
        if not self.settings.verbose:
            show_once()
        return float(ray.cluster_resources().get("CPU", 1.0))

    def __exit__(self, *exc_info: object) -> None:
        ray.shutdown()


def ray_init_kwargs(settings: ExperimentSettings) -> dict[str, Any]:
    """ray.init arguments: a local Ray on this machine's CPUs (and --gpus logical GPUs), or an
    existing cluster at --address."""
    if settings.address is not None:
        return {"address": settings.address}
    if settings.gpus > 0 and not torch.cuda.is_available():
        logger.warning("--gpus %g was given but torch sees no CUDA device on this machine: Ray "
                       "schedules %g logical GPUs and every trial trains on the CPU. Install a "
                       "CUDA build of torch, or drop --gpus.", settings.gpus, settings.gpus)
    # address="local": never attach to a cluster some other `ray start` left on this machine.
    return {"address": "local", "num_cpus": os.cpu_count() or 1, "num_gpus": settings.gpus,
            "include_dashboard": False}


def build_tuner(settings: ExperimentSettings, cluster_cpus: float,
                write: Callable[[str], None]) -> tune.Tuner:
    """A fresh Tuner: the searcher over the scale's space, the baseline as the first trial."""
    slots = settings.max_concurrent or concurrent_slots(
        cluster_cpus, settings.cpus_per_trial, settings.gpus, settings.gpus_per_trial)
    write(f"searching {settings.num_samples} configurations, {slots} at a time "
          f"({warmup_trials(settings)} random after the baseline, then the GP)")
    searcher = GPSearch(preset=settings.searcher_preset, warmup_trials=settings.warmup_trials,
                        points_to_evaluate=[baseline_config(settings.scale)], seed=settings.seed,
                        # at most a quarter of the remaining trials pending, so that the GP sees
                        # results before the budget is spent (benchmarks/RESULTS_searchers.md)
                        budget=settings.num_samples, pending_fraction=PENDING_FRACTION)
    return tune.Tuner(
        _trainable(settings),
        param_space=param_space(settings.scale),
        tune_config=tune.TuneConfig(
            metric=paper.METRIC, mode=paper.MODE, num_samples=settings.num_samples,
            search_alg=searcher, max_concurrent_trials=slots,
            # A finished trial's worker process takes the next trial: no process start, no
            # torch import per trial (benchmarks/search.py: GPU slots 38% -> 98% busy).
            reuse_actors=True),
        run_config=_run_config(settings, write),
    )


def restore_tuner(settings: ExperimentSettings, write: Callable[[str], None]) -> tune.Tuner:
    """Tuner.restore of the experiment after a crash of the driver.

    Finished trials are kept; unfinished ones continue from their newest complete checkpoint
    (trainable.py); so do errored trials whose worker, actor or node died (resume.py): that is
    the infrastructure's failure, not theirs. Trials whose own code raised are resumed from their
    last checkpoint with --on-error retry, and left as errors with report. The searcher comes
    back from its own saved state, so no configuration is proposed twice and the experiment
    still stops at num_samples trials.
    """
    write(f"resuming {settings.experiment_dir}")
    folder = settings.local_experiment_dir
    if folder is not None:
        for trial in reopen_infrastructure_errors(folder):
            write(f"continuing {trial}: its worker died, the trial did not fail")
        for line in settle_searcher(folder, errors_retried=settings.on_error == "retry"):
            write(f"searcher: {line}")
    return tune.Tuner.restore(settings.experiment_dir, trainable=_trainable(settings),
                              resume_unfinished=True,
                              resume_errored=settings.on_error == "retry")


def report_interrupted(settings: ExperimentSettings, write: Callable[[str], None]) -> None:
    """After fit: say which trials a dead worker or a full disk stopped, and how to go on."""
    folder = settings.local_experiment_dir
    stopped = infrastructure_errors(folder) if folder is not None else []
    if stopped:
        write(f"{len(stopped)} trial(s) were stopped by a dead worker or a full disk, not by "
              "their own code; once the cause is gone, run the same command with --resume to "
              "continue them from their last checkpoint.")


def _trainable(settings: ExperimentSettings):
    """The trial function, bound to the store and the scale's images per epoch and weight
    average, with resources."""
    trial = TrialSettings(store=Path(settings.store),
                          images_per_epoch=IMAGES_PER_EPOCH[settings.scale], seed=settings.seed,
                          average_weights=AVERAGE_WEIGHTS[settings.scale],
                          experiment_dir=settings.local_experiment_dir)
    image_size = SliceStore(settings.store).image_size
    resources = trial_resources(settings.cpus_per_trial, settings.gpus_per_trial,
                                settings.uses_gpus, image_size)
    return tune.with_resources(make_trainable(trial), resources)


def refit_resources(settings: ExperimentSettings):
    """Ray task options of one refit of the ensemble: what its trial asked for."""
    return task_resources(settings.cpus_per_trial, settings.gpus_per_trial, settings.uses_gpus,
                          SliceStore(settings.store).image_size)


def _run_config(settings: ExperimentSettings, write: Callable[[str], None]) -> tune.RunConfig:
    return tune.RunConfig(
        name=settings.name, storage_path=settings.storage,
        # verbose=0: our one line per trial (SearchProgress) instead of Ray's tables.
        verbose=2 if settings.verbose else 0,
        callbacks=[SearchProgress(settings.num_samples, write)],
        # Tune keeps each trial's best checkpoint (for the ensemble) and its latest (for a
        # resume); every other one is deleted, which keeps a paper-scale search's disk bounded.
        # The price: Tune snapshots the experiment state after each checkpoint, and says so in a
        # warning that the console shows once (console.show_once).
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=paper.METRIC,
            checkpoint_score_order=paper.MODE),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
    )
