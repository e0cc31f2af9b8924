"""Flash attention for TPUs in Pallas (Mosaic): forward, dq and dk/dv passes.

The kernels see head-major tiles, so the wrapper transposes to
`[batch, heads, length, head_dim]`. The key (or, for dk/dv, query) block index
is the innermost, sequential grid axis; per-row block ranges are prefetched
into SMEM and the index maps clamp to them, so a skipped step keeps the same
block resident (no copy) and `pl.when` skips its compute. Grouped heads: query
head `h` reads key/value head `h // group`; the dk/dv grid walks all `group`
query heads of a key/value head in its sequential axis, accumulating in VMEM.
Residual: natural-log `lse = max + log(sum(exp(s - max)))`, `[batch, heads, length]`.
Lengths must be multiples of the block sizes; `flash.py` pads.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from qmath_jax.kernels import blocks

MASK_VALUE = -1e30
SQ = pl.squeezed


def dot_nt(a, b):
  """a @ b.T with fp32 accumulation: `[m, k] x [n, k] -> [m, n]`."""
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)


def dot_nn(a, b):
  """a @ b with fp32 accumulation: `[m, k] x [k, n] -> [m, n]`."""
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)


def _tile_mask(rows, cols, row_start, col_start, row_seg, col_seg, causal, keys_on_rows):
  """Allowed pairs in a `[rows, cols]` tile, or None when nothing is masked.

  row_seg is `[rows, 1]` and col_seg `[1, cols]` (or both None). With
  keys_on_rows the rows are keys and the columns queries.
  """
  mask = None
  if causal:
    row_pos = row_start + jax.lax.broadcasted_iota(jnp.int32, (rows, cols), 0)
    col_pos = col_start + jax.lax.broadcasted_iota(jnp.int32, (rows, cols), 1)
    mask = (row_pos <= col_pos) if keys_on_rows else (row_pos >= col_pos)
  if row_seg is not None:
    same = row_seg == col_seg
    mask = same if mask is None else mask & same
  return mask


def interpret_arg(interpret):
  """`pallas_call`'s interpret argument: True -> default `InterpretParams`; `InterpretParams`
  (race detection, several cores) pass through."""
  if isinstance(interpret, pltpu.InterpretParams):
    return interpret
  return pltpu.InterpretParams() if interpret else False


def _head_major(x):
  return jnp.swapaxes(x, 1, 2)


def _ranges(segment_ids, batch, length, block_q, block_k, causal, transpose):
  """Flattened int32 `[batch * num_blocks]` start and stop of the visited blocks."""
  seg = segment_ids if segment_ids is not None else jnp.zeros((1, length), jnp.int32)
  fn = blocks.q_ranges if transpose else blocks.kv_ranges
  lo, hi = fn(seg, block_q, block_k, causal)
  shape = (batch, lo.shape[1])
  return jnp.broadcast_to(lo, shape).reshape(-1), jnp.broadcast_to(hi, shape).reshape(-1)


def _query_grid_specs(num_q, block_q, block_k, head_dim, group):
  """BlockSpecs of a (batch, heads, query blocks, key blocks) grid: the forward and dq passes.

  Returns:
    (spec of q-shaped tiles, spec of the k/v tile (key block clamped into the query block's
    visited range, so skipped steps fetch nothing new), [query, key] segment-id tile specs).
  """
  def k_index(b, h, i, j, lo_ref, hi_ref):
    row = b * num_q + i
    return b, h // group, jnp.clip(j, lo_ref[row], hi_ref[row] - 1), 0

  q_spec = pl.BlockSpec((SQ, SQ, block_q, head_dim), lambda b, h, i, j, *_: (b, h, i, 0))
  kv_spec = pl.BlockSpec((SQ, SQ, block_k, head_dim), k_index)
  segment_specs = [pl.BlockSpec((SQ, block_q, 1), lambda b, h, i, j, *_: (b, i, 0)),
                   pl.BlockSpec((SQ, 1, block_k), lambda *args: (args[0], 0, k_index(*args)[2]))]
  return q_spec, kv_spec, segment_specs


def _forward_kernel(lo_ref, hi_ref, *refs, causal, has_segments, sm_scale, block_q, block_k,
                    num_q):
  if has_segments:
    q_ref, k_ref, v_ref, q_seg_ref, k_seg_ref, o_ref, lse_ref, max_sc, sum_sc, acc_sc = refs
  else:
    q_ref, k_ref, v_ref, o_ref, lse_ref, max_sc, sum_sc, acc_sc = refs
  b, q_block, k_block = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  lo, hi = lo_ref[b * num_q + q_block], hi_ref[b * num_q + q_block]

  @pl.when(k_block == 0)
  def _init():
    max_sc[...] = jnp.full(max_sc.shape, MASK_VALUE, jnp.float32)
    sum_sc[...] = jnp.zeros(sum_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  @pl.when((k_block >= lo) & (k_block < hi))
  def _step():
    scores = dot_nt(q_ref[...], k_ref[...]) * sm_scale
    mask = _tile_mask(block_q, block_k, q_block * block_q, k_block * block_k,
                      q_seg_ref[...] if has_segments else None,
                      k_seg_ref[...] if has_segments else None, causal, keys_on_rows=False)
    if mask is not None:
      scores = jnp.where(mask, scores, MASK_VALUE)
    old_max = max_sc[...]
    new_max = jnp.maximum(old_max, scores.max(axis=1, keepdims=True))
    rescale = jnp.exp(old_max - new_max)
    probs = jnp.exp(scores - new_max)
    sum_sc[...] = sum_sc[...] * rescale + probs.sum(axis=1, keepdims=True)
    v = v_ref[...]
    acc_sc[...] = acc_sc[...] * rescale + dot_nn(probs.astype(v.dtype), v)
    max_sc[...] = new_max

  @pl.when(k_block == pl.num_programs(3) - 1)
  def _finish():
    row_sum = sum_sc[...]
    safe_sum = jnp.where(row_sum > 0, row_sum, 1.0)
    o_ref[...] = (acc_sc[...] / safe_sum).astype(o_ref.dtype)
    lse_ref[...] = max_sc[...] + jnp.log(safe_sum)


def forward(q, k, v, segment_ids, *, causal, sm_scale, block_sizes, interpret=False):
  """Attention output and natural-log log-sum-exp.

  Args:
    q: `[batch, length, heads, head_dim]`.
    k: `[batch, length, kv_heads, head_dim]`.
    v: `[batch, length, kv_heads, head_dim]`.
    segment_ids: int32 `[batch, length]` or None.
    causal: mask keys after the query.
    sm_scale: score scale.
    block_sizes: `blocks.BlockSizes`; length must be a multiple of its blocks.
    interpret: run in TPU interpret mode (CPU tests).

  Returns:
    out `[batch, length, heads, head_dim]` in q's dtype, lse `[batch, heads, length]` fp32.
  """
  batch, length, heads, head_dim = q.shape
  group = heads // k.shape[2]
  block_q, block_k = block_sizes.block_q, block_sizes.block_k
  num_q, num_k = length // block_q, length // block_k
  has_segments = segment_ids is not None
  lo, hi = _ranges(segment_ids, batch, length, block_q, block_k, causal, transpose=False)

  q_spec, kv_spec, segment_specs = _query_grid_specs(num_q, block_q, block_k, head_dim, group)
  in_specs = [q_spec, kv_spec, kv_spec]
  inputs = [_head_major(q), _head_major(k), _head_major(v)]
  if has_segments:
    in_specs += segment_specs
    inputs += [segment_ids[:, :, None], segment_ids[:, None, :]]
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(batch, heads, num_q, num_k),
      in_specs=in_specs,
      out_specs=[q_spec,
                 pl.BlockSpec((SQ, SQ, block_q, 1), lambda b, h, i, j, *_: (b, h, i, 0))],
      scratch_shapes=[pltpu.VMEM((block_q, 1), jnp.float32),
                      pltpu.VMEM((block_q, 1), jnp.float32),
                      pltpu.VMEM((block_q, head_dim), jnp.float32)])
  kernel = functools.partial(_forward_kernel, causal=causal, has_segments=has_segments,
                             sm_scale=sm_scale, block_q=block_q, block_k=block_k, num_q=num_q)
  out, lse = pl.pallas_call(
      kernel,
      grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct((batch, heads, length, head_dim), q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, length, 1), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret_arg(interpret),
      name="flash_attention_forward_tpu",
  )(lo, hi, *inputs)
  return _head_major(out), lse[..., 0]


def _dq_kernel(lo_ref, hi_ref, *refs, causal, has_segments, sm_scale, block_q, block_k, num_q):
  if has_segments:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, k_seg_ref,
     dq_ref, dq_sc) = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_sc = refs
  b, q_block, k_block = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  lo, hi = lo_ref[b * num_q + q_block], hi_ref[b * num_q + q_block]

  @pl.when(k_block == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  @pl.when((k_block >= lo) & (k_block < hi))
  def _step():
    k = k_ref[...]
    scores = dot_nt(q_ref[...], k) * sm_scale
    mask = _tile_mask(block_q, block_k, q_block * block_q, k_block * block_k,
                      q_seg_ref[...] if has_segments else None,
                      k_seg_ref[...] if has_segments else None, causal, keys_on_rows=False)
    if mask is not None:
      scores = jnp.where(mask, scores, MASK_VALUE)
    probs = jnp.exp(scores - lse_ref[...])
    dprobs = dot_nt(do_ref[...], v_ref[...])
    dscores = probs * (dprobs - delta_ref[...])
    dq_sc[...] += dot_nn(dscores.astype(k.dtype), k)

  @pl.when(k_block == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = (dq_sc[...] * sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(lo_ref, hi_ref, *refs, causal, has_segments, sm_scale, block_q, block_k,
                num_q, num_k):
  if has_segments:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, k_seg_ref,
     dk_ref, dv_ref, dk_sc, dv_sc) = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_sc, dv_sc = refs
  b, k_block, step = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  q_block = step % num_q
  lo, hi = lo_ref[b * num_k + k_block], hi_ref[b * num_k + k_block]

  @pl.when(step == 0)
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  @pl.when((q_block >= lo) & (q_block < hi))
  def _step():
    # Transposed tiles [block_k, block_q]: keys along rows, queries along columns.
    q = q_ref[...]
    do = do_ref[...]
    scores = dot_nt(k_ref[...], q) * sm_scale
    mask = _tile_mask(block_k, block_q, k_block * block_k, q_block * block_q,
                      k_seg_ref[...] if has_segments else None,
                      q_seg_ref[...] if has_segments else None, causal, keys_on_rows=True)
    if mask is not None:
      scores = jnp.where(mask, scores, MASK_VALUE)
    probs = jnp.exp(scores - lse_ref[...])
    dv_sc[...] += dot_nn(probs.astype(do.dtype), do)
    dprobs = dot_nt(v_ref[...], do)
    dscores = probs * (dprobs - delta_ref[...])
    dk_sc[...] += dot_nn(dscores.astype(q.dtype), q)

  @pl.when(step == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = (dk_sc[...] * sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def backward(q, k, v, segment_ids, out, lse, d_out, *, causal, sm_scale, block_sizes,
             interpret=False):
  """Gradients (dq, dk, dv) in the inputs' shapes and dtypes.

  Args:
    q, k, v, segment_ids: as in `forward`.
    out: the forward output `[batch, length, heads, head_dim]`.
    lse: log-sum-exp `[batch, heads, length]` fp32 from `forward`.
    d_out: cotangent of out `[batch, length, heads, head_dim]`.
    causal, sm_scale, block_sizes, interpret: as in `forward`.
  """
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  group = heads // kv_heads
  has_segments = segment_ids is not None
  delta = jnp.einsum("blhd,blhd->bhl", out.astype(jnp.float32), d_out.astype(jnp.float32))
  q_t, k_t, v_t, do_t = (_head_major(x) for x in (q, k, v, d_out))
  params = pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))

  # dq: grid (batch, heads, query blocks, key blocks), key blocks sequential.
  block_q, block_k = block_sizes.block_q_dq, block_sizes.block_k_dq
  num_q, num_k = length // block_q, length // block_k
  lo, hi = _ranges(segment_ids, batch, length, block_q, block_k, causal, transpose=False)

  q_spec, kv_spec, segment_specs = _query_grid_specs(num_q, block_q, block_k, head_dim, group)
  col_spec = pl.BlockSpec((SQ, SQ, block_q, 1), lambda b, h, i, j, *_: (b, h, i, 0))
  in_specs = [q_spec, kv_spec, kv_spec, q_spec, col_spec, col_spec]
  inputs = [q_t, k_t, v_t, do_t, lse[..., None], delta[..., None]]
  if has_segments:
    in_specs += segment_specs
    inputs += [segment_ids[:, :, None], segment_ids[:, None, :]]
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, causal=causal, has_segments=has_segments,
                        sm_scale=sm_scale, block_q=block_q, block_k=block_k, num_q=num_q),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(batch, heads, num_q, num_k), in_specs=in_specs,
          out_specs=q_spec, scratch_shapes=[pltpu.VMEM((block_q, head_dim), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(q_t.shape, q.dtype),
      compiler_params=params,
      interpret=interpret_arg(interpret),
      name="flash_attention_dq_tpu",
  )(lo, hi, *inputs)

  # dk, dv: grid (batch, kv heads, key blocks, group * query blocks), last axis sequential.
  block_q, block_k = block_sizes.block_q_dkv, block_sizes.block_k_dkv
  num_q, num_k = length // block_q, length // block_k
  lo, hi = _ranges(segment_ids, batch, length, block_q, block_k, causal, transpose=True)

  def q_index(b, g, j, t, lo_ref, hi_ref):
    row = b * num_k + j
    return b, g * group + t // num_q, jnp.clip(t % num_q, lo_ref[row], hi_ref[row] - 1), 0

  def q_row_index(b, g, j, t, lo_ref, hi_ref):
    index = q_index(b, g, j, t, lo_ref, hi_ref)
    return index[0], index[1], 0, index[2]

  q_spec = pl.BlockSpec((SQ, SQ, block_q, head_dim), q_index)
  kv_spec = pl.BlockSpec((SQ, SQ, block_k, head_dim), lambda b, g, j, t, *_: (b, g, j, 0))
  row_spec = pl.BlockSpec((SQ, SQ, 1, block_q), q_row_index)
  in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
  inputs = [q_t, k_t, v_t, do_t, lse[:, :, None, :], delta[:, :, None, :]]
  if has_segments:
    in_specs += [pl.BlockSpec((SQ, 1, block_q),
                              lambda *args: (args[0], 0, q_index(*args)[2])),
                 pl.BlockSpec((SQ, block_k, 1), lambda b, g, j, t, *_: (b, j, 0))]
    inputs += [segment_ids[:, None, :], segment_ids[:, :, None]]
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, causal=causal, has_segments=has_segments,
                        sm_scale=sm_scale, block_q=block_q, block_k=block_k,
                        num_q=num_q, num_k=num_k),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(batch, kv_heads, num_k, group * num_q),
          in_specs=in_specs, out_specs=[kv_spec, kv_spec],
          scratch_shapes=[pltpu.VMEM((block_k, head_dim), jnp.float32),
                          pltpu.VMEM((block_k, head_dim), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(k_t.shape, k.dtype),
                 jax.ShapeDtypeStruct(v_t.shape, v.dtype)],
      compiler_params=params,
      interpret=interpret_arg(interpret),
      name="flash_attention_dkv_tpu",
  )(lo, hi, *inputs)
  return _head_major(dq), _head_major(dk), _head_major(dv)
