"""Subject-level split, stratified by region, deterministic for a seed.

Symbols:
    fractions   (3,) train, validation, test fractions of each region's subjects (sum 1)
    targets     (3,) subjects per split for one region: largest-remainder rounding of
                n * fractions, then at least one subject per split (needs n >= 3)

A subject is assigned once, to one split, and keeps it in every region it appears under, so no
person crosses splits even when a subject id has volumes of two regions. Regions are processed
from the fewest subjects up (their constraints are the tightest), subjects in sorted order,
shuffled by the `numpy.random.Generator` passed in: the same seed gives the same split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mri_tune_core.errors import InputError
from mri_tune_core.store_format import SPLITS

logger = logging.getLogger(__name__)

MIN_SUBJECTS_PER_REGION = len(SPLITS)
# With too few subjects (allow_small_regions), subjects go to train first, then test.
_SMALL_REGION_ORDER = (0, 2, 1)


@dataclass(frozen=True)
class SplitResult:
    """`assignment`: subject -> split code (index into SPLITS); `warnings`: loud notes for the
    summary (regions missing from a split when small regions were allowed)."""

    assignment: dict[str, int]
    warnings: tuple[str, ...] = ()


def parse_split_fractions(text: str) -> tuple[float, float, float]:
    """'0.5,0.25,0.25' -> (0.5, 0.25, 0.25); three finite positive numbers summing to 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as err:
        raise InputError(f"--split must be three comma-separated numbers (train,validation,test); "
                         f"got {text!r}; e.g. --split 0.5,0.25,0.25") from err
    return check_split_fractions(values, text)


def check_split_fractions(values: Sequence[float], shown: str | None = None
                          ) -> tuple[float, float, float]:
    """`values` as a (train, validation, test) tuple; InputError unless they are three finite
    positive numbers summing to 1 (NaN compares false with everything, so it is tested first:
    a NaN fraction once made `split_targets` loop forever)."""
    shown = ",".join(str(v) for v in values) if shown is None else shown
    if (len(values) != 3 or not all(math.isfinite(v) for v in values) or min(values) <= 0
            or abs(sum(values) - 1.0) > 1e-6):
        raise InputError(f"--split must be three finite positive fractions summing to 1 "
                         f"(train,validation,test); got {shown!r}; e.g. --split 0.5,0.25,0.25")
    return (float(values[0]), float(values[1]), float(values[2]))


def split_targets(n: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Subjects per split for a region of n >= 3 subjects: largest remainder, each >= 1."""
    raw = n * np.asarray(fractions)
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    while counts.min() < 1:
        counts[np.argmax(counts)] -= 1
        counts[np.argmin(counts)] += 1
    return counts


def split_subjects(pairs: Iterable[tuple[str, str]], fractions: tuple[float, float, float],
                   rng: np.random.Generator, allow_small_regions: bool = False) -> SplitResult:
    """(subject, region) pairs -> SplitResult; InputError when a region has < 3 subjects
    (unless `allow_small_regions`) or shared subjects leave a split of a region empty."""
    fractions = check_split_fractions(fractions)
    by_region: dict[str, set[str]] = {}
    for subject, region in pairs:
        by_region.setdefault(region, set()).add(subject)
    assignment: dict[str, int] = {}
    warnings: list[str] = []
    for region in sorted(by_region, key=lambda r: (len(by_region[r]), r)):
        subjects = sorted(by_region[region])
        if len(subjects) < MIN_SUBJECTS_PER_REGION:
            if not allow_small_regions:
                raise InputError(
                    f"region {region!r} has {len(subjects)} subject(s) ({', '.join(subjects)}); "
                    f"every region needs at least {MIN_SUBJECTS_PER_REGION} subjects so that each "
                    "split holds one; add subjects of this region, drop its rows, or allow small "
                    "regions (--allow-small-regions) and accept splits without it")
            warnings.append(_assign_small(region, subjects, assignment))
            continue
        _assign_region(region, subjects, fractions, rng, assignment)
    return SplitResult(assignment, tuple(warnings))


def _assign_small(region: str, subjects: list[str], assignment: dict[str, int]) -> str:
    """Place a small region's unassigned subjects train-first; return the warning line."""
    free = [s for s in subjects if s not in assignment]
    for subject, split in zip(free, _SMALL_REGION_ORDER, strict=False):
        assignment[subject] = split
    for subject in free[len(_SMALL_REGION_ORDER):]:
        assignment[subject] = 0
    present = sorted({assignment[s] for s in subjects})
    missing = [SPLITS[i] for i in range(len(SPLITS)) if i not in present]
    return (f"WARNING: region {region!r} has only {len(subjects)} subject(s): it is absent from "
            f"{', '.join(missing)}; its error there cannot be measured")


def _assign_region(region: str, subjects: list[str], fractions: tuple[float, float, float],
                   rng: np.random.Generator, assignment: dict[str, int]) -> None:
    targets = split_targets(len(subjects), fractions)
    counts = np.zeros(len(SPLITS), dtype=int)
    for s in subjects:
        if s in assignment:
            counts[assignment[s]] += 1
    free = [s for s in subjects if s not in assignment]
    free = [free[i] for i in rng.permutation(len(free))]
    for split in range(len(SPLITS)):
        if counts[split] == 0:
            if not free:
                raise InputError(
                    f"region {region!r}: its subjects also appear under other regions and were "
                    f"all placed before split {SPLITS[split]!r} got one of them; add subjects of "
                    "this region or change the seed")
            assignment[free.pop()] = split
            counts[split] += 1
    for subject in free:
        split = int(np.argmax(targets - counts))  # largest deficit; ties: train first
        assignment[subject] = split
        counts[split] += 1
    logger.debug("region %s: %s subjects per split", region, counts.tolist())
