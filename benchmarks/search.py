"""Benchmarks of the search as a whole: the demo's wall time, GPU-slot scheduling, GPU packing.

    python benchmarks/search.py [--skip-demo] [--trials 48] [--json PATH]

1. demo: wall time of `python experiments/run_search.py` (the default run: store, search,
   ensemble, evaluation, report) in a fresh folder. Goal: at most 10 minutes on 2 CPU cores.
2. scheduling: Ray with 8 logical GPUs on this CPU machine (`ray.init(num_gpus=8)`), GPSearch
   over Table 1 (470,400 configurations), trials that hold their GPU for a few seconds. Measured:
   the fraction of GPU-slot time that runs a trial between the moment every slot first held one
   and the start of the last trial (goal >= 0.9), trials started per minute, and the time spent
   inside the searcher's suggest / on_trial_complete.
3. packing (a CUDA GPU only): `--gpus 1 --gpus-per-trial 0.25`, four baseline-CNN trainings at
   batch 8 on one GPU against one alone; aggregate images/s. Without a GPU: "not measured".
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def bench_demo() -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run = subprocess.run([sys.executable, str(REPO / "experiments" / "run_search.py"),
                              "--out", out], cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    return {"demo_wall_s": round(seconds, 1), "demo_rc": run.returncode,
            "demo_goal_s": 600}


def _synthetic_trial(config: dict) -> None:
    """Holds its GPU for 4-8 s; the loss is a smooth function of the config (no training)."""
    from ray import tune

    start = time.time()
    seconds = 4.0 + 4.0 * (config["num_blocks"] - 1) / 4.0
    loss = (abs(math.log10(config["learning_rate"]) + 3) / 4 + abs(config["num_blocks"] - 4) / 4
            + abs(math.log2(config["filters"]) - 5) / 5)
    time.sleep(seconds)
    tune.report({"val_loss": loss, "start": start, "end": time.time()})


class _TimedSearch:
    """Wraps a Searcher's hot calls to add up the time spent in them."""

    def __init__(self, searcher) -> None:
        self.searcher = searcher
        self.seconds = {"suggest": 0.0, "on_trial_complete": 0.0}
        self.slowest = 0.0
        for name in self.seconds:
            setattr(searcher, name, self._timed(name, getattr(searcher, name)))

    def _timed(self, name, call):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                took = time.perf_counter() - start
                self.seconds[name] += took
                self.slowest = max(self.slowest, took)
        return wrapper


def slot_utilisation(intervals: list[tuple[float, float]], slots: int) -> tuple[float, float]:
    """(fraction of slot-time busy, window length s) from the moment all `slots` first ran at
    once (or the slots-th start) to the last trial's start. intervals: (start, end) per trial."""
    starts = sorted(s for s, _ in intervals)
    window_start, window_end = starts[min(slots, len(starts)) - 1], starts[-1]
    if window_end <= window_start:
        return float("nan"), 0.0
    grid = np.linspace(window_start, window_end, 2000)
    running = np.zeros_like(grid)
    for start, end in intervals:
        running += (grid >= start) & (grid < end)
    return float(np.minimum(running, slots).mean() / slots), window_end - window_start


def bench_scheduling(trials: int, gpus: int = 8) -> dict:
    import ray
    from ray import tune

    from mri_tune_core.paper import BASELINE
    from searchers import GPSearch
    from searchers.gp_search import paper_space

    ray.init(address="local", num_cpus=2, num_gpus=gpus, include_dashboard=False,
             log_to_driver=False)
    try:
        timed = _TimedSearch(GPSearch(warmup_trials=gpus, points_to_evaluate=[BASELINE],
                                        seed=0))
        with tempfile.TemporaryDirectory() as storage:
            tuner = tune.Tuner(
                tune.with_resources(_synthetic_trial, {"cpu": 0, "gpu": 1}),
                param_space=paper_space(),
                tune_config=tune.TuneConfig(metric="val_loss", mode="min", num_samples=trials,
                                            search_alg=timed.searcher,
                                            max_concurrent_trials=gpus, reuse_actors=True),
                run_config=tune.RunConfig(storage_path=storage, name="sched", verbose=0))
            start = time.time()
            results = tuner.fit()
            wall = time.time() - start
    finally:
        ray.shutdown()
    intervals = [(r.metrics["start"], r.metrics["end"]) for r in results if r.metrics]
    busy, window = slot_utilisation(intervals, gpus)
    starts = sorted(s for s, _ in intervals)
    per_minute = 60 * (len(starts) - 1) / (starts[-1] - starts[0])
    return {"gpus": gpus, "trials": len(intervals), "wall_s": round(wall, 1),
            "slot_busy_fraction": round(busy, 3), "window_s": round(window, 1),
            "trials_started_per_min": round(per_minute, 1),
            "searcher_suggest_s": round(timed.seconds["suggest"], 2),
            "searcher_on_trial_complete_s": round(timed.seconds["on_trial_complete"], 2),
            "searcher_slowest_call_s": round(timed.slowest, 3)}


