"""Our parameter tree <-> Hugging Face Qwen2 tensor names, shapes and layouts.

HF linear weights are `[out, in]`; ours are `[in, ...out]` with heads split out, and every
per-layer tensor is stacked on a leading `layers` axis (the scanned decoder).
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from qmath_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter leaf: its path in our tree, its HF name (with `{i}` for the layer index),
  the HF tensor shape, and the conversions between the two layouts (per layer)."""
  path: tuple[str, ...]
  hf_name: str
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]

  @property
  def stacked(self) -> bool:
    return "{i}" in self.hf_name


def _same(x):
  return x


def _t(x):
  return x.T


def entries(cfg: ModelConfig) -> list[Entry]:
  """Every parameter of `cfg`'s model, in HF checkpoint order."""
  e, h, k, d, m = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                   cfg.intermediate_size)
  layer = "model.layers.{i}."

  def proj(name, heads):
    return [
        Entry(("layers", "attn", name, "kernel"), f"{layer}self_attn.{name}.weight", (heads * d, e),
              lambda w, n=heads: w.T.reshape(e, n, d), lambda w, n=heads: w.reshape(e, n * d).T),
        Entry(("layers", "attn", name, "bias"), f"{layer}self_attn.{name}.bias", (heads * d,),
              lambda b, n=heads: b.reshape(n, d), lambda b, n=heads: b.reshape(n * d)),
    ]

  table = [Entry(("embedding",), "model.embed_tokens.weight", (cfg.vocab_size, e), _same, _same)]
  table += [
      Entry(("layers", "input_norm", "scale"), f"{layer}input_layernorm.weight", (e,), _same, _same),
      *proj("q_proj", h), *proj("k_proj", k), *proj("v_proj", k),
      Entry(("layers", "attn", "o_proj", "kernel"), f"{layer}self_attn.o_proj.weight", (e, h * d),
            lambda w: w.T.reshape(h, d, e), lambda w: w.reshape(h * d, e).T),
      Entry(("layers", "post_attn_norm", "scale"), f"{layer}post_attention_layernorm.weight", (e,),
            _same, _same),
      Entry(("layers", "mlp", "gate_proj", "kernel"), f"{layer}mlp.gate_proj.weight", (m, e), _t, _t),
      Entry(("layers", "mlp", "up_proj", "kernel"), f"{layer}mlp.up_proj.weight", (m, e), _t, _t),
      Entry(("layers", "mlp", "down_proj", "kernel"), f"{layer}mlp.down_proj.weight", (e, m), _t, _t),
  ]
  table.append(Entry(("final_norm", "scale"), "model.norm.weight", (e,), _same, _same))
  if not cfg.tie_embeddings:
    table.append(Entry(("lm_head",), "lm_head.weight", (cfg.vocab_size, e), _t, _t))
  return table


def get_path(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: dict, path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
