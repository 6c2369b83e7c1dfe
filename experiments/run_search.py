"""The whole search on Ray Tune: store, GP search of the CNN, top-ten ensemble, evaluation, report.

Wiring only (the work is in mri_tune.experiment and mri_tune.results): store -> Ray
Tune (GPSearch over the CNN space) -> top-ten ensemble -> its models trained again on the
training and validation splits (--no-refit: the trials' own) -> evaluation -> report.

With no arguments it is the embedded default (`make demo`): a local Ray on this machine's CPUs,
the sample store (built from the sample MRI data on first use), `--scale demo`, then the ensemble,
its evaluation on the test split and the report, whose path is printed at the end.

Examples:
    python experiments/run_search.py                          # the demo, about 10 min on 2 CPUs
    python experiments/run_search.py --resume                 # continue it after a crash
    python experiments/run_search.py --scale paper --gpus 8 --address auto \\
        --storage s3://bucket/mri-tune --num-samples 150     # the paper's search on a cluster
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mri_tune.errors import MriTuneError
from mri_tune.experiment import tuner
from mri_tune.experiment.settings import settings_from_options
from mri_tune.experiment.space import NUM_SAMPLES, SCALES
from mri_tune.results.ensemble import build_ensemble
from mri_tune.results.evaluate import evaluate, format_report
from mri_tune.results.refit import refit_ensemble
from mri_tune.results.report import write_report
from mri_tune_core import paper


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--store", type=Path, default=None,
                      help="slice store (.h5); built from the sample data when absent "
                           "(default: OUT/sample_store_SIZE.h5, SIZE 32 demo, 128 paper)")
    data.add_argument("--samples", type=Path, default=None,
                      help="folder of MR volumes with a manifest.csv to build the store from "
                           "(default: $MRI_TUNE_SAMPLES, else ../shared/data/mri; without either, "
                           "a small set of the MR files that PyPI packages ship)")
    data.add_argument("--out", type=Path, default=Path("demo_output"),
                      help="folder of the store, ensemble, evaluation and report")

    model = parser.add_argument_group("model")
    model.add_argument("--scale", choices=SCALES, default="demo",
                       help="demo: a CPU-sized corner of Table 1, few epochs and images; paper: "
                            "Table 1 and 80,000 images per epoch; smoke: tiny, for tests")
    model.add_argument("--top", type=int, default=paper.TOP_K, help="members of the ensemble")
    model.add_argument("--no-refit", dest="refit", action="store_false",
                       help="keep the trials' own models in the ensemble (the paper's protocol) "
                            "instead of training the chosen configurations again on the "
                            "training and validation splits")

    search = parser.add_argument_group("search")
    search.add_argument("--num-samples", type=int, default=None,
                        help="trials in all (default: " + ", ".join(
                            f"{n} {scale}" for scale, n in NUM_SAMPLES.items()) + ")")
    search.add_argument("--warmup-trials", type=int, default=None,
                        help="random trials before the GP (default: the searcher preset's own)")
    search.add_argument("--searcher-preset", choices=["default", "paper"], default="default",
                        help="GPSearch preset: the measured best, or the paper's recipe")
    search.add_argument("--seed", type=int, default=0, help="seed of the searcher and trials")
    search.add_argument("--name", default=None, help="experiment name (default: mri_tune_SCALE)")
    search.add_argument("--storage", default=None,
                        help="experiment folder: a local path or a URI Ray accepts (s3://, "
                             "gs://, a shared filesystem) for multi-node runs (default: OUT/ray)")
    search.add_argument("--resume", action="store_true",
                        help="restore the experiment --storage/--name after a crash")
    search.add_argument("--on-error", choices=["retry", "report"], default="report",
                        help="on --resume, retry trials whose own code raised from their "
                             "last checkpoint, or keep them as errors in the results (trials "
                             "stopped by a dead worker or a full disk always continue)")
    search.add_argument("--verbose", action="store_true",
                        help="Ray's own trial tables and worker logs instead of one line a trial")
    search.add_argument("--max-failures", type=int, default=0,
                        help="automatic retries of a failing trial during the run")

    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--address", default=None,
                         help="an existing Ray cluster: 'auto' or HOST:PORT (default: local Ray)")
    cluster.add_argument("--gpus", type=float, default=0.0, help="GPUs for the search (0: CPU)")
    cluster.add_argument("--gpus-per-trial", type=float, default=None,
                         help="GPU share of a trial (default: 0.25, 0.5 or 1 from model size)")
    cluster.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs of a trial")
    cluster.add_argument("--max-concurrent", type=int, default=None,
                         help="trials running at once (default: the GPU slots, or CPU slots)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The project's own progress (ingest, ensemble, evaluation) at INFO; Ray's at WARNING unless
    # --verbose.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("mri_tune", "mri_tune_datasets"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        settings = settings_from_options(vars(args))
        print(f"TensorBoard: {tuner.tensorboard_command(settings)}", flush=True)
        print(f"store: {settings.store}", flush=True)
        tuner.prepare(settings)
        with tuner.RaySession(settings) as cluster_cpus:
            if settings.resume:
                search = tuner.restore_tuner(settings, _say)
            else:
                search = tuner.build_tuner(settings, cluster_cpus, _say)
            search.fit()
            tuner.report_interrupted(settings, _say)
            experiment_dir = tuner.local_experiment_dir(settings)
            print("building the ensemble of the top trials ...", flush=True)
            ensemble_dir = build_ensemble(experiment_dir, settings.out / "ensemble", settings.top)
            if settings.refit:
                print("training its models again on the training and validation splits ...",
                      flush=True)
                refit_ensemble(ensemble_dir, settings.store, tuner.refit_resources(settings))
        print("evaluating on the test split ...", flush=True)
        evaluation = evaluate(ensemble_dir, settings.store, "test")
        print(format_report(evaluation))
        report = write_report(experiment_dir, ensemble_dir, settings.store,
                              settings.out / "report", evaluation=evaluation)
    except MriTuneError as err:
        print(f"run_search: error: {err}", file=sys.stderr)
        return 2
    print(f"\nReport: {report}")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
