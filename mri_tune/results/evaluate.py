"""Slice- and volume-level evaluation of a classifier on one split of a store.

Symbols (C classes, N slices, V volumes):
    probs        (N, C) float   class probabilities of each slice (softmax, or a mean of softmaxes)
    labels       (N,)   int     true class of each slice (its volume's region)
    volume       (N,)   int     volume id of each slice (row of the store's volume table)
    confusion    (C, C) int     confusion[t, p] = items of true class t predicted as p

The volume label is the majority vote of its slices' decisions (the paper, section 3): each slice
votes for its most probable class; a tie goes to the class with the larger summed probability.
Per-class error is 1 - recall of that class (the paper's Fig. 5 reports it per region).

A volume's verdict carries its confidence (`verdict`): with n slices, votes v (C,) and the winner w,
    vote_margin        = (v_w - max_{c != w} v_c) / n       in [0, 1]: 1 when every slice agrees
    mean_probability   = mean over slices of probs[:, w]
    uncertain          = vote_margin < margin (default UNCERTAIN_MARGIN): the slices disagree too
                         much for the volume to get a region.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mri_tune.data.store import SliceStore
from mri_tune.errors import InputError
from mri_tune.results.ensemble import load_classifiers, trained_splits
from mri_tune_core.store_format import SPLITS

logger = logging.getLogger(__name__)


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts with rows = true class and columns = predicted class."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return counts


def majority_vote(probs: np.ndarray, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Volume labels by majority vote of slice decisions.

    probs: (N, C) slice probabilities; volume: (N,) volume ids.
    returns: (ids (V,) sorted volume ids, labels (V,) voted class of each).
    """
    ids, inverse = np.unique(volume, return_inverse=True)
    votes = np.zeros((len(ids), probs.shape[1]))
    np.add.at(votes, (inverse, probs.argmax(axis=1)), 1.0)
    _, mass = probability_mass(probs, volume)
    # Break ties by probability mass: a vote count is an integer, mass / (N + 1) stays below 1.
    score = votes + mass / (len(volume) + 1.0)
    return ids, score.argmax(axis=1)


