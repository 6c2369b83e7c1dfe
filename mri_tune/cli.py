"""The `mri-tune` command line: argument parsing and printing only; the work is in the library.

Each subcommand's handler turns its arguments into the library's typed objects, calls one library
function, and prints. Errors derived from `MriTuneError` are printed as one message, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mri_tune.errors import MriTuneError


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="build an HDF5 slice store from a manifest of MR volumes")
    p.add_argument("--manifest", required=True, type=Path,
                   help="CSV with columns path, region, subject (optional: slices, others kept)")
    p.add_argument("--root", type=Path, default=None,
                   help="folder the manifest's paths are relative to (default: the manifest's folder)")
    p.add_argument("--out", required=True, type=Path, help="the store to write (.h5)")
    p.add_argument("--size", type=int, default=128, help="slices are resized to SIZE x SIZE")
    p.add_argument("--planes", choices=["acquisition", "all"], default="acquisition",
                   help="slice along the acquisition axis only, or along all three axes")
    p.add_argument("--split", default="0.5,0.25,0.25",
                   help="train,validation,test fractions of subjects per region")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject split")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                   help="stop at the first bad row, or skip bad rows and list them in the store")
    p.set_defaults(handler=_cmd_ingest)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from mri_tune_datasets.ingest import IngestSettings, ingest, parse_split_fractions

    settings = IngestSettings(
        manifest=args.manifest, root=args.root, out=args.out, size=args.size,
        planes=args.planes, split=parse_split_fractions(args.split), seed=args.seed,
        on_error=args.on_error,
    )
    report = ingest(settings)
    print(report.summary())
    return 0


def _add_store_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store-info", help="summarise a slice store")
    p.add_argument("store", type=Path)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_store_info)


def _cmd_store_info(args: argparse.Namespace) -> int:
    from mri_tune.store import SliceStore, format_info

    info = SliceStore(args.store).info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mri-tune", description=__doc__.splitlines()[0])
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


# Subcommands of later issues (train, ensemble, evaluate, report, predict) register here too.
_SUBCOMMANDS = [_add_ingest, _add_store_info]


if __name__ == "__main__":
    sys.exit(main())
