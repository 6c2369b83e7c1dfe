"""Generalisation to unseen scanners, sequences and people: leave-one-site-out and k-fold.

The sample volumes (`../shared/data/mri`, 68 volumes of 33 people from public repositories and
packages) are ingested once into a store (all three planes, `--size`); its splits are pooled, and
for each fold a recipe is trained on the other volumes with the one training loop and scored on
the held-out volumes (`mri_tune.results.generalization`). Protocols:

  loso   leave one site out. A site groups the manifest's `source` values that come from one
         origin (one repository or package, one scanner family or one study): `SITES` below.
         Sites that share a subject are merged, so no person is on both sides. 10 folds.
  kfold  subject-grouped k-fold (`--folds`, default 4), subjects dealt region by region.

`--people-fraction F` trains every fold on a random F of each region's training people (at
least one per region, drawn anew per seed and fold; the test volumes are unchanged): the
accuracy at F = 0.25, 0.5 and 1 is a learning curve in people, i.e. what more data would buy.

Recipes (the same budget: `--epochs` epochs of `--images-per-epoch` images):
  shipped   the recipe mri-tune ships: 3 blocks x 1 conv x 16 filters (3x3), lr 0.01, batch 32,
            the "scanner" augmentation policy (`mri_tune.training.augment.POLICIES`)
  paper     the paper's recipe (`baseline_specs`): its baseline network (5 x 1 x 64, 3x3), lr
            0.001, batch 8, the paper's augmentation, class-weighted cross-entropy
  aug:P     the shipped network with the named augmentation policy P (`--recipes aug:paper,
            aug:fov`): each family's effect on the same folds and seeds; `aug:none` trains
            without augmentation; `aug:intensity+bias` joins families on the paper's policy
  R@S       recipe R (shipped or aug:P) with the sampling S of `TrainConfig`: `shipped@slices`
            (the paper's: permutations of the slices, class-weighted loss), `shipped@regions`
            (the default: every region drawn alike), `shipped@regions:0` (people_power 0:
            every person of a region alike; `regions:0.5` the square root of their slices)
  R*N       an ensemble of N models of recipe R per fold (seeds S, S + 1000, ...), their softmax
            outputs averaged, as the product's top-k ensemble answers: `shipped*3`
  R/k=v     recipe R with one field of its network (`CNNSpec`) or training (`TrainConfig`)
            set, repeatable: `shipped/filters=4`, `shipped/filters=8/kernel_size=5`,
            `shipped/learning_rate=0.003` (any point of a search space, as a fixed recipe)

Budget (2 CPU cores): 32x32 slices, 8 epochs of 2,048 images, seeds 0-2 (the paper's recipe:
seed 0, `--paper-seeds`); about 35 min at a load of 3-7 on 2 cores. The table is
per recipe: volume and slice accuracy (mean over seeds +- sd), per region, the fraction of
slices whose largest probability passes the paper's 0.7, the fraction of volumes whose verdict is
uncertain (the rule of `predict` and `evaluate`), the volume accuracy of the certain ones, and
the volume accuracy when a verdict is the argmax of the slices' mean probability instead of
their majority vote (`vol (mean p)`).

    python benchmarks/generalization.py                          # loso, shipped vs paper
    python benchmarks/generalization.py --protocol kfold --json kfold.json
    python benchmarks/generalization.py --recipes aug:paper,aug:fov,aug:bias --seeds 0
                                                                 # each family's effect
    python benchmarks/generalization.py --recipes shipped --people-fraction 0.5
                                                                 # half of the people
    python benchmarks/generalization.py --device cuda --size 128 --images-per-epoch 80000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_tune.data.samples import find_samples
from mri_tune.data.store import SliceStore
from mri_tune.errors import InputError
from mri_tune.results.generalization import (
    VERDICT_RULES,
    VIEW_SETS,
    Fold,
    Recipe,
    RecipeResult,
    cross_validate,
    group_volumes,
    leave_one_group_out,
    pool_store,
    subject_kfold,
)
from mri_tune.training.augment import DEFAULT_POLICY, POLICIES, AugmentConfig, merged, policy
from mri_tune.training.config import TrainConfig, baseline_specs
from mri_tune.training.device import resolve_device
from mri_tune.training.model import CNNSpec
from mri_tune_datasets.ingest import IngestSettings, ingest

SITES: tuple[tuple[str, str], ...] = (
    ("mricron-data", "head-templates"),  # Colin27: 27 scans of one person averaged
    ("nilearn", "head-templates"),  # MNI152: an average of 152 brains
    ("niivue-images", "niivue-heads"),
    ("dipy", "package-testdata"),  # small test volumes of Python packages, several scanners
    ("nibabel", "package-testdata"),
    ("pyradiomics", "package-testdata"),
    ("pydicom-data", "package-testdata"),
    ("ProstateX", "prostatex"),  # TCIA ProstateX, Siemens 3T: 2 people, many sequences
    ("dcmqi", "qin-prostate"),  # TCIA QIN-PROSTATE
    ("fastcleverseg", "chu2015-lumbar"),  # Chu et al. 2015: sagittal lumbar exams, 6 people
    ("ukat", "ukat-kidney"),  # UKRIN kidney mapping, GE / Philips / Siemens
    ("Pyneapple", "abdomen-testdata"),
    ("TotalSegmentator", "abdomen-testdata"),
    ("renalsegmentor", "abdomen-testdata"),
    ("sct_example_data", "sct-errsm30"),  # spinal cord toolbox; one person in both
    ("sct_testing_data", "sct-errsm30"),
    ("ivadomed", "sct-tutorial"),  # spine-generic unf01 is in both
    ("sct_tutorial_data", "sct-tutorial"),
)
"""Substring of the manifest's `source` -> site. A source that matches none is its own site."""

