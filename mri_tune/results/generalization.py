"""Generalisation to unseen sources: leave-one-group-out and subject-grouped k-fold on a store.

A store's three splits are pooled; each fold holds out a set of volumes (one group of sources,
or one k-th of the subjects), trains a recipe on the rest with the one training entry point
(`mri_tune.training.run.train_on_slices`) and predicts the held-out slices. Every volume is
predicted exactly once per seed, so the pooled predictions of one seed give one `Evaluation`
(slice and volume confusion matrices), and the spread over seeds says how much of a difference
is noise.

Groups. A group is a set of volumes whose manifest rows share a value of a grouping column
(the manifest's `source`, or a coarser site label computed from it). Groups that share a
subject are merged (union-find over subjects), so no person is ever on both sides of a fold.

Symbols (N pooled slices, C classes, V volumes, S seeds):
    probs      (N, C)  held-out probabilities of every slice, one array per seed
    decided    fraction of slices whose largest probability exceeds the paper's 0.7
    uncertain  fraction of volumes whose verdict is uncertain (`evaluate.verdict`: the winning
               region leads the runner-up by less than UNCERTAIN_MARGIN of the slices), the
               rule `predict` and `evaluate` apply
    volume_accuracy_certain  volume accuracy of the other volumes (`accuracy_of_certain`)
    volume_accuracy[region]  1 - volume error of the region, per seed; mean and sd over S

Two measurements beside the accuracy: `fewer_people` cuts a fold's training set to a share of
each region's people (a learning curve in people: what more data would buy), and
`verdict_rule_accuracy` scores other ways of turning slice probabilities into a volume's verdict
(`VERDICT_RULES`) on the same predictions as the vote, and `view_accuracy` the vote of
test-time views of the same slices (`VIEW_SETS`: flipped and zoomed copies, averaged).

The recipe trains a fixed number of epochs and the last epoch is scored: nothing is selected
on the held-out volumes. `Trainer` wants a validation split; the held-out slices serve as one
only so that the per-epoch log shows the learning curve.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mri_tune.data.store import PLANES, SliceStore, person_of_volume
from mri_tune.results.evaluate import (
    Evaluation,
    evaluate_probabilities,
    majority_vote,
    probability_mass,
    volume_truth,
)
from mri_tune.training.config import TrainConfig
from mri_tune.training.inference import TEST_VIEWS, predict_proba
from mri_tune.training.model import CNNSpec
from mri_tune.training.run import train_on_slices
from mri_tune.training.trainer import Slices
from mri_tune_core import paper
from mri_tune_core.errors import InputError

logger = logging.getLogger(__name__)
_MEMBER_SEEDS = 1000  # ensemble member m of seed s trains with seed s + 1000 m


@dataclass(frozen=True)
class PooledSlices:
    """Every slice of a store (all splits), with the volume table's per-volume columns."""

    images: torch.Tensor  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64
    volume: np.ndarray  # (N,) int64, row of `volumes`
    volumes: list[dict[str, Any]]  # SliceStore.volumes() rows
    classes: tuple[str, ...]
    plane: np.ndarray | None = None  # (N,) index into PLANES of each slice's plane
    acquisition: np.ndarray | None = None  # (V,) PLANES index of each volume's acquisition, -1

    def select(self, volume_ids: np.ndarray
               ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray | None]:
        """(images (n, H, W), labels (n,), volume (n,), plane (n,) or None) of the slices of
        `volume_ids`."""
        mask = np.isin(self.volume, volume_ids)
        index = torch.from_numpy(np.flatnonzero(mask))
        plane = None if self.plane is None else self.plane[mask]
        return self.images[index], self.labels[mask], self.volume[mask], plane


def pool_store(store: SliceStore) -> PooledSlices:
    """All slices of `store`, its three splits concatenated (in CPU memory)."""
    splits = [store.load_split(name) for name in ("train", "validation", "test")]
    volumes = store.volumes()
    return PooledSlices(
        images=torch.cat([s.images for s in splits]),
        labels=torch.cat([s.labels for s in splits]).numpy(),
        volume=torch.cat([s.volume for s in splits]).numpy(),
        volumes=volumes, classes=tuple(store.classes),
        plane=torch.cat([s.plane for s in splits]).numpy().astype(np.int64),
        acquisition=np.array([PLANES.index(row["acquisition_plane"])
                              if row["acquisition_plane"] in PLANES else -1 for row in volumes]))


@dataclass(frozen=True)
class Fold:
    """One train/test partition of the volumes (ids are rows of the store's volume table)."""

    name: str
    test: np.ndarray  # (V_test,) volume ids
    train: np.ndarray  # (V_train,) volume ids


