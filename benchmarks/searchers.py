"""Benchmark: GPPISearch (default and paper presets) against Ray Tune's peers, and its overhead.

Quality. Each searcher runs on tabulated offline problems (benchmarks/searcher_problems.py: three
scikit-learn tuning problems and a SYNTHETIC paper-like CNN surface with an out-of-memory region).
Searchers are driven through Ray's Searcher API directly (suggest / on_trial_complete), not through
a Tuner, which is far faster: a simulated cluster keeps `concurrency` trials pending and completes
the oldest first. Proposals are snapped to the problem's grid; a failed (NaN) entry is reported as
`error=True`; duplicates count against the budget. Score at a budget of B trials:
    100 * (random_mean - best_found) / (random_mean - best_in_table)
i.e. 100 = the best value in the table, 0 = random search's mean at the same budget.

Overhead. Median and maximum time of `suggest` and `on_trial_complete` of the default preset at
50, 200, 500 and 1,000 observations on the full 470,400-point paper grid, with 8 pending trials,
after one untimed refit (the searcher has been running, so the fit is warm-started).

    python benchmarks/searchers.py [--quick] [--json PATH] [--workers 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# This script's name would shadow the `searchers` package: keep its folder off the import path
# and load the problems module by file.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def _load_problems() -> Any:
    if "searcher_problems" not in sys.modules:
        spec = importlib.util.spec_from_file_location("searcher_problems",
                                                      _HERE / "searcher_problems.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["searcher_problems"] = module
        spec.loader.exec_module(module)
    return sys.modules["searcher_problems"]


PROBLEMS = _load_problems().PROBLEMS
Problem = _load_problems().Problem

METRIC = "loss"
# Optuna's GPSampler took 1,480 s for one 100-trial run on the 470,400-point grid (2 cores)
_TOO_SLOW = {("optuna_gp", "cnn_paper")}
_problem_cache: dict[str, Problem] = {}


# ---- searchers ----------------------------------------------------------------------------
class RandomGrid:
    """Uniform random search without replacement over the problem's grid (the score's zero)."""

    def __init__(self, problem: Problem, seed: int) -> None:
        self.order = np.random.default_rng(seed).permutation(problem.space.size)
        self.space, self.next = problem.space, 0

    def suggest(self, trial_id: str) -> dict | None:
        if self.next >= len(self.order):
            return None
        self.next += 1
        return self.space.config(int(self.order[self.next - 1]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass


def _optuna(sampler_name: str) -> Callable[[Problem, int], Any]:
    def make(problem: Problem, seed: int) -> Any:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        sampler = (optuna.samplers.TPESampler(seed=seed) if sampler_name == "tpe"
                   else optuna.samplers.GPSampler(seed=seed))
        searcher = OptunaSearch(sampler=sampler, seed=seed)
        searcher.set_search_properties(METRIC, "min", problem.param_space)
        return searcher
    return make


def _hyperopt(problem: Problem, seed: int) -> Any:
    from ray.tune.search.hyperopt import HyperOptSearch

    searcher = HyperOptSearch(random_state_seed=seed)
    searcher.set_search_properties(METRIC, "min", problem.param_space)
    return searcher


def _gp(preset: str, **overrides: Any) -> Callable[[Problem, int], Any]:
    def make(problem: Problem, seed: int) -> Any:
        from searchers import GPPISearch

        return GPPISearch(space=problem.space, metric=METRIC, mode="min", seed=seed,
                          preset=preset, **overrides)
    return make


SEARCHERS: dict[str, Callable[[Problem, int], Any]] = {
    "random": RandomGrid,
    "optuna_tpe": _optuna("tpe"),
    "optuna_gp": _optuna("gp"),
    "hyperopt": _hyperopt,
    "gp_paper": _gp("paper"),
    "gp_default": _gp("default"),
}
ABLATIONS: dict[str, Callable[[Problem, int], Any]] = {
    "gp_paper_warmup10": _gp("paper", warmup_trials=10),
    "gp_default_pi": _gp("default", acquisition="pi"),
    "gp_default_rbf": _gp("default", kernel="rbf"),
    "gp_default_standardize": _gp("default", output_transform="standardize"),
    "gp_default_no_believer": _gp("default", batch_rule="exclude"),
}


# ---- one run ------------------------------------------------------------------------------
def run_one(job: tuple[str, str, int, int, int]) -> dict[str, Any]:
    """(problem, searcher, seed, concurrency, budget) -> best-so-far curve and counts."""
    problem_name, searcher_name, seed, concurrency, budget = job
    if problem_name not in _problem_cache:
        _problem_cache[problem_name] = PROBLEMS[problem_name]()
    problem = _problem_cache[problem_name]
    searcher = {**SEARCHERS, **ABLATIONS}[searcher_name](problem, seed)
    if hasattr(searcher, "set_max_concurrency"):
        searcher.set_max_concurrency(concurrency)
    pending: list[tuple[str, int]] = []
    seen: set[int] = set()
    best, curve, failed, duplicates, started = np.inf, [], 0, 0, 0
    clock = time.perf_counter()
    while len(curve) < budget:
        while len(pending) < concurrency and started < budget:
            config = searcher.suggest(f"t{started}")
            if config is None or config == "FINISHED":
                break
            index = problem.space.index_of(config)
            duplicates += index in seen
            seen.add(index)
            pending.append((f"t{started}", index))
            started += 1
        if not pending:
            break
        trial_id, index = pending.pop(0)
        loss = problem.losses[index]
        if np.isnan(loss):
            failed += 1
            searcher.on_trial_complete(trial_id, None, error=True)
        else:
            best = min(best, float(loss))
            searcher.on_trial_complete(trial_id, {METRIC: float(loss)})
        curve.append(best)
    return {"problem": problem_name, "searcher": searcher_name, "seed": seed,
            "concurrency": concurrency, "curve": curve, "failed": failed,
            "duplicates": duplicates, "seconds": time.perf_counter() - clock}


# ---- scoring --------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]], budgets: list[int]) -> list[dict[str, Any]]:
    """Mean and sd of the normalised score per (problem, searcher, concurrency, budget)."""
    rows = []
    keys = sorted({(r["problem"], r["concurrency"]) for r in runs})
    for problem_name, concurrency in keys:
        group = [r for r in runs if r["problem"] == problem_name
                 and r["concurrency"] == concurrency]
        table_best = _problem_cache.get(problem_name) or PROBLEMS[problem_name]()
        for budget in budgets:
            randoms = [_best_at(r, budget) for r in group if r["searcher"] == "random"]
            zero = float(np.mean(randoms))
            span = zero - table_best.best
            for name in sorted({r["searcher"] for r in group}):
                mine = [r for r in group if r["searcher"] == name]
                scores = [100.0 * (zero - _best_at(r, budget)) / span for r in mine]
                rows.append({"problem": problem_name, "concurrency": concurrency,
                             "budget": budget, "searcher": name,
                             "score_mean": float(np.mean(scores)),
                             "score_sd": float(np.std(scores)), "seeds": len(scores),
                             "failed_mean": float(np.mean([r["failed"] for r in mine])),
                             "duplicates_mean": float(np.mean([r["duplicates"] for r in mine])),
                             "seconds_mean": float(np.mean([r["seconds"] for r in mine]))})
    return rows


def _best_at(run: dict[str, Any], budget: int) -> float:
    curve = run["curve"]
    return curve[min(budget, len(curve)) - 1]


def quality_table(rows: list[dict[str, Any]]) -> str:
    problems = sorted({r["problem"] for r in rows})
    lines = []
    for budget in sorted({r["budget"] for r in rows}):
        for concurrency in sorted({r["concurrency"] for r in rows}):
            lines.append(f"\nbudget {budget}, concurrency {concurrency}: score mean ± sd "
                         "(100 = best in table, 0 = random's mean)\n")
            lines.append("| searcher | " + " | ".join(problems) + " | mean |")
            lines.append("|---" * (len(problems) + 2) + "|")
            for name in sorted({r["searcher"] for r in rows}, key=_searcher_order):
                cells, means = [], []
                for problem in problems:
                    match = [r for r in rows if r["problem"] == problem and r["searcher"] == name
                             and r["budget"] == budget and r["concurrency"] == concurrency]
                    if match:
                        cells.append(f"{match[0]['score_mean']:.1f} ± {match[0]['score_sd']:.1f}")
                        means.append(match[0]["score_mean"])
                    else:
                        cells.append("-")
                lines.append(f"| {name} | " + " | ".join(cells)
                             + f" | {np.mean(means):.1f} |")
    return "\n".join(lines)


def _searcher_order(name: str) -> tuple[int, str]:
    order = list(SEARCHERS) + list(ABLATIONS)
    return (order.index(name) if name in order else len(order), name)


# ---- overhead -----------------------------------------------------------------------------
def measure_overhead(observations: list[int], cycles: int) -> list[dict[str, Any]]:
    """suggest / on_trial_complete times of the default preset on the paper grid."""
    from searchers import GPPISearch

    problem = PROBLEMS["cnn_paper"]()
    rows = []
    for n in observations:
        searcher = GPPISearch(space=problem.space, metric=METRIC, mode="min", seed=0,
                              warmup_trials=n + 8)
        for i in range(n):  # random warm-up: no GP fit yet
            searcher.on_trial_complete(f"w{i}", _result(problem, searcher.suggest(f"w{i}")))
        pending = [(f"p{i}", searcher.suggest(f"p{i}")) for i in range(8)]
        suggest_times, complete_times = [], []
        for cycle in range(cycles + 1):  # cycle 0: the untimed first (cold) fit
            trial_id, config = pending.pop(0)
            start = time.perf_counter()
            searcher.on_trial_complete(trial_id, _result(problem, config))
            middle = time.perf_counter()
            new_id = f"c{cycle}"
            pending.append((new_id, searcher.suggest(new_id)))
            end = time.perf_counter()
            if cycle:
                complete_times.append(middle - start)
                suggest_times.append(end - middle)
        rows.append({"observations": n, "suggest_median_ms": 1e3 * np.median(suggest_times),
                     "suggest_max_ms": 1e3 * max(suggest_times),
                     "complete_median_ms": 1e3 * np.median(complete_times),
                     "complete_max_ms": 1e3 * max(complete_times),
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return rows


def _result(problem: Problem, config: dict) -> dict | None:
    loss = problem.losses[problem.space.index_of(config)]
    return {"failure": "oom"} if np.isnan(loss) else {METRIC: float(loss)}


def overhead_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| observations | suggest median (ms) | suggest max (ms) | on_trial_complete median "
             "(ms) | on_trial_complete max (ms) | peak RSS (MB) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['observations']} | {r['suggest_median_ms']:.1f} | "
                     f"{r['suggest_max_ms']:.1f} | {r['complete_median_ms']:.0f} | "
                     f"{r['complete_max_ms']:.0f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 seeds, budget 50, overhead at 50 and 200 observations")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    search = parser.add_argument_group("search")
    search.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    search.add_argument("--searchers", nargs="+", default=list(SEARCHERS),
                        choices=list(SEARCHERS) + list(ABLATIONS))
    search.add_argument("--seeds", type=int, default=10)
    search.add_argument("--budgets", type=int, nargs="+", default=[50, 100])
    search.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--workers", type=int, default=2, help="processes running searches")
    cluster.add_argument("--overhead", type=int, nargs="*", default=[50, 200, 500, 1000],
                         help="observation counts for the overhead table (none: skip)")
    cluster.add_argument("--cycles", type=int, default=10, help="timed calls per count")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.budgets, args.overhead = 3, [50], [50, 200]
    logging.basicConfig(level=logging.WARNING)
    searchers = args.searchers if "random" in args.searchers else ["random", *args.searchers]
    jobs = [(p, s, seed, c, max(args.budgets)) for p in args.problems for c in args.concurrency
            for s in searchers for seed in range(args.seeds) if (s, p) not in _TOO_SLOW]
    for searcher_name, problem_name in _TOO_SLOW & {(s, p) for s in searchers
                                                     for p in args.problems}:
        print(f"skipped {searcher_name} on {problem_name}: ~25 min per run on 2 cores")
    start = time.time()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        runs = list(pool.imap_unordered(run_one, jobs))
    rows = summarise(runs, args.budgets)
    print(quality_table(rows))
    print(f"\nquality runs: {len(runs)} in {time.time() - start:.0f} s")
    overhead = measure_overhead(args.overhead, args.cycles) if args.overhead else []
    if overhead:
        print("\n" + overhead_table(overhead))
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "summary": rows, "runs": runs,
                                         "overhead": overhead}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
