"""The report of a search: markdown with PNG figures, after the paper's Fig. 2, 4 and 5.

    search_progress.png   validation loss and error of each trial against its index (Fig. 4):
                          running median, running minimum, the baseline's value, and a marker
                          where the random warm-up ended; failed trials drawn as crosses
    confusion.png         volume- and slice-level confusion matrices, baseline vs ensemble
                          (Fig. 5), rows normalised (the colour), counts written in the cells
    report.md             the numbers, the figures, and the top-ten table (Fig. 2)
    evaluation.json       `EvaluationReport.to_dict()`

Symbols (T trials in creation order): loss (T,) best validation loss of each trial (NaN when it
failed), running_min[t] = min(loss[:t+1]), running_median[t] = median(loss[:t+1]) (NaNs ignored).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mri_tune.data.store import PLANES, SliceStore
from mri_tune.experiment.console import short_config
from mri_tune.experiment.record import read_search_record
from mri_tune.results.ensemble import TRAINED_ON, manifest_models, read_ensemble_manifest
from mri_tune.results.evaluate import Evaluation, EvaluationReport, evaluate
from mri_tune.results.predict import DEFAULT_THRESHOLD, plot_profiles, summarise_volume
from mri_tune.results.trials import TrialRecord, load_trials, rank_trials
from mri_tune_core import paper

logger = logging.getLogger(__name__)

_FAILED_COLOUR, _BASELINE_COLOUR, _WARMUP_COLOUR = "tab:red", "tab:green", "0.5"
OUTLIER_FACTOR = 5.0
"""Values above OUTLIER_FACTOR x the median (diverged trials) are drawn at the top edge."""


def running_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(running minimum (T,), running median (T,)) of (T,) values, NaNs ignored (NaN until the
    first finite value)."""
    minimum = np.full(len(values), np.nan)
    median = np.full(len(values), np.nan)
    for t in range(len(values)):
        seen = values[: t + 1]
        seen = seen[np.isfinite(seen)]
        if len(seen):
            minimum[t], median[t] = seen.min(), np.median(seen)
    return minimum, median


def plot_search_progress(trials: list[TrialRecord], warmup_end: int,
                         baseline: TrialRecord | None, out: Path) -> Path:
    """Fig. 4: best validation loss (top) and its validation error (bottom) per trial.

    warmup_end: index of the first trial the GP proposed (the marker is drawn before it).
    """
    index = np.arange(len(trials))
    fig = Figure(figsize=(8, 6.5))
    axes = fig.subplots(2, 1, sharex=True)
    for ax, attr, label in ((axes[0], "best_val_loss", "validation loss"),
                            (axes[1], "best_val_error", "validation error")):
        values = np.array([getattr(t, attr) for t in trials], dtype=float)
        _progress_panel(ax, index, values, label, warmup_end,
                        None if baseline is None else getattr(baseline, attr))
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("trial index (order of proposal)")
    axes[0].set_title(f"Search progress: {len(trials)} trials, "
                      f"{sum(not t.finished_ok for t in trials)} failed", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))  # room for the legend below the panels
    fig.savefig(out, dpi=120)
    return out


def _progress_panel(ax, index: np.ndarray, values: np.ndarray, label: str, warmup_end: int,
                    baseline: float | None) -> None:
    ok = np.isfinite(values)
    minimum, median = running_stats(values)
    top = _axis_top(values[ok])
    shown = ok & (values <= top)
    ax.scatter(index[shown], values[shown], s=18, color="tab:blue", label="trial", zorder=3)
    off = ok & ~shown  # diverged trials (losses of 1e20) would flatten every other point
    if off.any():
        ax.scatter(index[off], np.full(off.sum(), top), marker="^", color="tab:purple",
                   label="above the axis", zorder=3)
    if (~ok).any():  # failed trials have no value: mark them at the top of the panel
        ax.scatter(index[~ok], np.full((~ok).sum(), top), marker="x", color=_FAILED_COLOUR,
                   label="failed trial", zorder=3)
    ax.plot(index, np.minimum(median, top), color="tab:orange", label="running median")
    ax.step(index, np.minimum(minimum, top), where="post", color="black",
            label="running minimum")
    if baseline is not None and math.isfinite(baseline):
        ax.axhline(min(baseline, top), color=_BASELINE_COLOUR, ls="--", label="baseline")
    if 0 < warmup_end < len(index):
        ax.axvline(warmup_end - 0.5, color=_WARMUP_COLOUR, ls=":", label="end of warm-up")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)


def _axis_top(values: np.ndarray) -> float:
    """Upper end of a panel: every value, unless outliers lie beyond 5x the median."""
    if not len(values):
        return 1.0
    return float(min(values.max(), OUTLIER_FACTOR * np.median(values))) * 1.05


