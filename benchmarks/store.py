"""Store benchmarks: ingest of the sample volumes, split load rate, and a 370,000-slice store.

    python benchmarks/store.py [--quick] [--json PATH] [--samples DIR]

1. Ingest of the sample set (all planes, 128x128), wall seconds (goal <= 60 s on 2 cores).
2. Loading each split of that store into memory, warm page cache: slices/s (goal >= 50,000).
3. Scale: stores of 37,000, 111,000 and 370,000 generated slices (up to 10x the paper's
   dataset), written through `StoreWriter` in a temporary folder (deleted after): write time
   (wall and user CPU), load time of the train split and the peak resident memory of a fresh
   process that loads it. Ratios against the smallest store show whether any step is worse
   than linear; user CPU isolates the code's work from disk and page-cache waits, which
   dominate once the 2 x 5.6 GB written at 370k no longer fit the page cache. `--quick` stops
   at 37k.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SLICES_PER_VOLUME = 31  # the paper: 37,150 slices of 1,194 volumes
SIZE = 128


def bench_ingest(samples: Path, out_dir: Path) -> tuple[Path, dict]:
    from mri_tune_datasets.ingest import IngestSettings, ingest

    out = out_dir / "samples.h5"
    start = time.perf_counter()
    report = ingest(IngestSettings(manifest=samples / "manifest.csv", out=out, planes="all"))
    seconds = time.perf_counter() - start
    n_volumes = len({(v["path"]) for v in _volumes(out)})
    return out, {"seconds": round(seconds, 2), "slices": report.n_slices,
                 "manifest_rows": n_volumes, "volumes": report.n_volumes}


def _volumes(path: Path) -> list[dict]:
    from mri_tune.data.store import SliceStore

    return SliceStore(path).volumes()


def bench_load(path: Path, repeats: int = 3) -> dict:
    """Best of `repeats` loads per split (the first read warms the page cache)."""
    from mri_tune.data.store import SPLITS, SliceStore

    store = SliceStore(path)
    store.load_split("train")  # warm the page cache
    result = {}
    for split in SPLITS:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            data = store.load_split(split)
            best = min(best, time.perf_counter() - start)
        result[split] = {"slices": len(data), "seconds": round(best, 4),
                         "slices_per_s": round(len(data) / best)}
    return result


def _user_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def write_generated(path: Path, n_slices: int, seed: int = 0) -> dict:
    """A store of `n_slices` random 128x128 slices in volumes of 31, four regions, 50/25/25."""
    from mri_tune_datasets.preprocess import SliceBatch
    from mri_tune_datasets.writer import StoreWriter, VolumeRecord

    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (4 * SLICES_PER_VOLUME, SIZE, SIZE), dtype=np.uint8)
    regions = ["head", "abdomen", "pelvis", "spine"]
    n_volumes = -(-n_slices // SLICES_PER_VOLUME)
    start, user_start = time.perf_counter(), _user_seconds()
    with StoreWriter(path, SIZE) as writer:
        for v in range(n_volumes):
            n = min(SLICES_PER_VOLUME, n_slices - v * SLICES_PER_VOLUME)
            offset = int(rng.integers(0, len(pool) - n + 1))
            batch = SliceBatch(pool[offset:offset + n], "axial", np.arange(n, dtype=np.int32))
            writer.add_volume(VolumeRecord(f"v{v}.nii.gz", regions[v % 4], f"s{v}"), [batch])
        staged = time.perf_counter()
        split = np.where(np.arange(n_volumes) % 4 < 2, 0, np.arange(n_volumes) % 4 - 1)
        writer.finish(split.tolist(), regions, {"provenance": {"generated": True}, "skipped": []})
    done, user = time.perf_counter(), _user_seconds() - user_start
    gib = path.stat().st_size / 1024**3
    return {"slices": n_slices, "volumes": n_volumes,  # user CPU: algorithmic work, no I/O wait
            "write_seconds": round(done - start, 2), "write_user_seconds": round(user, 2),
            "stage_seconds": round(staged - start, 2), "finish_seconds": round(done - staged, 2),
            "write_mib_per_s": round(2 * gib * 1024 / (done - start)),  # staging + store bytes
            "file_gib": round(gib, 2)}


def load_in_fresh_process(path: Path, split: str = "train") -> dict:
    """Load a split in a new interpreter, so that its peak RSS is the load's alone."""
    # VmHWM (peak RSS of this address space) rather than ru_maxrss, which Linux carries over
    # from the forking parent across exec.
    code = ("import json,sys,time;from mri_tune.data.store import SliceStore;"
            "hwm=lambda:int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]);"
            "s=SliceStore(sys.argv[1]);b=hwm();"
            "import resource;u=lambda:resource.getrusage(resource.RUSAGE_SELF).ru_utime;"
            "t=time.perf_counter();c=u();d=s.load_split(sys.argv[2]);"
            "t=time.perf_counter()-t;c=u()-c;"
            "print(json.dumps({'slices':len(d),'seconds':t,'user_seconds':c,"
            "'rss_before_mib':b/1024,"
            "'peak_rss_mib':hwm()/1024,'images_mib':d.images.numel()/2**20}))")
    output = subprocess.run([sys.executable, "-c", code, str(path), split], check=True,
                            capture_output=True, text=True).stdout
    result = json.loads(output)
    result["slices_per_s"] = round(result["slices"] / result["seconds"])
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}


