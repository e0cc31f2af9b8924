"""Both Pallas kernels lower for their hardware from this CPU: Triton for CUDA, Mosaic for TPU.

Interpret mode (tests/test_kernels_pallas.py) checks what the kernels compute; this checks that
the backends can express them at the model's head shapes (forward, dq and dk/dv kernels, with
and without packed segments), which interpret mode does not. Compiling the lowered kernels to
machine code still needs the accelerator.
"""

import re

import jax
import jax.numpy as jnp
import pytest

from qmath_jax.kernels import flash
from qmath_jax.kernels import gpu
from qmath_jax.kernels import testing

KERNELS = ("flash_attention_forward", "flash_attention_dq", "flash_attention_dkv")
SHAPES = {  # heads, kv_heads, head_dim
    "qwen2.5-math-1.5b": (12, 2, 128),
    "qwen2.5-math-7b": (28, 4, 128),
    "head_dim_64": (8, 8, 64),
}


def _value_and_grads(backend, segment_ids, **kwargs):
  def loss(q, k, v):
    out = flash.flash_attention(q, k, v, segment_ids=segment_ids, backend=backend, **kwargs)
    return out.astype(jnp.float32).sum()
  return jax.value_and_grad(loss, argnums=(0, 1, 2))


@pytest.mark.parametrize("backend,platform,device_kind", [
    ("gpu", "cuda", None), ("tpu", "tpu", "TPU v5 lite"), ("tpu", "tpu", "TPU v5p"),
    ("tpu", "tpu", "TPU v6 lite")])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("segments", [False, True])
def test_kernels_lower_for_their_backend(backend, platform, device_kind, shape, segments):
  heads, kv_heads, head_dim = SHAPES[shape]
  length = 1024
  q = jax.ShapeDtypeStruct((2, length, heads, head_dim), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((2, length, kv_heads, head_dim), jnp.bfloat16)
  segment_ids = jnp.zeros((2, length), jnp.int32) if segments else None
  kwargs = {"device_kind": device_kind} if device_kind else {}
  module = testing.lower_for(platform, _value_and_grads(backend, segment_ids), q, kv, kv,
                             **kwargs)
  assert module.count(testing.KERNEL_CALL_TARGETS[platform]) == len(KERNELS)
  for name in KERNELS:
    assert name in module


@pytest.mark.parametrize("shape", ["qwen2.5-math-7b", "head_dim_64"])
@pytest.mark.parametrize("segments", [False, True])
def test_atomic_dq_backward_lowers_for_cuda(shape, segments):
  """`dq_atomic`: two kernels (forward; dk/dv with dq's atomic adds), no dq pass."""
  heads, kv_heads, head_dim = SHAPES[shape]
  q = jax.ShapeDtypeStruct((2, 1024, heads, head_dim), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((2, 1024, kv_heads, head_dim), jnp.bfloat16)
  segment_ids = jnp.zeros((2, 1024), jnp.int32) if segments else None
  grads = _value_and_grads("gpu", segment_ids, gpu_launch=gpu.LaunchSettings(dq_atomic=True))
  module = testing.lower_for("cuda", grads, q, kv, kv)
  assert module.count(testing.KERNEL_CALL_TARGETS["cuda"]) == 2
  names = set(re.findall(r"flash_attention_\w+", module))
  assert names == {"flash_attention_forward", "flash_attention_dkv_dq"}
  assert "atomic_rmw" in module  # the Triton op that adds dq's tiles
