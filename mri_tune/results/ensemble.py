"""The top-k trials of a search as one self-contained ensemble folder; softmax averaging.

Trials are ranked by their best validation loss (the minimum over their epochs of the
class-weighted cross-entropy on the validation split, the metric the searcher minimises); each
member is that trial's checkpoint at its best epoch (Tune's CheckpointConfig keeps it).

Ensemble folder (format 1):
    ensemble.json          classes, image_size, preprocessing (the store's ingest parameters),
                           store path and provenance, the ranking rule, and for each member:
                           trial_id, val_loss, val_error, epoch, config, spec, weights file
    members/<trial>.pt     the member's checkpoint without optimizer and RNG state
                           (readable by `mri_tune.training.checkpoint.load_checkpoint`)
    baseline/<trial>.pt    the paper's baseline trial when the search ran it (for evaluation)

Prediction: p(c | x) = (1 / K) sum_k softmax_k(x)_c over the K members (the paper, section 3).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_tune.data.store import SliceStore
from mri_tune.errors import InputError
from mri_tune.experiment.record import read_search_record
from mri_tune.results.trials import TrialRecord, distinct_models, load_trials, rank_trials
from mri_tune.training.checkpoint import load_checkpoint, read_checkpoint
from mri_tune.training.inference import predict_proba
from mri_tune_core import paper

logger = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT_VERSION = 1
RANKING = "best validation loss (minimum over epochs of the class-weighted cross-entropy)"
_DROPPED_KEYS = ("optimizer", "rng")  # training state a member for inference does not need
TRAINED_ON = ("train", "validation")  # the splits a refit model learned (results/refit.py)
_MANIFEST_KEYS = ("format_version", "classes", "image_size", "preprocessing", "members",
                  "baseline", "ranking")
_MEMBER_KEYS = ("trial_id", "val_loss", "val_error", "weights")


def build_ensemble(experiment_dir: Path, out: Path, top: int = paper.TOP_K,
                   baseline_config: dict[str, Any] | None = None) -> Path:
    """Write the ensemble folder of the `top` best trials of `experiment_dir` into `out`.

    baseline_config: the Table 1 config of the paper's baseline (default: the one the search
    recorded in its settings file); the trial that ran it is stored for side-by-side evaluation.
    """
    if top < 1:
        raise InputError(f"--top must be an integer >= 1. Got {top}; the paper averages 10.")
    experiment_dir = Path(experiment_dir).expanduser().resolve()
    trials = load_trials(experiment_dir)
    ranked = rank_trials(trials)
    distinct = distinct_models(ranked)
    if len(distinct) < len(ranked):
        logger.info("%d trials left out of the ranking: their best checkpoint is the model of a "
                    "better-ranked trial (same configuration but the epoch count, same best "
                    "epoch and loss)", len(ranked) - len(distinct))
    ranked = distinct
    if not ranked:
        raise InputError(f"{experiment_dir} holds no trial with a validation loss and a "
                         "checkpoint; let the search finish at least one trial (or --resume it).")
    if len(ranked) < top:
        logger.warning("only %d trials have a checkpoint; the ensemble has %d members, not %d",
                       len(ranked), len(ranked), top)
    record = read_search_record(experiment_dir)
    if baseline_config is None and record is not None:
        baseline_config = record.get("baseline_config")
    out = _fresh_folder(Path(out))
    members = []
    for rank, trial in enumerate(ranked[:top], start=1):
        logger.info("ensemble member %d of %d: trial %s (val_loss %.4f)", rank,
                    min(top, len(ranked)), trial.trial_id, trial.best_val_loss)
        members.append(_write_member(trial, out / "members"))
    baseline = _find_baseline(trials, baseline_config)
    manifest = _manifest(members, record, experiment_dir,
                         None if baseline is None else _write_member(baseline, out / "baseline"))
    (out / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=1))
    logger.info("ensemble of %d trials written to %s", len(members), out)
    return out


def _fresh_folder(out: Path) -> Path:
    """`out`, emptied when it holds an earlier ensemble (whose stale members must not survive);
    any other non-empty folder is refused rather than deleted."""
    if out.exists() and any(out.iterdir()):
        if not (out / ENSEMBLE_FILE).is_file():
            raise InputError(f"--out {out} is a non-empty folder that holds no ensemble; pass a "
                             "new folder (an earlier ensemble folder is replaced).")
        shutil.rmtree(out)
    return out


def inference_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint dict without the training state a member for inference does not need."""
    for key in _DROPPED_KEYS:
        payload.pop(key, None)
    return payload


