#!/usr/bin/env bash
# The GPU checks of issues 3 and 5, as one script for a lent GPU machine (not run yet: no task
# so far was lent one). Here, first: `bash ../shared/tools/device_bundle.sh` (builds .devcarry/:
# Ray and nibabel for a host that has torch but no package index); then run this script through
# the device tool with carry [".devcarry"] and a timeout of about 540 s. Numbers land in $OUT.
set -euo pipefail
mkdir -p /tmp/rs && tar xJf .devcarry/ray312.tar.xz -C /tmp/rs
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/rs .devcarry/*.whl
export PYTHONPATH=/tmp/rs:$PWD PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_check}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/device.txt"
# Issue 3: trainer + augmentation vs raw loop, baseline and largest model, batch 8 and 256,
# bf16 + channels_last; aggregate images/s of 1, 2 and 4 training processes on one GPU.
timeout 300 python3 benchmarks/train.py --device cuda --json "$out/train.json" | tee "$out/train.txt"
# Issue 5: four trials at 0.25 GPU under Ray Tune against one trial with the whole GPU.
timeout 200 python3 benchmarks/search.py --only-packing --json "$out/packing.json" | tee "$out/packing.txt"
