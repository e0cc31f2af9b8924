"""Qwen2.5 building blocks: RMSNorm, RoPE, grouped-query attention with a KV cache, SwiGLU MLP.

Every parameter carries logical axis names (`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`,
`vocab`); `qmath_jax.parallel` maps them onto the mesh.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from qmath_jax.model import attention
from qmath_jax.model.config import ModelConfig

_INIT_STD = 0.02


def _init(names, init=nn.initializers.normal(_INIT_STD)):
  return nn.with_logical_partitioning(init, names)


class RMSNorm(nn.Module):
  """x / rms(x) * scale, computed in fp32. `[..., hidden]` -> same, in the compute dtype."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", _init(("embed",), nn.initializers.ones),
                       (x.shape[-1],), self.cfg.weight_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.rms_norm_eps)
    # Same rounding order as the reference: normalise in fp32, cast, then scale.
    return scale.astype(self.cfg.compute_dtype) * x32.astype(self.cfg.compute_dtype)


def apply_rope(x, positions, theta: float):
  """Rotary embedding, halves layout. x `[batch, length, heads, head_dim]`, positions `[batch, length]`."""
  head_dim = x.shape[-1]
  half = head_dim // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, length, half]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Projection(nn.Module):
  """A linear map kept at its full multi-axis shape, e.g. kernel `[hidden, heads, head_dim]`.

  Unlike `nn.DenseGeneral` (which re-creates a flattened kernel at apply time), the parameter
  is made at the shape its logical names describe, so the names hold under a mesh.
  """
  cfg: ModelConfig
  kernel_names: tuple[str, ...]
  kernel_shape: tuple[int, ...]
  equation: str
  bias_names: tuple[str, ...] | None = None

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    kernel = self.param("kernel", _init(self.kernel_names), self.kernel_shape, cfg.weight_dtype)
    y = jnp.einsum(self.equation, x, kernel.astype(cfg.compute_dtype))
    if self.bias_names is not None:
      bias_shape = self.kernel_shape[-len(self.bias_names):]
      bias = self.param("bias", _init(self.bias_names, nn.initializers.zeros), bias_shape,
                        cfg.weight_dtype)
      y = y + bias.astype(cfg.compute_dtype)
    return y


class Attention(nn.Module):
  """Grouped-query self-attention with q/k/v biases and an optional KV cache."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions, segment_ids, mask, layer_cache=None, cache_index=None):
    """x `[batch, length, hidden]` -> (`[batch, length, hidden]`, updated layer cache or None).

    layer_cache: dict with k, v `[batch, cache_len, kv_heads, head_dim]`; the new keys and
    values are written at `cache_index` and attention runs over the whole cache under `mask`.
    """
    cfg = self.cfg

    def qkv(name, heads, axis):
      return Projection(cfg, ("embed", axis, "head_dim"), (cfg.hidden_size, heads, cfg.head_dim),
                        "bte,ehd->bthd", (axis, "head_dim"), name=name)(x)

    q = qkv("q_proj", cfg.num_heads, "heads")
    k = qkv("k_proj", cfg.num_kv_heads, "kv_heads")
    v = qkv("v_proj", cfg.num_kv_heads, "kv_heads")
    q = nn.with_logical_constraint(apply_rope(q, positions, cfg.rope_theta),
                                   ("batch", "length", "heads", "head_dim"))
    k = nn.with_logical_constraint(apply_rope(k, positions, cfg.rope_theta),
                                   ("batch", "length", "kv_heads", "head_dim"))
    v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))
    if layer_cache is None:
      out = attention.causal_attention(q, k, v, segment_ids, cfg.attention, mask)
    else:
      start = (0, cache_index, 0, 0)
      layer_cache = {
          "k": jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype), start),
          "v": jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype), start),
      }
      out = attention.xla_attention(q, layer_cache["k"].astype(q.dtype),
                                    layer_cache["v"].astype(q.dtype), mask)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
    out = Projection(cfg, ("heads", "head_dim", "embed"),
                     (cfg.num_heads, cfg.head_dim, cfg.hidden_size), "bthd,hde->bte",
                     name="o_proj")(out)
    return out, layer_cache


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)). `[batch, length, hidden]` -> same."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg

    e, m = cfg.hidden_size, cfg.intermediate_size
    gate = Projection(cfg, ("embed", "mlp"), (e, m), "bte,em->btm", name="gate_proj")(x)
    up = Projection(cfg, ("embed", "mlp"), (e, m), "bte,em->btm", name="up_proj")(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return Projection(cfg, ("mlp", "embed"), (m, e), "btm,me->bte", name="down_proj")(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). Scanned over layers."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, layer_cache, positions, segment_ids, mask, cache_index):
    h, layer_cache = Attention(self.cfg, name="attn")(
        RMSNorm(self.cfg, name="input_norm")(x), positions, segment_ids, mask, layer_cache,
        cache_index)
    x = x + h
    x = x + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="post_attn_norm")(x))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, layer_cache
