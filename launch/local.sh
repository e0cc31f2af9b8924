#!/usr/bin/env bash
# Runs qmath_jax.main on this machine's CPU (the demo by default).
#
#   launch/local.sh                                  # the demo into /tmp/qmath_demo
#   launch/local.sh --config=configs/demo.py:quick=1 --workdir=/tmp/quick
#   CPU_DEVICES=8 launch/local.sh ...                # simulate 8 devices (mesh tests)
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
if [[ -n ${CPU_DEVICES:-} ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
fi
if [[ $# -eq 0 ]]; then
  set -- --config=configs/demo.py --workdir=/tmp/qmath_demo
fi
exec python3 -m qmath_jax.main "$@"
