"""Training-step throughput: the one loop (sampling + augmentation) against a raw loop.

For each model (the paper's baseline, and the largest of Table 1: 5 blocks x 7 convs x 128 filters,
5x5) and batch size, on the chosen device:
  raw      forward + weighted loss + backward + SGD step on random (B, 1, H, W) float tensors
           already on the device: no sampling, no conversion, no augmentation;
  trainer  `mri_tune.train.Trainer` epochs with augmentation on, from random uint8 slices on the
           device (sampling, uint8 -> float, batched augmentation, lr schedule, divergence checks).
The goal is trainer / raw >= 0.9. Measurements alternate raw and trainer for `--rounds` rounds
(the ratio is the median of the rounds' ratios), so a noisy shared machine hurts both alike; the
input path alone (uint8 -> float + augmentation) is also timed per image. On CUDA (without --quick)
it also runs 1, 2 and 4 training processes at once on one GPU (batch 8, baseline): total images/s.

    python benchmarks/train.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from mri_tune.training.augment import AugmentConfig, augment
from mri_tune.training.config import TrainConfig, baseline_specs
from mri_tune.training.device import DevicePolicy, resolve_device
from mri_tune.training.model import CNNSpec
from mri_tune.training.trainer import Slices, Trainer, build_model, weighted_cross_entropy

LARGEST = CNNSpec(num_blocks=5, convs_per_block=7, filters=128, kernel_size=5)
MODELS = {"baseline": baseline_specs()[0], "largest": LARGEST}
NUM_CLASSES = 4
SLICES_ON_DEVICE = 1024


def random_slices(count: int, size: int, device: torch.device, seed: int) -> Slices:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    return Slices(images.to(device), labels.to(device))


def raw_images_per_s(spec: CNNSpec, batch: int, steps: int, size: int,
                     device: torch.device) -> float:
    """The reference: the same model and optimiser, nothing but the step itself."""
    policy = DevicePolicy.for_device(device)
    memory_format = torch.channels_last if policy.channels_last else torch.preserve_format
    model = build_model(spec, NUM_CLASSES, (size, size), device, 0).to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    images = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    weights = torch.ones(NUM_CLASSES, device=device)  # the same cross-entropy kernel as weighted

    def step() -> torch.Tensor:
        with policy.autocast():
            loss = weighted_cross_entropy(model(images), labels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step()  # warm-up: allocator, cuDNN algorithm choice
    _sync(device)
    start = time.perf_counter()
    total = torch.zeros((), device=device)
    for _ in range(steps):
        total += step()
    float(total)  # waits for the device
    return steps * batch / (time.perf_counter() - start)


def trainer_images_per_s(spec: CNNSpec, batch: int, steps: int, size: int,
                         device: torch.device) -> float:
    """The one loop with augmentation: one warm-up epoch, then one timed epoch of `steps`."""
    model = build_model(spec, NUM_CLASSES, (size, size), device, 0)
    slices = random_slices(max(SLICES_ON_DEVICE, batch), size, device, seed=0)
    config = TrainConfig(learning_rate=1e-4, batch_size=batch, epochs=1, augmentation=True,
                         images_per_epoch=batch)
    trainer = Trainer(model, slices, slices, config, ["a", "b", "c", "d"], device)
    trainer._train_epoch()  # warm-up, as for the raw loop
    trainer.images_per_epoch = steps * batch
    _, _, images_per_s = trainer._train_epoch()
    return images_per_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(spec_name: str, batch: int, steps: int, rounds: int, size: int,
            device: torch.device) -> dict:
    """Alternate raw and trainer measurements; report each one's best and the median ratio of
    the rounds (a round's two measurements are taken back to back, under the same load)."""
    spec = MODELS[spec_name]
    raws, ours = [], []
    for _ in range(rounds):
        raws.append(raw_images_per_s(spec, batch, steps, size, device))
        ours.append(trainer_images_per_s(spec, batch, steps, size, device))
    ratio = statistics.median(o / r for o, r in zip(ours, raws, strict=True))
    row = {"model": spec_name, "batch": batch, "steps": steps, "rounds": rounds,
           "raw_images_per_s": max(raws), "trainer_images_per_s": max(ours),
           "median_ratio": ratio}
    print(f"{spec_name:9s} batch {batch:4d}: raw {max(raws):9.1f} images/s, trainer+augmentation "
          f"{max(ours):9.1f} images/s, median ratio {ratio:.3f}  ({steps} steps x {rounds} "
          "rounds)", flush=True)
    return row


def augmentation_cost(size: int, device: torch.device, repeats: int = 5) -> float:
    """Milliseconds per image of the loop's input path alone (uint8 -> float, augment), measured
    on chunks of 512 slices as the loop runs it."""
    slices = random_slices(512, size, device, seed=0)
    policy = DevicePolicy.for_device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    config = AugmentConfig()
    augment(policy.prepare(slices.images), config, generator)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        augment(policy.prepare(slices.images), config, generator)
    _sync(device)
    per_image_ms = 1000.0 * (time.perf_counter() - start) / (repeats * 512)
    print(f"input path (uint8 -> float, augmentation): {per_image_ms:.3f} ms per image", flush=True)
    return per_image_ms


def _share_worker(rank: int, seconds: float, size: int, start_at: float, queue) -> None:
    device = torch.device("cuda")
    model = build_model(MODELS["baseline"], NUM_CLASSES, (size, size), device, rank)
    slices = random_slices(SLICES_ON_DEVICE, size, device, seed=rank)
    config = TrainConfig(learning_rate=1e-4, batch_size=8, epochs=1, augmentation=True,
                         images_per_epoch=512)
    trainer = Trainer(model, slices, slices, config, ["a", "b", "c", "d"], device)
    trainer._train_epoch()
    while time.time() < start_at:  # all processes start timing together
        time.sleep(0.01)
    images, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        trainer._train_epoch()
        images += trainer.images_per_epoch
    queue.put(images / (time.perf_counter() - begin))


def shared_gpu(processes: int, seconds: float, size: int) -> float:
    """Total images/s of `processes` batch-8 baseline trainings sharing one GPU."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    start_at = time.time() + 30.0  # room for CUDA start-up in every process
    workers = [context.Process(target=_share_worker, args=(r, seconds, size, start_at, queue))
               for r in range(processes)]
    for worker in workers:
        worker.start()
    rates = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    total = sum(rates)
    print(f"{processes} trials sharing one GPU at batch 8: {total:.0f} images/s in total",
          flush=True)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true",
                        help="baseline only, few steps (CI smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds")
    parser.add_argument("--size", type=int, default=128, help="image side")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    print(f"device: {_device_name(device)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads", flush=True)
    # (model, batch, steps, rounds): the largest model costs ~2.6 TFLOP per batch-8 step, so a
    # CPU measures one step, once, at batch 8 only (batch 256 would need ~30 GB of activations).
    rounds = args.rounds
    plan = [("baseline", 8, 64 if on_gpu else 16, rounds),
            ("baseline", 256, 16 if on_gpu else 2, rounds)]
    if not args.quick:
        plan += [("largest", 8, 32, rounds), ("largest", 256, 8, rounds)] if on_gpu else [
            ("largest", 8, 1, 1)]
    if args.quick:
        plan = [(name, batch, max(1, steps // 2), r) for name, batch, steps, r in plan]
    augment_ms = augmentation_cost(args.size, device)
    rows = [compare(name, batch, steps, r, args.size, device) for name, batch, steps, r in plan]
    sharing: dict[str, float | str]
    if on_gpu and not args.quick:
        sharing = {str(n): shared_gpu(n, 20.0, args.size) for n in (1, 2, 4)}
    else:
        sharing = {"note": "not measured: " + ("--quick" if on_gpu else "no GPU")}
        print(f"trials sharing one GPU at batch 8: {sharing['note']}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "device": _device_name(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": _load(),
            "augmentation_ms_per_image": augment_ms, "results": rows,
            "gpu_sharing_batch8": sharing}, indent=1))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _load() -> list[float]:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else []


if __name__ == "__main__":
    main()
