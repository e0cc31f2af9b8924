"""Attention math shared by the training forward and the KV-cache decode path.

Shapes: q `[batch, q_len, heads, head_dim]`, k and v `[batch, kv_len, kv_heads, head_dim]`,
heads a multiple of kv_heads. K/V are never repeated across the query heads of a group.
A mask is bool `[batch, q_len, kv_len]`, True where a query may attend to a key.
"""

import jax
import jax.numpy as jnp

_NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
  """Positions that restart at 0 at every segment boundary. `[batch, length]` -> same."""
  length = segment_ids.shape[1]
  index = jnp.arange(length, dtype=jnp.int32)[None, :]
  boundary = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
      axis=1)
  start = jax.lax.cummax(jnp.where(boundary, index, 0), axis=1)
  return index - start


def make_mask(q_segment_ids, kv_segment_ids, q_slots, kv_slots) -> jax.Array:
  """Causal, same-segment mask; segment id 0 (padding or an empty cache slot) sees nothing.

  Args:
    q_segment_ids: int `[batch, q_len]`.
    kv_segment_ids: int `[batch, kv_len]`.
    q_slots: int `[q_len]`, the row (or cache) slot of each query.
    kv_slots: int `[kv_len]`, the slot of each key.
  Returns:
    bool `[batch, q_len, kv_len]`.
  """
  same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  real = (q_segment_ids != 0)[:, :, None]
  causal = kv_slots[None, None, :] <= q_slots[None, :, None]
  return same & real & causal


def xla_attention(q, k, v, mask, sm_scale=None) -> jax.Array:
  """Grouped-query attention in plain XLA with an fp32 softmax. Returns `[batch, q_len, heads, head_dim]`.

  Query rows with nothing to attend to (padding) return zeros.
  """
  batch, q_len, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  group = heads // kv_heads
  scale = head_dim ** -0.5 if sm_scale is None else sm_scale
  q = q.reshape(batch, q_len, kv_heads, group, head_dim)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
  mask = mask[:, None, None, :, :]
  scores = jnp.where(mask, scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1)
  probs = jnp.where(mask.any(axis=-1, keepdims=True), probs, 0.0)
  out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v)
  return out.reshape(batch, q_len, heads, head_dim)


def causal_attention(q, k, v, segment_ids, impl: str, mask=None) -> jax.Array:
  """Self-attention over one packed row (no cache), dispatched on `impl`.

  Args:
    q, k, v: see module docstring (q_len == kv_len).
    segment_ids: int `[batch, length]`, 0 = padding.
    impl: "xla", "pallas" (our fused kernel, TPU or GPU by backend) or "cudnn".
    mask: the xla mask when the caller already built it.
  """
  if impl == "pallas":
    from qmath_jax import kernels  # pylint: disable=g-import-not-at-top
    interpret = jax.default_backend() == "cpu"  # CPU runs the Pallas kernel only interpreted
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      return kernels.flash_attention(q, k, v, segment_ids=segment_ids, causal=True,
                                     interpret=interpret)
    # Under a mesh (jax.set_mesh): each device runs the kernel on its batch and head shard.
    return kernels.sharded_flash_attention(mesh, q, k, v, segment_ids=segment_ids, causal=True,
                                           interpret=interpret)
  if impl == "cudnn":
    # cuDNN's fused path takes no segment ids: it serves rows without packing or padding only.
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
  if mask is None:
    slots = jnp.arange(q.shape[1], dtype=jnp.int32)
    mask = make_mask(segment_ids, segment_ids, slots, slots)
  return xla_attention(q, k, v, mask)
