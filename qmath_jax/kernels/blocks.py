"""Block bookkeeping shared by the TPU and GPU kernels.

The kernels visit, for each query block, only the key blocks that the causal
and segment masks leave non-empty (and, in the key-side backward pass, the
transpose). Those ranges come from per-block minimum and maximum segment ids,
computed here in plain jnp before the kernel starts.
"""

import dataclasses

import jax.numpy as jnp

# Segment id given to padded positions; real ids should differ from it.
PAD_SEGMENT_ID = jnp.iinfo(jnp.int32).min


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes along the sequence.

  Attributes:
    block_q: query rows per tile in the forward and dq passes.
    block_k: key rows per tile in the forward and dq passes.
    block_q_dkv: query rows per tile in the dk/dv pass.
    block_k_dkv: key rows per tile in the dk/dv pass.
    block_q_dq: query rows per tile in the dq pass.
    block_k_dq: key rows per tile in the dq pass.
  """
  block_q: int = 128
  block_k: int = 128
  block_q_dkv: int = 128
  block_k_dkv: int = 128
  block_q_dq: int = 128
  block_k_dq: int = 128

  @property
  def multiple(self):
    """The length every padded sequence is a multiple of."""
    sizes = (self.block_q, self.block_k, self.block_q_dkv, self.block_k_dkv,
             self.block_q_dq, self.block_k_dq)
    out = 1
    for size in sizes:
      out = out * size // _gcd(out, size)
    return out


def _gcd(a, b):
  while b:
    a, b = b, a % b
  return a


def padded_length(length, block_sizes):
  multiple = block_sizes.multiple
  return -(-length // multiple) * multiple


def overlapping_blocks(segment_ids, block_q, block_k, causal):
  """Which (query block, key block) pairs hold at least one allowed pair.

  The test is conservative: blocks whose segment-id ranges overlap count as
  non-empty even when no id is shared; the in-kernel mask stays exact.

  Args:
    segment_ids: int32 `[batch, length]` or None; length a multiple of both blocks.
    block_q: query rows per block.
    block_k: key rows per block.
    causal: whether keys after the query are masked.

  Returns:
    bool `[batch or 1, num_q_blocks, num_k_blocks]`.
  """
  if segment_ids is None:
    raise ValueError("overlapping_blocks needs segment_ids; pass zeros for one segment")
  batch, length = segment_ids.shape
  num_q, num_k = length // block_q, length // block_k
  q_blocks = segment_ids.reshape(batch, num_q, block_q)
  k_blocks = segment_ids.reshape(batch, num_k, block_k)
  q_min, q_max = q_blocks.min(-1), q_blocks.max(-1)
  k_min, k_max = k_blocks.min(-1), k_blocks.max(-1)
  overlap = (q_min[:, :, None] <= k_max[:, None, :]) & (k_min[:, None, :] <= q_max[:, :, None])
  if causal:
    last_q = (jnp.arange(num_q) + 1) * block_q - 1
    first_k = jnp.arange(num_k) * block_k
    overlap = overlap & (first_k[None, None, :] <= last_q[None, :, None])
  return overlap


def block_ranges(overlap):
  """First and one-past-last True index along the last axis.

  Args:
    overlap: bool `[batch, rows, cols]`.

  Returns:
    int32 `[batch, rows]` pair (start, stop); start == stop for an empty row.
  """
  cols = overlap.shape[-1]
  any_true = overlap.any(-1)
  start = jnp.argmax(overlap, axis=-1)
  stop = cols - jnp.argmax(overlap[..., ::-1], axis=-1)
  start = jnp.where(any_true, start, 0).astype(jnp.int32)
  stop = jnp.where(any_true, stop, 0).astype(jnp.int32)
  return start, stop


def kv_ranges(segment_ids, block_q, block_k, causal):
  """Key-block range `[start, stop)` per query block, int32 `[batch, num_q_blocks]` each."""
  return block_ranges(overlapping_blocks(segment_ids, block_q, block_k, causal))


def q_ranges(segment_ids, block_q, block_k, causal):
  """Query-block range `[start, stop)` per key block, int32 `[batch, num_k_blocks]` each."""
  overlap = overlapping_blocks(segment_ids, block_q, block_k, causal)
  return block_ranges(jnp.swapaxes(overlap, 1, 2))
