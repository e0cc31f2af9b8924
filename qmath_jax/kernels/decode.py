"""Decode attention: one new query token per row over a shared prompt cache and its own cache.

A group of `n` rows (samples of one prompt) shares the prompt's keys and values; each row
also has its own cache of the tokens it generated. Layouts (the sampler's, kv heads before
length so that a (row, kv head) block is contiguous):

    q:          [rows, heads, head_dim], rows = groups * n; query head h reads kv head h // g
    prompt k/v: [groups, kv_heads, prompt_len, head_dim]; rows of group i: i * n ... i * n + n - 1
    own k/v:    [rows, kv_heads, own_len, head_dim]

Backends:
- "reference": einsums over both caches, softmax in fp32 (XLA fuses the elementwise parts).
- "gpu": two Pallas kernels (Triton lowering) and one small combine. The prompt kernel runs
  one program per (group, kv head, split of the prompt) with all `n * g` query rows of the
  group as the tile's rows, so each prompt key block is read once per group; the own kernel
  runs one program per (row, kv head) and visits only the slots written so far. Each writes
  its normalised partial output and base-2 log-sum-exp; the combine weighs the partials by
  their sums (split-K "flash decoding").
- "auto": "gpu" on a GPU (or on CPU when `interpret`), else "reference".

Shapes the Triton lowering cannot take (blocks under 16 keys, head_dim not a power of two)
use the reference, so every shape works on every backend.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jax.sharding import PartitionSpec as P

from qmath_jax.kernels import gpu

BACKENDS = ("auto", "gpu", "reference")
_NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)
# Triton's dot needs at least 16 rows and columns; key blocks are at most this long.
_MIN_TILE = 16
_MAX_BLOCK = 64
# Programs that keep an H200's 132 multiprocessors busy: the prompt kernel splits the prompt
# until the grid has this many, while blocks stay at least _MIN_TILE keys.
_MIN_PROGRAMS = 128
SQ = pl.squeezed


def rows_to_groups(x, groups: int):
  """`[groups * n, kv_heads, g, ...]` -> `[groups, kv_heads, n * g, ...]`."""
  rows, kv_heads, g = x.shape[:3]
  n = rows // groups
  x = x.reshape((groups, n, kv_heads, g) + x.shape[3:])
  x = jnp.moveaxis(x, 1, 2)
  return x.reshape((groups, kv_heads, n * g) + x.shape[4:])


def groups_to_rows(x, n: int):
  """Inverse of `rows_to_groups`: `[groups, kv_heads, n * g, ...]` -> `[groups * n, kv_heads, g, ...]`."""
  groups, kv_heads, ng = x.shape[:3]
  g = ng // n
  x = x.reshape((groups, kv_heads, n, g) + x.shape[3:])
  x = jnp.moveaxis(x, 2, 1)
  return x.reshape((groups * n, kv_heads, g) + x.shape[4:])


def reference_decode_attention(q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len):
  """Decode attention with einsums; arguments as `decode_attention`."""
  rows, heads, head_dim = q.shape
  groups, kv_heads = prompt_k.shape[:2]
  n = rows // groups
  scale = head_dim ** -0.5
  own_valid = jnp.arange(own_k.shape[2]) < own_len
  q_rows = q.reshape(rows, kv_heads, heads // kv_heads, head_dim)
  q_groups = rows_to_groups(q_rows, groups)                       # [groups, kv, n*g, d]
  s_prompt = jnp.einsum("gkmd,gksd->gkms", q_groups, prompt_k,
                        preferred_element_type=jnp.float32) * scale
  s_prompt = jnp.where(prompt_valid[:, None, None, :], s_prompt, _NEG_INF)
  s_own = jnp.einsum("bkhd,bktd->bkht", q_rows, own_k,
                     preferred_element_type=jnp.float32) * scale
  s_own = jnp.where(own_valid[None, None, None, :], s_own, _NEG_INF)
  top = jnp.maximum(groups_to_rows(s_prompt.max(-1), n), s_own.max(-1))   # [rows, kv, g]
  p_prompt = jnp.exp(s_prompt - rows_to_groups(top, groups)[..., None])
  p_own = jnp.exp(s_own - top[..., None])
  total = groups_to_rows(p_prompt.sum(-1), n) + p_own.sum(-1)
  o_prompt = jnp.einsum("gkms,gksd->gkmd", p_prompt.astype(prompt_v.dtype), prompt_v,
                        preferred_element_type=jnp.float32)
  o_own = jnp.einsum("bkht,bktd->bkhd", p_own.astype(own_v.dtype), own_v,
                     preferred_element_type=jnp.float32)
  out = (groups_to_rows(o_prompt, n) + o_own) / total[..., None]
  return out.reshape(rows, heads, head_dim).astype(q.dtype)


def _pow2_block(length: int) -> int:
  """Largest power of two dividing `length`, at most _MAX_BLOCK."""
  return min(length & -length, _MAX_BLOCK)


def _ceil_pow2(x: int) -> int:
  return 1 << (max(x, 1) - 1).bit_length()


def fits_kernel(head_dim: int, prompt_len: int, own_len: int) -> bool:
  """Whether the GPU kernels take these shapes (else the reference runs)."""
  return (head_dim == _ceil_pow2(head_dim) and head_dim >= _MIN_TILE
          and _pow2_block(prompt_len) >= _MIN_TILE and _pow2_block(own_len) >= _MIN_TILE)


def prompt_splits(programs: int, prompt_len: int, min_programs: int = _MIN_PROGRAMS) -> int:
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
  base = pl.program_id(2) * split_len

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


def _pad_rows(x, rows: int):
  """Pads axis 2 (query rows of a tile) of `[a, b, r, d]` with zeros up to `rows`."""
  return jnp.pad(x, ((0, 0), (0, 0), (0, rows - x.shape[2]), (0, 0)))


def _gpu_decode_attention(q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len, *,
                          interpret, min_programs):
  rows, heads, head_dim = q.shape
  groups, kv_heads, prompt_len = prompt_k.shape[:3]
  own_slots = own_k.shape[2]
  n, g = rows // groups, heads // kv_heads
  scale_log2 = head_dim ** -0.5 * gpu.LOG2_E
  params = plgpu.CompilerParams(num_warps=4, num_stages=2)
  q_rows = q.reshape(rows, kv_heads, g, head_dim)

  # Prompt part: a tile holds the n * g query rows of one group and kv head.
  tile = max(_MIN_TILE, _ceil_pow2(n * g))
  splits = prompt_splits(groups * kv_heads, prompt_len, min_programs)
  split_len = prompt_len // splits
  q_groups = _pad_rows(rows_to_groups(q_rows, groups), tile)
  cache_spec = pl.BlockSpec((SQ, SQ, prompt_len, head_dim), lambda i, h, s: (i, h, 0, 0))
  o_prompt, lse_prompt = pl.pallas_call(
      functools.partial(_prompt_kernel, split_len=split_len, block=_pow2_block(split_len),
                        scale_log2=scale_log2),
      grid=(groups, kv_heads, splits),
      in_specs=[pl.BlockSpec((SQ, SQ, tile, head_dim), lambda i, h, s: (i, h, 0, 0)),
                cache_spec, cache_spec,
                pl.BlockSpec((SQ, prompt_len), lambda i, h, s: (i, 0))],
      out_specs=[pl.BlockSpec((SQ, SQ, SQ, tile, head_dim), lambda i, h, s: (s, i, h, 0, 0)),
                 pl.BlockSpec((SQ, SQ, SQ, tile), lambda i, h, s: (s, i, h, 0))],
      out_shape=[jax.ShapeDtypeStruct((splits, groups, kv_heads, tile, head_dim), jnp.float32),
                 jax.ShapeDtypeStruct((splits, groups, kv_heads, tile), jnp.float32)],
      compiler_params=params,
      interpret=interpret,
      name="decode_attention_prompt",
  )(q_groups, prompt_k, prompt_v, prompt_valid.astype(jnp.int32))
  # [splits, groups, kv, n*g, ...] -> [rows, kv, g, splits, ...]
  o_prompt = groups_to_rows(jnp.moveaxis(o_prompt[:, :, :, :n * g], 0, 3), n)
  lse_prompt = groups_to_rows(jnp.moveaxis(lse_prompt[:, :, :, :n * g], 0, 3), n)

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
  )(_pad_rows(q_rows, tile), own_k, own_v, jnp.reshape(own_len, (1,)).astype(jnp.int32))

  # Combine the splits: weights 2^(lse - max lse); the largest part has weight 1.
  lse = jnp.concatenate([lse_prompt, lse_own[:, :, :g, None]], axis=-1)   # [rows, kv, g, parts]
  outs = jnp.concatenate([o_prompt, o_own[:, :, :g, None]], axis=-2)    # [rows, kv, g, parts, d]
  weights = jnp.exp2(lse - lse.max(axis=-1, keepdims=True))
  out = jnp.einsum("rkgp,rkgpd->rkgd", weights, outs) / weights.sum(-1)[..., None]
  return out.reshape(rows, heads, head_dim).astype(q.dtype)


def decode_attention(q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len, *,
                     backend: str = "auto", interpret: bool = False,
                     min_programs: int = _MIN_PROGRAMS):
  """One query token per row over [its group's prompt cache ; its own cache].

  Args:
    q: `[rows, heads, head_dim]`, rows = groups * n; heads a multiple of kv_heads.
    prompt_k: `[groups, kv_heads, prompt_len, head_dim]`.
    prompt_v: `[groups, kv_heads, prompt_len, head_dim]`.
    prompt_valid: bool `[groups, prompt_len]`, the prompt slots a row may see.
    own_k: `[rows, kv_heads, own_slots, head_dim]`.
    own_v: `[rows, kv_heads, own_slots, head_dim]`.
    own_len: int scalar: own slots `0 .. own_len - 1` are seen (the current token's included).
    backend: "gpu", "reference" or "auto" (module docstring).
    interpret: run the Pallas kernels in interpret mode (CPU tests).
    min_programs: the prompt kernel splits the prompt until its grid has this many programs.

  Returns:
    `[rows, heads, head_dim]` in q's dtype; softmax over both parts in fp32.
  """
  rows, heads, head_dim = q.shape
  groups, kv_heads, prompt_len, _ = prompt_k.shape
  if heads % kv_heads or rows % groups:
    raise ValueError(f"decode_attention: q {q.shape} must have a multiple of the cache's "
                     f"kv_heads ({kv_heads}) heads and of its groups ({groups}) rows")
  if own_k.shape[:2] != (rows, kv_heads) or own_k.shape[3] != head_dim:
    raise ValueError(f"decode_attention: own_k {own_k.shape} must be [rows={rows}, "
                     f"kv_heads={kv_heads}, slots, head_dim={head_dim}]")
  if prompt_valid.shape != (groups, prompt_len):
    raise ValueError(f"decode_attention: prompt_valid {prompt_valid.shape} must be "
                     f"[groups, prompt_len] = {(groups, prompt_len)}")
  if backend not in BACKENDS:
    raise ValueError(f"decode_attention: backend must be one of {BACKENDS}, got {backend!r}")
  if backend == "auto":
    on_gpu = jax.default_backend() in ("gpu", "cuda", "rocm")
    backend = "gpu" if on_gpu or (interpret and jax.default_backend() == "cpu") else "reference"
  if backend == "gpu" and fits_kernel(head_dim, prompt_len, own_k.shape[2]):
    return _gpu_decode_attention(q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len,
                                 interpret=interpret, min_programs=min_programs)
  return reference_decode_attention(q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len)


def sharded_decode_attention(mesh, q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len,
                             *, batch_axes=("data", "fsdp"), head_axis=None, **kwargs):
  """`decode_attention` under `jax.shard_map`: rows and groups over `batch_axes`, heads over
  `head_axis` (None: heads whole on every device). Each device's groups must hold whole
  groups of rows, as the sampler pads them to be.
  """
  batch = tuple(a for a in batch_axes if a in mesh.axis_names) or None
  heads = head_axis if head_axis in mesh.axis_names else None
  q_spec = P(batch, heads, None)
  cache_spec = P(batch, heads, None, None)
  attend = functools.partial(decode_attention, **kwargs)
  return jax.shard_map(
      attend, mesh=mesh,
      in_specs=(q_spec, cache_spec, cache_spec, P(batch, None), cache_spec, cache_spec, P()),
      out_specs=q_spec, check_vma=False,
  )(q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len)
