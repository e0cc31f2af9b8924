"""Reward model (SPEC §3.2): the SFT decoder with its LM head replaced by a scalar head.

    rm = make_reward_model(cfg)
    params = rm.init(rng, tokens)["params"]      # {"backbone": ..., "score_head": ...}
    params = with_backbone(params, sft_params)   # start from the SFT model
    scores = rm.apply({"params": params}, tokens, positions, segment_ids)  # fp32 [batch]

The head, Linear(H, H) -> ReLU -> Linear(H, 1) as in the released Qwen2.5-Math-RM, runs in fp32
on the final-norm hidden state of each row's last non-padding token. The backbone's LM-head
logits are unused, so XLA drops that matmul under jit; an untied `lm_head` parameter stays in
the tree (and out of the gradient's effect) so SFT checkpoints load unchanged.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from qmath_jax.model.config import ModelConfig
from qmath_jax.model.transformer import Transformer


def last_token_index(segment_ids: jax.Array) -> jax.Array:
  """int32 `[batch]`: index of each row's last non-padding token (0 for an all-padding row).

  Args:
    segment_ids: int `[batch, length]`, 0 = padding.
  """
  length = segment_ids.shape[1]
  slots = jnp.arange(length, dtype=jnp.int32)
  return jnp.max(jnp.where(segment_ids != 0, slots, 0), axis=1)


class ScoreHead(nn.Module):
  """`[batch, hidden]` -> fp32 `[batch]`: Linear(H, H) -> ReLU -> Linear(H, 1)."""
  hidden_size: int

  @nn.compact
  def __call__(self, h):
    def dense(name, features, axes):
      return nn.Dense(features, name=name, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=nn.with_logical_partitioning(
                          nn.initializers.normal(0.02), axes),
                      bias_init=nn.with_logical_partitioning(
                          nn.initializers.zeros, axes[1:]))

    h = nn.relu(dense("dense", self.hidden_size, ("embed", "mlp"))(h.astype(jnp.float32)))
    return dense("out", 1, ("mlp", None))(h)[:, 0]


class RewardModel(nn.Module):
  """Scores each row: backbone hidden state at the last token -> ScoreHead.

  Attributes:
    backbone: a decoder whose `__call__(tokens, positions, segment_ids, return_hidden=True)`
      returns `(logits, hidden [batch, length, hidden])` (the project's Transformer).
    hidden_size: the backbone's hidden width.
  """
  backbone: nn.Module
  hidden_size: int

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None):
    """tokens, positions, segment_ids int `[batch, length]` -> float32 scores `[batch]`."""
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens)
    _, hidden = self.backbone(tokens, positions, segment_ids, return_hidden=True)
    last = last_token_index(segment_ids)
    at_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return ScoreHead(self.hidden_size, name="score_head")(at_last)


def make_reward_model(cfg: ModelConfig) -> RewardModel:
  """The project's Transformer under a score head."""
  return RewardModel(backbone=Transformer(cfg), hidden_size=cfg.hidden_size)


def with_backbone(rm_params: Any, lm_params: Any) -> Any:
  """RM parameters whose backbone is `lm_params` (e.g. the SFT model's), head kept.

  Raises:
    ValueError: the LM tree's structure or shapes differ from the RM backbone's.
  """
  current = rm_params["backbone"]
  if jax.tree.structure(current) != jax.tree.structure(lm_params):
    raise ValueError("LM parameters do not match the reward model's backbone structure: "
                     f"{jax.tree.structure(lm_params)} vs {jax.tree.structure(current)}")
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(current),
                          jax.tree.leaves(lm_params)):
    if a.shape != b.shape:
      raise ValueError(f"backbone parameter {jax.tree_util.keystr(path)}: LM shape {b.shape} "
                       f"!= reward model shape {a.shape}")
  return {**rm_params, "backbone": lm_params}
