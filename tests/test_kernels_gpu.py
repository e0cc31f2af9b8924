"""The Pallas GPU (Triton) kernel in interpret mode against the reference."""

import itertools

import numpy as np
import pytest

from qmath_jax.kernels import BlockSizes
from qmath_jax.kernels import testing

SMALL_BLOCKS = BlockSizes(block_q=64, block_k=32, block_q_dkv=32, block_k_dkv=64,
                          block_q_dq=64, block_k_dq=32)


def _check(length, ratio, segments, dtype, head_dim, causal=True, block_sizes=None, batch=2):
  seed = int(np.random.SeedSequence().entropy % (2**31))
  kv_heads = 1 if ratio == 7 else 2
  inputs = testing.random_inputs(seed, batch, length, ratio * kv_heads, kv_heads, head_dim,
                                 dtype, segments)
  errors = testing.kernel_errors(*inputs, causal=causal, backend="gpu", interpret=True,
                                 block_sizes=block_sizes)
  for name, limit in testing.TOLERANCES[dtype].items():
    assert errors[name] <= limit, f"{name} error {errors[name]:.3g} > {limit} (seed {seed})"


# A representative subset by default (interpret mode is slow): padding, grouped
# heads, packed segments, both dtypes, several blocks per row; the grid is slow.
@pytest.mark.parametrize("length,ratio,segments,dtype,head_dim,causal", [
    (200, 7, True, "float32", 64, True),
    (256, 2, False, "bfloat16", 128, True),
])
def test_matches_reference(length, ratio, segments, dtype, head_dim, causal):
  _check(length, ratio, segments, dtype, head_dim, causal, block_sizes=SMALL_BLOCKS, batch=1)


@pytest.mark.slow
@pytest.mark.parametrize("length,ratio,segments,dtype,head_dim,causal", [
    (200, 1, True, "bfloat16", 128, False),
    (384, 4, True, "bfloat16", 64, True),
    (128, 2, False, "float32", 64, False),
])
def test_matches_reference_more(length, ratio, segments, dtype, head_dim, causal):
  _check(length, ratio, segments, dtype, head_dim, causal, block_sizes=SMALL_BLOCKS)


@pytest.mark.slow
def test_default_blocks_odd_length():
  _check(200, 2, True, "float32", 128, block_sizes=None, batch=1)


@pytest.mark.slow
@pytest.mark.parametrize("length,ratio,segments,dtype", list(itertools.product(
    (128, 200, 384, 1024), (1, 2, 4, 7), (False, True), ("float32", "bfloat16"))))
def test_full_grid(length, ratio, segments, dtype):
  _check(length, ratio, segments, dtype, head_dim=128 if length % 256 else 64)
