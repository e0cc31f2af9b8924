"""Prefill and one decode step of the Qwen2.5 decoder over a grouped KV cache.

Each group's prompt is prefilled once into a prompt cache; the group's `n` samples then decode
against [prompt cache ; their own generated cache], so a prompt's keys and values are computed
once and read once per step for the whole group (one matmul with n x heads query rows).

    prompt cache, per layer: {"k", "v": [groups, kv_heads, prompt_len, head_dim]}
    own cache, per layer:    {"k", "v": [rows, kv_heads, max_new, head_dim]}, rows = groups * n
    rows of group g:         g * n ... g * n + n - 1

kv_heads comes before length so that attention is a batched matmul over contiguous
(row, kv head) blocks: no transposed copy of the cache per step. Every row writes its step's
key and value at the same own-cache slot; the prompt is left-padded (segment id 0), so the
last prompt slot holds every prompt's last token, and true positions come through `positions`.

Numerics follow `qmath_jax.model`: matmuls in the compute dtype, RMSNorm and softmax in fp32,
logits in fp32. Weights come from `qmath_jax.sampling.weights.prepare`; on a tensor-parallel
mesh they arrive split over heads, MLP units and vocabulary, and XLA partitions these functions
from those shardings. With `attention="pallas"` the prefill runs the flash kernel and the decode
step the decode-attention kernels (`qmath_jax.kernels.decode`), under `shard_map` on a mesh.
"""

import jax
import jax.numpy as jnp

from qmath_jax import kernels
from qmath_jax.kernels import decode
from qmath_jax.model import attention
from qmath_jax.model.config import ModelConfig
from qmath_jax.model.layers import apply_rope


