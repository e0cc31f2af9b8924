"""Decode attention for GPUs in Pallas (Triton lowering): a prompt kernel, an own-cache kernel
and a combine.

The prompt kernel runs one program per (group, kv head, chunk of the group's rows, split of the
prompt) with the chunk's query rows (its rows times the `g` query heads of the kv head, at most
_MAX_TILE_ROWS) as the tile's rows, so a prompt key block is read once per chunk of samples;
the own kernel runs one program per (row, kv head) and visits only the slots written so far.
Each writes its normalised partial output and base-2 log-sum-exp; the combine weighs the
partials by their sums (split-K "flash decoding"). Layouts as `decode.py`.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from qmath_jax.kernels import decode_reference
from qmath_jax.kernels import gpu

# Triton's dot needs at least 16 rows and columns; key blocks are at most this long.
_MIN_TILE = 16
_MAX_BLOCK = 64
_MAX_TILE_ROWS = 64  # query rows of a prompt-kernel tile, before padding to a power of two
# Programs that keep an H200's 132 multiprocessors busy: the prompt kernel splits the prompt
# until the grid has this many, while blocks stay at least _MIN_TILE keys.
MIN_PROGRAMS = 128
SQ = pl.squeezed


def _pow2_block(length: int) -> int:
  """Largest power of two dividing `length`, at most _MAX_BLOCK."""
  return min(length & -length, _MAX_BLOCK)


def _ceil_pow2(x: int) -> int:
  return 1 << (max(x, 1) - 1).bit_length()


def fits_kernel(head_dim: int, prompt_len: int, own_slots: int) -> bool:
  """Whether the GPU kernels take these shapes (else the reference runs)."""
  return (head_dim == _ceil_pow2(head_dim) and head_dim >= _MIN_TILE
          and _pow2_block(prompt_len) >= _MIN_TILE and _pow2_block(own_slots) >= _MIN_TILE)


def prompt_splits(programs: int, prompt_len: int, min_programs: int = MIN_PROGRAMS) -> int:
  """Splits of the prompt (a power of two) so that `programs * splits` reaches min_programs,
  each split a whole number of blocks of at least _MIN_TILE keys."""
  splits = 1
  while (programs * splits < min_programs and prompt_len % (2 * splits) == 0
         and _pow2_block(prompt_len // (2 * splits)) >= _MIN_TILE):
    splits *= 2
  return splits


def _attend_block(carry, q, k, v, allowed, scale_log2):
  """One online-softmax step over a key block; rows with no allowed key stay at zero.

  Args:
    carry: (acc `[rows, head_dim]` fp32, running max `[rows]`, running sum `[rows]`), base 2.
    q: `[rows, head_dim]`; k, v: `[block, head_dim]`; allowed: bool `[rows, block]`.
  """
  acc, row_max, row_sum = carry
  scores = jnp.where(allowed, gpu.dot(q, k, trans_b=True) * scale_log2, gpu.MASK_VALUE)
  new_max = jnp.maximum(row_max, scores.max(axis=1))
  rescale = jnp.exp2(row_max - new_max)
  probs = jnp.where(allowed, jnp.exp2(scores - new_max[:, None]), 0.0)
  row_sum = row_sum * rescale + probs.sum(axis=1)
  acc = acc * rescale[:, None] + gpu.dot(probs.astype(v.dtype), v)
  return acc, new_max, row_sum


def _start(rows, head_dim):
  return (jnp.zeros((rows, head_dim), jnp.float32),
          jnp.full((rows,), gpu.MASK_VALUE, jnp.float32),
          jnp.zeros((rows,), jnp.float32))


def _finish(carry, o_ref, lse_ref):
  """Writes the partial output acc / sum and its base-2 log-sum-exp (MASK_VALUE if empty)."""
  acc, row_max, row_sum = carry
  seen = row_sum > 0
  safe_sum = jnp.where(seen, row_sum, 1.0)
  o_ref[...] = acc / safe_sum[:, None]
  lse_ref[...] = jnp.where(seen, row_max + jnp.log2(safe_sum), gpu.MASK_VALUE)


def _prompt_kernel(q_ref, k_ref, v_ref, valid_ref, o_ref, lse_ref, *, split_len, block,
                   scale_log2):
  q = q_ref[...]
  base = pl.program_id(3) * split_len

  def body(i, carry):
    keys = pl.ds(pl.multiple_of(base + i * block, block), block)
    allowed = jnp.broadcast_to(valid_ref[keys][None, :] != 0, (q.shape[0], block))
    return _attend_block(carry, q, k_ref[keys, :], v_ref[keys, :], allowed, scale_log2)

  carry = jax.lax.fori_loop(0, split_len // block, body, _start(*q.shape))
  _finish(carry, o_ref, lse_ref)


def _own_kernel(q_ref, k_ref, v_ref, own_len_ref, o_ref, lse_ref, *, block, scale_log2):
  q = q_ref[...]
  own_len = own_len_ref[0]

  def body(i, carry):
    keys = pl.ds(pl.multiple_of(i * block, block), block)
    slots = i * block + jnp.arange(block)
    allowed = jnp.broadcast_to(slots[None, :] < own_len, (q.shape[0], block))
    return _attend_block(carry, q, k_ref[keys, :], v_ref[keys, :], allowed, scale_log2)

  carry = jax.lax.fori_loop(0, pl.cdiv(own_len, block), body, _start(*q.shape))
  _finish(carry, o_ref, lse_ref)


def decode_attention(q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len, *,
                     interpret=False, min_programs=MIN_PROGRAMS):
  """Arguments and result as `decode.decode_attention`, for shapes `fits_kernel` accepts."""
  rows, heads, head_dim = q.shape
  groups, kv_heads, prompt_len = prompt_k.shape[:3]
  own_slots = own_k.shape[2]
  n, g = rows // groups, heads // kv_heads
  scale_log2 = head_dim ** -0.5 * gpu.LOG2_E
  params = plgpu.CompilerParams(num_warps=4, num_stages=2)
  q_rows = q.reshape(rows, kv_heads, g, head_dim)

  # Prompt part: a tile holds the query rows of `chunk` rows of one group and kv head.
  chunk = decode_reference.chunk_rows(n, g, _MAX_TILE_ROWS)
  chunks = n // chunk
  tile = max(_MIN_TILE, _ceil_pow2(chunk * g))
  splits = prompt_splits(groups * kv_heads * chunks, prompt_len, min_programs)
  split_len = prompt_len // splits
  q_tiles = decode_reference.rows_to_groups(q_rows, groups).reshape(
      groups, kv_heads, chunks, chunk * g, head_dim)
  q_tiles = jnp.pad(q_tiles, ((0, 0),) * 3 + ((0, tile - chunk * g), (0, 0)))
  cache_spec = pl.BlockSpec((SQ, SQ, prompt_len, head_dim), lambda i, h, c, s: (i, h, 0, 0))
  o_prompt, lse_prompt = pl.pallas_call(
      functools.partial(_prompt_kernel, split_len=split_len, block=_pow2_block(split_len),
                        scale_log2=scale_log2),
      grid=(groups, kv_heads, chunks, splits),
      in_specs=[pl.BlockSpec((SQ, SQ, SQ, tile, head_dim), lambda i, h, c, s: (i, h, c, 0, 0)),
                cache_spec, cache_spec,
                pl.BlockSpec((SQ, prompt_len), lambda i, h, c, s: (i, 0))],
      out_specs=[pl.BlockSpec((SQ, SQ, SQ, SQ, tile, head_dim),
                              lambda i, h, c, s: (s, i, h, c, 0, 0)),
                 pl.BlockSpec((SQ, SQ, SQ, SQ, tile), lambda i, h, c, s: (s, i, h, c, 0))],
      out_shape=[jax.ShapeDtypeStruct((splits, groups, kv_heads, chunks, tile, head_dim),
                                      jnp.float32),
                 jax.ShapeDtypeStruct((splits, groups, kv_heads, chunks, tile), jnp.float32)],
      compiler_params=params,
      interpret=interpret,
      name="decode_attention_prompt",
  )(q_tiles, prompt_k, prompt_v, prompt_valid.astype(jnp.int32))

  def prompt_rows(x):
    """`[splits, groups, kv, chunks, tile, ...]` -> `[rows, kv, g, splits, ...]`."""
    x = x[:, :, :, :, :chunk * g].reshape((splits, groups, kv_heads, n * g) + x.shape[5:])
    return decode_reference.groups_to_rows(jnp.moveaxis(x, 0, 3), n)

  o_prompt, lse_prompt = prompt_rows(o_prompt), prompt_rows(lse_prompt)

  # Own part: a tile holds one row's g query rows of one kv head.
  tile = max(_MIN_TILE, _ceil_pow2(g))
  cache_spec = pl.BlockSpec((SQ, SQ, own_slots, head_dim), lambda r, h: (r, h, 0, 0))
  o_own, lse_own = pl.pallas_call(
      functools.partial(_own_kernel, block=_pow2_block(own_slots), scale_log2=scale_log2),
      grid=(rows, kv_heads),
      in_specs=[pl.BlockSpec((SQ, SQ, tile, head_dim), lambda r, h: (r, h, 0, 0)),
                cache_spec, cache_spec, pl.BlockSpec((1,), lambda r, h: (0,))],
      out_specs=[pl.BlockSpec((SQ, SQ, tile, head_dim), lambda r, h: (r, h, 0, 0)),
                 pl.BlockSpec((SQ, SQ, tile), lambda r, h: (r, h, 0))],
      out_shape=[jax.ShapeDtypeStruct((rows, kv_heads, tile, head_dim), jnp.float32),
                 jax.ShapeDtypeStruct((rows, kv_heads, tile), jnp.float32)],
      compiler_params=params,
      interpret=interpret,
      name="decode_attention_own",
  )(jnp.pad(q_rows, ((0, 0), (0, 0), (0, tile - g), (0, 0))), own_k, own_v,
    jnp.reshape(own_len, (1,)).astype(jnp.int32))

  # Combine the splits: weights 2^(lse - max lse); the largest part has weight 1.
  lse = jnp.concatenate([lse_prompt, lse_own[:, :, :g, None]], axis=-1)   # [rows, kv, g, parts]
  outs = jnp.concatenate([o_prompt, o_own[:, :, :g, None]], axis=-2)    # [rows, kv, g, parts, d]
  weights = jnp.exp2(lse - lse.max(axis=-1, keepdims=True))
  out = jnp.einsum("rkgp,rkgpd->rkgd", weights, outs) / weights.sum(-1)[..., None]
  return out.reshape(rows, heads, head_dim).astype(q.dtype)
