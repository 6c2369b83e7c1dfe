"""The library side of a search: param space per scale, resources per trial, Tuner, resume.

`experiments/run_search.py` only parses arguments into `ExperimentSettings` and calls `run()`.

Scales:
    paper   Table 1 as published: 470,400 configurations, 10..100 epochs, 80,000 images per epoch.
    demo    a CPU-sized corner of Table 1 (4 or 6 epochs of 2,048 images, small models, 32x32
            slices) so the default run (search, ensemble, evaluation, report) fits in 10 minutes
            on 2 CPU cores.
    smoke   8 small configurations that learn (6 or 8 epochs of 1024 images): tests.

Resources: a trial asks for `cpus_per_trial` CPUs and, with GPUs, a share of one GPU chosen from
the model's size when `gpus_per_trial` is not given (`gpu_share`): small models share a GPU
(four batch-8 trainings on one H200 reach 3.1x the throughput of one, docs/DESIGN.md), large ones
get a whole GPU. The searcher keeps `max_concurrent` proposals running or queued: the number of
slots (GPUs / smallest share, or CPUs / cpus_per_trial without GPUs).

Files under `storage/name/`: Tune's experiment state and trial folders (a checkpoint per epoch,
the best one by val_loss kept with the latest), and `mri_tune_search.json` (the settings, the
store, the baseline config and the warm-up length; read by the ensemble and the report).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mri_tune.errors import InputError

logger = logging.getLogger(__name__)

Scale = Literal["demo", "paper", "smoke"]
OnError = Literal["retry", "report"]
SEARCH_RECORD = "mri_tune_search.json"
METRIC = "val_loss"

PAPER_IMAGES_PER_EPOCH = 80_000
"""Images generated per epoch at paper scale (the paper: 4x its training set)."""
DEMO_IMAGES_PER_EPOCH = 2048
SMOKE_IMAGES_PER_EPOCH = 1024

# GPU share per trial (docs/DESIGN.md measurements on one H200): a trial whose convolutions cost
# under SMALL_GMACS per image and whose activations fit in SMALL_ACTIVATION_GB shares a GPU four
# ways; under MEDIUM_* two ways; anything larger gets a whole GPU.
SMALL_GMACS, SMALL_ACTIVATION_GB = 1.0, 8.0
MEDIUM_GMACS, MEDIUM_ACTIVATION_GB = 4.0, 20.0
GPU_SHARES = (0.25, 0.5, 1.0)
_BYTES_PER_ACTIVATION = 2 * 3  # bf16, kept about three times for backward (input, ReLU, grad)


def table1_space() -> dict[str, list]:
    """Table 1 of the paper: 5 x 7 x 6 x 2 x 8 x 7 x 10 x 2 = 470,400 configurations."""
    return {
        "num_blocks": [1, 2, 3, 4, 5],
        "convs_per_block": [1, 2, 3, 4, 5, 6, 7],
        "filters": [2**r for r in range(2, 8)],
        "kernel_size": [3, 5],
        "learning_rate": [10.0**exponent for exponent in range(-7, 1)],
        "batch_size": [2**a for a in range(2, 9)],
        "epochs": list(range(10, 101, 10)),
        "augmentation": [True, False],
    }


def scale_space(scale: Scale) -> dict[str, list]:
    """The value lists searched at each scale (demo and smoke are subsets of Table 1's ranges)."""
    if scale == "paper":
        return table1_space()
    if scale == "demo":
        # At least 3 poolings keep the first dense layer small; 1-2 convolutions of <= 16
        # filters and a 32x32 store keep a trial to seconds on one CPU core. Measured on the
        # sample data: learning rates >= 0.1 diverge, <= 1e-4 (and batches of 8) learn too
        # little within a few thousand images.
        return {"num_blocks": [3, 4, 5], "convs_per_block": [1, 2], "filters": [4, 8, 16],
                "kernel_size": [3, 5], "learning_rate": [1e-3, 1e-2],
                "batch_size": [16, 32], "epochs": [4, 6], "augmentation": [True, False]}
    if scale == "smoke":
        # 8 configurations that learn the sample data within seconds (measured on the
        # seed-0 split; augmentation slows learning too much for so few epochs).
        return {"num_blocks": [3, 4], "convs_per_block": [1], "filters": [8, 16],
                "kernel_size": [3], "learning_rate": [1e-2], "batch_size": [32],
                "epochs": [6, 8], "augmentation": [False]}
    raise InputError(f"--scale must be one of demo, paper, smoke. Got {scale!r}.")


def baseline_config(scale: Scale) -> dict[str, Any]:
    """The paper's baseline (5 x 1 conv of 64 3x3 filters, lr 1e-3, batch 8, 70 epochs, with
    augmentation), projected onto the scale's space: each value is replaced by the nearest
    value the scale searches (on a log scale), so the baseline is a point of the grid."""
    from searchers.space import PAPER_BASELINE

    space = scale_space(scale)
    return {key: _nearest(value, space[key]) for key, value in PAPER_BASELINE.items()}


def _nearest(value: Any, options: list) -> Any:
    if value in options or isinstance(value, bool):
        return value if value in options else options[0]
    return min(options, key=lambda o: abs(math.log(o) - math.log(value)))


def estimated_cost(config: Mapping[str, Any], image_size: tuple[int, int]) -> tuple[float, float]:
    """(GMACs of the convolutions per image, activation GB of one batch) of a Table 1 config.

    Convolution i of block b (0-based) works on (H / 2^b) x (W / 2^b) pixels:
        MACs = H_b W_b k^2 c_in filters;  activations = sum over convolutions of filters H_b W_b.
    """
    height, width = image_size
    filters, k2 = int(config["filters"]), int(config["kernel_size"]) ** 2
    macs = activations = 0.0
    channels = 1
    for block in range(int(config["num_blocks"])):
        pixels = (height >> block) * (width >> block)
        for _ in range(int(config["convs_per_block"])):
            macs += pixels * k2 * channels * filters
            activations += pixels * filters
            channels = filters
    batch_gb = activations * int(config["batch_size"]) * _BYTES_PER_ACTIVATION / 1e9
    return macs / 1e9, batch_gb


def gpu_share(config: Mapping[str, Any], image_size: tuple[int, int]) -> float:
    """The fraction of a GPU a trial asks for when --gpus-per-trial is not given."""
    gmacs, gb = estimated_cost(config, image_size)
    if gmacs <= SMALL_GMACS and gb <= SMALL_ACTIVATION_GB:
        return GPU_SHARES[0]
    if gmacs <= MEDIUM_GMACS and gb <= MEDIUM_ACTIVATION_GB:
        return GPU_SHARES[1]
    return GPU_SHARES[2]


@dataclass(frozen=True)
class ExperimentSettings:
    """What `experiments/run_search.py` was asked to do (all its options, typed and checked)."""

    store: Path
    out: Path
    storage: str
    name: str
    scale: Scale = "demo"
    num_samples: int = 20
    warmup_trials: int = 8
    searcher_preset: str = "default"
    seed: int = 0
    gpus: float = 0.0
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    address: str | None = None
    resume: bool = False
    on_error: OnError = "report"
    max_failures: int = 0
    top: int = 10
    samples: Path | None = None

    def __post_init__(self) -> None:
        _positive("num_samples", self.num_samples, integer=True)
        _positive("cpus_per_trial", self.cpus_per_trial)
        _positive("top", self.top, integer=True)
        if self.warmup_trials < 0:
            _bad("--warmup-trials", "an integer >= 0", self.warmup_trials, "e.g. 8")
        if self.gpus < 0:
            _bad("--gpus", "a number >= 0", self.gpus, "0 for CPU only")
        if self.gpus_per_trial is not None and not 0 < self.gpus_per_trial <= max(self.gpus, 1):
            _bad("--gpus-per-trial", f"in (0, {max(self.gpus, 1):g}] (at most --gpus)",
                 self.gpus_per_trial, "e.g. 0.25 to pack four trials on a GPU")
        if self.gpus_per_trial is not None and self.gpus == 0 and self.address is None:
            _bad("--gpus-per-trial", "used with --gpus N > 0 (or a cluster --address)",
                 self.gpus_per_trial, "add --gpus 1")
        if self.max_concurrent is not None:
            _positive("max_concurrent", self.max_concurrent, integer=True)
        if self.on_error not in ("retry", "report"):
            _bad("--on-error", "'retry' or 'report'", self.on_error, "choose one")
        scale_space(self.scale)  # rejects an unknown scale

    @property
    def experiment_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def uses_gpus(self) -> bool:
        return self.gpus > 0 or self.gpus_per_trial is not None

    def slots(self, cluster_cpus: float) -> int:
        """Trials that can run at once: GPU slots with GPUs, else CPU slots."""
        if self.gpus > 0:
            share = self.gpus_per_trial or GPU_SHARES[0]
            return max(1, int(self.gpus / share + 1e-9))
        return max(1, int(cluster_cpus / self.cpus_per_trial + 1e-9))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(store=str(self.store), out=str(self.out),
                      samples=None if self.samples is None else str(self.samples))
        return values


def _positive(name: str, value: float, integer: bool = False) -> None:
    if (integer and (isinstance(value, bool) or not isinstance(value, int))) or value <= 0:
        kind = "an integer" if integer else "a number"
        _bad(f"--{name.replace('_', '-')}", f"{kind} > 0", value, "pass a positive value")


def _bad(option: str, constraint: str, got: Any, fix: str) -> None:
    raise InputError(f"{option} must be {constraint}. Got {got!r}; {fix}.")


def trial_resources(settings: ExperimentSettings, image_size: tuple[int, int]):
    """The per-trial resource request Tune calls with each config (a PlacementGroupFactory)."""
    from ray.tune import PlacementGroupFactory

    def request(config: dict[str, Any]) -> PlacementGroupFactory:
        bundle: dict[str, float] = {"CPU": settings.cpus_per_trial}
        if settings.uses_gpus:
            bundle["GPU"] = settings.gpus_per_trial or gpu_share(config, image_size)
        return PlacementGroupFactory([bundle])

    return request


def write_search_record(settings: ExperimentSettings, experiment_dir: Path) -> None:
    """The settings, store and baseline of a run, beside Tune's experiment state."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings.to_dict(), "store": str(Path(settings.store).resolve()),
              "scale": settings.scale, "warmup_trials": settings.warmup_trials,
              # the baseline runs first (points_to_evaluate), then the random warm-up
              "warmup_end": 1 + settings.warmup_trials,
              "baseline_config": baseline_config(settings.scale),
              "space": scale_space(settings.scale)}
    (experiment_dir / SEARCH_RECORD).write_text(json.dumps(record, indent=1))


def read_search_record(experiment_dir: Path) -> dict[str, Any] | None:
    """The record `write_search_record` left, or None for an experiment run by other means."""
    path = Path(experiment_dir) / SEARCH_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def tensorboard_command(settings: ExperimentSettings) -> str:
    return f"tensorboard --logdir {settings.experiment_dir}"


def local_storage(settings: ExperimentSettings) -> Path | None:
    """The experiment folder when storage is a local path (None for a URI such as s3://)."""
    if "://" in settings.storage and not settings.storage.startswith("file://"):
        return None
    return Path(settings.storage.removeprefix("file://")) / settings.name


def ray_init_kwargs(settings: ExperimentSettings) -> dict[str, Any]:
    """ray.init arguments: a local Ray on this machine's CPUs (and --gpus logical GPUs), or an
    existing cluster at --address."""
    if settings.address is not None:
        return {"address": settings.address}
    # address="local": never attach to a cluster some other `ray start` left on this machine.
    return {"address": "local", "num_cpus": os.cpu_count() or 1, "num_gpus": settings.gpus,
            "include_dashboard": False}


def _trainable(settings: ExperimentSettings):
    """The trial function, bound to the store and the scale's images per epoch, with resources."""
    from ray import tune

    from mri_tune.store import SliceStore
    from mri_tune.trainable import TrialSettings, make_trainable

    images = {"paper": PAPER_IMAGES_PER_EPOCH, "demo": DEMO_IMAGES_PER_EPOCH,
              "smoke": SMOKE_IMAGES_PER_EPOCH}[settings.scale]
    trial = TrialSettings(store=Path(settings.store), images_per_epoch=images, seed=settings.seed)
    image_size = SliceStore(settings.store).image_size
    return tune.with_resources(make_trainable(trial), trial_resources(settings, image_size))


def _searcher(settings: ExperimentSettings):
    from searchers import GPPISearch

    return GPPISearch(preset=settings.searcher_preset, warmup_trials=settings.warmup_trials,
                      points_to_evaluate=[baseline_config(settings.scale)], seed=settings.seed)


def build_tuner(settings: ExperimentSettings, cluster_cpus: float):
    """A fresh Tuner: GPPISearch over the scale's space, the baseline as the first trial."""
    from ray import tune

    max_concurrent = settings.max_concurrent or settings.slots(cluster_cpus)
    logger.info("searching %d configurations, %d at a time", settings.num_samples,
                max_concurrent)
    return tune.Tuner(
        _trainable(settings),
        param_space=_param_space(settings.scale),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="min", num_samples=settings.num_samples,
            search_alg=_searcher(settings), max_concurrent_trials=max_concurrent,
            # A finished trial's worker process takes the next trial: no process start, no
            # torch import per trial (benchmarks/search.py: GPU slots 38% -> 98% busy).
            reuse_actors=True),
        run_config=_run_config(settings),
    )


def _param_space(scale: Scale) -> dict[str, Any]:
    from ray import tune

    return {key: tune.choice(values) for key, values in scale_space(scale).items()}


def _run_config(settings: ExperimentSettings):
    from ray import tune

    return tune.RunConfig(
        name=settings.name, storage_path=settings.storage, verbose=1,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order="min"),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
    )