def rms_norm(x, scale, eps: float):
  """x / rms(x) * scale: normalised in fp32, cast, then scaled (the model's rounding order)."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale * x32.astype(scale.dtype)


def _qkv(cfg: ModelConfig, layer, x):
  """x `[..., embed]` -> q `[..., heads, head_dim]`, k, v `[..., kv_heads, head_dim]`.

  The fused weight holds one block per attention shard (`weights.TensorLayout`); heads keep
  their order (shard-major).
  """
  qkv = jnp.einsum("...e,eaf->...af", x, layer["wqkv"]) + layer["bqkv"]
  shards = qkv.shape[-2]
  h, k, d = cfg.num_heads // shards, cfg.num_kv_heads // shards, cfg.head_dim
  lead = qkv.shape[:-2]
  q = qkv[..., :h * d].reshape(lead + (shards * h, d))
  key = qkv[..., h * d:(h + k) * d].reshape(lead + (shards * k, d))
  value = qkv[..., (h + k) * d:].reshape(lead + (shards * k, d))
  return q, key, value


def _mlp(layer, x):
  """SwiGLU over per-shard [gate ; up] blocks: x `[..., embed]` -> `[..., embed]`."""
  gate, up = jnp.split(jnp.einsum("...e,emf->...mf", x, layer["w_gate_up"]), 2, axis=-1)
  units = jax.nn.silu(gate) * up
  return units.reshape(x.shape[:-1] + (-1,)) @ layer["w_down"]


def logits_of(cfg: ModelConfig, weights, hidden):
  """fp32 logits `[..., vocab]` of final-norm hidden states `[..., embed]`."""
  if cfg.tie_embeddings:
    return jnp.einsum("...e,ve->...v", hidden, weights["embedding"],
                      preferred_element_type=jnp.float32)
  return jnp.einsum("...e,ev->...v", hidden, weights["lm_head"],
                    preferred_element_type=jnp.float32)


def prefill(cfg: ModelConfig, weights, tokens, positions, segment_ids, mesh=None,
            heads_split: bool = False):
  """Runs the left-padded prompts and keeps their keys and values.

  Args:
    cfg: model config.
    weights: `weights.prepare` output.
    tokens: int `[groups, prompt_len]`, left-padded.
    positions: int `[groups, prompt_len]` (0 at each prompt's first real token).
    segment_ids: int `[groups, prompt_len]`, 1 on prompt tokens and 0 on padding.
    mesh: the sampler's mesh or None; the Pallas attention runs under `shard_map` on it.
    heads_split: whether the attention weights split heads over the mesh's 'tensor' axis.
  Returns:
    (fp32 logits of the last slot `[groups, vocab]`, prompt cache: a list with one
    {"k", "v": [groups, kv_heads, prompt_len, head_dim]} per layer).
  """
  groups, length = tokens.shape
  impl = "pallas" if cfg.attention == "pallas" else "xla"
  mask = None
  if impl == "xla":
    slots = jnp.arange(length, dtype=jnp.int32)
    mask = attention.make_mask(segment_ids, segment_ids, slots, slots)
  x = jnp.take(weights["embedding"], tokens, axis=0)
  cache = []
  for layer in weights["layers"]:
    h = rms_norm(x, layer["input_norm"], cfg.rms_norm_eps)
    q, k, v = _qkv(cfg, layer, h)
    q = apply_rope(q, positions, cfg.rope_theta)
    k = apply_rope(k, positions, cfg.rope_theta)
    if impl == "pallas" and mesh is not None:
      out = kernels.sharded_flash_attention(
          mesh, q, k, v, segment_ids=segment_ids, head_axis="tensor" if heads_split else None,
          interpret=jax.default_backend() == "cpu")
    else:
      out = attention.causal_attention(q, k, v, segment_ids, impl, mask)
    cache.append({"k": k.transpose(0, 2, 1, 3), "v": v.transpose(0, 2, 1, 3)})
    x = x + out.reshape(groups, length, -1) @ layer["wo"]
    x = x + _mlp(layer, rms_norm(x, layer["post_norm"], cfg.rms_norm_eps))
  hidden = rms_norm(x[:, -1], weights["final_norm"], cfg.rms_norm_eps)
  return logits_of(cfg, weights, hidden), cache


def _decode_attention(cfg: ModelConfig, mesh, heads_split: bool, q, prompt_layer, own_layer,
                      prompt_valid, own_len):
  """`kernels.decode.decode_attention` for this model: the Pallas kernels when
  `cfg.attention == "pallas"` (interpreted on CPU), else the einsum reference; on a mesh
  under `shard_map`, kv heads split over 'tensor' when the weights split them (`heads_split`).
  """
  kwargs = {"backend": "reference"}
  if cfg.attention == "pallas":
    kwargs = {"backend": "auto", "interpret": jax.default_backend() == "cpu"}
  args = (q, prompt_layer["k"], prompt_layer["v"], prompt_valid, own_layer["k"],
          own_layer["v"], own_len)
  if mesh is None or kwargs["backend"] == "reference":
    return decode.decode_attention(*args, **kwargs)
  return decode.sharded_decode_attention(
      mesh, *args, head_axis="tensor" if heads_split else None, **kwargs)


def decode_step(cfg: ModelConfig, weights, prompt_cache, prompt_valid, own_cache, tokens,
                positions, slot, mesh=None, heads_split: bool = False):
  """Feeds one token per row, writing its key and value at own-cache `slot`.

  Args:
    cfg: model config.
    weights: `weights.prepare` output.
    prompt_cache: list per layer of {"k", "v": [groups, kv_heads, prompt_len, head_dim]}.
    prompt_valid: bool `[groups, prompt_len]`.
    own_cache: list per layer of {"k", "v": [rows, kv_heads, max_new, head_dim]}.
    tokens: int `[rows]`.
    positions: int `[rows]`, each token's position in its sequence.
    slot: int scalar, the own-cache slot of this step (the same for every row).
    mesh: the sampler's mesh or None; used by the Pallas decode attention (`shard_map`).
    heads_split: whether the caches' kv heads are split over the mesh's 'tensor' axis.
  Returns:
    (fp32 logits `[rows, vocab]`, the updated own cache).
  """
  rows = tokens.shape[0]
  x = jnp.take(weights["embedding"], tokens, axis=0)
  new_cache = []
  for layer, prompt_layer, own_layer in zip(weights["layers"], prompt_cache, own_cache):
    h = rms_norm(x, layer["input_norm"], cfg.rms_norm_eps)
    q, k, v = _qkv(cfg, layer, h)
    q = apply_rope(q[:, None], positions[:, None], cfg.rope_theta)[:, 0]
    k = apply_rope(k[:, None], positions[:, None], cfg.rope_theta)[:, 0]
    start = (0, 0, slot, 0)
    own_layer = {
        "k": jax.lax.dynamic_update_slice(own_layer["k"], k[:, :, None].astype(
            own_layer["k"].dtype), start),
        "v": jax.lax.dynamic_update_slice(own_layer["v"], v[:, :, None].astype(
            own_layer["v"].dtype), start),
    }
    new_cache.append(own_layer)
    out = _decode_attention(cfg, mesh, heads_split, q, prompt_layer, own_layer, prompt_valid,
                            slot + 1)
    x = x + out.reshape(rows, -1) @ layer["wo"]
    x = x + _mlp(layer, rms_norm(x, layer["post_norm"], cfg.rms_norm_eps))
  hidden = rms_norm(x, weights["final_norm"], cfg.rms_norm_eps)
  return logits_of(cfg, weights, hidden), new_cache
