"""Helpers for checking a kernel against the reference: inputs, gradients, errors."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from qmath_jax.kernels import flash
from qmath_jax.kernels import reference

# Relative Frobenius error allowed per output, by input dtype.
TOLERANCES = {
    "float32": {"out": 2e-5, "dq": 5e-5, "dk": 5e-5, "dv": 5e-5},
    "bfloat16": {"out": 1.5e-2, "dq": 2.5e-2, "dk": 2.5e-2, "dv": 2.5e-2},
}


def packed_segment_ids(rng, batch, length, max_segments=4):
  """int32 `[batch, length]`: sorted ids with random cut points (packed documents)."""
  ids = np.zeros((batch, length), np.int32)
  for row in range(batch):
    cuts = rng.integers(1, max(length, 2), size=rng.integers(0, max_segments))
    for cut in cuts:
      ids[row, cut:] += 1
  return jnp.asarray(ids)


def random_inputs(seed, batch, length, heads, kv_heads, head_dim, dtype, segments):
  """q, k, v, d_out (dtype) and segment_ids (or None) drawn from `seed`."""
  rng = np.random.default_rng(seed)
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim), dtype)
  v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim), dtype)
  d_out = jax.random.normal(keys[3], q.shape, dtype)
  segment_ids = packed_segment_ids(rng, batch, length) if segments else None
  return q, k, v, d_out, segment_ids


def relative_error(got, want):
  """||got - want|| / ||want|| in float64; inf when got holds a NaN or inf."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if not np.all(np.isfinite(got)):
    return float("inf")
  return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def kernel_errors(q, k, v, d_out, segment_ids, *, causal=True, **kernel_kwargs):
  """Relative errors of out, dq, dk, dv: `flash_attention(**kernel_kwargs)` vs the reference.

  The reference runs in fp32 on upcast inputs.
  """
  def ours(q, k, v):
    return flash.flash_attention(q, k, v, segment_ids=segment_ids, causal=causal,
                                 **kernel_kwargs)

  def oracle(q, k, v):
    return reference.reference_attention(q, k, v, segment_ids=segment_ids, causal=causal)

  out, vjp = jax.vjp(ours, q, k, v)
  got = (out,) + vjp(d_out)
  upcast = [x.astype(jnp.float32) for x in (q, k, v)]
  ref_out, ref_vjp = jax.vjp(oracle, *upcast)
  want = (ref_out,) + ref_vjp(d_out.astype(jnp.float32))
  return {name: relative_error(a, b) for name, a, b in zip(("out", "dq", "dk", "dv"), got, want)}


# The custom calls the Pallas backends lower to: Triton kernels for CUDA, Mosaic for TPU.
KERNEL_CALL_TARGETS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def lower_for(platform: str, fn, *args, device_kind: str = "TPU v5 lite") -> str:
  """StableHLO text of `jax.jit(fn)(*args)` lowered for `platform` ("cuda" or "tpu").

  Runs on any host: Pallas kernels go through their Triton or Mosaic lowering here, so a
  kernel that a backend cannot express fails on this CPU, not first on the accelerator.
  For "tpu", `device_kind` names the target chip (Mosaic lowering reads its layout facts).
  """
  checks = [export.DisabledSafetyCheck.custom_call(t) for t in KERNEL_CALL_TARGETS.values()]
  context = contextlib.nullcontext()
  if platform == "tpu":
    device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=1, platform="tpu")
    context = jax.sharding.use_abstract_mesh(
        jax.sharding.AbstractMesh((1,), ("lowering",), abstract_device=device))
  with context:
    exported = export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*args)
  return exported.mlir_module()
