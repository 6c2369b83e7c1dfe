"""Slice- and volume-level evaluation of a classifier on one split of a store.

Symbols (C classes, N slices, V volumes):
    probs        (N, C) float   class probabilities of each slice (softmax, or a mean of softmaxes)
    labels       (N,)   int     true class of each slice (its volume's region)
    volume       (N,)   int     volume id of each slice (row of the store's volume table)
    confusion    (C, C) int     confusion[t, p] = items of true class t predicted as p

The volume label is the majority vote of its slices' decisions (the paper, section 3): each slice
votes for its most probable class; a tie goes to the class with the larger summed probability.
Per-class error is 1 - recall of that class (the paper's Fig. 5 reports it per region).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mri_tune.data.store import SliceStore
from mri_tune.results.ensemble import load_classifiers

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
    num_classes = probs.shape[1]
    votes = np.zeros((len(ids), num_classes))
    np.add.at(votes, (inverse, probs.argmax(axis=1)), 1.0)
    mass = np.zeros((len(ids), num_classes))
    np.add.at(mass, inverse, probs)
    # Break ties by probability mass: a vote count is an integer, mass / (N + 1) stays below 1.
    score = votes + mass / (len(volume) + 1.0)
    return ids, score.argmax(axis=1)


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
                       "confusion": self.volume_confusion.tolist()},
        }


def _accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def _class_error(confusion: np.ndarray, classes: tuple[str, ...]) -> dict[str, float | None]:
    """1 - recall per class; None for a class absent from the split (no error is defined)."""
    support = confusion.sum(axis=1)
    return {name: (None if support[i] == 0 else float(1.0 - confusion[i, i] / support[i]))
            for i, name in enumerate(classes)}


def evaluate_probabilities(probs: np.ndarray, labels: np.ndarray, volume: np.ndarray,
                           classes: tuple[str, ...]) -> Evaluation:
    """Evaluation from slice probabilities (N, C), true labels (N,) and volume ids (N,)."""
    num_classes = len(classes)
    slice_conf = confusion_matrix(labels, probs.argmax(axis=1), num_classes)
    vote_ids, voted = majority_vote(probs, volume)
    truth_ids, truth = volume_truth(labels, volume)
    assert np.array_equal(vote_ids, truth_ids)  # both come from np.unique(volume)
    return Evaluation(tuple(classes), slice_conf, confusion_matrix(truth, voted, num_classes))


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

    def to_dict(self) -> dict:
        return {"split": self.split, "store": self.store, "num_slices": self.num_slices,
                "num_volumes": self.num_volumes, "majority_class": self.majority_class,
                "majority_class_volume_error": self.majority_class_volume_error,
                "split_majority_volume_error": self.split_majority_volume_error,
                "models": {name: ev.to_dict() for name, ev in self.models.items()}}


def evaluate(model_path: Path, store_path: Path, split: str = "test",
             batch_size: int = 256) -> EvaluationReport:
    """Evaluate an ensemble folder (and the baseline it carries) or one trial checkpoint.

    The baseline is the paper's baseline configuration, trained inside the search as its first
    trial (points_to_evaluate[0]); `build_ensemble` stores it beside the members, so evaluating
    an ensemble folder shows both side by side.
    """
    store = SliceStore(store_path)
    data = store.load_split(split)
    images = data.images.numpy() if hasattr(data.images, "numpy") else np.asarray(data.images)
    labels = np.asarray(data.labels)
    volume = np.asarray(data.volume)
    classifiers = load_classifiers(model_path, store.classes)
    models = {}
    for name, classifier in classifiers.items():
        logger.info("evaluating %s on %d %s slices", name, len(labels), split)
        probs = classifier.predict_proba(images, batch_size=batch_size)
        models[name] = evaluate_probabilities(probs, labels, volume, tuple(store.classes))
    majority = training_majority(store)
    return EvaluationReport(
        split=split, store=str(store_path), models=models,
        majority_class=store.classes[majority],
        majority_class_volume_error=majority_class_error(labels, volume, majority),
        split_majority_volume_error=majority_class_error(labels, volume),
        num_slices=len(labels), num_volumes=len(np.unique(volume)))


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
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return ("-" if value is None else f"{value:.3f}").rjust(12)


def _confusion_lines(confusion: np.ndarray, classes: tuple[str, ...]) -> list[str]:
    width = max(len(c) for c in classes) + 2
    lines = [" " * width + "".join(c.rjust(width) for c in classes)]
    for i, name in enumerate(classes):
        lines.append(name.ljust(width) + "".join(str(v).rjust(width) for v in confusion[i]))
    return lines
