#!/usr/bin/env bash
# Runs one qmath_jax.main command on every worker of a TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE [PROJECT] -- --config=configs/sft.py:model=qwen2.5-math-7b \
#       --workdir=/mnt/bucket/sft7b [--config.x=y ...]
#
# Every worker runs the same command from the same checkout path (REPO_DIR, default
# ~/qmath_jax); JAX finds the other workers itself on TPU pods (jax.distributed.initialize
# with its defaults), and each worker reads its own share of the data. The workdir must be
# shared storage mounted at the same path on every worker (a bucket through gcsfuse), so every
# worker writes its checkpoint shards to one place; a gs:// URL is refused.
# Set SETUP=1 to pip-install the checkout on every worker first.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE [PROJECT] -- MAIN_FLAGS..." >&2
  exit 2
fi
tpu_name=$1; zone=$2; shift 2
project_flag=()
if [[ $# -gt 0 && $1 != "--" ]]; then project_flag=(--project="$1"); shift; fi
[[ ${1:-} == "--" ]] && shift
repo_dir=${REPO_DIR:-'~/qmath_jax'}

main_args=$(printf ' %q' "$@")
remote="cd ${repo_dir}"
if [[ ${SETUP:-0} == 1 ]]; then
  remote+=" && python3 -m pip install -q -e '.[tpu]'"
fi
# Persistent compilation cache on each worker: a restarted or resumed run (after a preemption,
# say) loads its compiled steps and sampler loops instead of compiling them again.
cache_dir=${JAX_COMPILATION_CACHE_DIR-'~/.cache/qmath_jax/xla'}
remote+=" && JAX_COMPILATION_CACHE_DIR=${cache_dir} python3 -m qmath_jax.main${main_args}"

exec gcloud compute tpus tpu-vm ssh "${tpu_name}" --zone="${zone}" "${project_flag[@]}" \
  --worker=all --command="${remote}"
