"""The decode-time key/value cache: one preallocated buffer per stacked layer.

    {"k", "v": [layers, batch, cache_len, kv_heads, head_dim],
     "segment_ids": int32 [batch, cache_len]  (0 = empty slot or padding),
     "index": int32 []                         (next slot to write)}

Every sequence of the batch writes at the same slot; padding (left or right) is expressed by
segment id 0, so it is never attended to, and `positions` carry each token's true position.
"""

import jax
import jax.numpy as jnp

from qmath_jax.model.config import ModelConfig


def init_cache(cfg: ModelConfig, batch: int, cache_len: int, dtype=None) -> dict:
  """An empty cache for `batch` sequences of up to `cache_len` tokens."""
  dtype = cfg.compute_dtype if dtype is None else jnp.dtype(dtype)
  shape = (cfg.num_layers, batch, cache_len, cfg.num_kv_heads, cfg.head_dim)
  return {
      "k": jnp.zeros(shape, dtype),
      "v": jnp.zeros(shape, dtype),
      "segment_ids": jnp.zeros((batch, cache_len), jnp.int32),
      "index": jnp.zeros((), jnp.int32),
  }


def updated(cache: dict, layer_caches: dict, segment_ids: jax.Array, num_new: int) -> dict:
  """The cache after `num_new` tokens were written at `cache["index"]`."""
  return {
      "k": layer_caches["k"],
      "v": layer_caches["v"],
      "segment_ids": segment_ids,
      "index": cache["index"] + num_new,
  }
