"""Regions of new volumes: per-slice probabilities, thresholded decisions, the volume vote, Fig. 6.

Symbols (C classes, n slices of one volume):
    probs      (n, C) float   class probabilities of each slice (mean of the members' softmaxes)
    threshold  float          a slice gets a decision only where max_c probs[:, c] > threshold
                              (the paper's slice profile uses 0.7); otherwise its decision is None
    votes      {class: int}   how many slices have each class as their most probable one
    label      str            the volume's region: majority vote of its slices (ties: larger
                              summed probability), as in `mri_tune.results.evaluate.majority_vote`
    confidence, uncertain     the vote margin and mean winning probability; "uncertain" when the
                              margin is below `margin` (`mri_tune.results.evaluate.verdict`)

A volume file is read and preprocessed by the ingest code (`volume_file_to_slices`) with the
preprocessing parameters saved in the ensemble, so new volumes are sliced, oriented, resized and
normalised exactly as the training slices were; unreadable input raises ingest's InputError.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mri_tune.errors import InputError
from mri_tune.results.ensemble import load_model
from mri_tune.results.evaluate import UNCERTAIN_MARGIN, check_margin, verdict
from mri_tune_core import paper
from mri_tune_datasets.preprocess import volume_file_to_slices

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = paper.DECISION_THRESHOLD
"""Probability a class must exceed for a slice to be labelled (the paper's Fig. 6)."""


@dataclass(frozen=True)
class SlicePrediction:
    index: int  # slice index along its plane in the canonical volume
    plane: str
    part: str  # which 3D volume of a 4D file / mixed series ("" for a plain 3D file)
    probs: dict[str, float]
    decision: str | None


@dataclass(frozen=True)
class VolumePrediction:
    path: str
    label: str  # the voted region (even when uncertain: `uncertain` says not to trust it)
    votes: dict[str, int]
    slices: tuple[SlicePrediction, ...]
    vote_margin: float = 1.0
    mean_probability: float = 1.0
    uncertain: bool = False

    @property
    def verdict(self) -> str:
        """What a person is told: the region, or "uncertain" when the slices disagree."""
        return "uncertain" if self.uncertain else self.label

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "votes": self.votes,
                "confidence": {"vote_margin": round(self.vote_margin, 4),
                               "mean_probability": round(self.mean_probability, 4)},
                "uncertain": self.uncertain,
                "slices": [{"index": s.index, "plane": s.plane, "part": s.part,
                            "probs": s.probs, "decision": s.decision} for s in self.slices]}


def check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"--threshold must be a probability in [0, 1). Got {threshold}; "
                         f"use e.g. {DEFAULT_THRESHOLD} (the paper's value).")
    return threshold


def decisions(probs: np.ndarray, classes: tuple[str, ...], threshold: float
              ) -> list[str | None]:
    """Per-slice decision: the class whose probability exceeds `threshold`, else None.

    probs: (n, C). With threshold >= 0.5 at most one class can exceed it.
    """
    best = probs.argmax(axis=1)
    return [classes[b] if probs[i, b] > threshold else None for i, b in enumerate(best)]


def summarise_volume(path: str, probs: np.ndarray, classes: tuple[str, ...], threshold: float,
                     index: np.ndarray, plane: list[str], part: list[str],
                     margin: float = UNCERTAIN_MARGIN) -> VolumePrediction:
    """Build one volume's prediction from its slices' probabilities (n, C) and slice keys (n,)."""
    vote = verdict(probs, margin)
    slices = tuple(
        SlicePrediction(int(index[i]), plane[i], part[i],
                        {c: round(float(p), 6) for c, p in zip(classes, probs[i], strict=True)},
                        decision)
        for i, decision in enumerate(decisions(probs, classes, threshold)))
    return VolumePrediction(path, classes[vote.label],
                            {c: int(n) for c, n in zip(classes, vote.votes, strict=True)}, slices,
                            vote.vote_margin, vote.mean_probability, vote.uncertain)


