"""The Pallas decode attention, GPU and TPU kernels (interpret mode), against its einsum
reference; their Triton and Mosaic lowering at the presets' head shapes; the input checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax.kernels import decode
from qmath_jax.kernels import decode_gpu
from qmath_jax.kernels import decode_reference
from qmath_jax.kernels import decode_tpu
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


def _fits(backend, head_dim, prompt_len, own_slots):
  if backend == "gpu":
    return decode_gpu.fits_kernel(head_dim, prompt_len, own_slots)
  return decode_tpu.fits_kernel(own_slots)


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "groups,n,kv_heads,group,prompt_len,own_slots,own_len,min_programs",
    [
        (2, 1, 2, 3, 32, 16, 5, 128),    # one row per group; GPU: the prompt splits in two
        (2, 4, 2, 3, 48, 32, 32, 1),     # 48-slot prompt (GPU: a 16-key block), full own cache
        (1, 3, 1, 6, 64, 64, 17, 4),     # 18 query rows of a group pad to a 32-row tile
        (2, 2, 2, 1, 64, 128, 1, 128),   # first decode step: one own slot; GPU: 4 splits
        (1, 8, 2, 7, 96, 64, 40, 8),     # 7:1 heads, 56 rows per tile
        # TPU: 2 prompt blocks of 512, own blocks of 128 (the second partly written).
        (1, 8, 2, 2, 1024, 256, 130, 128),
        (1, 64, 1, 6, 128, 32, 20, 128),  # TPU: 2 chunks of 32 rows; GPU: a 512-row tile
    ])
def test_kernel_matches_reference(backend, dtype, groups, n, kv_heads, group, prompt_len,
                                  own_slots, own_len, min_programs):
  args = _inputs(groups * 7 + own_len, groups, n, kv_heads, group, prompt_len, own_slots, 32,
                 dtype)
  assert _fits(backend, 32, prompt_len, own_slots)
  upcast = lambda xs: [x.astype(jnp.float32) for x in xs]
  want = decode_reference.reference_decode_attention(*upcast(args[:3]), args[3],
                                                     *upcast(args[4:]), jnp.int32(own_len))
  kwargs = {"min_programs": min_programs} if backend == "gpu" else {}
  got = decode.decode_attention(*args, jnp.int32(own_len), backend=backend, interpret=True,
                                **kwargs)
  assert got.dtype == dtype and got.shape == args[0].shape
  assert testing.relative_error(got, want) < TOLERANCE[dtype]


def test_prompt_splits_fill_the_grid_in_whole_blocks():
  assert decode_gpu.prompt_splits(programs=128, prompt_len=512) == 1
  assert decode_gpu.prompt_splits(programs=16, prompt_len=512) == 8
  assert decode_gpu.prompt_splits(programs=16, prompt_len=48) == 1     # 24 is not a 16-key block
  assert decode_gpu.prompt_splits(programs=1, prompt_len=64) == 4      # 16-key blocks at least


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_fully_padded_prompt_attends_to_its_own_tokens_only(backend):
  q, prompt_k, prompt_v, _, own_k, own_v = _inputs(0, 2, 2, 2, 2, 32, 16, 16, jnp.float32)
  none_valid = jnp.zeros((2, 32), bool)
  got = decode.decode_attention(q, prompt_k, prompt_v, none_valid, own_k, own_v, jnp.int32(3),
                                backend=backend, interpret=True)
  want = decode_reference.reference_decode_attention(q, prompt_k, prompt_v, none_valid, own_k, own_v,
                                           jnp.int32(3))
  assert testing.relative_error(got, want) < 2e-5
  # Only the first three own slots count: changing the others changes nothing.
  own_k2 = own_k.at[:, :, 3:].set(100.0)
  again = decode.decode_attention(q, prompt_k, prompt_v, none_valid, own_k2, own_v,
                                  jnp.int32(3), backend=backend, interpret=True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(again))


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_shapes_the_kernel_cannot_take_use_the_reference(backend):
  assert not decode_gpu.fits_kernel(head_dim=24, prompt_len=64, own_slots=64)
  assert not decode_gpu.fits_kernel(head_dim=32, prompt_len=24, own_slots=64)
  assert not decode_gpu.fits_kernel(head_dim=32, prompt_len=64, own_slots=8)
  assert not decode_tpu.fits_kernel(own_slots=24)
  args = _inputs(1, 2, 2, 2, 2, 24, 8, 32, jnp.float32)
  got = decode.decode_attention(*args, jnp.int32(5), backend=backend, interpret=True)
  want = decode_reference.reference_decode_attention(*args, jnp.int32(5))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bad_shapes_name_the_tensor():
  q, prompt_k, prompt_v, valid, own_k, own_v = _inputs(0, 2, 2, 2, 2, 32, 16, 16, jnp.float32)
  with pytest.raises(ValueError, match="own_k"):
    decode.decode_attention(q, prompt_k, prompt_v, valid, own_k[:3], own_v, jnp.int32(1))
  with pytest.raises(ValueError, match="prompt_valid"):
    decode.decode_attention(q, prompt_k, prompt_v, valid[:, :16], own_k, own_v, jnp.int32(1))
  with pytest.raises(ValueError, match="backend"):
    decode.decode_attention(q, prompt_k, prompt_v, valid, own_k, own_v, jnp.int32(1),
                            backend="mosaic")


@pytest.mark.parametrize("backend,platform,device_kind,calls", [
    ("gpu", "cuda", None, ("decode_attention_prompt", "decode_attention_own")),
    ("tpu", "tpu", "TPU v5 lite", ("decode_attention",)),
    ("tpu", "tpu", "TPU v6 lite", ("decode_attention",))])
@pytest.mark.parametrize("groups,n,kv_heads,group,prompt_len,own_slots,head_dim", [
    (64, 1, 2, 6, 512, 256, 128),    # 1.5B heads, 64 prompts
    (8, 8, 2, 6, 384, 192, 128),     # 1.5B heads, 8 prompts x 8 samples, 3 * 2^k buckets
    (4, 32, 4, 7, 1024, 2048, 128),  # 7B heads, GRPO-sized groups (TPU: 2 row chunks)
    (4, 8, 8, 1, 96, 64, 64),        # head_dim 64, one query head per kv head
])
def test_kernels_lower_for_their_backend(backend, platform, device_kind, calls, groups, n,
                                         kv_heads, group, prompt_len, own_slots, head_dim):
  rows, bf16 = groups * n, jnp.bfloat16
  shape = jax.ShapeDtypeStruct
  args = (shape((rows, kv_heads * group, head_dim), bf16),
          shape((groups, kv_heads, prompt_len, head_dim), bf16),
          shape((groups, kv_heads, prompt_len, head_dim), bf16),
          shape((groups, prompt_len), jnp.bool_),
          shape((rows, kv_heads, own_slots, head_dim), bf16),
          shape((rows, kv_heads, own_slots, head_dim), bf16),
          shape((), jnp.int32))
  kwargs = {"device_kind": device_kind} if device_kind else {}
  module = testing.lower_for(
      platform, functools.partial(decode.decode_attention, backend=backend), *args, **kwargs)
  assert module.count(testing.KERNEL_CALL_TARGETS[platform]) == len(calls)
  for name in calls:
    assert name in module


def test_tpu_kernel_has_no_data_races_on_two_cores(tpu_race_states):
  """Interpret mode with race detection, the grid split over two cores (a megacore chip)."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  args = _inputs(3, 2, 8, 2, 2, 1024, 256, 16, jnp.float32)
  params = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2)
  got = decode.decode_attention(*args, jnp.int32(130), backend="tpu", interpret=params)
  assert len(tpu_race_states) == 1 and not tpu_race_states[0].races_found
  want = decode_reference.reference_decode_attention(*args, jnp.int32(130))
  assert testing.relative_error(got, want) < 2e-5
