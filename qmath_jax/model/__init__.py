"""Qwen2.5 decoder in Flax linen, its presets and its KV cache."""

from qmath_jax.model.config import ModelConfig
from qmath_jax.model.kv_cache import init_cache
from qmath_jax.model.presets import get_config
from qmath_jax.model.transformer import Transformer, init_params, param_logical_axes

__all__ = ["ModelConfig", "Transformer", "get_config", "init_cache", "init_params", "param_logical_axes"]