def _write_member(trial: TrialRecord, folder: Path) -> dict[str, Any]:
    payload = inference_payload(read_checkpoint(Path(trial.checkpoint)))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{trial.trial_id}.pt"
    torch.save(payload, path)
    return {"trial_id": trial.trial_id, "val_loss": trial.best_val_loss,
            "val_error": trial.best_val_error, "epoch": trial.best_epoch,
            "config": _jsonable(trial.config), "spec": payload["spec"],
            "class_names": payload["class_names"], "image_size": payload["image_size"],
            "weights": f"{folder.name}/{path.name}"}


def _find_baseline(trials: list[TrialRecord], config: dict[str, Any] | None
                   ) -> TrialRecord | None:
    if not config:
        return None
    runs = [t for t in trials if t.finished_ok
            and all(_same(t.config.get(k), v) for k, v in config.items())]
    return min(runs, key=lambda t: t.index) if runs else None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in config.items()}


def _manifest(members: list[dict], record: dict | None, experiment_dir: Path,
              baseline: dict | None) -> dict[str, Any]:
    if record is None or "store" not in record:
        raise InputError(f"{experiment_dir} has no search record (mri_tune_search.json) naming "
                         "its store; run the search with experiments/run_search.py.")
    store = SliceStore(Path(record["store"]))
    classes = list(store.classes)
    for m in members:
        if list(m["class_names"]) != classes:
            raise InputError(f"Trial {m['trial_id']} was trained on classes {m['class_names']} "
                             f"but the store {record['store']} has {classes}; rebuild the "
                             "ensemble from an experiment on this store.")
    return {"format_version": ENSEMBLE_FORMAT_VERSION, "classes": classes,
            "image_size": list(store.image_size), "preprocessing": store.preprocessing,
            "store": str(record["store"]), "experiment": str(experiment_dir),
            "ranking": RANKING, "members": members, "baseline": baseline}


class Ensemble:
    """K trained members whose softmax outputs are averaged.

    classes: class names (C,); preprocessing: the ingest parameters new volumes need;
    members: the member descriptions of ensemble.json (trial ids, scores, specs).
    """

    def __init__(self, models: list, classes: tuple[str, ...], image_size: tuple[int, int],
                 preprocessing: dict[str, Any], members: list[dict[str, Any]]) -> None:
        if not models:
            raise InputError("An ensemble needs at least one member; rebuild it with "
                             "`mri-tune ensemble`.")
        self.models = models
        self.classes = tuple(classes)
        self.image_size = image_size
        self.preprocessing = preprocessing
        self.members = members

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, H, W) uint8 slices -> (N, C) mean of the members' softmax probabilities."""
        images = np.asarray(images)
        if images.ndim != 3 or tuple(images.shape[1:]) != tuple(self.image_size):
            raise InputError(f"The ensemble takes (N, {self.image_size[0]}, "
                             f"{self.image_size[1]}) uint8 slices. Got {images.shape}; "
                             "preprocess volumes with the ensemble's preprocessing parameters.")
        total = np.zeros((len(images), len(self.classes)), dtype=np.float64)
        for model in self.models:
            total += predict_proba(model, images, batch_size=batch_size)
        return (total / len(self.models)).astype(np.float32)


def read_ensemble_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / ENSEMBLE_FILE
    if not path.is_file():
        raise InputError(f"{folder} is not an ensemble folder (no {ENSEMBLE_FILE}); build one "
                         "with `mri-tune ensemble --experiment DIR --out ENS`.")
    rebuild = "Rebuild the folder with `mri-tune ensemble --experiment DIR --out ENS`."
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not readable JSON ({err}); it was damaged or edited. "
                         f"{rebuild}") from err
    if not isinstance(manifest, dict):
        raise InputError(f"{path} must hold a JSON object; got {type(manifest).__name__}. "
                         f"{rebuild}")
    if manifest.get("format_version") != ENSEMBLE_FORMAT_VERSION:
        raise InputError(f"{path} has ensemble format {manifest.get('format_version')!r}; this "
                         f"mri-tune reads format {ENSEMBLE_FORMAT_VERSION}. Rebuild it.")
    _check_manifest(path, manifest, rebuild)
    return manifest


