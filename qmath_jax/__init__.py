"""qmath_jax: the Qwen2.5-Math self-improvement pipeline in JAX/Flax."""

__version__ = "0.1.0"
