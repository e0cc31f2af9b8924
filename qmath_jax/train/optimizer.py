"""AdamW with warmup and decay to a floor, global-norm clipping, no decay on norms and biases.

Mixed precision lives in the model config, not here: `ModelConfig(dtype="bfloat16",
param_dtype="float32")` computes in bf16 while parameters, gradients and both Adam moments stay
fp32 (master weights); `dtype="float32"` runs everything in fp32.
"""

import dataclasses
from typing import Any

import jax
import optax

DECAY_SHAPES = ("cosine", "linear", "constant")
NO_DECAY_LEAF_NAMES = ("bias", "scale")  # biases and RMSNorm scales


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer hyper-parameters.

  Attributes:
    peak_lr: learning rate after warmup (SPEC SFT: 2e-5 for 1.5B/7B, 5e-6 for 72B).
    end_lr: floor the decay ends at (SPEC SFT: 7e-7).
    warmup_steps: linear warmup from 0 to `peak_lr` (not reported in SPEC; a config value).
    total_steps: warmup plus decay steps; the rate stays at `end_lr` afterwards.
    decay: "cosine", "linear" or "constant" (stay at peak after warmup).
    weight_decay: AdamW decoupled decay on matrices and embeddings (not reported: 0.1 here).
    b1, b2, eps: Adam moments.
    clip_norm: global gradient-norm clip; None or <= 0 disables it.
  """
  peak_lr: float = 2e-5
  end_lr: float = 7e-7
  warmup_steps: int = 100
  total_steps: int = 1000
  decay: str = "cosine"
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float | None = 1.0


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """step -> learning rate: linear warmup to `peak_lr`, then the decay shape to `end_lr`."""
  if cfg.decay not in DECAY_SHAPES:
    raise ValueError(f"unknown decay {cfg.decay!r}; expected one of {DECAY_SHAPES}")
  if cfg.warmup_steps < 0 or cfg.total_steps < cfg.warmup_steps:
    raise ValueError(f"need 0 <= warmup_steps ({cfg.warmup_steps}) <= total_steps "
                     f"({cfg.total_steps})")
  decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
  if cfg.decay == "cosine":
    after = optax.cosine_decay_schedule(cfg.peak_lr, decay_steps,
                                        alpha=cfg.end_lr / cfg.peak_lr if cfg.peak_lr else 0.0)
  elif cfg.decay == "linear":
    after = optax.linear_schedule(cfg.peak_lr, cfg.end_lr, decay_steps)
  else:
    after = optax.constant_schedule(cfg.peak_lr)
  if cfg.warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, cfg.peak_lr, cfg.warmup_steps)
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def weight_decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: everything but biases and norm scales.

  Decided by leaf name, not rank, because scanned layers give a norm scale a leading
  `layers` axis.
  """
  def decays(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", None))
    return name not in NO_DECAY_LEAF_NAMES

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule): clip by global norm, then AdamW with the masked decay."""
  schedule = make_schedule(cfg)
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=weight_decay_mask)
  if cfg.clip_norm is None or cfg.clip_norm <= 0:
    return adamw, schedule
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw), schedule