def plot_confusions(models: dict[str, Evaluation], out: Path) -> Path:
    """Fig. 5: one column per model, rows volume level and slice level."""
    names = list(models)
    fig = Figure(figsize=(4.2 * len(names), 7.6))
    axes = fig.subplots(2, len(names), squeeze=False)
    for col, name in enumerate(names):
        ev = models[name]
        for row, (level, matrix, accuracy) in enumerate((
                ("volume", ev.volume_confusion, ev.volume_accuracy),
                ("slice", ev.slice_confusion, ev.slice_accuracy))):
            _confusion_panel(axes[row, col], matrix, ev.classes,
                             f"{name}, {level} level (accuracy {accuracy:.3f})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def _confusion_panel(ax, matrix: np.ndarray, classes: tuple[str, ...], title: str) -> None:
    support = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, support, out=np.zeros(matrix.shape), where=support > 0)
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, f"{count}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=8,
                color="white" if rates[i, j] > 0.6 else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)


def top_table(ranked: list[TrialRecord], top: int) -> list[str]:
    """Fig. 2 as a markdown table: the `top` best trials and their Table 1 settings."""
    header = ["rank", "trial", "val loss", "val error", *paper.TABLE1_KEYS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, trial in enumerate(ranked[:top], start=1):
        cells = [str(rank), trial.trial_id, f"{trial.best_val_loss:.4f}",
                 f"{trial.best_val_error:.3f}"]
        cells += [_format_value(trial.config.get(key)) for key in paper.TABLE1_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def evaluation_table(report: EvaluationReport) -> list[str]:
    """Accuracy and per-class error of each model at slice and volume level (markdown)."""
    names = list(report.models)
    classes = next(iter(report.models.values())).classes
    lines = ["| level | measure | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for level in ("volume", "slice"):
        rows = [("accuracy", [getattr(report.models[n], f"{level}_accuracy") for n in names])]
        rows += [(f"error {c}", [getattr(report.models[n], f"{level}_class_error")[c]
                                 for n in names]) for c in classes]
        for measure, values in rows:
            cells = ["-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
                     for v in values]
            lines.append(f"| {level} | {measure} | " + " | ".join(cells) + " |")
    return lines


def write_report(experiment_dir: Path, ensemble_dir: Path, store: Path, out: Path,
                 evaluation: EvaluationReport | None = None, split: str = "test") -> Path:
    """Write report.md, its figures and evaluation.json into `out`; returns report.md's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trials = load_trials(Path(experiment_dir))
    record = read_search_record(Path(experiment_dir)) or {}
    manifest = read_ensemble_manifest(Path(ensemble_dir))
    baseline_id = (manifest.get("baseline") or {}).get("trial_id")
    baseline = next((t for t in trials if t.trial_id == baseline_id), None)
    warmup_end = int(record.get("warmup_end", 0))
    if evaluation is None:
        evaluation = evaluate(Path(ensemble_dir), Path(store), split)
    plot_search_progress(trials, warmup_end, baseline, out / "search_progress.png")
    plot_confusions(evaluation.models, out / "confusion.png")
    profiles = plot_flagged_profiles(evaluation, SliceStore(store), out / "flagged_profiles.png")
    (out / "evaluation.json").write_text(json.dumps(evaluation.to_dict(), indent=1))
    text = _markdown(trials, record, manifest, baseline, evaluation)
    text += volume_section(evaluation, profiles)
    path = out / "report.md"
    path.write_text("\n".join(text) + "\n")
    logger.info("report written to %s", path)
    return path


def flagged_model(evaluation: EvaluationReport) -> str:
    """The model whose volumes the report lists: the ensemble, else the single model."""
    return "ensemble" if "ensemble" in evaluation.models else next(iter(evaluation.models))


def plot_flagged_profiles(evaluation: EvaluationReport, store: SliceStore,
                          out: Path) -> Path | None:
    """Fig. 6 profiles of the wrong and uncertain volumes of the listed model (None if none)."""
    name = flagged_model(evaluation)
    flagged = [v for v in evaluation.models[name].volumes if v.uncertain or not v.correct]
    probs = evaluation.probabilities.get(name)
    if not flagged or probs is None:
        return None
    split = store.load_split(evaluation.split)
    volume = split.volume.numpy()
    predictions = []
    for v in flagged:
        mine = volume == v.volume
        planes = [PLANES[int(p)] for p in split.plane.numpy()[mine]]
        label = f"{v.path} ({v.truth}, called {v.predicted}{', uncertain' if v.uncertain else ''})"
        predictions.append(summarise_volume(label, probs[mine], evaluation.models[name].classes,
                                            DEFAULT_THRESHOLD, split.slice_index.numpy()[mine],
                                            planes, [v.part] * int(mine.sum())))
    return plot_profiles(predictions, out, DEFAULT_THRESHOLD)


def volume_section(evaluation: EvaluationReport, profiles: Path | None) -> list[str]:
    """Every volume of the evaluated split: path, truth, verdict, votes and confidence."""
    name = flagged_model(evaluation)
    ev = evaluation.models[name]
    lines = ["", f"## Every volume of the {evaluation.split} split ({name})", "",
             f"{sum(v.correct for v in ev.volumes)} of {len(ev.volumes)} right; "
             f"{sum(v.uncertain for v in ev.volumes)} uncertain (the winning region leads by "
             "less than the margin); accuracy of the rest "
             f"{_num(ev.accuracy_of_certain)}.", "",
             "| volume | true | predicted | votes | margin | mean p | |",
             "|---|---|---|---|---|---|---|"]
    for v in ev.volumes:
        votes = ", ".join(f"{c} {n}" for c, n in v.votes.items() if n)
        status = "uncertain" if v.uncertain else ("" if v.correct else "**wrong**")
        part = f" [{v.part}]" if v.part else ""
        lines.append(f"| `{v.path}`{part} | {v.truth} | {v.predicted} | {votes} | "
                     f"{v.vote_margin:.2f} | {v.mean_probability:.2f} | {status} |")
    if profiles is not None:
        lines += ["", "### Slice profiles of the wrong and uncertain volumes (Fig. 6)", "",
                  f"![profiles]({profiles.name})"]
    return lines


def _refit_note(manifest: dict[str, Any]) -> str:
    """How the ensemble's models (and the baseline) were trained, when they were refit."""
    if not manifest.get("refit"):
        return " (each member is its trial's model, trained on the training split)"
    splits = manifest["refit"].get("trained_on", list(TRAINED_ON))
    kept = [e["trial_id"] for e in manifest_models(manifest) if e.get("trained_on") != splits]
    names = {"train": "training", "validation": "validation", "test": "test"}
    on = " and ".join(", ".join(names[s] for s in splits).rsplit(", ", 1))
    note = (f"; each member and the baseline trained again, from scratch, on the {on} "
            "splits for the epochs of its trial's best validation loss")
    return note + (f" (refit failed for {', '.join(kept)}: the trial's own model is used)"
                   if kept else "")


def _markdown(trials: list[TrialRecord], record: dict, manifest: dict,
              baseline: TrialRecord | None, evaluation: EvaluationReport) -> list[str]:
    ranked = rank_trials(trials)
    failed = [t for t in trials if not t.finished_ok]
    settings = record.get("settings", {})
    best = ranked[0] if ranked else None
    lines = [
        "# mri-tune search report", "",
        f"- experiment: `{manifest['experiment']}` (scale {record.get('scale', '?')}, searcher "
        f"preset {settings.get('searcher_preset', '?')}, seed {settings.get('seed', '?')})",
        f"- store: `{manifest['store']}`, classes {', '.join(manifest['classes'])}",
        f"- trials: {len(trials)} ({len(ranked)} finished, {len(failed)} failed or without a "
        f"result); the baseline first, then {record.get('warmup_trials', '?')} random warm-up "
        "trials, then the GP's proposals",
        f"- baseline (the paper's configuration, trial {baseline.trial_id if baseline else '-'})"
        f": best validation loss {_num(baseline.best_val_loss if baseline else None)}",
        f"- best trial {best.trial_id if best else '-'}: validation loss "
        f"{_num(best.best_val_loss if best else None)}",
        f"- ensemble: the {len(manifest['members'])} trials with the lowest best validation "
        "loss, softmax outputs averaged" + _refit_note(manifest), "",
        "## Search progress (Fig. 4)", "", "![search progress](search_progress.png)", "",
        f"## Evaluation on the {evaluation.split} split (Fig. 5)", "",
        f"{evaluation.num_slices} slices of {evaluation.num_volumes} volumes. A volume's label "
        "is the majority vote of its slices. The trivial model that always answers the "
        f"training split's most frequent region ({evaluation.majority_class}) errs on "
        f"{evaluation.majority_class_volume_error:.3f} of them; always answering this split's "
        f"most frequent region (which peeks at its labels) errs on "
        f"{evaluation.split_majority_volume_error:.3f}.",
        "", *evaluation_table(evaluation), "", "![confusion matrices](confusion.png)", "",
        f"## Top {len(manifest['members'])} trials (Fig. 2)", "",
        *top_table(ranked, len(manifest["members"])),
    ]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- {t.trial_id} ({t.status}): {short_config(t.config)}" for t in failed]
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"
