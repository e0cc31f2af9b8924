"""Flash attention for GPUs in Pallas (Triton lowering): forward, dq and dk/dv passes.

Layout is the model's: q and dq `[batch, length, heads, head_dim]`; k, v, dk, dv
`[batch, length, kv_heads, head_dim]`. Query head `h` reads key/value head
`h // group`; the dk/dv pass runs one program per key block and key/value head
and loops over that head's `group` query heads, so nothing is repeated in memory.
With `LaunchSettings.dq_atomic` that pass also adds each tile's dq share into an fp32
buffer by atomic adds, and the dq pass is skipped.
Scores live in base 2: `s2 = q.k * sm_scale * log2(e)`, and the saved residual
is `lse2 = max(s2) + log2(sum(exp2(s2 - max)))`, `[batch, heads, length]` fp32.
Lengths must be multiples of the block sizes; `flash.py` pads.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from qmath_jax.kernels import blocks

LOG2_E = math.log2(math.e)
# Score given to masked pairs: finite, so fully masked tiles never make NaN.
MASK_VALUE = -1e30
# A block dimension of size one, dropped from the kernel's view.
SQ = pl.squeezed


@dataclasses.dataclass(frozen=True)
class LaunchSettings:
  """Triton launch settings; None picks the default (measured best on an H200, see
  BENCHMARKS.md): forward 8 warps (4 for head_dim <= 64) and 3 stages, backward
  4 warps and 2 stages.

  Attributes:
    forward_warps: warps per program of the forward kernel.
    forward_stages: software-pipelining depth of the forward kernel.
    backward_warps: warps per program of the dq and dk/dv kernels.
    backward_stages: software-pipelining depth of the dq and dk/dv kernels.
    dq_atomic: compute dq inside the dk/dv pass, adding each tile's share into an fp32
      buffer with atomic adds, instead of in a pass of its own. The backward then runs 5
      tile products instead of 7 (the dq pass recomputes the scores and dO.V^T), but the
      order of dq's additions varies from run to run, so dq is not bitwise reproducible.
      Off by default; dq uses the dk/dv tiles (`block_q_dkv`, `block_k_dkv`).
  """
  forward_warps: int | None = None
  forward_stages: int | None = None
  backward_warps: int | None = None
  backward_stages: int | None = None
  dq_atomic: bool = False


def _default_warps(head_dim):
  return 4 if head_dim <= 64 else 8


def dot(a, b, *, trans_a=False, trans_b=False):
  """2-D product with fp32 accumulation; fp32 operands stay full precision (no tf32)."""
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return jax.lax.dot_general(a, b, dims, precision=precision,
                             preferred_element_type=jnp.float32)


def _mask(row_pos, col_pos, row_seg, col_seg, causal, keys_on_rows=False):
  """Allowed pairs `[rows, cols]` from row/column positions and segment ids (or None).

  Queries run along rows unless `keys_on_rows` (the transposed tiles of the dk/dv pass).
  """
  mask = None
  if causal:
    mask = (row_pos[:, None] <= col_pos[None, :] if keys_on_rows
            else row_pos[:, None] >= col_pos[None, :])
  if row_seg is not None:
    same = row_seg[:, None] == col_seg[None, :]
    mask = same if mask is None else mask & same
  return mask


def _key_tile(q, q_pos, q_seg, k_ref, v_ref, k_seg_ref, k_block, block_k, scale_log2, causal):
  """Loads key block `k_block`; returns (k, v, masked base-2 scores `[block_q, block_k]`)."""
  k_slice = pl.ds(pl.multiple_of(k_block * block_k, block_k), block_k)
  k = k_ref[k_slice, :]
  v = v_ref[k_slice, :]
  scores = dot(q, k, trans_b=True) * scale_log2
  k_seg = k_seg_ref[k_slice] if k_seg_ref is not None else None
  k_pos = k_block * block_k + jnp.arange(block_k)
  mask = _mask(q_pos, k_pos, q_seg, k_seg, causal)
  if mask is not None:
    scores = jnp.where(mask, scores, MASK_VALUE)
  return k, v, scores


def _over_key_blocks(body, carry, lo, hi, q_block, block_q, block_k, causal):
  """Folds `body(k_block, carry, apply_causal)` over key blocks [lo, hi) of query block q_block.

  Key blocks wholly at or before the query block's first row need no causal mask.
  """
  if not causal:
    return jax.lax.fori_loop(lo, hi, functools.partial(body, apply_causal=False), carry)
  mid = jnp.clip((q_block * block_q + 1) // block_k, lo, hi)
  carry = jax.lax.fori_loop(lo, mid, functools.partial(body, apply_causal=False), carry)
  return jax.lax.fori_loop(mid, hi, functools.partial(body, apply_causal=True), carry)


def _forward_kernel(*refs, causal, has_segments, scale_log2, block_q, block_k):
  if has_segments:
    q_ref, k_ref, v_ref, q_seg_ref, k_seg_ref, lo_ref, hi_ref, o_ref, lse_ref = refs
  else:
    q_ref, k_ref, v_ref, lo_ref, hi_ref, o_ref, lse_ref = refs
    k_seg_ref = None
  q_block = pl.num_programs(0) - 1 - pl.program_id(0)
  q = q_ref[...]
  head_dim = q.shape[-1]
  q_pos = q_block * block_q + jnp.arange(block_q)
  q_seg = q_seg_ref[...] if has_segments else None
  lo, hi = lo_ref[q_block], hi_ref[q_block]

  def body(k_block, carry, apply_causal):
    acc, row_max, row_sum = carry
    _, v, scores = _key_tile(q, q_pos, q_seg, k_ref, v_ref, k_seg_ref, k_block, block_k,
                             scale_log2, causal and apply_causal)
    new_max = jnp.maximum(row_max, scores.max(axis=1))
    rescale = jnp.exp2(row_max - new_max)
    probs = jnp.exp2(scores - new_max[:, None])
    row_sum = row_sum * rescale + probs.sum(axis=1)
    acc = acc * rescale[:, None] + dot(probs.astype(v.dtype), v)
    return acc, new_max, row_sum

  carry = (jnp.zeros((block_q, head_dim), jnp.float32),
           jnp.full((block_q,), MASK_VALUE, jnp.float32),
           jnp.zeros((block_q,), jnp.float32))
  acc, row_max, row_sum = _over_key_blocks(body, carry, lo, hi, q_block, block_q, block_k,
                                           causal)
  safe_sum = jnp.where(row_sum > 0, row_sum, 1.0)
  o_ref[...] = (acc / safe_sum[:, None]).astype(o_ref.dtype)
  lse_ref[...] = row_max + jnp.log2(safe_sum)


def forward(q, k, v, segment_ids, *, causal, sm_scale, block_sizes, interpret=False,
            launch=LaunchSettings()):
  """Attention output and base-2 log-sum-exp.

  Args:
    q: `[batch, length, heads, head_dim]`.
    k: `[batch, length, kv_heads, head_dim]`.
    v: `[batch, length, kv_heads, head_dim]`.
    segment_ids: int32 `[batch, length]` or None.
    causal: mask keys after the query.
    sm_scale: score scale.
    block_sizes: `blocks.BlockSizes`; length must be a multiple of its blocks.
    interpret: run the kernel in Pallas interpret mode (CPU tests).
    launch: `LaunchSettings` (its forward fields are used here).

  Returns:
    out `[batch, length, heads, head_dim]` in q's dtype, lse2 `[batch, heads, length]` fp32.
  """
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  group = heads // kv_heads
  block_q, block_k = block_sizes.block_q, block_sizes.block_k
  num_q = length // block_q
  lo, hi = _ranges(segment_ids, batch, length, block_q, block_k, causal, transpose=False)
  has_segments = segment_ids is not None
  rev = lambda i: num_q - 1 - i  # Heaviest causal rows start first.
  q_spec = pl.BlockSpec((SQ, block_q, SQ, head_dim), lambda i, b, h: (b, rev(i), h, 0))
  kv_spec = pl.BlockSpec((SQ, length, SQ, head_dim), lambda i, b, h: (b, 0, h // group, 0))
  range_spec = pl.BlockSpec((SQ, num_q), lambda i, b, h: (b, 0))
  in_specs = [q_spec, kv_spec, kv_spec]
  inputs = [q, k, v]
  if has_segments:
    in_specs += [pl.BlockSpec((SQ, block_q), lambda i, b, h: (b, rev(i))),
                 pl.BlockSpec((SQ, length), lambda i, b, h: (b, 0))]
    inputs += [segment_ids, segment_ids]
  in_specs += [range_spec, range_spec]
  inputs += [lo, hi]
  kernel = functools.partial(
      _forward_kernel, causal=causal, has_segments=has_segments,
      scale_log2=sm_scale * LOG2_E, block_q=block_q, block_k=block_k)
  out, lse = pl.pallas_call(
      kernel,
      grid=(num_q, batch, heads),
      in_specs=in_specs,
      out_specs=[q_spec,
                 pl.BlockSpec((SQ, SQ, block_q), lambda i, b, h: (b, h, rev(i)))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, length), jnp.float32)],
      compiler_params=plgpu.CompilerParams(
          num_warps=launch.forward_warps or _default_warps(head_dim),
          num_stages=launch.forward_stages or 3),
      interpret=interpret,
      name="flash_attention_forward",
  )(*inputs)
  return out, lse


def _ranges(segment_ids, batch, length, block_rows, block_cols, causal, transpose):
  """Visited block ranges; without segments every batch row shares one range."""
  seg = segment_ids
  if seg is None:
    seg = jnp.zeros((1, length), jnp.int32)
  if transpose:
    lo, hi = blocks.q_ranges(seg, block_rows, block_cols, causal)
  else:
    lo, hi = blocks.kv_ranges(seg, block_rows, block_cols, causal)
  return jnp.broadcast_to(lo, (batch, lo.shape[1])), jnp.broadcast_to(hi, (batch, hi.shape[1]))


def _dq_kernel(*refs, causal, has_segments, scale_log2, sm_scale, block_q, block_k):
  if has_segments:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, k_seg_ref,
     lo_ref, hi_ref, dq_ref) = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lo_ref, hi_ref, dq_ref = refs
    k_seg_ref = None
  q_block = pl.num_programs(0) - 1 - pl.program_id(0)
  q = q_ref[...]
  do = do_ref[...]
  lse = lse_ref[...]
  delta = delta_ref[...]
  head_dim = q.shape[-1]
  q_pos = q_block * block_q + jnp.arange(block_q)
  q_seg = q_seg_ref[...] if has_segments else None
  lo, hi = lo_ref[q_block], hi_ref[q_block]

  def body(k_block, dq, apply_causal):
    k, v, scores = _key_tile(q, q_pos, q_seg, k_ref, v_ref, k_seg_ref, k_block, block_k,
                             scale_log2, causal and apply_causal)
    probs = jnp.exp2(scores - lse[:, None])
    dprobs = dot(do, v, trans_b=True)
    dscores = probs * (dprobs - delta[:, None])
    return dq + dot(dscores.astype(k.dtype), k)

  dq = _over_key_blocks(body, jnp.zeros((block_q, head_dim), jnp.float32), lo, hi, q_block,
                        block_q, block_k, causal)
  dq_ref[...] = (dq * sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, causal, has_segments, scale_log2, sm_scale, block_q, block_k, group,
                dq_atomic):
  """dk, dv of one key block and kv head; with `dq_atomic`, also adds each query tile's dq
  share (unscaled, fp32) into the `[length, group, head_dim]` buffer `dq_ref` in place."""
  refs = list(refs)
  dq_ref = refs.pop() if dq_atomic else None
  if dq_atomic:
    refs.pop(-3)  # the aliased dq input: the same buffer as dq_ref
  if has_segments:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, k_seg_ref,
     lo_ref, hi_ref, dk_ref, dv_ref) = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lo_ref, hi_ref, dk_ref, dv_ref = refs
  k_block = pl.num_programs(0) - 1 - pl.program_id(0)
  k = k_ref[...]
  v = v_ref[...]
  head_dim = k.shape[-1]
  k_pos = k_block * block_k + jnp.arange(block_k)
  k_seg = k_seg_ref[...] if has_segments else None
  lo, hi = lo_ref[k_block], hi_ref[k_block]

  def body(q_block, carry, head, apply_causal):
    dk, dv = carry
    q_slice = pl.ds(pl.multiple_of(q_block * block_q, block_q), block_q)
    q = q_ref[q_slice, head, :]
    do = do_ref[q_slice, head, :]
    lse = lse_ref[head, q_slice]
    delta = delta_ref[head, q_slice]
    # Transposed tile [block_k, block_q]: keys along rows.
    scores = dot(k, q, trans_b=True) * scale_log2
    q_seg = q_seg_ref[q_slice] if has_segments else None
    q_pos = q_block * block_q + jnp.arange(block_q)
    mask = _mask(k_pos, q_pos, k_seg, q_seg, causal and apply_causal, keys_on_rows=True)
    if mask is not None:
      scores = jnp.where(mask, scores, MASK_VALUE)
    probs = jnp.exp2(scores - lse[None, :])
    dv = dv + dot(probs.astype(do.dtype), do)
    dprobs = dot(v, do, trans_b=True)
    dscores = probs * (dprobs - delta[None, :])
    dk = dk + dot(dscores.astype(q.dtype), q)
    if dq_atomic:
      plgpu.atomic_add(dq_ref, (q_slice, head, slice(None)),
                       dot(dscores.astype(k.dtype), k, trans_a=True))
    return dk, dv

  if causal:
    # Query blocks wholly at or after the last key row need no causal mask.
    mid = jnp.clip(((k_block + 1) * block_k - 1 + block_q - 1) // block_q, lo, hi)
  def head_body(head, carry):
    if causal:
      carry = jax.lax.fori_loop(
          lo, mid, functools.partial(body, head=head, apply_causal=True), carry)
      return jax.lax.fori_loop(
          mid, hi, functools.partial(body, head=head, apply_causal=False), carry)
    return jax.lax.fori_loop(lo, hi, functools.partial(body, head=head, apply_causal=False),
                             carry)

  zeros = jnp.zeros((block_k, head_dim), jnp.float32)
  dk, dv = jax.lax.fori_loop(0, group, head_body, (zeros, zeros))
  dk_ref[...] = (dk * sm_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_pass(q, k, v, segment_ids, lse, delta, d_out, *, causal, scale_log2, sm_scale,
             block_sizes, params, interpret):
  """dq in a pass of its own: one program per (query block, batch, head)."""
  batch, length, heads, head_dim = q.shape
  group = heads // k.shape[2]
  has_segments = segment_ids is not None
  block_q, block_k = block_sizes.block_q_dq, block_sizes.block_k_dq
  num_q = length // block_q
  lo, hi = _ranges(segment_ids, batch, length, block_q, block_k, causal, transpose=False)
  rev = lambda i: num_q - 1 - i
  q_spec = pl.BlockSpec((SQ, block_q, SQ, head_dim), lambda i, b, h: (b, rev(i), h, 0))
  kv_spec = pl.BlockSpec((SQ, length, SQ, head_dim), lambda i, b, h: (b, 0, h // group, 0))
  row_spec = pl.BlockSpec((SQ, SQ, block_q), lambda i, b, h: (b, h, rev(i)))
  range_spec = pl.BlockSpec((SQ, num_q), lambda i, b, h: (b, 0))
  in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
  inputs = [q, k, v, d_out, lse, delta]
  if has_segments:
    in_specs += [pl.BlockSpec((SQ, block_q), lambda i, b, h: (b, rev(i))),
                 pl.BlockSpec((SQ, length), lambda i, b, h: (b, 0))]
    inputs += [segment_ids, segment_ids]
  in_specs += [range_spec, range_spec]
  inputs += [lo, hi]
  return pl.pallas_call(
      functools.partial(_dq_kernel, causal=causal, has_segments=has_segments,
                        scale_log2=scale_log2, sm_scale=sm_scale,
                        block_q=block_q, block_k=block_k),
      grid=(num_q, batch, heads),
      in_specs=in_specs,
      out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params,
      interpret=interpret,
      name="flash_attention_dq",
  )(*inputs)


def backward(q, k, v, segment_ids, out, lse, d_out, *, causal, sm_scale, block_sizes,
             interpret=False, launch=LaunchSettings()):
  """Gradients (dq, dk, dv) of the attention output, in the inputs' shapes and dtypes.

  Args:
    q, k, v, segment_ids: as in `forward`.
    out: the forward output `[batch, length, heads, head_dim]`.
    lse: base-2 log-sum-exp `[batch, heads, length]` fp32 from `forward`.
    d_out: cotangent of out `[batch, length, heads, head_dim]`.
    causal, sm_scale, block_sizes, interpret: as in `forward`.
    launch: `LaunchSettings` (its backward fields are used here).
  """
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  group = heads // kv_heads
  has_segments = segment_ids is not None
  # delta[b, h, i] = sum_d out * d_out: the softmax Jacobian's row term.
  delta = jnp.einsum("blhd,blhd->bhl", out.astype(jnp.float32), d_out.astype(jnp.float32))
  params = plgpu.CompilerParams(num_warps=launch.backward_warps or 4,
                                num_stages=launch.backward_stages or 2)
  scale_log2 = sm_scale * LOG2_E

  if not launch.dq_atomic:
    dq = _dq_pass(q, k, v, segment_ids, lse, delta, d_out, causal=causal,
                  scale_log2=scale_log2, sm_scale=sm_scale, block_sizes=block_sizes,
                  params=params, interpret=interpret)

  # dk, dv: one program per (key block, batch, kv head), looping over its query heads.
  block_q, block_k = block_sizes.block_q_dkv, block_sizes.block_k_dkv
  num_k = length // block_k
  lo, hi = _ranges(segment_ids, batch, length, block_q, block_k, causal, transpose=True)
  rev = lambda j: num_k - 1 - j
  grouped = lambda x: x.reshape(batch, length, kv_heads, group, head_dim)
  grouped_rows = lambda x: x.reshape(batch, kv_heads, group, length)
  q_spec = pl.BlockSpec((SQ, length, SQ, group, head_dim),
                        lambda j, b, g: (b, 0, g, 0, 0))
  kv_spec = pl.BlockSpec((SQ, block_k, SQ, head_dim), lambda j, b, g: (b, rev(j), g, 0))
  row_spec = pl.BlockSpec((SQ, SQ, group, length), lambda j, b, g: (b, g, 0, 0))
  range_spec = pl.BlockSpec((SQ, num_k), lambda j, b, g: (b, 0))
  in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
  inputs = [grouped(q), k, v, grouped(d_out), grouped_rows(lse), grouped_rows(delta)]
  if has_segments:
    in_specs += [pl.BlockSpec((SQ, length), lambda j, b, g: (b, 0)),
                 pl.BlockSpec((SQ, block_k), lambda j, b, g: (b, rev(j)))]
    inputs += [segment_ids, segment_ids]
  in_specs += [range_spec, range_spec]
  inputs += [lo, hi]
  out_specs = [kv_spec, kv_spec]
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  aliases = {}
  if launch.dq_atomic:
    # Every (key block, kv head) program adds into its batch row's dq: zeros in, sums out.
    in_specs.append(q_spec)
    inputs.append(jnp.zeros(grouped(q).shape, jnp.float32))
    out_specs.append(q_spec)
    out_shape.append(jax.ShapeDtypeStruct(grouped(q).shape, jnp.float32))
    aliases = {len(inputs) - 1: 2}
  grads = pl.pallas_call(
      functools.partial(_dkv_kernel, causal=causal, has_segments=has_segments,
                        scale_log2=scale_log2, sm_scale=sm_scale,
                        block_q=block_q, block_k=block_k, group=group,
                        dq_atomic=launch.dq_atomic),
      grid=(num_k, batch, kv_heads),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      input_output_aliases=aliases,
      compiler_params=params,
      interpret=interpret,
      name="flash_attention_dkv_dq" if launch.dq_atomic else "flash_attention_dkv",
  )(*inputs)
  if launch.dq_atomic:
    dk, dv, dq_sum = grads
    dq = (dq_sum * sm_scale).reshape(q.shape).astype(q.dtype)
  else:
    dk, dv = grads
  return dq, dk, dv
