"""Decode attention for TPUs in Pallas (Mosaic): one kernel over both caches.

One program per (group, kv head, chunk of the group's rows) walks the prompt's key blocks and
then the chunk's own-cache blocks along its sequential grid axis, with the online-softmax
state in VMEM, and writes the finished output. A tile's query rows are the chunk's rows times
the `g` query heads of the kv head; an own-cache block holds `[rows of the chunk, slots, d]`
and is scored against every query row of the chunk, a row's queries seeing only its own
slots (the MXU does the few extra products; memory reads each slot once). Chunks hold at most
_MAX_TILE_ROWS query rows, so a group of many samples re-reads its prompt once per chunk.
Own-cache blocks past the written slots are neither fetched (their index is clamped to the
last needed block) nor computed. Layouts as `decode.py`.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from qmath_jax.kernels import decode_reference
from qmath_jax.kernels import tpu

_BLOCKS = (512, 256, 128)   # key-block lengths tried, longest first (lane-aligned)
_ROW_TILE = 16              # query rows pad to a multiple of this (bf16 sublane tiling)
_MAX_TILE_ROWS = 256        # query rows per program, before padding
_MAX_OWN_COLUMNS = 1024     # rows x slots of one own-cache block
SQ = pl.squeezed


def _block(length: int) -> int:
  """A key block dividing `length`: the longest of _BLOCKS, else the whole length."""
  return next((b for b in _BLOCKS if length % b == 0), length)


def _own_block(own_slots: int, chunk: int) -> int:
  """Own slots per block: the whole cache if `chunk` rows of it fit _MAX_OWN_COLUMNS, else the
  longest power of two (at least _ROW_TILE) dividing it that does."""
  if chunk * own_slots <= _MAX_OWN_COLUMNS:
    return own_slots
  block = own_slots & -own_slots
  while block > _ROW_TILE and chunk * block > _MAX_OWN_COLUMNS:
    block //= 2
  return block


def fits_kernel(own_slots: int) -> bool:
  """Own-cache blocks reshape to one key tile only in whole sublane tiles."""
  return own_slots % _ROW_TILE == 0


def _update(q, k, v, allowed, sm_scale, max_sc, sum_sc, acc_sc):
  """One online-softmax step over a key tile `[keys, d]`; allowed is bool `[rows, keys]`."""
  scores = jnp.where(allowed, tpu.dot_nt(q, k) * sm_scale, tpu.MASK_VALUE)
  old_max = max_sc[...]
  new_max = jnp.maximum(old_max, scores.max(axis=1, keepdims=True))
  probs = jnp.where(allowed, jnp.exp(scores - new_max), 0.0)
  rescale = jnp.exp(old_max - new_max)
  sum_sc[...] = sum_sc[...] * rescale + probs.sum(axis=1, keepdims=True)
  acc_sc[...] = acc_sc[...] * rescale + tpu.dot_nn(probs.astype(v.dtype), v)
  max_sc[...] = new_max


def _kernel(own_len_ref, q_ref, prompt_k_ref, prompt_v_ref, valid_ref, own_k_ref, own_v_ref,
            query_row_ref, key_row_ref, key_slot_ref, o_ref, max_sc, sum_sc, acc_sc, *, chunk,
            prompt_blocks, own_block, sm_scale):
  j = pl.program_id(3)
  own_len = own_len_ref[0]
  update = functools.partial(_update, sm_scale=sm_scale, max_sc=max_sc, sum_sc=sum_sc,
                             acc_sc=acc_sc)

  @pl.when(j == 0)
  def _init():
    max_sc[...] = jnp.full(max_sc.shape, tpu.MASK_VALUE, jnp.float32)
    sum_sc[...] = jnp.zeros(sum_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  @pl.when(j < prompt_blocks)
  def _prompt():
    q = q_ref[...]
    allowed = jnp.broadcast_to(valid_ref[...] != 0, (q.shape[0], valid_ref.shape[-1]))
    update(q, prompt_k_ref[...], prompt_v_ref[...], allowed)

  own_start = (j - prompt_blocks) * own_block

  @pl.when((j >= prompt_blocks) & (own_start < own_len))
  def _own():
    q = q_ref[...]
    head_dim = q.shape[-1]
    k = own_k_ref[...].reshape(chunk * own_block, head_dim)
    v = own_v_ref[...].reshape(chunk * own_block, head_dim)
    allowed = ((query_row_ref[...] == key_row_ref[...])
               & (own_start + key_slot_ref[...] < own_len))
    update(q, k, v, allowed)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    total = sum_sc[...]
    o_ref[...] = (acc_sc[...] / jnp.where(total > 0, total, 1.0)).astype(o_ref.dtype)


def decode_attention(q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len, *,
                     interpret=False):
  """Arguments and result as `decode.decode_attention`; own slots a multiple of 16."""
  rows, heads, head_dim = q.shape
  groups, kv_heads, prompt_len = prompt_k.shape[:3]
  own_slots = own_k.shape[2]
  n, g = rows // groups, heads // kv_heads
  chunk = decode_reference.chunk_rows(n, g, _MAX_TILE_ROWS)
  chunks = n // chunk
  tile = -(-chunk * g // _ROW_TILE) * _ROW_TILE
  prompt_block, own_block = _block(prompt_len), _own_block(own_slots, chunk)
  prompt_blocks, own_blocks = prompt_len // prompt_block, own_slots // own_block

  # q: [rows, heads, d] -> [groups, kv, chunks, tile, d], a chunk's rows r-major, heads minor.
  q_tiles = decode_reference.rows_to_groups(q.reshape(rows, kv_heads, g, head_dim), groups)
  q_tiles = q_tiles.reshape(groups, kv_heads, chunks, chunk * g, head_dim)
  q_tiles = jnp.pad(q_tiles, ((0, 0),) * 3 + ((0, tile - chunk * g), (0, 0)))

  def prompt_index(i, h, c, j, own_len_ref):
    del c, own_len_ref
    return i, h, jnp.minimum(j, prompt_blocks - 1), 0

  def own_index(i, h, c, j, own_len_ref):
    last = jnp.maximum(pl.cdiv(own_len_ref[0], own_block) - 1, 0)
    return i, c, h, jnp.clip(j - prompt_blocks, 0, last), 0

  tile_spec = pl.BlockSpec((SQ, SQ, SQ, tile, head_dim), lambda i, h, c, j, _: (i, h, c, 0, 0))
  prompt_spec = pl.BlockSpec((SQ, SQ, prompt_block, head_dim), prompt_index)
  valid_spec = pl.BlockSpec((SQ, 1, prompt_block),
                            lambda *args: (args[0], 0, prompt_index(*args)[2]))
  own_spec = pl.BlockSpec((SQ, chunk, SQ, own_block, head_dim), own_index)
  # Which chunk row each query row and own-block column belongs to (-1: a padding query row),
  # and each column's slot in the block: constants, fetched once.
  query_row = jnp.arange(tile, dtype=jnp.int32) // g
  query_row = jnp.where(query_row < chunk, query_row, -1)[:, None]
  columns = jnp.arange(chunk * own_block, dtype=jnp.int32)[None, :]
  whole = lambda x: pl.BlockSpec(x.shape, lambda *_: (0, 0))
  out = pl.pallas_call(
      functools.partial(_kernel, chunk=chunk, prompt_blocks=prompt_blocks,
                        own_block=own_block, sm_scale=head_dim ** -0.5),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1,
          grid=(groups, kv_heads, chunks, prompt_blocks + own_blocks),
          in_specs=[tile_spec, prompt_spec, prompt_spec, valid_spec, own_spec, own_spec,
                    whole(query_row), whole(columns), whole(columns)],
          out_specs=tile_spec,
          scratch_shapes=[pltpu.VMEM((tile, 1), jnp.float32),
                          pltpu.VMEM((tile, 1), jnp.float32),
                          pltpu.VMEM((tile, head_dim), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(q_tiles.shape, q.dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=tpu.interpret_arg(interpret),
      name="decode_attention",
  )(jnp.reshape(own_len, (1,)).astype(jnp.int32), q_tiles, prompt_k, prompt_v,
    prompt_valid.astype(jnp.int32)[:, None, :],
    own_k.reshape(groups, n, kv_heads, own_slots, head_dim),
    own_v.reshape(groups, n, kv_heads, own_slots, head_dim), query_row, columns // own_block,
    columns % own_block)
  out = out[:, :, :, :chunk * g].reshape(groups, kv_heads, n * g, head_dim)
  return decode_reference.groups_to_rows(out, n).reshape(rows, heads, head_dim)
