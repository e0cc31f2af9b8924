"""Our parameter tree <-> Hugging Face Qwen2 tensor names, shapes and layouts.

HF linear weights are `[out, in]`; ours are `[in, ...out]` with heads split out, and every
per-layer tensor is stacked on a leading `layers` axis (the scanned decoder).

The reward model (`Qwen2ForRewardModel`, e.g. Qwen2.5-Math-RM-72B) stores the same `model.*`
tensors, which sit under `backbone` in our `train.reward_model.RewardModel` tree, and its score
head `score.0` / `score.2` (Linear(H, H) -> ReLU -> Linear(H, 1), with biases). It has no
`lm_head.weight`; our untied backbone keeps an `lm_head` leaf that the RM never reads: it is
zeros on load and not written on save (`Entry.stored` False).
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from qmath_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter leaf: its path in our tree, its HF name (with `{i}` for the layer index),
  the HF tensor shape, and the conversions between the two layouts (per layer).

  `dtype` fixes our leaf's dtype whatever the load's (the RM's fp32 score head); `stored` False
  marks a leaf of ours with no HF tensor (zeros on load, skipped on save)."""
  path: tuple[str, ...]
  hf_name: str
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  dtype: str | None = None
  stored: bool = True

  @property
  def stacked(self) -> bool:
    return "{i}" in self.hf_name


def _same(x):
  return x


def _t(x):
  return x.T


def entries(cfg: ModelConfig, reward_model: bool = False) -> list[Entry]:
  """Every parameter of `cfg`'s causal LM, or with `reward_model` of its reward model (backbone
  under `backbone`, then the score head), in HF checkpoint order."""
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
    table.append(Entry(("lm_head",), "lm_head.weight", (cfg.vocab_size, e), _t, _t,
                       stored=not reward_model))
  if not reward_model:
    return table
  table = [dataclasses.replace(entry, path=("backbone", *entry.path)) for entry in table]
  return table + [
      Entry(("score_head", "dense", "kernel"), "score.0.weight", (e, e), _t, _t, "float32"),
      Entry(("score_head", "dense", "bias"), "score.0.bias", (e,), _same, _same, "float32"),
      Entry(("score_head", "out", "kernel"), "score.2.weight", (1, e), _t, _t, "float32"),
      Entry(("score_head", "out", "bias"), "score.2.bias", (1,), _same, _same, "float32"),
  ]


def get_path(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: dict, path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
