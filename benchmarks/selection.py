"""Which validation set and loss pick the configurations that do best on an unseen site?

Inside each leave-one-site-out fold of `generalization.py` (the same sites and store), the
training volumes are cut into inner training volumes, validation people (a quarter of each
region's people of seen sites: what the store's subject split gives a search) and validation
sites (two whole sites, so unseen scanners); `mri_tune.results.selection` has the rules. Each
candidate configuration below trains on the inner training volumes, is scored on both validation
sets, and predicts the held-out site. A selection criterion picks one candidate per fold; the
table gives the held-out volumes its picks get right, pooled over the folds (83 volumes), beside
the best candidate of each fold (an oracle), the mean candidate (a random pick) and every
candidate held fixed. Nothing here is chosen on the held-out sites: the table only says which
criterion a search should minimise.

Budget (2 CPU cores): 32x32 slices, 8 epochs of 2,048 images per candidate, 8 candidates x 10
folds per seed: ~45 min a seed in one process at a load of 3-4 (run seeds side by side).

    python benchmarks/selection.py --seeds 0 --json selection_s0.json
    python benchmarks/selection.py --summarise selection_s0.json selection_s1.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from generalization import ensure_store, recipes, site_of
from scipy.stats import spearmanr

from mri_tune.data.store import SliceStore
from mri_tune.results.generalization import (
    PooledSlices,
    Recipe,
    group_volumes,
    leave_one_group_out,
    pool_store,
    training_slices,
)
from mri_tune.results.selection import (
    CRITERIA,
    HIGHER_IS_BETTER,
    inner_split,
    picked_right,
    scores,
)
from mri_tune.training.device import resolve_device
from mri_tune.training.inference import predict_proba
from mri_tune.training.run import train_on_slices
from mri_tune.training.trainer import Slices

logger = logging.getLogger("selection")


def candidates(epochs: int, images: int) -> list[Recipe]:
    """Eight configurations a search could weigh: the shipped recipe, its augmentation policies
    and the paper's slice sampling, and its neighbours in width, depth, kernel and learning
    rate (`generalization.recipes` names)."""
    return recipes(["shipped", "aug:paper", "aug:none", "shipped@slices", "shipped/filters=4",
                    "shipped/filters=8/kernel_size=5", "shipped/num_blocks=4",
                    "shipped/learning_rate=0.003"], epochs, images)


def predictions(model: torch.nn.Module, data: PooledSlices, ids: np.ndarray,
                device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs (n, C), labels (n,), volume (n,)) of the slices of volumes `ids`."""
    images, labels, volume, _ = data.select(ids)
    if len(labels) == 0:
        return np.zeros((0, len(data.classes))), labels, volume
    return predict_proba(model, images, device), labels, volume


def run_fold(data: PooledSlices, fold, groups, seed: int, number: int,
             chosen: list[Recipe], device: torch.device) -> dict[str, Any]:
    """Every candidate of one fold: its scores on both validation sets and on the test site."""
    split = inner_split(fold, groups, data.volumes, np.random.default_rng([seed, number]))
    train = training_slices(data, split.train)
    people_images, people_labels, _, _ = data.select(split.people)
    validation = Slices(people_images, torch.from_numpy(people_labels))
    train_labels = train.labels.numpy()
    rows = []
    for recipe in chosen:
        start = time.perf_counter()
        trainer = train_on_slices(train, validation, data.classes, recipe.spec,
                                  dataclasses.replace(recipe.train, seed=seed), device=device)
        parts = {name: predictions(trainer.model, data, ids, device) for name, ids in
                 (("people", split.people), ("sites", split.sites), ("test", fold.test))}
        parts["both"] = tuple(np.concatenate([parts["people"][i], parts["sites"][i]])
                              for i in range(3))
        row = {"candidate": recipe.name,
               **{name: scores(*parts[name], train_labels, len(data.classes))
                  for name in ("people", "sites", "both", "test")}}
        row["test_right"] = round(row["test"]["volume_accuracy"] * len(fold.test))
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        logger.info("seed %d fold %s %s: %d of %d held-out volumes right (%.0f s)", seed,
                    fold.name, recipe.name, row["test_right"], len(fold.test), row["seconds"])
    return {"fold": fold.name, "test_volumes": len(fold.test),
            "validation_sites": list(split.site_names),
            "sizes": {"train": len(split.train), "people": len(split.people),
                      "sites": len(split.sites)}, "candidates": rows}


