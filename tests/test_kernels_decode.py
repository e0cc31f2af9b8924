"""The Pallas decode attention (interpret mode) against its einsum reference, its Triton
lowering at the presets' head shapes, and its input checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax.kernels import decode
from qmath_jax.kernels import testing

TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 1.5e-2}


def _inputs(seed, groups, n, kv_heads, group, prompt_len, own_slots, head_dim, dtype):
  """q, prompt k/v, left-padded prompt validity (random prompt lengths), own k/v."""
  keys = jax.random.split(jax.random.key(seed), 5)
  rows = groups * n
  q = jax.random.normal(keys[0], (rows, kv_heads * group, head_dim), dtype)
  prompt_k, prompt_v = (jax.random.normal(key, (groups, kv_heads, prompt_len, head_dim), dtype)
                        for key in keys[1:3])
  own_k, own_v = (jax.random.normal(key, (rows, kv_heads, own_slots, head_dim), dtype)
                  for key in keys[3:5])
  lengths = np.random.default_rng(seed).integers(1, prompt_len + 1, groups)
  valid = jnp.asarray(np.arange(prompt_len)[None, :] >= (prompt_len - lengths)[:, None])
  return q, prompt_k, prompt_v, valid, own_k, own_v


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "groups,n,kv_heads,group,prompt_len,own_slots,own_len,min_programs",
    [
        (2, 1, 2, 3, 32, 16, 5, 128),    # one row per group; the prompt splits in two
        (2, 4, 2, 3, 48, 32, 32, 1),     # 48-slot prompt (a 16-key block), full own cache
        (1, 3, 1, 6, 64, 64, 17, 4),     # 18 query rows of a group pad to a 32-row tile
        (2, 2, 2, 1, 64, 128, 1, 128),   # first decode step: one own slot, 4 splits
        (1, 8, 2, 7, 96, 64, 40, 8),     # 7:1 heads, 56 rows per tile
    ])
def test_kernel_matches_reference(dtype, groups, n, kv_heads, group, prompt_len, own_slots,
                                  own_len, min_programs):
  args = _inputs(groups * 7 + own_len, groups, n, kv_heads, group, prompt_len, own_slots, 32,
                 dtype)
  assert decode.fits_kernel(32, prompt_len, own_slots)
  want = decode.reference_decode_attention(*[x.astype(jnp.float32) for x in args[:3]],
                                           args[3], *[x.astype(jnp.float32) for x in args[4:]],
                                           jnp.int32(own_len))
  got = decode.decode_attention(*args, jnp.int32(own_len), backend="gpu", interpret=True,
                                min_programs=min_programs)
  assert got.dtype == dtype and got.shape == args[0].shape
  assert testing.relative_error(got, want) < TOLERANCE[dtype]


def test_prompt_splits_fill_the_grid_in_whole_blocks():
  assert decode.prompt_splits(programs=128, prompt_len=512) == 1
  assert decode.prompt_splits(programs=16, prompt_len=512) == 8
  assert decode.prompt_splits(programs=16, prompt_len=48) == 1     # 24 is not a 16-key block
  assert decode.prompt_splits(programs=1, prompt_len=64) == 4      # 16-key blocks at least


def test_fully_padded_prompt_attends_to_its_own_tokens_only():
  q, prompt_k, prompt_v, _, own_k, own_v = _inputs(0, 2, 2, 2, 2, 32, 16, 16, jnp.float32)
  none_valid = jnp.zeros((2, 32), bool)
  got = decode.decode_attention(q, prompt_k, prompt_v, none_valid, own_k, own_v, jnp.int32(3),
                                backend="gpu", interpret=True)
  want = decode.reference_decode_attention(q, prompt_k, prompt_v, none_valid, own_k, own_v,
                                           jnp.int32(3))
  assert testing.relative_error(got, want) < 2e-5
  # Only the first three own slots count: changing the others changes nothing.
  own_k2 = own_k.at[:, :, 3:].set(100.0)
  again = decode.decode_attention(q, prompt_k, prompt_v, none_valid, own_k2, own_v,
                                  jnp.int32(3), backend="gpu", interpret=True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(again))


def test_shapes_the_kernel_cannot_take_use_the_reference():
  assert not decode.fits_kernel(head_dim=24, prompt_len=64, own_len=64)
  assert not decode.fits_kernel(head_dim=32, prompt_len=24, own_len=64)
  assert not decode.fits_kernel(head_dim=32, prompt_len=64, own_len=8)
  args = _inputs(1, 2, 2, 2, 2, 24, 8, 32, jnp.float32)
  got = decode.decode_attention(*args, jnp.int32(5), backend="gpu", interpret=True)
  want = decode.reference_decode_attention(*args, jnp.int32(5))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bad_shapes_name_the_tensor():
  q, prompt_k, prompt_v, valid, own_k, own_v = _inputs(0, 2, 2, 2, 2, 32, 16, 16, jnp.float32)
  with pytest.raises(ValueError, match="own_k"):
    decode.decode_attention(q, prompt_k, prompt_v, valid, own_k[:3], own_v, jnp.int32(1))
  with pytest.raises(ValueError, match="prompt_valid"):
    decode.decode_attention(q, prompt_k, prompt_v, valid[:, :16], own_k, own_v, jnp.int32(1))
  with pytest.raises(ValueError, match="backend"):
    decode.decode_attention(q, prompt_k, prompt_v, valid, own_k, own_v, jnp.int32(1),
                            backend="tpu")


@pytest.mark.parametrize("groups,n,kv_heads,group,prompt_len,own_slots", [
    (64, 1, 2, 6, 512, 256),     # 1.5B heads, 64 prompts
    (8, 8, 2, 6, 384, 192),      # 1.5B heads, 8 prompts x 8 samples, 3 * 2^k buckets
    (4, 32, 4, 7, 1024, 2048),   # 7B heads, GRPO-sized groups
])
def test_kernels_lower_to_triton(groups, n, kv_heads, group, prompt_len, own_slots):
  rows, head_dim, bf16 = groups * n, 128, jnp.bfloat16
  shape = jax.ShapeDtypeStruct
  args = (shape((rows, kv_heads * group, head_dim), bf16),
          shape((groups, kv_heads, prompt_len, head_dim), bf16),
          shape((groups, kv_heads, prompt_len, head_dim), bf16),
          shape((groups, prompt_len), jnp.bool_),
          shape((rows, kv_heads, own_slots, head_dim), bf16),
          shape((rows, kv_heads, own_slots, head_dim), bf16),
          shape((), jnp.int32))
  module = testing.lower_for("cuda", functools.partial(decode.decode_attention, backend="gpu"),
                             *args)
  assert module.count(testing.KERNEL_CALL_TARGETS["cuda"]) == 2
  assert "decode_attention_prompt" in module and "decode_attention_own" in module