def _find(parent: dict[str, str], key: str) -> str:
    while parent[key] != key:
        parent[key] = parent[parent[key]]
        key = parent[key]
    return key


def group_volumes(volumes: Sequence[Mapping[str, Any]],
                  group_of: Callable[[Mapping[str, Any]], str]) -> dict[str, list[int]]:
    """Group name -> volume ids; groups sharing a subject are merged (named 'a+b').

    `group_of(row)` names a volume's group from its volume-table row (e.g. its source).
    """
    parent: dict[str, str] = {}
    owner: dict[str, str] = {}  # subject -> the first group seen with it
    for row in volumes:
        group = group_of(row)
        parent.setdefault(group, group)
        first = owner.setdefault(str(row["subject"]), group)
        a, b = _find(parent, first), _find(parent, group)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for group in parent:
        members.setdefault(_find(parent, group), []).append(group)
    names = {root: "+".join(sorted(groups)) for root, groups in members.items()}
    grouped: dict[str, list[int]] = {}
    for row in volumes:
        grouped.setdefault(names[_find(parent, group_of(row))], []).append(int(row["index"]))
    return dict(sorted(grouped.items()))


def leave_one_group_out(groups: Mapping[str, Sequence[int]]) -> list[Fold]:
    """One fold per group: the group is the test set, every other group trains."""
    every = np.array(sorted(v for ids in groups.values() for v in ids))
    return [Fold(name, np.array(sorted(ids)), np.setdiff1d(every, ids))
            for name, ids in groups.items()]


def subject_kfold(volumes: Sequence[Mapping[str, Any]], k: int,
                  rng: np.random.Generator) -> list[Fold]:
    """k folds of whole subjects, dealt region by region (fewest subjects first) so that each
    fold gets a share of every region; a subject with volumes of two regions stays whole."""
    if k < 2:
        raise InputError(f"k-fold needs k >= 2 folds. Got k={k}; e.g. --folds 4.")
    regions: dict[str, set[str]] = {}
    for row in volumes:
        regions.setdefault(row["region"], set()).add(str(row["subject"]))
    fold_of: dict[str, int] = {}
    sizes = np.zeros(k, dtype=int)
    for region in sorted(regions, key=lambda r: (len(regions[r]), r)):
        free = sorted(regions[region] - set(fold_of))
        for i in rng.permutation(len(free)):
            fold = int(np.argmin(sizes + rng.random(k) * 0.5))  # smallest fold, random ties
            fold_of[free[i]] = fold
            sizes[fold] += 1
    every = np.array([int(r["index"]) for r in volumes])
    folds = []
    for fold in range(k):
        test = np.array([int(r["index"]) for r in volumes if fold_of[str(r["subject"])] == fold])
        folds.append(Fold(f"fold{fold}", test, np.setdiff1d(every, test)))
    return folds


def fewer_people(fold: Fold, volumes: Sequence[Mapping[str, Any]], fraction: float,
                 rng: np.random.Generator) -> Fold:
    """The fold with its training set cut to `fraction` of each region's training people
    (rounded up, at least one per region; a person kept for one region keeps all their
    training volumes); the test set is unchanged. Measures how the held-out accuracy grows
    with the number of people trained on (a learning curve in people, not in slices)."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"The fraction of training people must be in (0, 1]. Got {fraction}; "
                         "e.g. 0.5 keeps half of each region's people.")
    people: dict[str, set[str]] = {}
    for v in fold.train:
        row = volumes[int(v)]
        people.setdefault(str(row["region"]), set()).add(str(row["subject"]))
    kept: set[str] = set()
    for region in sorted(people):
        names = sorted(people[region])
        count = max(1, math.ceil(fraction * len(names)))
        kept.update(names[i] for i in rng.permutation(len(names))[:count])
    train = np.array([v for v in fold.train if str(volumes[int(v)]["subject"]) in kept],
                     dtype=fold.train.dtype)
    return Fold(fold.name, fold.test, train)


@dataclass(frozen=True)
class Recipe:
    """A fixed way of training a classifier: an architecture and its training settings."""

    name: str
    spec: CNNSpec
    train: TrainConfig
    members: int = 1  # models trained per fold (seeds seed, seed + 1000, ...), probs averaged


@dataclass(frozen=True)
class FoldPrediction:
    """Held-out probabilities of one fold (slices in the order of `PooledSlices.select`)."""

    fold: str
    probs: np.ndarray  # (n, C)
    labels: np.ndarray  # (n,)
    volume: np.ndarray  # (n,)
    seconds: float
    plane: np.ndarray | None = None  # (n,) PLANES index of each slice
    views: dict[str, np.ndarray] = field(default_factory=dict)  # TEST_VIEWS name -> (n, C)


def training_slices(data: PooledSlices, volume_ids: np.ndarray) -> Slices:
    """The slices of `volume_ids` as a training set: images, labels and each slice's person."""
    images, labels, volume, _ = data.select(volume_ids)
    people = person_of_volume(data.volumes)[torch.from_numpy(volume)]
    return Slices(images, torch.from_numpy(labels), people)


