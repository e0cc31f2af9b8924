"""On a real GPU: our kernels against their fp32 references.

Relative Frobenius error ||ours - ref|| / ||ref|| for the flash kernel's out, dq, dk, dv on a
few shapes (grouped heads, packed segments, odd lengths, head_dim 64 and 128, bf16 and fp32),
and for the decode-attention kernels' output (groups sharing a prompt, split prompts, partly
written own caches), fresh random inputs each. Prints one JSON line per case and writes
them all to --out. Exit status 1 if any case fails its tolerance.

  python benchmarks/device/check_gpu.py --out check.json [--interpret]
"""

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp

from qmath_jax import kernels
from qmath_jax.kernels import decode
from qmath_jax.kernels import decode_reference
from qmath_jax.kernels import testing

# (batch, length, heads, kv_heads, head_dim, dtype, causal, packed)
CASES = [
    (2, 1000, 28, 4, 128, "bfloat16", True, False),
    (2, 1000, 28, 4, 128, "bfloat16", True, True),
    (2, 384, 7, 1, 64, "float32", True, True),
    (1, 4096, 12, 2, 128, "bfloat16", True, True),
    (2, 200, 4, 2, 64, "float32", False, True),
    (1, 512, 8, 8, 128, "bfloat16", False, False),
]
# The same check with dq added by atomics in the dk/dv pass (`LaunchSettings.dq_atomic`).
ATOMIC_CASES = [
    (2, 1000, 28, 4, 128, "bfloat16", True, True),
    (2, 384, 7, 1, 64, "float32", True, True),
]
TOLERANCE = {"bfloat16": 3e-2, "float32": 1e-4}
# Decode attention: (groups, n, kv_heads, group, prompt_len, own_slots, own_len, head_dim, dtype)
DECODE_CASES = [
    (64, 1, 2, 6, 512, 256, 200, 128, "bfloat16"),   # 1.5B heads, 64 prompts
    (8, 8, 2, 6, 384, 256, 1, 128, "bfloat16"),      # groups of 8, first own slot, 8 splits
    (4, 32, 4, 7, 1024, 2048, 1500, 128, "bfloat16"),
    (3, 5, 2, 4, 96, 64, 64, 64, "float32"),
]


def check_decode_case(case, seed, interpret):
  groups, n, kv_heads, group, prompt_len, own_slots, own_len, head_dim, dtype = case
  keys = jax.random.split(jax.random.key(seed), 6)
  rows = groups * n
  q = jax.random.normal(keys[0], (rows, kv_heads * group, head_dim), dtype)
  prompt = [jax.random.normal(key, (groups, kv_heads, prompt_len, head_dim), dtype)
            for key in keys[1:3]]
  own = [jax.random.normal(key, (rows, kv_heads, own_slots, head_dim), dtype)
         for key in keys[3:5]]
  first = jax.random.randint(keys[5], (groups, 1), 0, prompt_len)
  valid = jnp.arange(prompt_len)[None, :] >= first
  own_len = jnp.int32(own_len)
  got = jax.jit(lambda *a: decode.decode_attention(*a, backend="gpu", interpret=interpret))(
      q, *prompt, valid, *own, own_len)
  upcast = lambda xs: [x.astype(jnp.float32) for x in xs]
  want = jax.jit(decode_reference.reference_decode_attention)(
      *upcast([q] + prompt), valid, *upcast(own), own_len)
  error = testing.relative_error(got, want)
  return dict(kernel="decode_attention", case=list(case), errors={"out": error},
              passed=error <= TOLERANCE[dtype])


def check_case(case, seed, interpret, dq_atomic=False):
  batch, length, heads, kv_heads, head_dim, dtype, causal, packed = case
  q, k, v, d_out, segment_ids = testing.random_inputs(seed, batch, length, heads, kv_heads,
                                                      head_dim, dtype, packed)

  def ours(q, k, v):
    return kernels.flash_attention(q, k, v, segment_ids=segment_ids, causal=causal,
                                   backend="gpu", interpret=interpret,
                                   gpu_launch=kernels.LaunchSettings(dq_atomic=dq_atomic))

  def ref(q, k, v):
    return kernels.reference_attention(q, k, v, segment_ids=segment_ids, causal=causal)

  def value_and_grads(fn, *args):
    out, vjp = jax.vjp(fn, *args)
    return (out,) + vjp(d_out.astype(out.dtype))

  got = jax.jit(lambda q, k, v: value_and_grads(ours, q, k, v))(q, k, v)
  upcast = [x.astype(jnp.float32) for x in (q, k, v)]
  want = jax.jit(lambda q, k, v: value_and_grads(ref, q, k, v))(*upcast)
  errors = {name: testing.relative_error(a, b) for name, a, b in zip(("out", "dq", "dk", "dv"), got, want)}
  passed = all(e <= TOLERANCE[dtype] for e in errors.values())
  return dict(batch=batch, length=length, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
              dtype=dtype, causal=causal, packed=packed, dq_atomic=dq_atomic, errors=errors,
              passed=passed)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out")
  parser.add_argument("--interpret", action="store_true", help="CPU dry run on small cases")
  args = parser.parse_args(argv)
  jax.config.update("jax_default_matmul_precision", "highest")
  small = lambda c: (1, min(c[1], 200), min(c[2], 8), min(c[3], 8) if c[2] > 8 else c[3],
                     c[4], c[5], c[6], c[7])
  cases, atomic_cases = CASES, ATOMIC_CASES
  if args.interpret:
    cases, atomic_cases = [small(c) for c in CASES[:4]], [small(ATOMIC_CASES[-1])]
  checks = [(check_case, case) for case in cases]
  checks += [(functools.partial(check_case, dq_atomic=True), case) for case in atomic_cases]
  decode_cases = DECODE_CASES
  if args.interpret:
    decode_cases = [(2, 2, 2, 3, 64, 32, 20, 32, "bfloat16"), (1, 3, 1, 5, 48, 16, 16, 16,
                                                                 "float32")]
  checks += [(check_decode_case, case) for case in decode_cases]
  results = []
  # JSON lines as each case ends, so a run cut short still leaves its results.
  stream = open(args.out + "l", "w") if args.out else None
  for seed, (check, case) in enumerate(checks):
    try:
      result = check(case, seed, args.interpret)
    except Exception as error:  # Recorded, so the other cases still run.
      result = dict(case=list(case), passed=False,
                    error=f"{type(error).__name__}: {str(error)[:400]}")
    print(json.dumps(result), flush=True)
    if stream is not None:
      stream.write(json.dumps(result) + "\n")
      stream.flush()
    results.append(result)
  if args.out:
    stream.close()
    with open(args.out + ".tmp", "w") as handle:
      json.dump(dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__,
                     results=results), handle, indent=1)
    os.replace(args.out + ".tmp", args.out)
  print("check:", "all passed" if all(r["passed"] for r in results) else "FAILURES")
  return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