SHIPPED_SPEC = CNNSpec(num_blocks=3, convs_per_block=1, filters=16, kernel_size=3)
SHIPPED_POLICY = DEFAULT_POLICY
"""The shipped recipe trains with what `TrainConfig` (and so every search trial) uses."""


def site_of(row: Mapping[str, Any]) -> str:
    """The site of a store volume-table row, from its manifest `source` column."""
    if "source" not in row["metadata"]:
        raise InputError(f"The store's volume table has no `source` column (volume {row['path']})"
                         "; leave-one-site-out needs it. Ingest with keep_columns=('source',) "
                         "(--keep-columns source), or let this benchmark build its store.")
    source = str(row["metadata"]["source"])
    return next((site for key, site in SITES if key in source), source)


def ensure_store(path: Path, size: int, field_of_view_mm: float = 0.0) -> Path:
    """The benchmark's store of the sample data (all planes, the `source` column kept)."""
    if path.is_file():
        return path
    folder = find_samples()
    if folder is None:
        raise InputError("The generalisation benchmark needs the sample data: set "
                         "MRI_TUNE_SAMPLES to its folder or place it at ../shared/data/mri.")
    path.parent.mkdir(parents=True, exist_ok=True)
    ingest(IngestSettings(manifest=folder / "manifest.csv", out=path, size=size, planes="all",
                          keep_columns=("source",), field_of_view_mm=field_of_view_mm))
    return path


def recipes(names: list[str], epochs: int, images: int) -> list[Recipe]:
    budget = {"epochs": epochs, "images_per_epoch": images}
    out = []
    for name in names:
        single, _, members = name.partition("*")  # "shipped*5": an ensemble of 5 per fold
        single, *settings = single.split("/")  # "shipped/filters=4": one field set
        count = {"members": _members(name, members)}
        if single == "paper":
            spec, train = baseline_specs(images_per_epoch=images)
            train = dataclasses.replace(train, epochs=epochs)
        else:
            base, _, sampling = single.partition("@")
            chosen = SHIPPED_POLICY if base == "shipped" else base.removeprefix("aug:")
            augmentation = chosen != "none"
            augment = _policy(chosen if augmentation else "paper")
            spec, train = SHIPPED_SPEC, TrainConfig(
                learning_rate=0.01, batch_size=32, augmentation=augmentation, augment=augment,
                **budget, **_sampling(sampling))
        spec, train = _with_settings(name, spec, train, settings)
        out.append(Recipe(name, spec, train, **count))
    return out


