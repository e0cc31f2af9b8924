"""Named model shapes: the released Qwen2.5-Math checkpoints and tiny sizes for tests and demos."""

from qmath_jax.model.config import ModelConfig

_PRESETS = {
    "qwen2.5-math-1.5b": dict(vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12,
                              num_kv_heads=2, head_dim=128, intermediate_size=8960,
                              tie_embeddings=True),
    "qwen2.5-math-7b": dict(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
                            num_kv_heads=4, head_dim=128, intermediate_size=18944,
                            tie_embeddings=False),
    "qwen2.5-math-72b": dict(vocab_size=152064, hidden_size=8192, num_layers=80, num_heads=64,
                             num_kv_heads=8, head_dim=128, intermediate_size=29568,
                             tie_embeddings=False),
    # Tiny shapes keep grouped KV heads (4 / 2) so every code path of the large models runs.
    "tiny": dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, intermediate_size=128, tie_embeddings=False),
    "tiny-tied": dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16, intermediate_size=128, tie_embeddings=True),
    # The CPU demo: a few hundred thousand parameters, trains in minutes on two cores.
    "demo": dict(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                 head_dim=32, intermediate_size=384, tie_embeddings=True,
                 max_position_embeddings=1024),
}


def names() -> list[str]:
  return sorted(_PRESETS)


def get_config(name: str, **overrides) -> ModelConfig:
  """Returns the preset `name` with `overrides` (any ModelConfig field) applied."""
  if name not in _PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {', '.join(names())}")
  return ModelConfig(**{**_PRESETS[name], **overrides})