def restore_tuner(settings: ExperimentSettings):
    """Tuner.restore of the experiment after a crash of the driver.

    Finished trials are kept, unfinished ones continue from their last checkpoint, errored ones
    are resumed from their last checkpoint (--on-error retry) or left as errors (report). The
    searcher comes back from its own saved state, so no configuration is proposed twice and the
    experiment still stops at num_samples trials.
    """
    from ray import tune

    return tune.Tuner.restore(settings.experiment_dir, trainable=_trainable(settings),
                              resume_unfinished=True,
                              resume_errored=settings.on_error == "retry")


SCALE_DEFAULTS: dict[str, dict[str, int]] = {
    "demo": {"num_samples": 20, "warmup_trials": 8},
    "paper": {"num_samples": 150, "warmup_trials": 47},
    "smoke": {"num_samples": 6, "warmup_trials": 3},
}
"""Trials and warm-up trials when the command line does not say (paper: 47 random trials)."""


def settings_from_options(options: Mapping[str, Any]) -> ExperimentSettings:
    """ExperimentSettings from run_search.py's parsed options (None = the scale's default)."""
    scale = options["scale"]
    defaults = SCALE_DEFAULTS.get(scale, SCALE_DEFAULTS["demo"])
    out = Path(options["out"])
    pick = {key: (options[key] if options.get(key) is not None else defaults[key])
            for key in ("num_samples", "warmup_trials")}
    return ExperimentSettings(
        store=Path(options["store"] or out / f"sample_store_{STORE_SIZE[scale]}.h5"), out=out,
        storage=str(options["storage"] or (out / "ray").resolve()),
        name=options["name"] or f"mri_tune_{scale}", scale=scale,
        searcher_preset=options["searcher_preset"], seed=options["seed"],
        gpus=options["gpus"], gpus_per_trial=options["gpus_per_trial"],
        cpus_per_trial=options["cpus_per_trial"], max_concurrent=options["max_concurrent"],
        address=options["address"], resume=options["resume"], on_error=options["on_error"],
        max_failures=options["max_failures"], top=options["top"],
        samples=Path(options["samples"]) if options.get("samples") else None, **pick)


