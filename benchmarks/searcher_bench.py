"""Benchmark: GPSearch (default and paper presets) against Ray Tune's peers, and its overhead.

Quality. Every searcher gets the problem's Ray Tune param space (benchmarks/searcher_problems.py:
six tabulated scikit-learn problems, a SYNTHETIC paper-like CNN table, three closed-form
functions) and is driven through Ray's Searcher API directly (suggest / on_trial_complete), not
through a Tuner, which is far faster: a simulated cluster keeps `concurrency` trials pending and
completes the oldest first. A tabulated problem snaps a proposal to its own grid and looks it up; a
failed (NaN) entry is reported as `error=True`. A proposal whose problem key (table cell, or the
exact point of a function) was already proposed counts as a duplicate, and every proposal counts
against the budget. Score at a budget of B trials:
    100 * (random_mean - best_found) / (random_mean - optimum)
i.e. 100 = the best value in the table (the known minimum of a function), 0 = the mean of random
search (independent draws from the param space, 20 seeds) at the same budget. Half the problems
(searcher_problems.TUNING) were used to choose the defaults; the other half is reported apart.
`optuna_gp` runs are cut after `--time-limit` seconds; a cut run is left out of the budgets it did
not reach, and the tables say how many were cut.

Overhead. Median and maximum time of `suggest` and `on_trial_complete` of the default preset with
8 pending trials at the given observation counts, after one untimed refit, on the paper's 470,400
configurations and on the 10-dimensional levy10 space (the candidate-set path).

    python benchmarks/searcher_bench.py --runs runs.jsonl [--problems ...] [--searchers ...]
        [--seeds 5] [--concurrency 1 8 32] [--budgets 50 100] [--overhead 50 200 500]
"""

from __future__ import annotations

import argparse
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

from searchers.gp import FitSettings
from searchers.settings import DEFAULT_FINE_LIMIT
from searchers.space import SpaceSettings

from searcher_problems import DEVELOPMENT, HELD_OUT, PROBLEMS, TUNING

METRIC = "loss"
RANDOM_SEEDS = 20  # random search is cheap: its mean, the score's zero, gets more seeds
_problem_cache: dict[str, Any] = {}


def _problem(name: str) -> Any:
    if name not in _problem_cache:
        _problem_cache[name] = {**PROBLEMS, **DEVELOPMENT}[name]()
    return _problem_cache[name]


