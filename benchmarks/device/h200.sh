#!/usr/bin/env bash
# One device call: attention correctness and sweep, sampler decode, training step. Writes under $OUT.
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
# Sampler: decode step against the HBM roofline (greedy, top-p, groups of 8), then the
# training step (MFU). Each has its own time limit so one slow part cannot eat the call.
timeout "${SAMPLER_SECONDS:-150}" python3 benchmarks/sampler.py --mode device \
  --out "$OUT/sampler.json" 2>&1 | tee "$OUT/sampler.log"
# The greedy decode again with XLA's command buffers (CUDA graphs) also taking while loops:
# measures how much of the decode step is kernel-launch cost inside the while body.
XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" \
  timeout "${GRAPH_SECONDS:-60}" python3 benchmarks/sampler.py --mode device --settings 1 \
  --out "$OUT/sampler_graphs.json" 2>&1 | tee "$OUT/sampler_graphs.log"
timeout "${TRAIN_SECONDS:-120}" python3 benchmarks/train_step.py --case gpu \
  > "$OUT/train_step.json" 2> "$OUT/train_step.log"
tail -n 3 "$OUT/train_step.json"