def _check_manifest(path: Path, manifest: dict[str, Any], rebuild: str) -> None:
    """The keys and member files that loading and describing an ensemble use."""
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    members = manifest.get("members")
    baseline = manifest.get("baseline")
    if missing or not isinstance(members, list) or not members or not (
            baseline is None or isinstance(baseline, dict)):
        raise InputError(f"{path} lacks or has malformed entries (missing: {missing}; members "
                         f"must be a non-empty list, baseline an object or null). {rebuild}")
    for member in members + ([baseline] if baseline else []):
        weights = member.get("weights") if isinstance(member, dict) else None
        absent = [k for k in _MEMBER_KEYS if not isinstance(member, dict) or k not in member]
        if absent or not isinstance(weights, str):
            raise InputError(f"{path}: a member lacks {absent or ['weights']}. {rebuild}")
        file = (path.parent / weights).resolve()
        if path.parent.resolve() not in file.parents or not file.is_file():
            raise InputError(f"{path} names the member file {weights!r}, which is not a file "
                             f"inside {path.parent}; a member was moved or deleted. {rebuild}")


def manifest_models(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of an ensemble manifest that name a model, its members then its baseline
    (the manifest's own dicts: updating one updates the manifest)."""
    return [*manifest["members"], *([manifest["baseline"]] if manifest.get("baseline") else [])]


def trained_splits(path: Path) -> set[str]:
    """The store splits any model of an ensemble folder learned from (a trial's own model: the
    training split; a refit: its `trained_on`); {"train"} for a single checkpoint."""
    if not (Path(path) / ENSEMBLE_FILE).is_file():
        return {"train"}
    manifest = read_ensemble_manifest(Path(path))
    return {s for entry in manifest_models(manifest) for s in entry.get("trained_on", ["train"])}


def load_ensemble(folder: Path, device: str = "cpu", part: str = "members") -> Ensemble:
    """Load an ensemble folder; part="baseline" loads its baseline member instead."""
    manifest = read_ensemble_manifest(folder)
    members = manifest["members"] if part == "members" else [manifest["baseline"]]
    models = [load_checkpoint(Path(folder) / m["weights"], device).model for m in members]
    return Ensemble(models, tuple(manifest["classes"]), tuple(manifest["image_size"]),
                    manifest["preprocessing"], members)


def load_single_model(path: Path, device: str = "cpu",
                      preprocessing: dict[str, Any] | None = None) -> Ensemble:
    """One checkpoint (from `mri-tune train` or a trial) as an ensemble of one member.

    preprocessing: the ingest parameters for new volumes; default: those the checkpoint recorded
    from its store (checkpoints of older versions have none: pass the store's).
    """
    loaded = load_checkpoint(path, device)
    return Ensemble([loaded.model], tuple(loaded.class_names), loaded.image_size,
                    preprocessing if preprocessing is not None else loaded.preprocessing,
                    [{"checkpoint": str(path), "spec": loaded.spec.to_dict()}])


def load_model(path: Path, device: str = "cpu",
               preprocessing: dict[str, Any] | None = None) -> Ensemble:
    """An ensemble folder, or a single checkpoint (file, or folder holding checkpoint.pt)."""
    path = Path(path)
    if (path / ENSEMBLE_FILE).is_file():
        return load_ensemble(path, device)
    return load_single_model(path, device, preprocessing)


def load_classifiers(path: Path, classes: list[str] | tuple[str, ...]) -> dict[str, Ensemble]:
    """What `evaluate` compares: {"baseline", "ensemble"} for an ensemble folder (baseline when
    the search ran it), {"model"} for one checkpoint (a file or a folder holding checkpoint.pt)."""
    path = Path(path)
    if (path / ENSEMBLE_FILE).is_file():
        manifest = read_ensemble_manifest(path)
        found = {"baseline": load_ensemble(path, part="baseline")} if manifest["baseline"] else {}
        found["ensemble"] = load_ensemble(path)
        models = found
    else:
        models = {"model": load_single_model(path)}
    for name, model in models.items():
        if list(model.classes) != list(classes):
            raise InputError(f"The {name} at {path} predicts classes {list(model.classes)} but "
                             f"the store has {list(classes)}; evaluate on the store it was "
                             "trained on.")
    return models


def describe_ensemble(folder: Path) -> str:
    """A few lines naming the members and their scores (what `mri-tune ensemble` prints)."""
    manifest = read_ensemble_manifest(folder)
    lines = [f"ensemble of {len(manifest['members'])} trials written to {folder} "
             f"(ranked by {manifest['ranking']}):"]
    lines += [f"  {m['trial_id']}  val_loss {m['val_loss']:.4f}  val_error {m['val_error']:.3f}"
              + (f"  (refit on {' + '.join(m['trained_on'])})" if "refit_epochs" in m else "")
              for m in manifest["members"]]
    baseline = manifest["baseline"]
    lines.append(f"baseline trial: {baseline['trial_id']} (val_loss {baseline['val_loss']:.4f})"
                 if baseline else "baseline trial: none in this experiment")
    return "\n".join(lines)
