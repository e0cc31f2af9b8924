"""The jnp reference against a float64 numpy loop, and the block-range bookkeeping."""

import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax.kernels import blocks
from qmath_jax.kernels import reference
from qmath_jax.kernels import testing


def _numpy_attention(q, k, v, segment_ids, causal, sm_scale):
  """Per (batch, head, query) loop in float64: the plainest statement of attention."""
  batch, length, heads, head_dim = q.shape
  group = heads // k.shape[2]
  out = np.zeros(q.shape, np.float64)
  for b in range(batch):
    for h in range(heads):
      for i in range(length):
        allowed = np.ones(length, bool)
        if causal:
          allowed &= np.arange(length) <= i
        if segment_ids is not None:
          allowed &= segment_ids[b] == segment_ids[b, i]
        if not allowed.any():
          continue
        scores = k[b, allowed, h // group] @ q[b, i, h] * sm_scale
        weights = np.exp(scores - scores.max())
        out[b, i, h] = weights @ v[b, allowed, h // group] / weights.sum()
  return out


@pytest.mark.parametrize("causal,segments,heads,kv_heads", [
    (True, False, 4, 2), (True, True, 7, 1), (False, True, 2, 2)])
def test_reference_matches_numpy(causal, segments, heads, kv_heads):
  q, k, v, _, segment_ids = testing.random_inputs(3, 2, 24, heads, kv_heads, 8, "float32",
                                                  segments)
  got = reference.reference_attention(q, k, v, segment_ids=segment_ids, causal=causal,
                                      sm_scale=0.3)
  want = _numpy_attention(*(np.asarray(x, np.float64) for x in (q, k, v)),
                          None if segment_ids is None else np.asarray(segment_ids), causal, 0.3)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_reference_lone_token_attends_to_itself():
  q, k, v, _, _ = testing.random_inputs(0, 1, 4, 2, 2, 8, "float32", False)
  segment_ids = jnp.array([[1, 1, 5, 1]])
  out = reference.reference_attention(q, k, v, segment_ids=segment_ids, causal=False)
  assert np.all(np.isfinite(np.asarray(out)))
  np.testing.assert_allclose(np.asarray(out[0, 2]), np.asarray(v[0, 2]), atol=1e-6)


def _token_mask(segment_ids, causal):
  length = segment_ids.shape[1]
  mask = segment_ids[:, :, None] == segment_ids[:, None, :]
  if causal:
    mask &= np.tril(np.ones((length, length), bool))[None]
  return mask


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block_q,block_k", [(16, 8), (8, 32)])
def test_block_ranges_cover_every_nonempty_block(causal, block_q, block_k):
  rng = np.random.default_rng(7)
  segment_ids = np.asarray(testing.packed_segment_ids(rng, 3, 64, max_segments=6))
  mask = _token_mask(segment_ids, causal)
  nonempty = mask.reshape(3, 64 // block_q, block_q, 64 // block_k, block_k).any(axis=(2, 4))
  lo, hi = (np.asarray(x) for x in blocks.kv_ranges(jnp.asarray(segment_ids), block_q,
                                                      block_k, causal))
  q_lo, q_hi = (np.asarray(x) for x in blocks.q_ranges(jnp.asarray(segment_ids), block_q,
                                                         block_k, causal))
  columns = np.arange(nonempty.shape[2])
  visited = (columns[None, None, :] >= lo[..., None]) & (columns[None, None, :] < hi[..., None])
  rows = np.arange(nonempty.shape[1])
  visited_t = (rows[None, None, :] >= q_lo[..., None]) & (rows[None, None, :] < q_hi[..., None])
  assert not np.any(nonempty & ~visited)
  assert not np.any(nonempty.transpose(0, 2, 1) & ~visited_t)
  # Sorted (packed) ids make the non-empty blocks contiguous: the ranges are exact.
  np.testing.assert_array_equal(visited, nonempty)
  np.testing.assert_array_equal(visited_t, nonempty.transpose(0, 2, 1))


def test_causal_ranges_skip_blocks_above_the_diagonal():
  lo, hi = blocks.kv_ranges(jnp.zeros((1, 64), jnp.int32), 16, 16, causal=True)
  np.testing.assert_array_equal(np.asarray(lo), [[0, 0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(hi), [[1, 2, 3, 4]])


def test_padded_length_is_a_multiple_of_every_block():
  sizes = blocks.BlockSizes(block_q=64, block_k=32, block_q_dkv=32, block_k_dkv=128,
                            block_q_dq=64, block_k_dq=32)
  assert blocks.padded_length(200, sizes) == 256
  assert blocks.padded_length(256, sizes) == 256
