"""Pure-jnp attention: the oracle every Pallas kernel is checked against.

Shapes follow the model: q `[batch, length, heads, head_dim]`, k and v
`[batch, length, kv_heads, head_dim]`, heads a multiple of kv_heads. Grouped
heads are computed by viewing q as `[batch, length, kv_heads, group, head_dim]`,
so K and V are never repeated.
"""

import jax.numpy as jnp


def attention_mask(length, segment_ids, causal):
  """Boolean mask of the allowed (query, key) pairs.

  Args:
    length: the sequence length.
    segment_ids: int32 `[batch, length]` or None (one segment).
    causal: whether a query may see only keys at or before its position.

  Returns:
    bool `[batch or 1, length, length]`, True where attention is allowed.
  """
  mask = jnp.ones((1, length, length), dtype=bool)
  if causal:
    positions = jnp.arange(length)
    mask = mask & (positions[None, :, None] >= positions[None, None, :])
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
  return mask


def reference_attention(q, k, v, *, segment_ids=None, causal=True, sm_scale=None):
  """Softmax attention computed in fp32, returned in q's dtype.

  Args:
    q: `[batch, length, heads, head_dim]`.
    k: `[batch, length, kv_heads, head_dim]`.
    v: `[batch, length, kv_heads, head_dim]`.
    segment_ids: int32 `[batch, length]`; tokens attend only within equal ids.
    causal: mask keys after the query position.
    sm_scale: score scale; defaults to `head_dim ** -0.5`.

  Returns:
    `[batch, length, heads, head_dim]`. Rows with no allowed key are zeros.
  """
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  group = heads // kv_heads
  if sm_scale is None:
    sm_scale = head_dim ** -0.5
  grouped_q = q.reshape(batch, length, kv_heads, group, head_dim).astype(jnp.float32)
  scores = jnp.einsum("bqhgd,bkhd->bhgqk", grouped_q, k.astype(jnp.float32)) * sm_scale
  mask = attention_mask(length, segment_ids, causal)[:, None, None, :, :]
  scores = jnp.where(mask, scores, -jnp.inf)
  row_max = jnp.max(scores, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.where(mask, jnp.exp(scores - row_max), 0.0)
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  probs = weights / jnp.where(denom > 0, denom, 1.0)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v.astype(jnp.float32))
  return out.reshape(batch, length, heads, head_dim).astype(q.dtype)
