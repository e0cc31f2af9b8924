"""The Qwen2.5 decoder: embeddings, scanned decoder layers, final norm, LM head.

    model = Transformer(cfg)
    params = model.init(rng, tokens)["params"]
    logits = model.apply({"params": params}, tokens, positions, segment_ids)   # fp32
    logits, cache = model.apply({"params": params}, tokens, positions, segment_ids, cache=cache)

Packed rows: `segment_ids` `[batch, length]` (0 = padding) keep attention inside a segment, and
`positions` restart per segment (derived from `segment_ids` when not given).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from qmath_jax.model import attention
from qmath_jax.model import kv_cache
from qmath_jax.model.config import ModelConfig
from qmath_jax.model.layers import DecoderLayer, RMSNorm, _init

_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _layer_stack(cfg: ModelConfig):
  layer = DecoderLayer
  if cfg.remat_policy != "none":
    layer = nn.remat(layer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
  return nn.scan(
      layer, variable_axes={"params": 0}, split_rngs={"params": True},
      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
      length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})


class Transformer(nn.Module):
  """Qwen2.5 causal LM."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None, *, cache=None,
               return_hidden=False):
    """Runs the decoder.

    Args:
      tokens: int `[batch, length]`.
      positions: int `[batch, length]`; default: restart per segment (with a cache, count the
        earlier tokens of each token's segment in the cache).
      segment_ids: int `[batch, length]`, 0 = padding; default: all ones (one segment).
      cache: a `kv_cache.init_cache` dict; the tokens are written at `cache["index"]` and
        attend to every earlier slot of their segment.
      return_hidden: also return the final-norm hidden states `[batch, length, hidden]`.
    Returns:
      fp32 logits `[batch, length, vocab]`, then the hidden states if asked, then the updated
      cache if one was given.
    """
    cfg = self.cfg
    packed = segment_ids is not None
    if segment_ids is None:
      segment_ids = jnp.ones(tokens.shape, jnp.int32)
    if positions is None and cache is None:
      positions = attention.segment_positions(segment_ids)
    length = tokens.shape[1]

    embedding = self.param("embedding", _init(("vocab", "embed")),
                           (cfg.vocab_size, cfg.hidden_size), cfg.weight_dtype)
    # The lookup reads rows split over vocabulary shards only (as FSDP gathers any weight
    # before use), so its output comes out split like the tokens: batch over the batch axes.
    table = nn.with_logical_constraint(embedding, ("vocab", None))
    x = jnp.take(table, tokens, axis=0).astype(cfg.compute_dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    if cache is None:
      layer_caches, cache_index = None, None
      mask = None
      if cfg.attention == "xla" or (cfg.attention == "cudnn" and packed):
        slots = jnp.arange(length, dtype=jnp.int32)
        mask = attention.make_mask(segment_ids, segment_ids, slots, slots)
      layer_cfg = cfg if mask is None else cfg.replace(attention="xla")
    else:
      cache_index = cache["index"]
      layer_caches = {"k": cache["k"], "v": cache["v"]}
      kv_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids,
                                                 (0, cache_index))
      q_slots = cache_index + jnp.arange(length, dtype=jnp.int32)
      kv_slots = jnp.arange(kv_segments.shape[1], dtype=jnp.int32)
      mask = attention.make_mask(segment_ids, kv_segments, q_slots, kv_slots)
      if positions is None:  # the slots each token sees, itself included, less one
        positions = jnp.maximum(jnp.sum(mask, axis=-1, dtype=jnp.int32) - 1, 0)
      layer_cfg = cfg

    x, layer_caches = _layer_stack(layer_cfg)(layer_cfg, name="layers")(
        x, layer_caches, positions, segment_ids, mask, cache_index)
    hidden = RMSNorm(cfg, name="final_norm")(x)

    if cfg.tie_embeddings:
      head = embedding.T
    else:
      head = self.param("lm_head", _init(("embed", "vocab")),
                        (cfg.hidden_size, cfg.vocab_size), cfg.weight_dtype)
    logits = jnp.einsum("bte,ev->btv", hidden, head.astype(cfg.compute_dtype),
                        preferred_element_type=jnp.float32)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

    outputs = (logits,)
    if return_hidden:
      outputs += (hidden,)
    if cache is not None:
      outputs += (kv_cache.updated(cache, layer_caches, kv_segments, length),)
    return outputs[0] if len(outputs) == 1 else outputs


def init_params(cfg: ModelConfig, rng: jax.Array, boxed: bool = False):
  """Fresh parameters. With boxed=True they keep their `nn.LogicallyPartitioned` axis names."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = Transformer(cfg).init(rng, tokens)["params"]
  return params if boxed else nn.unbox(params)


def param_logical_axes(cfg: ModelConfig):
  """The logical axis names of every parameter (a PartitionSpec tree), without allocating."""
  boxed = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), boxed=True))
  return nn.get_partition_spec(boxed)
