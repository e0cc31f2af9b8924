"""flash_attention's contract: input checks, backend choice, padding rows, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from qmath_jax import kernels
from qmath_jax.kernels import testing


def _inputs(length=40, heads=4, kv_heads=2, head_dim=16, dtype="float32", segments=False):
  return testing.random_inputs(11, 2, length, heads, kv_heads, head_dim, dtype, segments)


@pytest.mark.parametrize("change,message", [
    (lambda q, k, v, s: (q[0], k, v, s), "q must be"),
    (lambda q, k, v, s: (q, k[:, :, :, :8], v, s), "k must be"),
    (lambda q, k, v, s: (q, k, v[:, :20], s), "v must be"),
    (lambda q, k, v, s: (q[:, :, :3], k, v, s), "multiple of kv_heads"),
    (lambda q, k, v, s: (q, k, v, s[:, :5]), "segment_ids must be"),
    (lambda q, k, v, s: (q, k, v, s.astype(jnp.float32)), "segment_ids must be integer"),
    (lambda q, k, v, s: (q, k.astype(jnp.bfloat16), v, s), "dtypes differ"),
])
def test_bad_inputs_name_the_tensor(change, message):
  q, k, v, _, segment_ids = _inputs(segments=True)
  q, k, v, segment_ids = change(q, k, v, segment_ids)
  with pytest.raises(ValueError, match=message):
    kernels.flash_attention(q, k, v, segment_ids=segment_ids, backend="reference")


def test_unknown_backend_is_rejected():
  q, k, v, _, _ = _inputs()
  with pytest.raises(ValueError, match="backend must be one of"):
    kernels.flash_attention(q, k, v, backend="cuda")


def test_auto_backend_follows_the_platform():
  assert jax.default_backend() == "cpu"
  assert kernels.resolve_backend("auto") == "reference"
  assert kernels.resolve_backend("auto", interpret=True) == "gpu"
  assert kernels.resolve_backend("tpu") == "tpu"


def test_sm_scale_is_applied():
  q, k, v, _, _ = _inputs()
  scaled = kernels.flash_attention(q * 0.5, k, v, sm_scale=1.0, backend="reference")
  default = kernels.flash_attention(q, k, v, sm_scale=0.5, backend="reference")
  np.testing.assert_allclose(np.asarray(scaled), np.asarray(default), atol=1e-6)
  assert not np.allclose(np.asarray(default), np.asarray(kernels.flash_attention(q, k, v)))


def test_padding_rows_are_finite_and_runs_repeat_exactly():
  q, k, v, _, _ = _inputs(length=40)
  # Two packed documents, then 11 padding tokens with id 0.
  segment_ids = jnp.array([[1] * 20 + [2] * 9 + [0] * 11, [3] * 29 + [0] * 11])
  attend = jax.jit(lambda q, k, v: kernels.flash_attention(
      q, k, v, segment_ids=segment_ids, backend="gpu", interpret=True,
      block_sizes=kernels.BlockSizes(16, 16, 16, 16, 16, 16)))
  first, second = attend(q, k, v), attend(q, k, v)
  assert np.all(np.isfinite(np.asarray(first)))
  np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
  want = kernels.reference_attention(q, k, v, segment_ids=segment_ids)
  np.testing.assert_allclose(np.asarray(first), np.asarray(want), atol=2e-5)


def test_sharded_matches_reference_with_gradients():
  mesh = jax.make_mesh((2, 1, 4), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  # 2 kv heads on a tensor axis of 4: each kv head is repeated onto two devices.
  q, k, v, d_out, segment_ids = _inputs(length=48, heads=8, kv_heads=2, segments=True)
  errors = {}

  def sharded(q, k, v):
    return kernels.sharded_flash_attention(
        mesh, q, k, v, segment_ids=segment_ids, backend="gpu", interpret=True,
        block_sizes=kernels.BlockSizes(16, 16, 16, 16, 16, 16))

  out, vjp = jax.vjp(jax.jit(sharded), q, k, v)
  got = (out,) + vjp(d_out)
  ref_out, ref_vjp = jax.vjp(
      lambda q, k, v: kernels.reference_attention(q, k, v, segment_ids=segment_ids), q, k, v)
  want = (ref_out,) + ref_vjp(d_out)
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    errors[name] = testing.relative_error(a, b)
  assert max(errors.values()) < 5e-5, errors
  assert out.sharding.spec[2] == "tensor"
