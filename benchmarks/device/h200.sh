#!/usr/bin/env bash
# One device call: correctness on the GPU, then every benchmark case. Writes under $OUT.
# Run from the repository root: bash benchmarks/device/h200.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/attention_out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu.txt"
timeout "${CHECK_SECONDS:-90}" python3 benchmarks/device/check_gpu.py --out "$OUT/check.json" \
  2>&1 | tee "$OUT/check.log"
timeout "${BENCH_SECONDS:-170}" python3 benchmarks/attention.py --sweep --out "$OUT/attention.json" \
  2>&1 | tee "$OUT/attention.log"