def run_fold(recipe: Recipe, data: PooledSlices, fold: Fold, seed: int,
             device: torch.device) -> FoldPrediction:
    """Train `recipe` (seeded) on the fold's training volumes; predict its test volumes."""
    start = time.perf_counter()
    train = training_slices(data, fold.train)
    test_images, test_labels, test_volume, test_plane = data.select(fold.test)
    held_out = Slices(test_images, torch.from_numpy(test_labels))
    views = {name: np.zeros((len(test_labels), len(data.classes))) for name in TEST_VIEWS}
    for member in range(recipe.members):  # an ensemble, as the product's top-k: mean softmax
        trainer = train_on_slices(train, held_out, data.classes, recipe.spec,
                                  replace(recipe.train, seed=seed + _MEMBER_SEEDS * member),
                                  device=device)
        for name in TEST_VIEWS:
            views[name] += predict_proba(trainer.model, test_images, device,
                                         views=(name,)) / recipe.members
    return FoldPrediction(fold.name, views["identity"], test_labels, test_volume,
                          time.perf_counter() - start, test_plane, views)


@dataclass(frozen=True)
class SeedResult:
    """All folds of one seed, pooled: every volume predicted once."""

    seed: int
    evaluation: Evaluation
    decided: float  # fraction of slices with max probability > DECISION_THRESHOLD
    fold_volume_accuracy: dict[str, float]
    seconds: float
    volume_accuracy_mean_probability: float = math.nan  # verdict: argmax of the mean softmax
    verdict_rules: dict[str, float] = field(default_factory=dict)  # `verdict_rule_accuracy`

    def summary(self) -> dict[str, float]:
        ev = self.evaluation
        certain = ev.accuracy_of_certain
        row = {"volume_accuracy": ev.volume_accuracy, "slice_accuracy": ev.slice_accuracy,
               "volume_accuracy_mean_probability": self.volume_accuracy_mean_probability,
               "decided": self.decided, "uncertain": ev.uncertain_fraction,
               "volume_accuracy_certain": math.nan if certain is None else certain}
        for name, error in ev.volume_class_error.items():
            row[f"volume_accuracy_{name}"] = math.nan if error is None else 1.0 - error
        for name, error in ev.slice_class_error.items():
            row[f"slice_accuracy_{name}"] = math.nan if error is None else 1.0 - error
        for name, accuracy in self.verdict_rules.items():
            row[f"rule_{name}"] = accuracy
        return row


def pool_folds(seed: int, predictions: Sequence[FoldPrediction],
               classes: tuple[str, ...], acquisition: np.ndarray | None = None) -> SeedResult:
    """One seed's folds pooled; with the slices' planes and the volumes' acquisition planes
    (`PooledSlices.acquisition`) it also scores the other verdict rules."""
    probs = np.concatenate([p.probs for p in predictions])
    labels = np.concatenate([p.labels for p in predictions])
    volume = np.concatenate([p.volume for p in predictions])
    per_fold = {p.fold: evaluate_probabilities(p.probs, p.labels, p.volume,
                                               classes).volume_accuracy for p in predictions}
    rules = {}
    if acquisition is not None and all(p.plane is not None for p in predictions):
        plane = np.concatenate([p.plane for p in predictions])
        rules = verdict_rule_accuracy(probs, labels, volume, plane, acquisition)
    if all(p.views for p in predictions):
        views = {name: np.concatenate([p.views[name] for p in predictions]) for name in TEST_VIEWS}
        rules |= view_accuracy(views, labels, volume, classes)
    return SeedResult(seed, evaluate_probabilities(probs, labels, volume, classes),
                      float(np.mean(probs.max(axis=1) > paper.DECISION_THRESHOLD)), per_fold,
                      sum(p.seconds for p in predictions),
                      mean_probability_accuracy(probs, labels, volume), rules)


VERDICT_RULES = ("acquisition_plane", "acquisition_plane_x3", "confident_vote", "log_probability")
"""Other ways to turn a volume's slice probabilities into a verdict, scored beside the majority
vote of every slice of every plane (`evaluate.verdict`, what `predict` answers):
    acquisition_plane     the vote of the slices in the plane the volume was acquired in only
                          (every slice when it has none there); the others are reformats
    acquisition_plane_x3  every slice votes, those of the acquisition plane three times
    confident_vote        only the slices whose largest probability passes the paper's 0.7
                          vote (every slice when none does)
    log_probability       the argmax of the summed log-probabilities (the slices as independent
                          evidence)"""


