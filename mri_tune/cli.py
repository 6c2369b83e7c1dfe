"""The `mri-tune` command line: argument parsing and printing only; the work is in the library.

Each subcommand's handler turns its arguments into the library's typed objects, calls one library
function, and prints. Errors derived from `MriTuneError` are printed as one message, exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mri_tune.errors import MriTuneError
from mri_tune_core import paper

# Each verb imports its own modules inside its handler, so that a verb pays only for what it uses:
# measured on the 2-core development machine, importing the ingest package takes 1.5 s, the
# results layer (Ray Tune, torch, matplotlib) 3.1 s.


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="build an HDF5 slice store from a manifest of MR volumes")
    p.add_argument("--manifest", required=True, type=Path,
                   help="CSV with columns path, region, subject (optional: slices, others kept)")
    p.add_argument("--root", type=Path, default=None,
                   help="folder the manifest's paths are relative to "
                        "(default: the manifest's folder)")
    p.add_argument("--out", required=True, type=Path, help="the store to write (.h5)")
    p.add_argument("--size", type=int, default=paper.IMAGE_SIZE,
                   help="slices are resized to SIZE x SIZE")
    p.add_argument("--planes", choices=["acquisition", "all"], default="acquisition",
                   help="slice along the acquisition axis only, or along all three axes")
    p.add_argument("--field-of-view", type=float, default=0.0, metavar="MM",
                   help="add a second image channel: every slice at one physical scale, SIZE "
                        "pixels spanning MM mm (0, the default: no second channel); see "
                        "benchmarks/RESULTS_generalization.md for what it changes")
    p.add_argument("--split", default=",".join(f"{f:g}" for f in paper.SPLIT_FRACTIONS),
                   help="train,validation,test fractions of subjects per region")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject split")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                   help="stop at the first bad row, or skip bad rows and list them in the store")
    p.add_argument("--max-frames", type=int, default=3,
                   help="4D files and repeated series: keep at most this many evenly spaced frames")
    p.add_argument("--allow-small-regions", action="store_true",
                   help="accept regions of fewer than 3 subjects (absent from some splits; "
                        "the summary warns)")
    p.add_argument("--keep-columns", default="",
                   help="extra manifest columns to copy into the store, comma-separated "
                        "(default: none; path, region and subject are always stored)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read files outside the root folder (paths with .., absolute paths, "
                        "links, NRRD data files); only for a manifest you trust")
    p.set_defaults(handler=_cmd_ingest)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from mri_tune_datasets.ingest import IngestSettings, ingest, parse_split_fractions
    from mri_tune_datasets.manifest import parse_keep_columns

    settings = IngestSettings(
        manifest=args.manifest, root=args.root, out=args.out, size=args.size,
        planes=args.planes, split=parse_split_fractions(args.split), seed=args.seed,
        on_error=args.on_error, max_frames=args.max_frames,
        allow_small_regions=args.allow_small_regions,
        keep_columns=parse_keep_columns(args.keep_columns),
        allow_outside_root=args.allow_outside_root, field_of_view_mm=args.field_of_view,
    )
    try:
        report = ingest(settings)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: the temporary files are gone
        print(f"mri-tune ingest: interrupted ({interrupt or 'Ctrl-C'}); {args.out} was not "
              "changed", file=sys.stderr)
        return 128 + getattr(interrupt, "signum", 2)
    print(report.summary())
    return 0


def _add_store_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store-info", help="summarise a slice store")
    p.add_argument("store", type=Path)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_store_info)


def _cmd_store_info(args: argparse.Namespace) -> int:
    from mri_tune.data.store import SliceStore, format_info

    info = SliceStore(args.store).info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one CNN on a store, outside Ray (baseline, debugging)")
    p.add_argument("--store", required=True, type=Path, help="the slice store (.h5)")
    p.add_argument("--config", default="baseline",
                   help="'baseline' (the paper's) or a JSON file of Table 1 keys over the baseline")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--images-per-epoch", type=int, default=None,
                   help="training images per epoch (default: 4 x the training set)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when available")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of initialisation, sampling and augmentation")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for metrics.json (one object per epoch) and checkpoint.pt")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from mri_tune.data.store import SliceStore
    from mri_tune.training.config import read_config
    from mri_tune.training.run import save_each_epoch, train_from_store

    spec, config = read_config(args.config)
    overrides = {"epochs": args.epochs, "images_per_epoch": args.images_per_epoch}
    config = dataclasses.replace(config, seed=args.seed,
                                 **{k: v for k, v in overrides.items() if v is not None})
    store = SliceStore(args.store)
    trainer = train_from_store(store, spec, config, device=args.device,
                               on_epoch=save_each_epoch(args.out, store.preprocessing))
    last = trainer.history[-1]
    print(f"trained {spec} for {last.epoch} epochs: val_loss {last.val_loss:.4f}, "
          f"val_error {last.val_error:.4f}; wrote {args.out}/metrics.json and checkpoint.pt")
    return 0


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="average the top trials of a search into one model folder")
    p.add_argument("--experiment", required=True, type=Path,
                   help="the Tune experiment folder (run_search.py's --storage/--name)")
    p.add_argument("--top", type=int, default=paper.TOP_K,
                   help="members: the trials with the lowest best validation loss (the minimum "
                        "over epochs of the class-weighted cross-entropy), each at its best epoch")
    p.add_argument("--out", required=True, type=Path, help="the ensemble folder to write")
    p.add_argument("--refit", action="store_true",
                   help="train the chosen configurations (and the baseline) again on the "
                        "training and validation splits, as run_search.py does by default; "
                        "Ray tasks on a local Ray, or on the cluster that RAY_ADDRESS names")
    p.add_argument("--refit-splits", default="train,validation",
                   help="the splits a refit trains on; train,validation,test makes a model to "
                        "deploy (every person of the store; `evaluate` then refuses its test "
                        "split, whose figures would no longer be an estimate)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs of one refit")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPU share of one refit (0: CPU)")
    p.set_defaults(handler=_cmd_ensemble)


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from mri_tune.results.ensemble import build_ensemble, describe_ensemble, read_ensemble_manifest

    if args.refit:
        from mri_tune.results.refit import check_refit_splits, refit_ensemble

        splits = check_refit_splits(args.refit_splits.split(","))  # before any work
    folder = build_ensemble(args.experiment, args.out, args.top)
    if args.refit:
        import ray

        def resources(config: dict) -> dict[str, float]:
            return {"num_cpus": args.cpus_per_trial, "num_gpus": args.gpus_per_trial}

        store = Path(read_ensemble_manifest(folder)["store"])
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            refit_ensemble(folder, store, resources, splits)
        finally:
            ray.shutdown()
    print(describe_ensemble(folder))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="slice and volume confusion matrices of a model on a split")
    p.add_argument("--model", required=True, type=Path,
                   help="an ensemble folder (evaluated beside the baseline it carries) or one "
                        "checkpoint (checkpoint.pt or its folder)")
    p.add_argument("--store", required=True, type=Path, help="the slice store (.h5)")
    p.add_argument("--split", choices=["train", "validation", "test"], default="test")
    p.add_argument("--json", action="store_true",
                   help="print the evaluation as JSON, with every volume's verdict")
    _add_margin(p)
    p.set_defaults(handler=_cmd_evaluate)


def _add_margin(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uncertain-margin", type=float, default=None,
                   help="call a volume uncertain when its winning region leads the runner-up by "
                        "less than this share of its slices (default 0.2; 0: never)")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mri_tune.results.evaluate import UNCERTAIN_MARGIN, evaluate, format_report

    margin = UNCERTAIN_MARGIN if args.uncertain_margin is None else args.uncertain_margin
    report = evaluate(args.model, args.store, args.split, margin=margin)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="markdown report with figures of a search and its ensemble")
    p.add_argument("--experiment", required=True, type=Path, help="the Tune experiment folder")
    p.add_argument("--ensemble", required=True, type=Path, help="the ensemble folder")
    p.add_argument("--store", required=True, type=Path, help="the slice store (.h5)")
    p.add_argument("--split", choices=["validation", "test"], default="test",
                   help="split of the evaluation")
    p.add_argument("--out", required=True, type=Path, help="folder of report.md and its PNGs")
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from mri_tune.results.report import write_report

    path = write_report(args.experiment, args.ensemble, args.store, args.out, split=args.split)
    print(f"report written to {path}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="region of each slice and of each volume (NIfTI, DICOM "
                                       "series folder, NRRD)")
    p.add_argument("--model", required=True, type=Path,
                   help="an ensemble folder, or one checkpoint (from `mri-tune train` or a trial: "
                        "checkpoint.pt or its folder)")
    p.add_argument("--store", type=Path, default=None,
                   help="take the preprocessing from this store (only for a checkpoint of an "
                        "older version, which does not record it)")
    p.add_argument("volumes", nargs="+", type=Path, help="volume files or DICOM series folders")
    p.add_argument("--threshold", type=float, default=paper.DECISION_THRESHOLD,
                   help="a slice is labelled only where one class's probability exceeds this")
    p.add_argument("--json", action="store_true", help="print per-slice probabilities as JSON")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of the slice-by-slice probability profile of each volume")
    _add_margin(p)
    p.set_defaults(handler=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from mri_tune.data.store import SliceStore
    from mri_tune.results.evaluate import UNCERTAIN_MARGIN
    from mri_tune.results.predict import format_predictions, plot_profiles, predict_volumes

    preprocessing = SliceStore(args.store).preprocessing if args.store else None
    margin = UNCERTAIN_MARGIN if args.uncertain_margin is None else args.uncertain_margin
    predictions = predict_volumes(args.model, args.volumes, args.threshold, preprocessing, margin)
    if args.plot is not None:
        plot_profiles(predictions, args.plot, args.threshold)
    if args.json:
        print(json.dumps({"volumes": [p.to_dict() for p in predictions]}, indent=1))
    else:
        print(format_predictions(predictions, args.plot))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mri-tune", description="The anatomical region (head, abdomen, pelvis, spine) of MR "
        "slices and volumes, with CNNs chosen by a Gaussian-Process search on Ray Tune.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except MriTuneError as err:
        print(f"mri-tune {args.command}: error: {err}", file=sys.stderr)
        return 2


_SUBCOMMANDS = [_add_ingest, _add_store_info, _add_train,
                _add_ensemble, _add_evaluate, _add_report, _add_predict]


if __name__ == "__main__":
    sys.exit(main())
