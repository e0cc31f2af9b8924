#!/usr/bin/env bash
# One device call: kernel correctness, the flash backward with dq by atomics against the default
# and cuDNN, sampler decode (XLA and Pallas decode attention, and with command buffers); the
# full attention sweep only with BENCH_SECONDS > 0 and the training step only with
# TRAIN_SECONDS > 0 (both unchanged since their recorded runs). Writes under $OUT. Fits one
# 600 s call (at most 525 s of limits by default).
# Run from the repository root: bash benchmarks/device/h200.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/attention_out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu.txt"
timeout "${CHECK_SECONDS:-90}" python3 benchmarks/device/check_gpu.py --out "$OUT/check.json" \
  2>&1 | tee "$OUT/check.log"
# Backward with dq added by atomics in the dk/dv pass (5 tile products instead of 7) against
# the default two-pass backward and cuDNN, at length 4096 (7B heads first).
timeout "${ATOMIC_SECONDS:-75}" python3 benchmarks/attention.py --impls ours,ours_atomic,cudnn \
  --lengths 4096 --shapes 7B,1.5B --out "$OUT/attention_atomic.json" \
  2>&1 | tee "$OUT/attention_atomic.log"
# The atomic backward holds a third [block_k, head_dim] fp32 tile: also try 8 warps.
timeout "${ATOMIC8_SECONDS:-30}" python3 benchmarks/attention.py --impls ours_atomic \
  --lengths 4096 --shapes 7B --tiling '{"backward_warps": 8}' \
  --out "$OUT/attention_atomic8.json" 2>&1 | tee "$OUT/attention_atomic8.log"
if [ "${BENCH_SECONDS:-0}" -gt 0 ]; then
  timeout "$BENCH_SECONDS" python3 benchmarks/attention.py --sweep --out "$OUT/attention.json" \
    2>&1 | tee "$OUT/attention.log"
fi
# Sampler: decode step against the HBM roofline (greedy, top-p, groups of 8). Each part has
# its own time limit so one slow part cannot eat the call.
# --profile: kernels per decode step and their summed time (is the step launch-bound?).
timeout "${SAMPLER_SECONDS:-150}" python3 benchmarks/sampler.py --mode device --profile \
  --out "$OUT/sampler.json" 2>&1 | tee "$OUT/sampler.log"
# Greedy, sampled and groups of 8 again with the Pallas decode-attention kernels.
timeout "${PALLAS_SECONDS:-120}" python3 benchmarks/sampler.py --mode device --settings 3 \
  --attention pallas --profile --out "$OUT/sampler_pallas.json" 2>&1 | tee "$OUT/sampler_pallas.log"
# The greedy decode again with XLA's command buffers (CUDA graphs) also taking while loops:
# measures how much of the decode step is kernel-launch cost inside the while body.
XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" \
  timeout "${GRAPH_SECONDS:-60}" python3 benchmarks/sampler.py --mode device --settings 1 \
  --out "$OUT/sampler_graphs.json" 2>&1 | tee "$OUT/sampler_graphs.log"
if [ "${TRAIN_SECONDS:-0}" -gt 0 ]; then
  timeout "$TRAIN_SECONDS" python3 benchmarks/train_step.py --case gpu \
    > "$OUT/train_step.json" 2> "$OUT/train_step.log"
  tail -n 3 "$OUT/train_step.json"
fi
