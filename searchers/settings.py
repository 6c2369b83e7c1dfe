"""The searcher's settings and its two named presets (no Ray import).

`paper` reproduces Bertrand et al. (ISBI 2017, numbers in `mri_tune_core.paper`): random warm-up
trials, a GP with a Gaussian (RBF) kernel on standardised losses, probability of improvement for
two targets (the best loss and a 25% improvement on it), successive proposals alternating the
targets. Pending trials are only excluded; failures are only excluded (the paper had none); the
hyper-parameters maximise the evidence alone (no prior) and every grid point is distinct;
continuous domains (the paper had none) are searched at 64 points.

`default` is the variant that measured best on the tuning half of benchmarks/searcher_bench.py (see
benchmarks/RESULTS_searchers.md): product Matern 5/2 kernel, losses warped by the likeliest of a
log family and the identity at each refit ("auto", warping.py), expected improvement; over the
pending trials fantasised q-EI ("qei": what a candidate adds to the expected improvement of the
batch of pending trials, on joint posterior samples; ahead of the kriging believer at 3 of 4
settings of the tuning half and on development functions at 8 and 32 pending, identical with
nothing pending), a feasibility estimate learned from failures, 10 warm-up trials; continuous
domains at 64 points (space.DEFAULT_RESOLUTION), or as many more as keep a small space at most
16,384 configurations (`DEFAULT_FINE_LIMIT`: branin's 2-d at 128 x 128), coarsened where equal
losses show the objective does not resolve them (ties.py); a choice of numbers neither evenly nor
geometrically spaced ([0, 0.1, 1, 10], [0.01, 0.03, 0.1, 0.3]) at evenly spaced ranks
(`SpaceSettings.uneven_choices="rank"`; the paper preset places them at their values); spaces of
at most `exhaustive_limit`
configurations scored whole, larger ones through a candidate set. The GP's hyper-parameters are
a MAP estimate under Optuna's priors (gp.py, `FitSettings.prior`).

Both presets are `SearchSettings` values; `GPSearch(preset=..., **overrides)` replaces fields, and
`warmup_trials=None` (the default) keeps the preset's own warm-up (10, or the paper's 47).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from mri_tune_core import paper
from searchers.errors import SearchSpaceError
from searchers.feasibility import FeasibilitySettings
from searchers.gp import FitSettings, Kernel
from searchers.space import SpaceSettings
from searchers.warping import OUTPUT_TRANSFORMS, OutputTransformName

DEFAULT_FINE_LIMIT = 16_384
Acquisition = Literal["pi", "ei"]
BatchRule = Literal["exclude", "kriging_believer", "local_penalty", "thompson", "mix", "qei"]
BATCH_RULES: tuple[str, ...] = ("exclude", "kriging_believer", "local_penalty", "thompson", "mix",
                                "qei")


def _check(ok: bool, name: str, constraint: str, got: Any) -> None:
    if not ok:
        raise SearchSpaceError(f"searcher setting '{name}' must be {constraint}; got {got!r}.")


@dataclass(frozen=True)
class SearchSettings:
    """Everything that decides the proposals; defaults are the `default` preset."""

    kernel: Kernel = "matern52"
    output_transform: OutputTransformName = "auto"
    acquisition: Acquisition = "ei"
    targets: tuple[float, ...] = paper.TARGETS  # used by acquisition "pi"
    warmup_trials: int = 10
    batch_rule: BatchRule = "qei"
    feasibility: bool = True  # multiply the acquisition by p_feasible (feasibility.py)
    impute_failures: bool = True  # a failed trial enters the GP at the worst loss seen
    mix_switch: int = 4  # batch rule "mix": kriging believer below this many pending, then TS
    thompson_candidates: int = 512  # top candidates sampled jointly by Thompson sampling
    qei_candidates: int = 1024  # batch rule "qei": top believer-EI candidates scored by q-EI
    qei_samples: int = 128  # joint posterior samples of the pending trials and a candidate
    candidates: int = 4096  # points whose exact posterior variance is computed per refit
    exhaustive_limit: int = 1_000_000  # spaces up to this size are scored whole (the paper: 470K)
    random_candidates: int = 1024  # quasi-random candidates per refit of a larger space
    perturbations: int = 128  # candidates around each of the best trials
    pending_perturbations: int = 16  # candidates around each pending trial
    local_starts: int = 2  # local searches of the acquisition from the best candidates
    local_steps: int = 6  # coordinate moves per local search
    min_sd_fraction: float = 0.0  # never propose where the posterior sd is below this x prior sd
    distinct_ties: bool = True  # never propose within the gap of equal losses (ties.py)
    pending_fraction: float = 0.0  # with `budget`: pending <= max(1, this x remaining); 0: off
    budget: int | None = None  # total trials of the run, for `pending_fraction`
    fit: FitSettings = field(default_factory=FitSettings)
    feasibility_model: FeasibilitySettings = field(default_factory=FeasibilitySettings)
    # continuous domains as fine as keep the space at most 16,384 configurations, 64 points at
    # least (space.py `fine_limit`; measured against 64 and 65,536 in RESULTS_searchers.md);
    # unevenly spaced numeric choices at evenly spaced ranks (`uneven_choices`, measured there)
    space_settings: SpaceSettings = field(
        default_factory=lambda: SpaceSettings(fine_limit=DEFAULT_FINE_LIMIT,
                                              uneven_choices="rank"))

    def __post_init__(self) -> None:
        _check(self.warmup_trials >= 0, "warmup_trials", "an int >= 0", self.warmup_trials)
        _check(len(self.targets) >= 1 and all(0 <= t < 1 for t in self.targets), "targets",
               "a non-empty tuple of relative improvements in [0, 1)", self.targets)
        _check(self.candidates >= 1, "candidates", "an int >= 1", self.candidates)
        _check(self.qei_samples >= 1, "qei_samples", "an int >= 1", self.qei_samples)
        _check(self.qei_candidates >= 1, "qei_candidates", "an int >= 1", self.qei_candidates)
        _check(self.kernel in ("rbf", "matern52"), "kernel", "'rbf' or 'matern52'", self.kernel)
        _check(self.acquisition in ("pi", "ei"), "acquisition", "'pi' or 'ei'",
               self.acquisition)
        _check(self.output_transform in OUTPUT_TRANSFORMS, "output_transform",
               f"one of {OUTPUT_TRANSFORMS}", self.output_transform)
        _check(self.batch_rule in BATCH_RULES, "batch_rule", f"one of {BATCH_RULES}",
               self.batch_rule)
        for name in ("mix_switch", "thompson_candidates", "exhaustive_limit",
                     "random_candidates", "perturbations", "pending_perturbations",
                     "local_starts", "local_steps"):
            _check(getattr(self, name) >= 0, name, "an int >= 0", getattr(self, name))
        _check(0.0 <= self.min_sd_fraction < 1.0, "min_sd_fraction", "a float in [0, 1)",
               self.min_sd_fraction)
        _check(0.0 <= self.pending_fraction <= 1.0, "pending_fraction", "a float in [0, 1]",
               self.pending_fraction)
        _check(self.budget is None or self.budget >= 1, "budget", "None or an int >= 1",
               self.budget)


PRESETS: dict[str, SearchSettings] = {
    "paper": SearchSettings(kernel="rbf", output_transform="standardize", acquisition="pi",
                            targets=paper.TARGETS, warmup_trials=paper.WARMUP_TRIALS,
                            batch_rule="exclude", feasibility=False, impute_failures=False,
                            distinct_ties=False, fit=FitSettings(prior=False),
                            space_settings=SpaceSettings()),
    "default": SearchSettings(),
}


def resolve_settings(preset: str, **overrides: Any) -> SearchSettings:
    """A preset with some fields replaced (None values are ignored)."""
    if preset not in PRESETS:
        raise SearchSpaceError(
            f"unknown searcher preset {preset!r}; choose one of {sorted(PRESETS)}."
        )
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "targets" in changes:
        changes["targets"] = tuple(float(t) for t in changes["targets"])
    return dataclasses.replace(PRESETS[preset], **changes)