def summarise(runs: list[dict[str, Any]]) -> str:
    """Markdown: per criterion, the held-out volumes its picks get right (per seed), and the
    mean over folds of the Spearman correlation between its score and held-out accuracy."""
    lines = ["| selection | volumes right per seed | volume accuracy | mean Spearman with "
             "held-out accuracy |", "|---|---|---|---|"]
    total = sum(f["test_volumes"] for f in runs[0]["folds"])

    def row(name: str, rights: list[float], rho: float | None = None) -> None:
        sd = statistics.stdev(rights) if len(rights) > 1 else 0.0
        acc = [r / total for r in rights]
        lines.append(f"| {name} | {', '.join(f'{r:g}' for r in rights)} | "
                     f"{statistics.fmean(acc):.3f} +- {sd / total:.3f} | "
                     + ("-" if rho is None else f"{rho:+.2f}") + " |")

    for validation, score in CRITERIA:
        rights, rhos = [], []
        for run in runs:
            for fold in run["folds"]:
                rows = fold["candidates"]
                values = [r[validation][score] for r in rows]
                held = [r["test"]["volume_accuracy"] for r in rows]
                if len(set(values)) > 1 and len(set(held)) > 1:
                    sign = 1.0 if HIGHER_IS_BETTER[score] else -1.0
                    rhos.append(sign * spearmanr(values, held)[0])
            rights.append(picked_right(run["folds"], validation, score))
        row(f"{validation} / {score}", rights, statistics.fmean(rhos) if rhos else None)
    folds = [run["folds"] for run in runs]
    row("oracle (best candidate of each fold)",
        [sum(max(r["test_right"] for r in f["candidates"]) for f in fs) for fs in folds])
    row("mean candidate (a random pick)",
        [sum(statistics.fmean(r["test_right"] for r in f["candidates"]) for f in fs)
         for fs in folds])
    for i, name in enumerate(r["candidate"] for r in runs[0]["folds"][0]["candidates"]):
        row(f"always {name}", [sum(f["candidates"][i]["test_right"] for f in fs)
                               for fs in folds])
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("benchmark_output/generalization_32.h5"),
                        help="store of the sample data at 32x32, built on first use")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--images-per-epoch", type=int, default=2048)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the per-fold rows here")
    parser.add_argument("--summarise", type=Path, nargs="+", default=None, metavar="JSON",
                        help="print the table of earlier runs' --json files (one per seed)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.summarise:
        runs = [run for path in args.summarise for run in json.loads(path.read_text())["runs"]]
        print(summarise(runs))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("mri_tune.training").setLevel(logging.WARNING)  # no per-epoch lines
    logging.getLogger("mri_tune_datasets").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = pool_store(SliceStore(ensure_store(args.store, 32)))
    groups = group_volumes(data.volumes, site_of)
    folds = leave_one_group_out(groups)
    chosen = candidates(args.epochs, args.images_per_epoch)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs.append({"seed": seed, "folds": []})
        for number, fold in enumerate(folds):
            runs[-1]["folds"].append(run_fold(data, fold, groups, seed, number, chosen, device))
            if args.json is not None:  # after each fold: a long run keeps what it measured
                args.json.write_text(json.dumps({"args": {k: str(v) for k, v in
                                                          vars(args).items()},
                                                 "runs": runs}, indent=1))
    print(summarise(runs))


if __name__ == "__main__":
    main()