def predict_volumes(model_path: Path, volumes: list[Path], threshold: float = DEFAULT_THRESHOLD,
                    preprocessing: dict | None = None,
                    margin: float = UNCERTAIN_MARGIN) -> list[VolumePrediction]:
    """Read, preprocess as ingest did, and classify each volume with `model_path`: an ensemble
    folder or one checkpoint (`preprocessing` overrides what the checkpoint recorded)."""
    check_threshold(threshold)
    check_margin(margin)
    ensemble = load_model(model_path, preprocessing=preprocessing)
    if not ensemble.preprocessing:
        raise InputError(f"{model_path} records no preprocessing (a checkpoint of an older "
                         "version); pass --store with the store it was trained on.")
    results = []
    for number, path in enumerate(volumes, start=1):
        batches = volume_file_to_slices(Path(path), ensemble.preprocessing)
        if not batches:
            raise InputError(f"{path}: no slice left after preprocessing (every slice is "
                             "(nearly) constant); pass a volume with visible anatomy.")
        images = np.concatenate([b.images for b in batches])  # (n, H, W) uint8
        probs = ensemble.predict_proba(images)
        index = np.concatenate([b.slice_index for b in batches])
        plane = [b.plane for b in batches for _ in range(len(b.images))]
        part = [b.part for b in batches for _ in range(len(b.images))]
        results.append(summarise_volume(str(path), probs, ensemble.classes, threshold,
                                        index, plane, part, margin))
        logger.info("volume %d of %d, %s: %s (%d slices)", number, len(volumes), path,
                    results[-1].label, len(images))
    return results


def plot_profiles(predictions: list[VolumePrediction], out: Path, threshold: float) -> Path:
    """The paper's Fig. 6: class probabilities against slice index, one row per volume and one
    column per plane (of the first volume of a 4D file or mixed series), the threshold as a
    dashed line and, along the bottom, each slice's decision (grey: no class above it)."""
    rows = [(p, _profile_keys(p)) for p in predictions]
    columns = max(len(keys) for _, keys in rows)
    fig = Figure(figsize=(4.2 * columns, 2.8 * len(rows)))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for row, (prediction, keys) in enumerate(rows):
        for col in range(columns):
            if col < len(keys):
                _plot_profile(axes[row, col], prediction, keys[col], threshold)
            else:
                axes[row, col].set_visible(False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 if len(rows) < 3 else 0.025, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def _profile_keys(prediction: VolumePrediction) -> list[tuple[str, str]]:
    """(part, plane) groups of the volume's first part, in the order slices were produced."""
    seen: dict[tuple[str, str], None] = {}
    first_part = prediction.slices[0].part
    for s in prediction.slices:
        if s.part == first_part:
            seen.setdefault((s.part, s.plane), None)
    return list(seen)


def _plot_profile(ax, prediction: VolumePrediction, key: tuple[str, str], threshold: float
                  ) -> None:
    slices = sorted((s for s in prediction.slices if (s.part, s.plane) == key),
                    key=lambda s: s.index)
    classes = list(slices[0].probs)
    colours = {c: f"C{i}" for i, c in enumerate(classes)}
    index = np.array([s.index for s in slices], dtype=float)
    for c in classes:
        ax.plot(index, [s.probs[c] for s in slices], color=colours[c], label=c, lw=1.5)
    ax.axhline(threshold, color="0.4", ls="--", lw=1, label=f"threshold {threshold:g}")
    # Decision band: each slice covers up to the midpoints with its neighbours (kept slices
    # need not be contiguous: near-constant ones were dropped by preprocessing).
    edges = np.concatenate([[index[0] - 0.5], (index[1:] + index[:-1]) / 2, [index[-1] + 0.5]])
    for s, left, right in zip(slices, edges[:-1], edges[1:], strict=True):
        ax.axvspan(left, right, ymin=0, ymax=0.05, lw=0,
                   color=colours[s.decision] if s.decision else "0.85")
    part = f" ({key[0]})" if key[0] else ""
    ax.set_title(f"{_short_name(prediction.path)}{part}, {key[1]}: {prediction.label}",
                 fontsize=8)
    ax.set_xlabel("slice index", fontsize=8)
    ax.set_ylabel("probability", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _short_name(path: str) -> str:
    name = Path(path).name
    return name if len(name) <= 28 else name[:25] + "..."


def format_predictions(predictions: list[VolumePrediction], plot: Path | None = None) -> str:
    """One line per volume: its label, the vote counts and how many slices stayed undecided."""
    lines = []
    for p in predictions:
        undecided = sum(s.decision is None for s in p.slices)
        votes = ", ".join(f"{c} {n}" for c, n in p.votes.items())
        verdict_text = (f"uncertain (the slices disagree; leaning {p.label})" if p.uncertain
                        else p.label)
        lines.append(f"{p.path}: {verdict_text} (votes: {votes}; margin {p.vote_margin:.2f}, "
                     f"mean p {p.mean_probability:.2f}; {len(p.slices)} slices, "
                     f"{undecided} below the threshold)")
    if plot is not None:
        lines.append(f"slice profiles written to {plot}")
    return "\n".join(lines)
