"""Which validation picks the configurations that do best on an unseen site?

A search keeps the configurations with the lowest validation loss. Whether that choice carries
to a new scanner depends on what the validation set is and how it is scored. This module measures
it inside leave-one-site-out folds (`generalization.leave_one_group_out`): each fold's training
volumes are cut three ways (`inner_split`),

    sites   whole sites of the fold's training sites (`sites` of them, drawn so that every
            region keeps a training site): validation on scanners the model has not seen
    people  a share of each region's people of the other sites: validation on new people of
            seen scanners, what the store's subject split gives a search
    train   the rest, on which every candidate configuration trains

and each candidate is scored on both validation sets (`scores`) and on the held-out site. A
criterion (`CRITERIA`: a validation set and a score) picks one candidate per fold (`pick`); pooled
over the folds, the held-out volumes its picks get right is what a search selecting with it would
get on unseen sites, to compare with the best candidate of each fold (an oracle) and the mean
candidate (a random pick).

Scores of a validation set (N slices, C classes, p_i the probability of slice i's true class):
    weighted_ce      sum_i w_{y_i} (-log p_i) / sum_i w_{y_i}, w_c the training class weights
                     (`trainer.class_weights`): the paper's objective
    balanced_ce      the mean over the classes present of each class's mean -log p_i: the
                     product's default objective (`TrainConfig.validation_loss="balanced"`)
    volume_accuracy  share of the validation volumes whose majority vote is right
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mri_tune.results.evaluate import majority_vote, volume_truth
from mri_tune.results.generalization import Fold, fewer_people
from mri_tune.training.trainer import balanced_weights, class_weights
from mri_tune_core.errors import InputError

SCORES = ("weighted_ce", "balanced_ce", "volume_accuracy")
HIGHER_IS_BETTER = {"weighted_ce": False, "balanced_ce": False, "volume_accuracy": True}
VALIDATION_SETS = ("people", "sites", "both")
CRITERIA: tuple[tuple[str, str], ...] = (
    ("people", "weighted_ce"), ("people", "balanced_ce"), ("people", "volume_accuracy"),
    ("sites", "balanced_ce"), ("sites", "volume_accuracy"), ("both", "balanced_ce"),
)
"""(validation set, score): the selection criteria compared."""


@dataclass(frozen=True)
class InnerSplit:
    """A fold's training volumes cut for selection (volume ids; disjoint, no shared person)."""

    train: np.ndarray
    people: np.ndarray
    sites: np.ndarray
    site_names: tuple[str, ...]


def inner_split(fold: Fold, groups: Mapping[str, Sequence[int]],
                volumes: Sequence[Mapping[str, Any]], rng: np.random.Generator,
                sites: int = 2, people_fraction: float = 0.25,
                max_site_share: float = 0.3) -> InnerSplit:
    """Cut `fold.train` into inner training, validation people and validation sites.

    `groups` are the site groups the folds came from (`generalization.group_volumes`, whose
    groups share no person); the fold's own group is its test set. `sites` groups are drawn at
    random among those whose removal leaves every training region a site and which hold at
    most `max_site_share` of the training volumes (fewer sites when no such draw exists);
    then `people_fraction` of each region's people of the remaining sites (at least one kept
    per region) become the validation people.
    """
    if not 0.0 < people_fraction < 1.0:
        raise InputError(f"The share of validation people must be in (0, 1). Got "
                         f"{people_fraction}; e.g. 0.25.")
    train = set(int(v) for v in fold.train)
    candidates = sorted(name for name, ids in groups.items() if set(ids) <= train)
    region_sites: dict[str, set[str]] = {}
    for name in candidates:
        for v in groups[name]:
            region_sites.setdefault(str(volumes[v]["region"]), set()).add(name)
    chosen: list[str] = []
    for count in range(min(sites, len(candidates)), 0, -1):
        for _ in range(200):
            draw = [candidates[i] for i in rng.choice(len(candidates), count, replace=False)]
            size = sum(len(groups[name]) for name in draw)
            if (size <= max_site_share * len(train)
                    and all(owners - set(draw) for owners in region_sites.values())):
                chosen = sorted(draw)
                break
        if chosen:
            break
    held = np.array(sorted(v for name in chosen for v in groups[name]), dtype=np.int64)
    rest = np.setdiff1d(np.asarray(fold.train, dtype=np.int64), held)
    kept = fewer_people(Fold(fold.name, fold.test, rest), volumes, 1.0 - people_fraction,
                        rng).train
    return InnerSplit(kept, np.setdiff1d(rest, kept), held, tuple(chosen))


def scores(probs: np.ndarray, labels: np.ndarray, volume: np.ndarray,
           train_labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """SCORES of one validation set: probs (N, C), labels (N,), volume (N,); train_labels (M,)
    give the paper's class weights. NaN for every score of an empty set."""
    if len(labels) == 0:
        return {name: float("nan") for name in SCORES}
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    true = np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)
    loss = -np.log(true)  # (N,)
    out = {}
    for name, weights in (
            ("weighted_ce", class_weights(torch.as_tensor(train_labels, dtype=torch.int64),
                                          num_classes)),
            ("balanced_ce", balanced_weights(labels_t, num_classes))):
        w = weights.double().numpy()[labels]  # (N,)
        out[name] = float((w * loss).sum() / w.sum())
    _, voted = majority_vote(probs, volume)
    _, truth = volume_truth(labels, volume)
    out["volume_accuracy"] = float(np.mean(voted == truth))
    return out


def pick(candidate_scores: Sequence[Mapping[str, Mapping[str, float]]], validation: str,
         score: str) -> int:
    """Index of the candidate a criterion picks: the best `score` on `validation`, ties (volume
    accuracy is coarse) broken by the balanced CE on the same set, then by candidate order.
    `candidate_scores[i][validation][score]`; a NaN score never wins."""
    sign = -1.0 if HIGHER_IS_BETTER[score] else 1.0

    def key(i: int) -> tuple[float, float, int]:
        values = candidate_scores[i][validation]
        main = sign * values[score]
        tie = values["balanced_ce"]
        return (np.inf if np.isnan(main) else main, np.inf if np.isnan(tie) else tie, i)

    return min(range(len(candidate_scores)), key=key)


def picked_right(folds: Sequence[Mapping[str, Any]], validation: str, score: str) -> int:
    """Held-out volumes a criterion's picks get right, summed over folds; each fold is
    {"candidates": [{validation: {score: value}, "test_right": int}, ...]}."""
    return sum(int(fold["candidates"][pick(fold["candidates"], validation, score)]["test_right"])
               for fold in folds)
