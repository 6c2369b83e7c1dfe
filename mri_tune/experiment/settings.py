"""`ExperimentSettings`: what `experiments/run_search.py` was asked to do, typed, checked once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mri_tune.errors import InputError
from mri_tune.experiment.space import NUM_SAMPLES, STORE_SIZE, Scale, scale_space

OnError = Literal["retry", "report"]


@dataclass(frozen=True)
class ExperimentSettings:
    """Every option of a search. `warmup_trials` None means the searcher preset's own."""

    store: Path
    out: Path
    storage: str
    name: str
    scale: Scale = "demo"
    num_samples: int = NUM_SAMPLES["demo"]
    warmup_trials: int | None = None
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
    refit: bool = True  # retrain the ensemble's models on train + validation (results/refit.py)
    samples: Path | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        _positive("num_samples", self.num_samples, integer=True)
        _positive("cpus_per_trial", self.cpus_per_trial)
        _positive("top", self.top, integer=True)
        if self.warmup_trials is not None and self.warmup_trials < 0:
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

    @property
    def local_experiment_dir(self) -> Path | None:
        """The experiment folder when storage is a local path (None for a URI such as s3://)."""
        if "://" in self.storage and not self.storage.startswith("file://"):
            return None
        return Path(self.storage.removeprefix("file://")) / self.name

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


def settings_from_options(options: Mapping[str, Any]) -> ExperimentSettings:
    """ExperimentSettings from run_search.py's parsed options (None = the scale's default)."""
    scale = options["scale"]
    scale_space(scale)  # an unknown scale fails here, with the list of scales
    out = Path(options["out"])
    store = options["store"] or out / f"sample_store_{STORE_SIZE[scale]}.h5"
    return ExperimentSettings(
        store=Path(store), out=out,
        storage=str(options["storage"] or (out / "ray").resolve()),
        name=options["name"] or f"mri_tune_{scale}", scale=scale,
        num_samples=options["num_samples"] or NUM_SAMPLES[scale],
        warmup_trials=options["warmup_trials"],
        searcher_preset=options["searcher_preset"], seed=options["seed"],
        gpus=options["gpus"], gpus_per_trial=options["gpus_per_trial"],
        cpus_per_trial=options["cpus_per_trial"], max_concurrent=options["max_concurrent"],
        address=options["address"], resume=options["resume"], on_error=options["on_error"],
        max_failures=options["max_failures"], top=options["top"],
        refit=bool(options.get("refit", True)),
        samples=Path(options["samples"]) if options.get("samples") else None,
        verbose=bool(options.get("verbose", False)))
