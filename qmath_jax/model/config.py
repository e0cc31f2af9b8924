"""The shape and numerics of a Qwen2.5 decoder."""

import dataclasses

import jax.numpy as jnp

ATTENTION_IMPLS = ("xla", "pallas", "cudnn")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Qwen2.5 architecture hyper-parameters plus how to compute with them.

  All Qwen2.5 models share: pre-RMSNorm, RoPE, SwiGLU MLP, bias on q/k/v only, no sliding window.
  """
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = False
  max_position_embeddings: int = 4096
  dtype: str = "float32"        # activations and matmul inputs
  param_dtype: str = "float32"  # stored parameters (master weights)
  attention: str = "xla"        # one of ATTENTION_IMPLS
  remat_policy: str = "none"    # one of REMAT_POLICIES
  bos_token_id: int | None = None
  eos_token_id: int = 151643

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(f"attention={self.attention!r}; expected one of {ATTENTION_IMPLS}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"{field}={getattr(self, field)!r}; expected float32, bfloat16 or float16")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    e, h, k, d, m = (self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim,
                     self.intermediate_size)
    attn = e * h * d + 2 * e * k * d + (h + 2 * k) * d + h * d * e
    layer = attn + 3 * e * m + 2 * e
    embed = self.vocab_size * e * (1 if self.tie_embeddings else 2)
    return self.num_layers * layer + embed + e

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)