def probability_mass(probs: np.ndarray, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids (V,) sorted volume ids, mass (V, C) the sum of each volume's slice probabilities)."""
    ids, inverse = np.unique(volume, return_inverse=True)
    mass = np.zeros((len(ids), probs.shape[1]))
    np.add.at(mass, inverse, probs)
    return ids, mass


UNCERTAIN_MARGIN = 0.2
"""A volume whose winning region leads the runner-up by less than this share of its slices is
called uncertain (see benchmarks/RESULTS_generalization.md for the rate against accuracy)."""


@dataclass(frozen=True)
class Verdict:
    """One volume's vote: the winning class, the vote counts and the confidence."""

    label: int
    votes: np.ndarray  # (C,) int
    vote_margin: float
    mean_probability: float
    uncertain: bool


def verdict(probs: np.ndarray, margin: float = UNCERTAIN_MARGIN) -> Verdict:
    """The verdict of one volume from its slices' probabilities (n, C)."""
    _, voted = majority_vote(probs, np.zeros(len(probs), dtype=np.int64))
    winner = int(voted[0])
    votes = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
    runner_up = np.delete(votes, winner).max(initial=0)
    vote_margin = float(votes[winner] - runner_up) / max(len(probs), 1)
    return Verdict(winner, votes, vote_margin, float(probs[:, winner].mean()),
                   vote_margin < margin)


def check_margin(margin: float) -> float:
    if not 0.0 <= margin <= 1.0:
        raise InputError(f"--uncertain-margin must be a share of slices in [0, 1]. Got {margin}; "
                         f"use e.g. {UNCERTAIN_MARGIN} (0 never calls a volume uncertain).")
    return margin


@dataclass(frozen=True)
class VolumeResult:
    """One volume of the evaluated split: which scan, what it is, what the model said."""

    volume: int  # the volume's id in the store (row of its volume table)
    path: str  # as in the store's volume table (relative to the manifest's root)
    part: str  # which 3D volume of a 4D file or mixed series ("" for a plain file)
    truth: str
    predicted: str
    votes: dict[str, int]
    vote_margin: float
    mean_probability: float
    uncertain: bool

    @property
    def correct(self) -> bool:
        return self.truth == self.predicted

    def to_dict(self) -> dict:
        return {"volume": self.volume, "path": self.path, "part": self.part, "truth": self.truth,
                "predicted": self.predicted, "correct": self.correct, "votes": self.votes,
                "confidence": {"vote_margin": round(self.vote_margin, 4),
                               "mean_probability": round(self.mean_probability, 4)},
                "uncertain": self.uncertain}


def volume_results(probs: np.ndarray, labels: np.ndarray, volume: np.ndarray,
                   rows: dict[int, dict], classes: tuple[str, ...],
                   margin: float = UNCERTAIN_MARGIN) -> tuple[VolumeResult, ...]:
    """Every volume's verdict; `rows` maps a volume id to its row of the store's volume table."""
    results = []
    for vid in np.unique(volume):
        mine = volume == vid
        v = verdict(probs[mine], margin)
        row = rows.get(int(vid), {})
        results.append(VolumeResult(
            int(vid), str(row.get("path", vid)), str(row.get("part", "")),
            classes[int(labels[mine][0])],
            classes[v.label], {c: int(n) for c, n in zip(classes, v.votes, strict=True)},
            v.vote_margin, v.mean_probability, v.uncertain))
    return tuple(results)


def volume_truth(labels: np.ndarray, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids (V,), labels (V,)): the class of each volume (every slice of a volume shares it)."""
    ids, first = np.unique(volume, return_index=True)
    return ids, np.asarray(labels)[first]


@dataclass(frozen=True)
class Evaluation:
    """Confusion matrices of one model on one split, and the numbers derived from them."""

    classes: tuple[str, ...]
    slice_confusion: np.ndarray  # (C, C)
    volume_confusion: np.ndarray  # (C, C)
    volumes: tuple[VolumeResult, ...] = ()

    @property
    def slice_accuracy(self) -> float:
        return _accuracy(self.slice_confusion)

    @property
    def volume_accuracy(self) -> float:
        return _accuracy(self.volume_confusion)

    @property
    def slice_class_error(self) -> dict[str, float | None]:
        return _class_error(self.slice_confusion, self.classes)

    @property
    def volume_class_error(self) -> dict[str, float | None]:
        return _class_error(self.volume_confusion, self.classes)

    def to_dict(self) -> dict:
        return {
            "slice": {"accuracy": self.slice_accuracy, "error": 1.0 - self.slice_accuracy,
                      "class_error": self.slice_class_error,
                      "confusion": self.slice_confusion.tolist()},
            "volume": {"accuracy": self.volume_accuracy, "error": 1.0 - self.volume_accuracy,
                       "class_error": self.volume_class_error,
                       "confusion": self.volume_confusion.tolist(),
                       "uncertain": sum(v.uncertain for v in self.volumes),
                       "accuracy_of_certain": self.accuracy_of_certain},
            "volumes": [v.to_dict() for v in self.volumes],
        }

    @property
    def uncertain_fraction(self) -> float:
        """Share of the listed volumes whose verdict is uncertain (nan when none are listed)."""
        return (float(np.mean([v.uncertain for v in self.volumes])) if self.volumes
                else float("nan"))

    @property
    def accuracy_of_certain(self) -> float | None:
        """Volume accuracy over the volumes not called uncertain (None when there are none)."""
        certain = [v.correct for v in self.volumes if not v.uncertain]
        return float(np.mean(certain)) if certain else None


def _accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def _class_error(confusion: np.ndarray, classes: tuple[str, ...]) -> dict[str, float | None]:
    """1 - recall per class; None for a class absent from the split (no error is defined)."""
    support = confusion.sum(axis=1)
    return {name: (None if support[i] == 0 else float(1.0 - confusion[i, i] / support[i]))
            for i, name in enumerate(classes)}


def evaluate_probabilities(probs: np.ndarray, labels: np.ndarray, volume: np.ndarray,
                           classes: tuple[str, ...], rows: dict[int, dict] | None = None,
                           margin: float = UNCERTAIN_MARGIN) -> Evaluation:
    """Evaluation from slice probabilities (N, C), true labels (N,) and volume ids (N,);
    `rows` (volume id -> store volume-table row) names the volumes of the listing."""
    num_classes = len(classes)
    slice_conf = confusion_matrix(labels, probs.argmax(axis=1), num_classes)
    vote_ids, voted = majority_vote(probs, volume)
    truth_ids, truth = volume_truth(labels, volume)
    assert np.array_equal(vote_ids, truth_ids)  # both come from np.unique(volume)
    return Evaluation(tuple(classes), slice_conf, confusion_matrix(truth, voted, num_classes),
                      volume_results(probs, labels, volume, rows or {}, tuple(classes), margin))


def majority_class_error(labels: np.ndarray, volume: np.ndarray,
                         majority: int | None = None) -> float:
    """Volume error of the trivial model that answers one class for every volume.

    majority: the class it answers; scikit-learn's DummyClassifier("most_frequent") learns it
    from the training split (what `evaluate` passes). None answers the evaluated split's own
    most frequent class: a stricter floor that peeks at the labels it is scored on.
    """
    _, truth = volume_truth(labels, volume)
    if majority is None:
        majority = int(np.bincount(truth).argmax())
    return float(np.mean(truth != majority))


def training_majority(store) -> int:
    """Index of the region with the most training volumes of a `SliceStore`."""
    regions = [row["region"] for row in store.volumes("train")]
    counts = [regions.count(name) for name in store.classes]
    return int(np.argmax(counts))


@dataclass(frozen=True)
class EvaluationReport:
    """Every model evaluated on one split (ensemble, baseline) and the trivial majority floors."""

    split: str
    store: str
    models: dict[str, Evaluation]  # "ensemble", "baseline" (when known), or "model"
    majority_class: str  # the most frequent region of the training volumes
    majority_class_volume_error: float  # error of always answering `majority_class`
    split_majority_volume_error: float  # error of always answering this split's commonest class
    num_slices: int
    num_volumes: int
    probabilities: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Each model's slice probabilities (N, C), in the split's slice order (for the profiles)."""

    def to_dict(self) -> dict:
        return {"split": self.split, "store": self.store, "num_slices": self.num_slices,
                "num_volumes": self.num_volumes, "majority_class": self.majority_class,
                "majority_class_volume_error": self.majority_class_volume_error,
                "split_majority_volume_error": self.split_majority_volume_error,
                "models": {name: ev.to_dict() for name, ev in self.models.items()}}


def evaluate(model_path: Path, store_path: Path, split: str = "test",
             batch_size: int = 256, margin: float = UNCERTAIN_MARGIN) -> EvaluationReport:
    """Evaluate an ensemble folder (and the baseline it carries) or one trial checkpoint.

    The baseline is the paper's baseline configuration, trained inside the search as its first
    trial (points_to_evaluate[0]); `build_ensemble` stores it beside the members, so evaluating
    an ensemble folder shows both side by side.
    """
    seen = trained_splits(model_path)
    if split != "train" and split in seen:
        raise InputError(f"The models in {model_path} were trained on the {split} split (a "
                         f"refit on {','.join(s for s in SPLITS if s in seen)}), so their "
                         f"{split} figures would not be an estimate. Evaluate the ensemble "
                         "refit on train,validation (what run_search.py builds), or evaluate "
                         "this one on another store.")
    store = SliceStore(store_path)
    data = store.load_split(split)
    images = data.images.numpy() if hasattr(data.images, "numpy") else np.asarray(data.images)
    labels = np.asarray(data.labels)
    volume = np.asarray(data.volume)
    rows = {row["index"]: row for row in store.volumes(split)}
    classifiers = load_classifiers(model_path, store.classes)
    models, probabilities = {}, {}
    for name, classifier in classifiers.items():
        logger.info("evaluating %s on %d %s slices", name, len(labels), split)
        probs = classifier.predict_proba(images, batch_size=batch_size)
        probabilities[name] = probs
        models[name] = evaluate_probabilities(probs, labels, volume, tuple(store.classes), rows,
                                              check_margin(margin))
    majority = training_majority(store)
    return EvaluationReport(
        split=split, store=str(store_path), models=models,
        majority_class=store.classes[majority],
        majority_class_volume_error=majority_class_error(labels, volume, majority),
        split_majority_volume_error=majority_class_error(labels, volume),
        num_slices=len(labels), num_volumes=len(np.unique(volume)),
        probabilities=probabilities)


def format_report(report: EvaluationReport) -> str:
    """Plain-text tables: accuracy and per-class error of each model, slice and volume level."""
    names = list(report.models)
    classes = next(iter(report.models.values())).classes
    lines = [f"split {report.split}: {report.num_slices} slices, {report.num_volumes} volumes "
             f"(always answering the training majority, {report.majority_class}, errs on "
             f"{report.majority_class_volume_error:.3f} of the volumes; always answering this "
             f"split's commonest class, on {report.split_majority_volume_error:.3f})"]
    for level in ("slice", "volume"):
        lines.append("")
        lines.append(f"{level} level".ljust(14) + "".join(n.rjust(12) for n in names))
        rows = [("accuracy", lambda ev, lv=level: getattr(ev, f"{lv}_accuracy"))]
        rows += [(f"error {c}", lambda ev, c=c, lv=level: getattr(ev, f"{lv}_class_error")[c])
                 for c in classes]
        for label, get in rows:
            values = [get(report.models[n]) for n in names]
            lines.append(label.ljust(14) + "".join(_cell(v) for v in values))
    for name in names:
        lines.append("")
        lines.append(f"{name}: volume confusion (rows true, columns predicted)")
        lines.extend(_confusion_lines(report.models[name].volume_confusion, classes))
    lines.extend(_flagged_volumes(report.models[names[-1]]))  # the ensemble, or the one model
    return "\n".join(lines)


_FLAGGED_LINES = 12
"""Wrong or uncertain volumes listed in the text report (all of them are in --json)."""


def _flagged_volumes(evaluation: Evaluation) -> list[str]:
    """The wrong and the uncertain volumes, one line each (what a user must look at)."""
    flagged = [v for v in evaluation.volumes if v.uncertain or not v.correct]
    if not flagged:
        return []
    lines = ["", f"wrong or uncertain volumes ({len(flagged)}; margin = the winner's lead as a "
             "share of the slices, p = its mean probability):"]
    for v in flagged[:_FLAGGED_LINES]:
        status = "uncertain" if v.uncertain else "wrong"
        part = f" [{v.part}]" if v.part else ""
        lines.append(f"  {status:9} {v.path}{part}: {v.truth} called {v.predicted} "
                     f"(margin {v.vote_margin:.2f}, p {v.mean_probability:.2f})")
    if len(flagged) > _FLAGGED_LINES:
        lines.append(f"  ... and {len(flagged) - _FLAGGED_LINES} more (evaluate --json, or the "
                     "report, lists every volume)")
    return lines


def _cell(value: float | None) -> str:
    return ("-" if value is None else f"{value:.3f}").rjust(12)


def _confusion_lines(confusion: np.ndarray, classes: tuple[str, ...]) -> list[str]:
    width = max(len(c) for c in classes) + 2
    lines = [" " * width + "".join(c.rjust(width) for c in classes)]
    for i, name in enumerate(classes):
        lines.append(name.ljust(width) + "".join(str(v).rjust(width) for v in confusion[i]))
    return lines