def _with_settings(name: str, spec: CNNSpec, train: TrainConfig,
                   settings: list[str]) -> tuple[CNNSpec, TrainConfig]:
    """`spec` and `train` with each "field=value" of `settings` set (its type: the field's)."""
    for setting in settings:
        key, _, text = setting.partition("=")
        target = next((t for t in (spec, train) if key in {f.name for f in
                                                         dataclasses.fields(t)}), None)
        current = getattr(target, key, None)
        if target is None or not text or not isinstance(current, (int, float, str)):
            raise SystemExit(f"recipe {name!r}: {setting!r} must be field=value for a number "
                             "or word field of CNNSpec or TrainConfig, e.g. shipped/filters=8 "
                             "or shipped/learning_rate=0.003")
        kind = type(current)
        try:
            value = (text.lower() in ("1", "true", "yes")) if kind is bool else kind(text)
        except ValueError as err:
            wanted = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise SystemExit(f"recipe {name!r}: {key} takes {wanted}, not {text!r}") from err
        if target is spec:
            spec = dataclasses.replace(spec, **{key: value})
        else:
            train = dataclasses.replace(train, **{key: value})
    return spec, train


def _members(name: str, text: str) -> int:
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise SystemExit(f"recipe {name!r}: the count after '*' must be an int >= 1, "
                         "e.g. shipped*5")
    return int(text)


def _sampling(text: str) -> dict[str, Any]:
    """"" (TrainConfig's default), "slices", "regions" or "regions:A" (people_power A)."""
    if not text:
        return {}
    sampling, _, power = text.partition(":")
    return {"sampling": sampling, **({"people_power": float(power)} if power else {})}


def _policy(name: str) -> AugmentConfig:
    """A named policy, or families joined by "+" on the paper's (e.g. intensity+bias)."""
    return merged(*name.split("+")) if "+" in name else policy(name)


def folds_for(protocol: str, volumes: list[dict[str, Any]], k: int, seed: int) -> list[Fold]:
    if protocol == "loso":
        return leave_one_group_out(group_volumes(volumes, site_of))
    return subject_kfold(volumes, k, np.random.default_rng(seed))


def format_table(results: list[RecipeResult], classes: tuple[str, ...]) -> str:
    columns = (["volume_accuracy"] + [f"volume_accuracy_{c}" for c in classes]
               + ["slice_accuracy"] + [f"slice_accuracy_{c}" for c in classes] + ["decided"]
               + ["uncertain", "volume_accuracy_certain", "volume_accuracy_mean_probability"])
    heads = (["volume"] + [f"vol {c}" for c in classes] + ["slice"]
             + [f"sl {c}" for c in classes] + ["p>0.7", "uncertain", "vol certain",
                                                "vol (mean p)"])
    return _markdown(results, columns, heads)


def format_rules(results: list[RecipeResult]) -> str:
    """Volume accuracy of each verdict rule (`VERDICT_RULES`) beside the majority vote."""
    columns = ["volume_accuracy", "volume_accuracy_mean_probability",
               *(f"rule_{name}" for name in (*VERDICT_RULES, *VIEW_SETS))]
    return _markdown(results, columns, ["vote (all planes)", "mean probability", *VERDICT_RULES,
                                        *VIEW_SETS])


