#!/usr/bin/env bash
# Runs qmath_jax.main on one GPU host (all its GPUs in one process).
#
#   launch/gpu.sh --config=configs/sft.py:model=qwen2.5-math-1.5b --workdir=/ckpt/sft1.5b
#
# For several GPU hosts, run this on each with QMATH_COORDINATOR_ADDRESS=host0:port,
# QMATH_NUM_PROCESSES=N and QMATH_PROCESS_ID=i set (qmath_jax.parallel.distributed reads them).
set -euo pipefail
cd "$(dirname "$0")/.."
# Let XLA take most of the GPU memory up front and overlap collectives with compute.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
# Persistent compilation cache: a restarted or resumed run loads its compiled steps and
# sampler loops instead of compiling them again ('' turns it off).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR-$HOME/.cache/qmath_jax/xla}
exec python3 -m qmath_jax.main "$@"
