"""Pure-jnp decode attention, the oracle the decode kernels are checked against and the path of
backends without one, and the group layout helpers the kernels share. Layouts as `decode.py`."""

import jax.numpy as jnp

_NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


def rows_to_groups(x, groups: int):
  """`[groups * n, kv_heads, g, ...]` -> `[groups, kv_heads, n * g, ...]`."""
  rows, kv_heads, g = x.shape[:3]
  n = rows // groups
  x = x.reshape((groups, n, kv_heads, g) + x.shape[3:])
  x = jnp.moveaxis(x, 1, 2)
  return x.reshape((groups, kv_heads, n * g) + x.shape[4:])


def groups_to_rows(x, n: int):
  """Inverse of `rows_to_groups`: `[groups, kv_heads, n * g, ...]` ->
  `[groups * n, kv_heads, g, ...]`."""
  groups, kv_heads, ng = x.shape[:3]
  g = ng // n
  x = x.reshape((groups, kv_heads, n, g) + x.shape[3:])
  x = jnp.moveaxis(x, 2, 1)
  return x.reshape((groups * n, kv_heads, g) + x.shape[4:])


def chunk_rows(n: int, g: int, max_tile_rows: int) -> int:
  """Rows of a group per kernel tile: the largest divisor of n whose `rows * g` query rows fit
  max_tile_rows (at least 1)."""
  return max(d for d in range(1, n + 1) if n % d == 0 and (d == 1 or d * g <= max_tile_rows))


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