def _markdown(results: list[RecipeResult], columns: list[str], heads: list[str]) -> str:
    """One row per result: mean +- sd over its seeds of each column ("-" where it has none)."""
    lines = ["| protocol | recipe | seeds | " + " | ".join(heads) + " |",
             "|---|---|---|" + "---|" * len(heads)]
    for result in results:
        spread = result.spread()
        cells = [f"{spread[c][0]:.3f} +- {spread[c][1]:.3f}" if c in spread else "-"
                 for c in columns]
        lines.append(f"| {result.protocol} | {result.recipe} | {len(result.seeds)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(result: RecipeResult, recipe: Recipe) -> dict[str, Any]:
    return {"recipe": result.recipe, "protocol": result.protocol,
            "spec": recipe.spec.to_dict(), "train": recipe.train.to_dict(),
            "spread": {k: dict(zip(("mean", "sd", "min", "max"), v, strict=True))
                       for k, v in result.spread().items()},
            "seeds": [{"seed": s.seed, **s.summary(), "seconds": s.seconds,
                       "fold_volume_accuracy": s.fold_volume_accuracy,
                       "evaluation": s.evaluation.to_dict()} for s in result.seeds]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--store", type=Path, default=None,
                      help="store of the sample data, ingested on first use "
                           "(default: benchmark_output/generalization_SIZE.h5)")
    data.add_argument("--size", type=int, default=32, help="slice side of the store")
    data.add_argument("--field-of-view", type=float, default=0.0, metavar="MM",
                      help="ingest a second channel: each slice at this physical field of "
                           "view (0: none)")
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--protocol", choices=["loso", "kfold", "both"], default="loso")
    protocol.add_argument("--folds", type=int, default=4, help="k of the subject k-fold")
    protocol.add_argument("--only", default=None,
                          help="comma-separated fold names to run (exploration only)")
    protocol.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    protocol.add_argument("--people-fraction", type=float, default=1.0,
                          help="train each fold on this fraction of each region's people "
                               "(a learning curve in people; drawn per seed and fold)")
    protocol.add_argument("--paper-seeds", default="0",
                          help="seeds of the paper's recipe (its network costs ~4x the shipped)")
    model = parser.add_argument_group("recipes")
    model.add_argument("--recipes", default="shipped,paper",
                       help="shipped, paper, or aug:P for P among none, "
                            f"{', '.join(sorted(POLICIES))}; suffixes: @slices or @regions:A "
                            "(the sampling), *N (an ensemble of N models per fold, seeds S, "
                            "S+1000, ...)")
    model.add_argument("--epochs", type=int, default=8)
    model.add_argument("--images-per-epoch", type=int, default=2048)
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("mri_tune_datasets").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    chosen = recipes(args.recipes.split(","), args.epochs, args.images_per_epoch)  # fail early
    store = SliceStore(ensure_store(
        args.store or Path(f"benchmark_output/generalization_{args.size}.h5"), args.size,
        args.field_of_view))
    data = pool_store(store)
    seeds = [int(s) for s in args.seeds.split(",")]
    paper_seeds = [int(s) for s in args.paper_seeds.split(",")]
    protocols = ["loso", "kfold"] if args.protocol == "both" else [args.protocol]
    start = time.perf_counter()
    results: list[tuple[RecipeResult, Recipe]] = []
    for protocol in protocols:
        folds = folds_for(protocol, data.volumes, args.folds, seed=0)
        if args.only:
            folds = [f for f in folds if f.name in args.only.split(",")]
        for fold in folds:
            regions = sorted({data.volumes[v]["region"] for v in fold.test})
            print(f"{protocol} fold {fold.name}: {len(fold.test)} test volumes ({regions})")
        for recipe in chosen:
            recipe_seeds = paper_seeds if recipe.name == "paper" else seeds
            results.append((cross_validate(recipe, data, folds, recipe_seeds, device, protocol,
                                           args.people_fraction), recipe))
            print(format_table([results[-1][0]], data.classes), flush=True)
            if args.json is not None:  # after each recipe: a long run keeps what it measured
                write_json(args, store, results, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    print(f"\n{len(data.labels)} slices of {store.image_size[0]}x{store.image_size[1]}, "
          f"{len(data.volumes)} volumes; {args.epochs} epochs x {args.images_per_epoch} "
          f"images; {seconds / 60:.1f} min on {device}")
    print(format_table([r for r, _ in results], data.classes))
    print("\nVolume accuracy by verdict rule (the vote of every slice is what predict answers):")
    print(format_rules([r for r, _ in results]))
    if args.json is not None:
        write_json(args, store, results, seconds)


def write_json(args: argparse.Namespace, store: SliceStore,
               results: list[tuple[RecipeResult, Recipe]], seconds: float) -> None:
    args.json.write_text(json.dumps({
        "store": str(store.path), "size": args.size, "seconds": seconds,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": [to_json(r, recipe) for r, recipe in results]}, indent=1))


if __name__ == "__main__":
    main()
