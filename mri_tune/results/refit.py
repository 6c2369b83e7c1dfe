"""Refit: the ensemble's chosen configurations trained again on the training and validation splits.

(Or on every split, for a model to deploy: `splits=SPLITS` (the store's), `mri-tune ensemble --refit
--refit-splits train,validation,test`. Its test figures are then no longer an estimate, so
`evaluate` refuses the test split for it; the leave-one-site-out learning curve,
benchmarks/RESULTS_generalization.md, is the evidence that more people help on new sites.)

The search ranks configurations by their validation loss; once the top k are chosen, the
validation split has done its work. Each member, and the paper's baseline (so that "ensemble
against baseline" stays a fair comparison), is then trained again from scratch on the training
and validation splits together: the same architecture, training settings, seed and images per
epoch, for the number of epochs at which its trial reached its best validation loss (the
checkpoint the ensemble would otherwise use). On the sample data's default split this adds the
second pelvis person and four more spine people to what every member learns from (measured on
the demo: README, "The demo").

The refits run as Ray tasks with a trial's resources (`resources(config)`), so they spread over
the cluster as the trials did; each returns its checkpoint to the driver, which replaces the
member's weights file atomically and records `trained_on` and `refit_epochs` in ensemble.json. A
refit that fails (out of memory, a non-finite loss, a lost worker) keeps the trial's own member,
trained on the training split, and says so in the log and in the manifest.

The validation loss in ensemble.json stays the trial's: the score that chose the member.
Measured: on the demo (2,048 augmented images per epoch) it turned 0.80 / 0.80 / 0.75 of the test
volumes into 0.90 / 0.90 / 0.75 over three seeds; at the smoke scale of the tests (1,024 images
per epoch, no augmentation) the refit ensemble was worse (0.40 against 0.45), so the paper's
protocol stays one option away (`run_search.py --no-refit`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from mri_tune.results.ensemble import (
    ENSEMBLE_FILE,
    TRAINED_ON,
    inference_payload,
    manifest_models,
    read_ensemble_manifest,
)
from mri_tune.training.checkpoint import checkpoint_payload, read_checkpoint, save_atomically
from mri_tune.training.config import TrainConfig
from mri_tune.training.model import CNNSpec
from mri_tune.training.run import train_from_store
from mri_tune_core.errors import InputError
from mri_tune_core.files import replace_atomically
from mri_tune_core.store_format import SPLITS

logger = logging.getLogger(__name__)


def refit_ensemble(folder: Path, store: Path,
                   resources: Callable[[Mapping[str, Any]], dict[str, float]],
                   splits: Sequence[str] = TRAINED_ON) -> Path:
    """Retrain every member (and the baseline) of the ensemble in `folder` on `splits` of
    `store` (the training and validation splits; SPLITS for a model to deploy, which can
    then no longer be evaluated on the test split), as Ray tasks (Ray must be initialised);
    returns `folder`.

    `resources(config)` -> {"num_cpus": .., "num_gpus": ..} for one refit, as for its trial.
    """
    splits = check_refit_splits(splits)
    on = " + ".join(splits)
    folder = Path(folder)
    manifest = read_ensemble_manifest(folder)
    entries = manifest_models(manifest)
    task = ray.remote(_refit_member)
    futures = {task.options(**resources(entry["config"])).remote(
        str(store), read_checkpoint(folder / entry["weights"])["train_config"], entry["spec"],
        int(entry["epoch"]), manifest["preprocessing"], splits): entry for entry in entries}
    waiting = list(futures)
    while waiting:
        [future], waiting = ray.wait(waiting, num_returns=1)
        entry = futures[future]
        done = len(entries) - len(waiting)
        try:
            payload = ray.get(future)
        except Exception as err:  # noqa: BLE001 - one failed refit keeps the trial's member
            cause = getattr(err, "cause", None) or err  # a RayTaskError carries the task's own
            reason = f"{type(cause).__name__}: {cause}".splitlines()[0]
            logger.warning("refit %d of %d, trial %s, failed (%s); the ensemble keeps its model "
                           "trained on the training split only", done, len(entries),
                           entry["trial_id"], reason)
            entry["trained_on"] = ["train"]
            entry["refit_error"] = reason
            continue
        save_atomically(payload, folder / entry["weights"])
        entry["trained_on"] = list(splits)
        entry["refit_epochs"] = int(entry["epoch"])
        logger.info("refit %d of %d: trial %s, %d epochs on the %s splits",
                    done, len(entries), entry["trial_id"], entry["refit_epochs"], on)
    manifest["refit"] = {"trained_on": list(splits), "store": str(store)}
    text = json.dumps(manifest, indent=1)
    replace_atomically(folder / ENSEMBLE_FILE, lambda partial: partial.write_text(text))
    refit = sum(e.get("trained_on") == list(splits) for e in entries)
    logger.info("%d of %d models refit on the %s splits", refit, len(entries), on)
    return folder


def check_refit_splits(splits: Sequence[str]) -> tuple[str, ...]:
    """`splits` in store order; InputError unless they name the training split and only
    splits of a store, each once."""
    if isinstance(splits, str) or "train" not in splits or len(set(splits)) != len(splits) \
            or not set(splits) <= set(SPLITS):
        raise InputError(f"A refit trains on the training split and, if asked, others of "
                         f"{', '.join(SPLITS)}, each once. Got {list(splits)!r}; e.g. "
                         "train,validation (the default) or train,validation,test (a model to "
                         "deploy).")
    return tuple(s for s in SPLITS if s in splits)


def _refit_member(store: str, train_config: Mapping[str, Any], spec: Mapping[str, Any],
                  epochs: int, preprocessing: Mapping[str, Any],
                  splits: tuple[str, ...]) -> dict[str, Any]:
    """One refit (runs in a Ray worker): the checkpoint dict, tensors on the CPU."""
    config = replace(TrainConfig.from_dict(train_config), epochs=max(1, epochs))
    trainer = train_from_store(Path(store), CNNSpec.from_dict(spec), config,
                               train_splits=splits)
    payload = inference_payload(checkpoint_payload(trainer, preprocessing))
    payload["model"] = {name: t.detach().cpu() for name, t in payload["model"].items()}
    return payload

