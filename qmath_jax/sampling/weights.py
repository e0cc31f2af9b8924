"""Decode-ready weights: the model's parameters re-laid out once for fast sampling.

The training tree stacks every layer on a leading axis (for `nn.scan`) and keeps q/k/v and
gate/up as separate kernels. A decode step reads every weight once per token, so the sampler
unrolls the layers over separate per-layer arrays (no dynamic slice of a stacked weight, which
XLA would copy) and fuses q/k/v and gate/up into one matrix each (fewer, larger matmuls).
With `a` attention shards and `m` MLP shards (`TensorLayout`; 1 and 1 off a tensor-parallel
mesh), each fused matrix holds one block per shard, so that splitting it over the mesh's
'tensor' axis gives every device whole heads and the gate and up columns of the same units:

    {"embedding": [vocab, embed], "final_norm": [embed], "lm_head": [embed, vocab] or absent,
     "layers": [ {"input_norm": [embed],
                  "wqkv": [embed, a, (heads + 2 kv_heads) / a * head_dim]
                          (block i: q heads, then k heads, then v heads of shard i),
                  "bqkv": [a, (heads + 2 kv_heads) / a * head_dim],
                  "wo": [heads head_dim, embed], "post_norm": [embed],
                  "w_gate_up": [embed, m, 2 mlp / m] (block i: gate, then up units of shard i),
                  "w_down": [mlp, embed]},
                 ... one dict per layer ] }

`partition_specs` gives the matching shardings: heads, MLP units and vocabulary over 'tensor'
(Megatron-style; XLA adds the all-reduces after `wo`, `w_down` and the vocabulary-split
embedding lookup). Everything is cast to the model's compute dtype, as Flax's Dense casts it on
every call.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from qmath_jax.model.config import ModelConfig

TENSOR_AXIS = "tensor"


@dataclasses.dataclass(frozen=True)
class TensorLayout:
  """How many ways the decode weights split over the mesh's tensor axis.

  Attributes:
    attn: attention shards: the tensor axis size when it divides the kv heads, else 1
      (attention weights and the KV cache then stay whole on every device).
    mlp: MLP shards: the tensor axis size when it divides the MLP width, else 1.
    vocab: vocabulary shards of the embedding and LM head, likewise.
  """
  attn: int = 1
  mlp: int = 1
  vocab: int = 1

  @classmethod
  def for_mesh(cls, cfg: ModelConfig, mesh) -> "TensorLayout":
    size = 1 if mesh is None else dict(mesh.shape).get(TENSOR_AXIS, 1)
    fits = lambda n: size if n % size == 0 else 1
    return cls(attn=fits(cfg.num_kv_heads), mlp=fits(cfg.intermediate_size),
               vocab=fits(cfg.vocab_size))


def _layer(cfg: ModelConfig, layers: dict, i: int, layout: TensorLayout) -> dict:
  e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  a, m = layout.attn, layout.mlp
  attn, mlp = layers["attn"], layers["mlp"]
  dtype = cfg.compute_dtype
  kernel = lambda name, heads: attn[name]["kernel"][i].reshape(e, a, heads // a * d)
  bias = lambda name, heads: attn[name]["bias"][i].reshape(a, heads // a * d)
  unit = lambda name: mlp[name]["kernel"][i].reshape(e, m, cfg.intermediate_size // m)
  return {
      "input_norm": layers["input_norm"]["scale"][i].astype(dtype),
      "wqkv": jnp.concatenate([kernel("q_proj", h), kernel("k_proj", k), kernel("v_proj", k)],
                              axis=-1).astype(dtype),
      "bqkv": jnp.concatenate([bias("q_proj", h), bias("k_proj", k), bias("v_proj", k)],
                              axis=-1).astype(dtype),
      "wo": attn["o_proj"]["kernel"][i].reshape(h * d, e).astype(dtype),
      "post_norm": layers["post_attn_norm"]["scale"][i].astype(dtype),
      "w_gate_up": jnp.concatenate([unit("gate_proj"), unit("up_proj")], axis=-1).astype(dtype),
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


def prepare(cfg: ModelConfig, params, layout: TensorLayout = TensorLayout()) -> dict:
  """The decode layout above from the `Transformer` parameter tree (traceable; jit it)."""
  dtype = cfg.compute_dtype
  out = {
      "embedding": params["embedding"].astype(dtype),
      "final_norm": params["final_norm"]["scale"].astype(dtype),
      "layers": [_layer(cfg, params["layers"], i, layout) for i in range(cfg.num_layers)],
  }
  if not cfg.tie_embeddings:
    out["lm_head"] = params["lm_head"].astype(dtype)
  return out


def partition_specs(cfg: ModelConfig, layout: TensorLayout) -> dict:
  """PartitionSpecs with the structure of `prepare`'s output (whole where a layout says 1)."""
  over = lambda shards, *spec: P(*spec) if shards > 1 else P()
  t = TENSOR_AXIS
  layer = {
      "input_norm": P(), "post_norm": P(),
      "wqkv": over(layout.attn, None, t, None), "bqkv": over(layout.attn, t, None),
      "wo": over(layout.attn, t, None),
      "w_gate_up": over(layout.mlp, None, t, None), "w_down": over(layout.mlp, t, None),
  }
  specs = {"embedding": over(layout.vocab, t, None), "final_norm": P(),
           "layers": [dict(layer) for _ in range(cfg.num_layers)]}
  if not cfg.tie_embeddings:
    specs["lm_head"] = over(layout.vocab, None, t)
  return specs


prepare_jit = jax.jit(prepare, static_argnums=(0, 2))