def verdict_rule_accuracy(probs: np.ndarray, labels: np.ndarray, volume: np.ndarray,
                          plane: np.ndarray, acquisition: np.ndarray) -> dict[str, float]:
    """Volume accuracy of each of VERDICT_RULES; every vote is `evaluate.majority_vote` (ties
    broken by probability mass, as the verdict `predict` answers).

    probs (N, C), labels (N,), volume (N,) and plane (N,) describe the slices; acquisition (V,)
    holds the PLANES index of each volume id's acquisition (-1: unknown).
    """
    _, truth = volume_truth(labels, volume)
    native = plane == acquisition[volume]  # (N,) slices in their volume's acquisition plane

    def vote_of(chosen: np.ndarray) -> np.ndarray:
        """The vote of the chosen slices; a volume with none chosen votes with all its slices."""
        chosen = chosen | ~np.isin(volume, volume[chosen])
        return majority_vote(probs[chosen], volume[chosen])[1]

    tripled = np.concatenate([np.arange(len(volume)), *[np.flatnonzero(native)] * 2])
    _, log_mass = probability_mass(np.log(np.clip(probs, 1e-6, None)), volume)
    picks = {
        "acquisition_plane": vote_of(native),
        "acquisition_plane_x3": majority_vote(probs[tripled], volume[tripled])[1],
        "confident_vote": vote_of(probs.max(axis=1) > paper.DECISION_THRESHOLD),
        "log_probability": log_mass.argmax(axis=1),
    }
    return {name: float(np.mean(pick == truth)) for name, pick in picks.items()}


VIEW_SETS = {"views_flip": ("identity", "flip"), "views_zoom": ("identity", "zoom_in", "zoom_out"),
             "views_all": TEST_VIEWS}
"""Test-time view sets (`inference.TEST_VIEWS`) scored beside the stored slices alone: the
verdict is the usual vote (`evaluate.verdict`) of the slices' mean probability over the set's
views, as `predict_proba(..., views=...)` gives it."""


def view_accuracy(views: Mapping[str, np.ndarray], labels: np.ndarray, volume: np.ndarray,
                  classes: tuple[str, ...]) -> dict[str, float]:
    """Volume accuracy of each of VIEW_SETS, from the per-view probabilities of the same slices."""
    return {name: evaluate_probabilities(np.mean([views[v] for v in chosen], axis=0), labels,
                                         volume, classes).volume_accuracy
            for name, chosen in VIEW_SETS.items()}


def mean_probability_accuracy(probs: np.ndarray, labels: np.ndarray,
                              volume: np.ndarray) -> float:
    """Volume accuracy when a volume's verdict is the argmax of its slices' mean probability
    (the alternative to the majority vote of `evaluate.verdict`, measured beside it)."""
    _, mass = probability_mass(probs, volume)
    _, truth = volume_truth(labels, volume)  # both in the order of np.unique(volume)
    return float(np.mean(mass.argmax(axis=1) == truth))


@dataclass(frozen=True)
class RecipeResult:
    """One recipe under one protocol, over several seeds."""

    recipe: str
    protocol: str
    seeds: list[SeedResult] = field(default_factory=list)

    def spread(self) -> dict[str, tuple[float, float, float, float]]:
        """metric -> (mean, sd, min, max) over seeds."""
        rows = [s.summary() for s in self.seeds]
        out = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            out[key] = (statistics.fmean(values), sd, min(values), max(values))
        return out


def cross_validate(recipe: Recipe, data: PooledSlices, folds: Sequence[Fold],
                   seeds: Sequence[int], device: torch.device, protocol: str,
                   people_fraction: float = 1.0) -> RecipeResult:
    """Every fold for every seed; logs each fold's volume accuracy as it finishes.

    people_fraction < 1 trains each fold on that fraction of its people (`fewer_people`),
    drawn anew for every seed and fold, so the spread over seeds covers who was left out.
    """
    result = RecipeResult(recipe.name, protocol)
    for seed in seeds:
        predictions = []
        for number, fold in enumerate(folds):
            if people_fraction < 1.0:
                fold = fewer_people(fold, data.volumes, people_fraction,
                                    np.random.default_rng([seed, number]))
            prediction = run_fold(recipe, data, fold, seed, device)
            accuracy = evaluate_probabilities(prediction.probs, prediction.labels,
                                              prediction.volume, data.classes).volume_accuracy
            logger.info("%s %s seed %d fold %s: volume accuracy %.3f (%d volumes, %.0f s)",
                        protocol, recipe.name, seed, fold.name, accuracy, len(fold.test),
                        prediction.seconds)
            predictions.append(prediction)
        result.seeds.append(pool_folds(seed, predictions, data.classes, data.acquisition))
    return result
