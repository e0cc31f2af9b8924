"""Decode-ready weights: the model's parameters re-laid out once for fast sampling.

The training tree stacks every layer on a leading axis (for `nn.scan`) and keeps q/k/v and
gate/up as separate kernels. A decode step reads every weight once per token, so the sampler
unrolls the layers over separate per-layer arrays (no dynamic slice of a stacked weight, which
XLA would copy) and fuses q/k/v and gate/up into one matrix each (fewer, larger matmuls):

    {"embedding": [vocab, embed], "final_norm": [embed], "lm_head": [embed, vocab] or absent,
     "layers": [ {"input_norm": [embed], "wqkv": [embed, (heads + 2 kv_heads) head_dim],
                  "bqkv": [(heads + 2 kv_heads) head_dim], "wo": [heads head_dim, embed],
                  "post_norm": [embed], "w_gate_up": [embed, 2 mlp], "w_down": [mlp, embed]},
                 ... one dict per layer ] }

Everything is cast to the model's compute dtype, as Flax's Dense casts it on every call.
"""

import jax
import jax.numpy as jnp

from qmath_jax.model.config import ModelConfig


def _layer(cfg: ModelConfig, layers: dict, i: int) -> dict:
  e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  attn, mlp = layers["attn"], layers["mlp"]
  dtype = cfg.compute_dtype
  kernel = lambda name, heads: attn[name]["kernel"][i].reshape(e, heads * d)
  bias = lambda name, heads: attn[name]["bias"][i].reshape(heads * d)
  return {
      "input_norm": layers["input_norm"]["scale"][i].astype(dtype),
      "wqkv": jnp.concatenate([kernel("q_proj", h), kernel("k_proj", k), kernel("v_proj", k)],
                              axis=-1).astype(dtype),
      "bqkv": jnp.concatenate([bias("q_proj", h), bias("k_proj", k), bias("v_proj", k)]
                              ).astype(dtype),
      "wo": attn["o_proj"]["kernel"][i].reshape(h * d, e).astype(dtype),
      "post_norm": layers["post_attn_norm"]["scale"][i].astype(dtype),
      "w_gate_up": jnp.concatenate([mlp["gate_proj"]["kernel"][i], mlp["up_proj"]["kernel"][i]],
                                   axis=-1).astype(dtype),
      "w_down": mlp["down_proj"]["kernel"][i].astype(dtype),
  }


def check_params(cfg: ModelConfig, params) -> None:
  """Raises ValueError naming the first parameter whose shape does not fit `cfg`."""
  expected = {
      ("embedding",): (cfg.vocab_size, cfg.hidden_size),
      ("final_norm", "scale"): (cfg.hidden_size,),
      ("layers", "attn", "q_proj", "kernel"): (cfg.num_layers, cfg.hidden_size, cfg.num_heads,
                                                cfg.head_dim),
      ("layers", "attn", "k_proj", "kernel"): (cfg.num_layers, cfg.hidden_size,
                                                cfg.num_kv_heads, cfg.head_dim),
      ("layers", "mlp", "down_proj", "kernel"): (cfg.num_layers, cfg.intermediate_size,
                                                  cfg.hidden_size),
  }
  if not cfg.tie_embeddings:
    expected[("lm_head",)] = (cfg.hidden_size, cfg.vocab_size)
  for path, shape in expected.items():
    node = params
    for key in path:
      if not hasattr(node, "__getitem__") or key not in node:
        raise ValueError(f"params lack {'/'.join(path)} (expected shape {shape})")
      node = node[key]
    if tuple(node.shape) != shape:
      raise ValueError(f"params {'/'.join(path)} has shape {tuple(node.shape)}, expected {shape} "
                       "from the model config")


def prepare(cfg: ModelConfig, params) -> dict:
  """The decode layout above from the `Transformer` parameter tree (traceable; jit it)."""
  dtype = cfg.compute_dtype
  out = {
      "embedding": params["embedding"].astype(dtype),
      "final_norm": params["final_norm"]["scale"].astype(dtype),
      "layers": [_layer(cfg, params["layers"], i) for i in range(cfg.num_layers)],
  }
  if not cfg.tie_embeddings:
    out["lm_head"] = params["lm_head"].astype(dtype)
  return out


prepare_jit = jax.jit(prepare, static_argnums=0)