# ---- searchers ----------------------------------------------------------------------------
class RandomSearch:
    """Independent draws from the param space's own distributions (the score's zero)."""

    def __init__(self, problem: Any, seed: int) -> None:
        self.space, self.rng = problem.param_space, np.random.default_rng(seed)

    def suggest(self, trial_id: str) -> dict:
        return {k: d.sample(random_state=self.rng) for k, d in self.space.items()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass


def _optuna(sampler_name: str) -> Callable[[Any, int], Any]:
    def make(problem: Any, seed: int) -> Any:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        sampler = (optuna.samplers.TPESampler(seed=seed) if sampler_name == "tpe"
                   else optuna.samplers.GPSampler(seed=seed))
        searcher = OptunaSearch(sampler=sampler, seed=seed)
        searcher.set_search_properties(METRIC, "min", problem.param_space)
        return searcher
    return make


def _hyperopt(problem: Any, seed: int) -> Any:
    from ray.tune.search.hyperopt import HyperOptSearch

    searcher = HyperOptSearch(random_state_seed=seed)
    searcher.set_search_properties(METRIC, "min", problem.param_space)
    return searcher


def _gp(preset: str, **overrides: Any) -> Callable[[Any, int], Any]:
    def make(problem: Any, seed: int) -> Any:
        from searchers import GPSearch

        return GPSearch(space=problem.param_space, metric=METRIC, mode="min", seed=seed,
                        preset=preset, **overrides)
    return make


SEARCHERS: dict[str, Callable[[Any, int], Any]] = {
    "random": RandomSearch,
    "optuna_tpe": _optuna("tpe"),
    "optuna_gp": _optuna("gp"),
    "hyperopt": _hyperopt,
    "gp_paper": _gp("paper"),
    "gp_default": _gp("default"),
}
PEERS = ("optuna_tpe", "optuna_gp", "hyperopt")
ABLATIONS: dict[str, Callable[[Any, int], Any]] = {
    "gp_kb": _gp("default", batch_rule="kriging_believer"),
    "gp_lp": _gp("default", batch_rule="local_penalty"),
    "gp_ts": _gp("default", batch_rule="thompson"),
    "gp_mix": _gp("default", batch_rule="mix"),
    "gp_mix16": _gp("default", batch_rule="mix", mix_switch=16),
    "gp_qei": _gp("default", batch_rule="qei"),
    "gp_exclude": _gp("default", batch_rule="exclude"),
    "gp_pi2": _gp("default", acquisition="pi"),
    "gp_rbf": _gp("default", kernel="rbf"),
    "gp_standardize": _gp("default", output_transform="standardize"),
    "gp_log": _gp("default", output_transform="log"),  # the default until the "auto" warp
    "gp_no_feasibility": _gp("default", feasibility=False, impute_failures=False),
    "gp_warmup5": _gp("default", warmup_trials=5),
    "gp_warmup20": _gp("default", warmup_trials=20),
    "gp_sd05": _gp("default", min_sd_fraction=0.05),
    "gp_sd10": _gp("default", min_sd_fraction=0.10),
    "gp_ties": _gp("default", distinct_ties=True),  # the default since the MAP fit
    "gp_mle": _gp("default", fit=FitSettings(prior=False), distinct_ties=False),  # until f365f03
    "gp_no_ties": _gp("default", distinct_ties=False),
    "gp_res20": _gp("default", space_settings=SpaceSettings(resolution=20)),
    "gp_res64": _gp("default", space_settings=SpaceSettings(resolution=64)),
    "gp_res200": _gp("default", space_settings=SpaceSettings(resolution=200)),
    # the space settings of earlier rounds (uneven choices at their values), as published
    "gp_coarse": _gp("default", space_settings=SpaceSettings()),  # 64 points: until the fine limit
    "gp_fine": _gp("default", space_settings=SpaceSettings(fine_limit=65_536)),
    # uneven numeric choices placed at their values: the default until the rank encoding
    "gp_linear_choices": _gp("default", space_settings=SpaceSettings(
        fine_limit=DEFAULT_FINE_LIMIT, uneven_choices="linear")),
    "gp_local10x40": _gp("default", local_starts=10, local_steps=40),  # deeper local search
    "gp_local4x40": _gp("default", local_starts=4, local_steps=40),
    "gp_cap25": _gp("default", budget=100, pending_fraction=0.25),
    "gp_paper_warmup10": _gp("paper", warmup_trials=10),
}


# ---- one run ------------------------------------------------------------------------------
def run_one(job: tuple[str, str, int, int, int, float]) -> dict[str, Any]:
    """(problem, searcher, seed, concurrency, budget, time limit) -> best-so-far curve, counts.

    A simulated cluster: `concurrency` slots, every trial takes one time unit, the oldest pending
    trial completes first; `makespan` is the time units the run took. A searcher that answers
    None leaves a slot idle until the next completion.
    """
    problem_name, searcher_name, seed, concurrency, budget, limit = job
    problem = _problem(problem_name)
    searcher = {**SEARCHERS, **ABLATIONS}[searcher_name](problem, seed)
    if hasattr(searcher, "set_max_concurrency"):
        searcher.set_max_concurrency(concurrency)
    pending: list[tuple[str, dict, float]] = []
    seen: set[Any] = set()
    best, curve, failed, duplicates, started, clock = np.inf, [], 0, 0, 0, 0.0
    start, cut = time.perf_counter(), False
    while len(curve) < budget:
        while len(pending) < concurrency and started < budget:
            config = searcher.suggest(f"t{started}")
            if config is None or config == "FINISHED":
                break
            pending.append((f"t{started}", config, clock))
            started += 1
        if not pending:
            break
        trial_id, config, began = pending.pop(0)
        clock = max(clock, began + 1.0)
        loss, key = problem.evaluate(config)
        duplicates += key in seen
        seen.add(key)
        if np.isnan(loss):
            failed += 1
            searcher.on_trial_complete(trial_id, None, error=True)
        else:
            best = min(best, loss)
            searcher.on_trial_complete(trial_id, {METRIC: loss, "config": config})
        curve.append(best)
        if limit and time.perf_counter() - start > limit:
            cut = len(curve) < budget
            break
    return {"problem": problem_name, "searcher": searcher_name, "seed": seed,
            "concurrency": concurrency, "curve": curve, "failed": failed,
            "duplicates": duplicates, "makespan": clock, "cut": cut,
            "seconds": time.perf_counter() - start}


# ---- scoring --------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]], budgets: list[int]) -> list[dict[str, Any]]:
    """Mean and sd of the normalised score per (problem, searcher, concurrency, budget).

    Runs cut by the time limit before a budget are left out of that budget's score.
    """
    rows = []
    randoms: dict[tuple[str, int], float] = {}
    for problem_name in sorted({r["problem"] for r in runs}):
        for budget in budgets:
            # random search does not depend on the concurrency: pool its runs
            mine = [_best_at(r, budget) for r in runs
                    if r["problem"] == problem_name and r["searcher"] == "random"]
            randoms[problem_name, budget] = float(np.mean(mine))
    for problem_name, concurrency, name in sorted({(r["problem"], r["concurrency"],
                                                    r["searcher"]) for r in runs}):
        group = [r for r in runs if r["problem"] == problem_name
                 and r["concurrency"] == concurrency and r["searcher"] == name]
        optimum = _problem(problem_name).best
        for budget in budgets:
            done = [r for r in group if len(r["curve"]) >= budget]
            zero = randoms[problem_name, budget]
            scores = [100.0 * (zero - _best_at(r, budget)) / (zero - optimum) for r in done]
            trials = [min(budget, len(r["curve"])) for r in done]
            rows.append({
                "problem": problem_name, "concurrency": concurrency, "budget": budget,
                "searcher": name, "seeds": len(done), "cut": len(group) - len(done),
                "score_mean": float(np.mean(scores)) if scores else None,
                "score_sd": float(np.std(scores)) if scores else None,
                "duplicate_rate": (float(np.sum([_duplicates_at(r, budget) for r in done])
                                         / max(np.sum(trials), 1)) if done else None),
                "makespan_mean": float(np.mean([r["makespan"] for r in group])),
                "seconds_mean": float(np.mean([r["seconds"] for r in group]))})
    return rows


def _best_at(run: dict[str, Any], budget: int) -> float:
    curve = run["curve"]
    return curve[min(budget, len(curve)) - 1]


def _duplicates_at(run: dict[str, Any], budget: int) -> float:
    # duplicates are counted over the whole run; scale to the budget's share of its trials
    return run["duplicates"] * min(budget, len(run["curve"])) / max(len(run["curve"]), 1)


def quality_table(rows: list[dict[str, Any]], problems: list[str], title: str) -> str:
    """One markdown table per (budget, concurrency): searchers x problems, mean, duplicates."""
    lines = []
    for budget in sorted({r["budget"] for r in rows}):
        for concurrency in sorted({r["concurrency"] for r in rows}):
            lines.append(f"\n{title}: budget {budget}, concurrency {concurrency} (score mean ± "
                         "sd over seeds; 100 = optimum, 0 = random's mean)\n")
            lines.append("| searcher | " + " | ".join(problems)
                         + " | mean | duplicates |")
            lines.append("|---" * (len(problems) + 3) + "|")
            for name in sorted({r["searcher"] for r in rows}, key=_searcher_order):
                cells, means, dups = [], [], []
                for problem in problems:
                    match = [r for r in rows if r["problem"] == problem and r["searcher"] == name
                             and r["budget"] == budget and r["concurrency"] == concurrency]
                    if not match or match[0]["score_mean"] is None:
                        cells.append("cut" if match else "-")
                        continue
                    m = match[0]
                    note = f" ({m['cut']} cut)" if m["cut"] else ""
                    cells.append(f"{m['score_mean']:.0f} ± {m['score_sd']:.0f}{note}")
                    means.append(m["score_mean"])
                    dups.append(m["duplicate_rate"])
                if not means:
                    continue
                count = "" if len(means) == len(problems) else f" ({len(means)} problems)"
                lines.append(f"| {name} | " + " | ".join(cells)
                             + f" | {np.mean(means):.1f}{count} | {100 * np.mean(dups):.1f}% |")
    return "\n".join(lines)


def headline_table(rows: list[dict[str, Any]], problems: list[str], title: str) -> str:
    """Mean score over `problems` per searcher and (budget, concurrency), and duplicate rates.

    A searcher with cut or missing problems is averaged over those it finished; its cell says
    over how many. The last row is the default minus the best peer on the problems both finished.
    """
    settings = sorted({(r["budget"], r["concurrency"]) for r in rows})
    lines = [f"\n{title}: mean score over {len(problems)} problems (duplicates: share of "
             "proposals, all budgets and concurrencies)\n",
             "| searcher | " + " | ".join(f"B={b} k={k}" for b, k in settings)
             + " | duplicates |", "|---" * (len(settings) + 2) + "|"]
    table: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
    for r in rows:
        if r["problem"] in problems and r["score_mean"] is not None:
            table.setdefault(r["searcher"], {}).setdefault(
                (r["budget"], r["concurrency"]), {})[r["problem"]] = r["score_mean"]
    for name in sorted(table, key=_searcher_order):
        cells = []
        for setting in settings:
            scores = table[name].get(setting, {})
            note = "" if len(scores) == len(problems) else f" ({len(scores)})"
            cells.append(f"{np.mean(list(scores.values())):.1f}{note}" if scores else "-")
        dups = [r["duplicate_rate"] for r in rows if r["searcher"] == name
                and r["problem"] in problems and r["duplicate_rate"] is not None]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * np.mean(dups):.1f}% |")
    if "gp_default" in table:
        cells = []
        for setting in settings:
            mine = table["gp_default"].get(setting, {})
            gaps = []
            for peer in (p for p in PEERS if p in table):
                theirs = table[peer].get(setting, {})
                common = [p for p in mine if p in theirs]
                if common:
                    gaps.append(np.mean([mine[p] - theirs[p] for p in common]))
            cells.append(f"{min(gaps):+.1f}" if gaps else "-")
        lines.append("| default - best peer | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def makespan_table(rows: list[dict[str, Any]], budget: int) -> str:
    """Mean simulated wall time of a `budget`-trial run (1 = one trial's duration)."""
    concurrencies = sorted({r["concurrency"] for r in rows})
    lines = [f"\nsimulated wall time of {budget} trials, in trial durations (mean over problems "
             "and seeds)\n", "| searcher | " + " | ".join(f"k={k}" for k in concurrencies)
             + " |", "|---" * (len(concurrencies) + 1) + "|"]
    for name in sorted({r["searcher"] for r in rows} - {"random"}, key=_searcher_order):
        cells = []
        for k in concurrencies:
            spans = [r["makespan_mean"] for r in rows if r["searcher"] == name
                     and r["concurrency"] == k and r["budget"] == budget]
            cells.append(f"{np.mean(spans):.1f}" if spans else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _searcher_order(name: str) -> tuple[int, str]:
    order = list(SEARCHERS) + list(ABLATIONS)
    return (order.index(name) if name in order else len(order), name)


# ---- overhead -----------------------------------------------------------------------------
def measure_overhead(problem_name: str, observations: list[int],
                     cycles: int) -> list[dict[str, Any]]:
    """suggest / on_trial_complete times of the default preset, 8 trials pending."""
    from searchers import GPSearch

    problem = _problem(problem_name)
    rows = []
    for n in observations:
        searcher = GPSearch(space=problem.param_space, metric=METRIC, mode="min", seed=0,
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
        rows.append({"problem": problem_name, "observations": n,
                     "suggest_median_ms": 1e3 * np.median(suggest_times),
                     "suggest_max_ms": 1e3 * max(suggest_times),
                     "complete_median_ms": 1e3 * np.median(complete_times),
                     "complete_max_ms": 1e3 * max(complete_times),
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return rows


def _result(problem: Any, config: dict) -> dict | None:
    loss, _ = problem.evaluate(config)
    return {"failure": "oom"} if np.isnan(loss) else {METRIC: loss}


def overhead_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| problem | observations | suggest median (ms) | suggest max (ms) | "
             "on_trial_complete median (ms) | on_trial_complete max (ms) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['observations']} | {r['suggest_median_ms']:.1f} | "
                     f"{r['suggest_max_ms']:.1f} | {r['complete_median_ms']:.0f} | "
                     f"{r['complete_max_ms']:.0f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------
_QUICK_PROBLEMS = ("branin", "knn_digits", "svm_digits")
_QUICK_RUNS = Path("benchmark_output/searchers_quick.jsonl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=None,
                        help="JSON-lines file: every finished run is appended; runs already in "
                             "it are not repeated, and the tables cover all of its runs "
                             "(required, except with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a few minutes' check (make bench): {', '.join(_QUICK_PROBLEMS)}, "
                             "the default against TPE and HyperOpt, 2 seeds, 1 and 8 pending, "
                             f"runs in {_QUICK_RUNS}")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    search = parser.add_argument_group("search")
    search.add_argument("--problems", nargs="+", default=list(PROBLEMS),
                        choices=list(PROBLEMS) + list(DEVELOPMENT),
                        help="default: the 10 benchmark problems; the development functions "
                             f"({', '.join(DEVELOPMENT)}) run only when named")
    search.add_argument("--searchers", nargs="*", default=list(SEARCHERS),
                        choices=list(SEARCHERS) + list(ABLATIONS))
    search.add_argument("--seeds", type=int, default=5)
    search.add_argument("--budgets", type=int, nargs="+", default=[50, 100])
    search.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    search.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds per run of optuna_gp, beyond which the run is cut")
    search.add_argument("--table-searchers", nargs="*", default=None,
                        help="searchers shown in the tables (default: all in --runs)")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--workers", type=int, default=2, help="processes running searches")
    cluster.add_argument("--overhead", type=int, nargs="*", default=[],
                         help="observation counts for the overhead table (none: skip)")
    cluster.add_argument("--overhead-problems", nargs="+", default=["cnn_paper", "levy10"])
    cluster.add_argument("--cycles", type=int, default=10, help="timed calls per count")
    args = parser.parse_args(argv)
    if args.quick:
        args.problems, args.seeds, args.concurrency = list(_QUICK_PROBLEMS), 2, [1, 8]
        args.searchers = ["gp_default", "optuna_tpe", "hyperopt"]
        args.runs = args.runs or _QUICK_RUNS
        args.runs.parent.mkdir(parents=True, exist_ok=True)
    if args.runs is None:
        parser.error("--runs FILE is required (or --quick)")
    logging.basicConfig(level=logging.WARNING)
    budget = max(args.budgets)
    jobs = [(p, s, seed, c, budget, args.time_limit if s == "optuna_gp" else 0.0)
            for p in args.problems for c in args.concurrency
            for s in args.searchers if s != "random" for seed in range(args.seeds)]
    jobs += [(p, "random", seed, 1, budget, 0.0) for p in args.problems
             for seed in range(RANDOM_SEEDS)]
    done = _read_runs(args.runs)
    finished = {(r["problem"], r["searcher"], r["seed"], r["concurrency"]) for r in done}
    jobs = [j for j in jobs if j[:4] not in finished]
    start = time.time()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool, \
            args.runs.open("a") as stream:
        for run in pool.imap_unordered(run_one, jobs):
            stream.write(json.dumps(run) + "\n")
            stream.flush()
    print(f"quality runs: {len(jobs)} new in {time.time() - start:.0f} s")
    runs = [r for r in _read_runs(args.runs) if r["problem"] in args.problems]
    rows = summarise(runs, args.budgets)
    if args.table_searchers is not None:
        rows = [r for r in rows if r["searcher"] in {"random", *args.table_searchers}]
    for title, names in (("tuning problems", TUNING), ("held-out problems", HELD_OUT),
                         ("development functions", tuple(DEVELOPMENT))):
        problems = [p for p in names if p in args.problems]
        if problems:
            print(headline_table(rows, problems, title))
            print(quality_table([r for r in rows if r["problem"] in problems], problems, title))
    print(makespan_table(rows, budget))
    overhead = [row for name in args.overhead_problems
                for row in measure_overhead(name, args.overhead, args.cycles)] if (
        args.overhead) else []
    if overhead:
        print("\n" + overhead_table(overhead))
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "summary": rows,
                                         "overhead": overhead}, indent=1))
    return 0


def _read_runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