def bench_scale(sizes: list[int]) -> dict:
    result = {}
    with tempfile.TemporaryDirectory(prefix="mri_tune_store_bench_") as tmp:
        for n in sizes:
            path = Path(tmp) / f"generated_{n}.h5"
            entry = write_generated(path, n)
            load_in_fresh_process(path)  # warm the page cache
            entry["load_train"] = load_in_fresh_process(path)
            result[str(n)] = entry
            print(f"  {n:>7} slices: write {entry['write_seconds']} s (stage "
                  f"{entry['stage_seconds']} s + finish {entry['finish_seconds']} s, "
                  f"{entry['write_mib_per_s']} MiB/s written, "
                  f"{entry['write_user_seconds']} s user CPU), load train "
                  f"{entry['load_train']['seconds']} s "
                  f"({entry['load_train']['slices_per_s']} slices/s), peak RSS "
                  f"{entry['load_train']['peak_rss_mib']} MiB for "
                  f"{entry['load_train']['images_mib']} MiB of images", flush=True)
            path.unlink()
    small = result[str(sizes[0])]
    for n in sizes[1:]:
        large = result[str(n)]
        result[f"ratio_{n}_vs_{sizes[0]}"] = {
            "slices": round(n / sizes[0], 2),
            "write": round(large["write_seconds"] / small["write_seconds"], 2),
            "stage": round(large["stage_seconds"] / small["stage_seconds"], 2),
            "finish": round(large["finish_seconds"] / small["finish_seconds"], 2),
            "write_user_cpu": round(large["write_user_seconds"] / small["write_user_seconds"], 2),
            "load": round(large["load_train"]["seconds"] / small["load_train"]["seconds"], 2),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=None,
                        help="sample folder (default: mri_tune.data.samples.find_samples())")
    parser.add_argument("--quick", action="store_true", help="scale test at 37,000 slices only")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    from mri_tune.data.samples import find_samples

    samples = find_samples(args.samples)
    figures: dict = {"cpu_count": len(__import__("os").sched_getaffinity(0))}
    with tempfile.TemporaryDirectory(prefix="mri_tune_ingest_bench_") as tmp:
        if samples is not None:
            store, figures["ingest"] = bench_ingest(samples, Path(tmp))
            print(f"ingest: {figures['ingest']}", flush=True)
            figures["load_samples"] = bench_load(store)
            print(f"load (warm): {figures['load_samples']}", flush=True)
        else:
            print("no sample folder found: ingest and sample load skipped")
    sizes = [37_000] if args.quick else [37_000, 111_000, 370_000]
    print("scale:", flush=True)
    figures["scale"] = bench_scale(sizes)
    for key, ratios in figures["scale"].items():
        if key.startswith("ratio_"):
            print(f"  {key}: {ratios}")
    figures["peak_rss_mib_benchmark"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