def local_experiment_dir(settings: ExperimentSettings) -> Path:
    """The experiment folder on this machine; the ensemble and the report read it from here."""
    folder = local_storage(settings)
    if folder is None:
        raise InputError(f"The experiment lives at {settings.experiment_dir}, not on this "
                         "machine; copy it to a local folder and run `mri-tune ensemble "
                         "--experiment DIR` and `mri-tune report` on the copy.")
    return folder


class ray_session:  # noqa: N801 - used like a function: `with ray_session(settings) as cpus:`
    """ray.init on entry (local or --address), ray.shutdown on exit; yields the cluster's CPUs.

    Also writes the search record next to Tune's state on a fresh run, and checks on --resume
    that it exists (a resume of a run that never started is a user error, not an empty run).
    """

    def __init__(self, settings: ExperimentSettings) -> None:
        self.settings = settings

    def __enter__(self) -> float:
        import ray

        folder = local_storage(self.settings)
        if folder is not None and not self.settings.resume:
            write_search_record(self.settings, folder)
        ray.init(**ray_init_kwargs(self.settings), log_to_driver=True)
        return float(ray.cluster_resources().get("CPU", 1.0))

    def __exit__(self, *exc_info: object) -> None:
        import ray

        ray.shutdown()


STORE_SIZE = {"paper": 128, "demo": 32, "smoke": 32}
"""Side of the sample store's slices per scale: 128 as in the paper; the demo and smoke scales
ingest 32x32 slices (16x fewer pixels) so that 2 CPU cores run a whole search in minutes."""