def bench_packing(seconds: float = 20.0) -> dict:
    """Baseline CNN, batch 8, on one GPU: one trial alone vs four sharing it (Ray, 0.25 GPU)."""
    import torch

    if not torch.cuda.is_available():
        return {"packing": "not measured: no GPU"}
    import ray
    from ray import tune

    def train_for(config: dict) -> None:
        from mri_tune.training.config import TrainConfig, baseline_specs
        from mri_tune.training.trainer import Slices, Trainer, build_model

        gen = torch.Generator().manual_seed(0)
        data = Slices(torch.randint(0, 256, (2048, 128, 128), dtype=torch.uint8, generator=gen),
                      torch.randint(0, 4, (2048,), generator=gen))
        model = build_model(baseline_specs()[0], 4, (128, 128), "cuda", 0)
        train = TrainConfig(learning_rate=1e-3, batch_size=8, epochs=10_000,
                            augmentation=True, images_per_epoch=512)
        trainer = Trainer(model, data, Slices(data.images[:64], data.labels[:64]), train,
                          ["a", "b", "c", "d"], "cuda")
        clock: dict = {}

        class Done(Exception):
            pass

        def on_epoch(metrics, _trainer) -> None:
            if metrics.epoch == 1:  # the first epoch warms kernels and the allocator up
                clock.update(start=time.perf_counter(), images=0)
                return
            clock["images"] += train.images_per_epoch
            if time.perf_counter() - clock["start"] > config["seconds"]:
                raise Done

        try:
            trainer.run(on_epoch=on_epoch)
        except Done:
            pass
        tune.report({"images_per_s": clock["images"] / (time.perf_counter() - clock["start"])})

    out = {}
    ray.init(address="local", num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        for share, count in ((1.0, 1), (0.25, 4)):
            with tempfile.TemporaryDirectory() as storage:
                results = tune.Tuner(
                    tune.with_resources(train_for, {"cpu": 1, "gpu": share}),
                    param_space={"seconds": seconds, "i": tune.grid_search(list(range(count)))},
                    run_config=tune.RunConfig(storage_path=storage, name="pack", verbose=0),
                ).fit()
            out[f"images_per_s_{count}_trials"] = round(
                sum(r.metrics["images_per_s"] for r in results), 1)
    finally:
        ray.shutdown()
    out["packing_speedup"] = round(out["images_per_s_4_trials"] / out["images_per_s_1_trials"], 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-demo", action="store_true", help="skip the 10-minute demo run")
    parser.add_argument("--trials", type=int, default=48, help="trials of the scheduling run")
    parser.add_argument("--only-packing", action="store_true", help="the GPU packing part only")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    numbers: dict = {}
    if not args.only_packing:
        if not args.skip_demo:
            numbers.update(bench_demo())
            print(f"demo: {numbers['demo_wall_s']} s (goal <= 600 s), rc {numbers['demo_rc']}")
        numbers.update(bench_scheduling(args.trials))
        print(f"scheduling: {json.dumps({k: v for k, v in numbers.items() if 'demo' not in k})}")
    packing = bench_packing()
    numbers.update(packing)
    print(f"packing: {json.dumps(packing)}")
    if args.json is not None:
        args.json.write_text(json.dumps(numbers, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