def prepare(settings: ExperimentSettings) -> Path:
    """Check that a --resume has an experiment to restore, and build the store when absent."""
    if settings.resume:
        from ray import tune

        if not tune.Tuner.can_restore(settings.experiment_dir):
            raise InputError(f"--resume found no experiment to restore at "
                             f"{settings.experiment_dir}; check --storage and --name (or --out), "
                             "or run without --resume to start one.")
        _check_same_search(settings)
    return ensure_store(settings.store, settings.scale, settings.samples)


def _check_same_search(settings: ExperimentSettings) -> None:
    """A resumed search must train as it started: same scale (epochs, images) and store."""
    folder = local_storage(settings)
    record = read_search_record(folder) if folder is not None else None
    if record is None:
        return
    started = (record["scale"], str(record["store"]))
    now = (settings.scale, str(Path(settings.store).resolve()))
    if started != now:
        raise InputError(f"--resume must continue the search as it started: it ran with --scale "
                         f"{started[0]} on the store {started[1]}; got --scale {now[0]} and "
                         f"{now[1]}. Pass the original --scale and --store.")


def ensure_store(store: Path, scale: Scale, samples: Path | None = None) -> Path:
    """The store at `store`, ingested from the sample data (all three planes) when absent.

    The sample folder is `samples`, else $MRI_TUNE_SAMPLES, else ../shared/data/mri; without
    any, a small demo set of the MR files that installed PyPI packages ship (fewer regions and
    subjects, said loudly), so that the demo still runs on a bare machine.
    """
    store = Path(store)
    if store.is_file():
        return store
    from mri_tune.samples import find_samples
    from mri_tune_datasets.fallback import build_fallback_manifest
    from mri_tune_datasets.ingest import IngestSettings, ingest

    folder = find_samples(samples)
    if folder is None:
        fallback = build_fallback_manifest(store.parent / "fallback_samples")
        logger.warning("%s", fallback.note)
        manifest = fallback.manifest
    else:
        manifest = folder / "manifest.csv"
    logger.info("building the sample store %s from %s (first use)", store, manifest)
    store.parent.mkdir(parents=True, exist_ok=True)
    report = ingest(IngestSettings(manifest=manifest, root=manifest.parent, out=store,
                                   size=STORE_SIZE[scale], planes="all",
                                   allow_small_regions=folder is None))
    logger.info("%s", report.summary())
    return store
