"""Loss registry: `get_loss(name, model, **options) -> loss_fn(params, batch, rng) -> (loss, aux)`.

Registered: `lm`, `sft`, `rm_listwise`, `grpo`. Every loss computes log-probabilities and
scores in fp32 and returns `aux["weight"]`, the count its loss is a mean over (tokens,
sequences or lists). The step factory uses it to combine microbatches exactly:
`loss = sum_i loss_i * weight_i / sum_i weight_i`, so k microbatches equal one batch k times as
large. An aux metric that is a mean over another count (pairs, tokens) gives that count in
`aux["metric_weights"][name]`, so it combines exactly too.

Batch layouts (int32 unless said otherwise; "target-aligned" means index t describes token t,
which is predicted from position t - 1):
  lm / sft: tokens, positions, segment_ids (0 = padding) `[batch, length]`; loss_mask
    `[batch, length]` target-aligned, 1 on assistant tokens (and their <|im_end|>).
  rm_listwise: tokens, positions, segment_ids `[batch, list_size, length]`, one response per
    row (right padded); labels `[batch, list_size]` (1 = correct answer); optional
    response_mask `[batch, list_size]` (0 = an empty slot).
  grpo: tokens, positions, segment_ids `[batch, length]`; loss_mask target-aligned, 1 on
    sampled completion tokens (0 on the prompt, interpreter output and padding);
    old_logprobs, ref_logprobs float32 `[batch, length]` target-aligned; advantages float32
    `[batch]` (per sequence) or `[batch, length]` (per token, target-aligned).
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]
NORMALISATIONS = ("token", "sequence")

_REGISTRY: dict[str, Callable[..., LossFn]] = {}


def register_loss(name: str):
  """Decorator: registers `factory(model, **options) -> loss_fn` under `name`."""

  def decorate(factory):
    if name in _REGISTRY:
      raise ValueError(f"loss {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory

  return decorate


def loss_names() -> list[str]:
  return sorted(_REGISTRY)


def get_loss(name: str, model: nn.Module, **options) -> LossFn:
  """Builds the registered loss `name` for `model` (a linen module) with its options."""
  if name not in _REGISTRY:
    raise KeyError(f"unknown loss {name!r}; registered losses: {', '.join(loss_names())}")
  return _REGISTRY[name](model, **options)


def _require(batch: Mapping[str, Any], keys, loss: str) -> None:
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(f"loss {loss!r} needs batch fields {missing}; got {sorted(batch)}")


# ----------------------------------------------------------------------------- token helpers


def target_logprobs(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Log-probability of each token given the tokens before it, in fp32.

  Args:
    logits: `[batch, length, vocab]`, position t predicting token t + 1.
    tokens: int `[batch, length]`.

  Returns:
    (logprobs, log_z), both float32 `[batch, length]` and target-aligned: entry t is
    log p(tokens[t] | tokens[:t]) and the log-partition of the logits that predicted it;
    entry 0 (no prediction) is 0.
  """
  logits = logits.astype(jnp.float32)[:, :-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
  pad = jnp.zeros(tokens.shape[:1] + (1,), jnp.float32)
  return (jnp.concatenate([pad, picked - log_z], axis=1),
          jnp.concatenate([pad, log_z], axis=1))


def target_mask(segment_ids: jax.Array, loss_mask: jax.Array | None = None) -> jax.Array:
  """float32 `[batch, length]` target-aligned: 1 where token t is predicted inside its segment.

  Token t counts when it is not padding, token t - 1 is in the same segment (so the first
  token of each packed segment is never a target), and `loss_mask[t]` is set when given.
  """
  same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
  mask = jnp.concatenate([jnp.zeros_like(same[:, :1]), same], axis=1)
  if loss_mask is not None:
    mask = mask & (loss_mask != 0)
  return mask.astype(jnp.float32)


def _segment_mean(values: jax.Array, mask: jax.Array, segment_ids: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """Mean over segments of each segment's masked token-mean.

  Args:
    values, mask: float32 `[batch, length]`.
    segment_ids: int `[batch, length]`; a segment is a (row, segment id) pair.

  Returns:
    (mean over segments that have at least one masked token, number of such segments).
  """
  batch, length = values.shape
  ids = (jnp.arange(batch)[:, None] * (length + 1) + segment_ids).reshape(-1)
  num = batch * (length + 1)
  sums = jax.ops.segment_sum((values * mask).reshape(-1), ids, num_segments=num)
  counts = jax.ops.segment_sum(mask.reshape(-1), ids, num_segments=num)
  present = counts > 0
  per_segment = jnp.where(present, sums / jnp.where(present, counts, 1.0), 0.0)
  num_segments = present.sum().astype(jnp.float32)
  return per_segment.sum() / jnp.maximum(num_segments, 1.0), num_segments


def _reduce(values: jax.Array, mask: jax.Array, segment_ids: jax.Array, normalisation: str
            ) -> tuple[jax.Array, jax.Array]:
  """(mean, weight) of `values` under `mask`: token-mean or sequence-mean."""
  if normalisation == "token":
    count = mask.sum()
    return (values * mask).sum() / jnp.maximum(count, 1.0), count
  return _segment_mean(values, mask, segment_ids)


def _check_normalisation(normalisation: str) -> None:
  if normalisation not in NORMALISATIONS:
    raise ValueError(f"normalisation={normalisation!r}; expected one of {NORMALISATIONS}")


def _lm_inputs(batch):
  tokens = batch["tokens"]
  segment_ids = batch.get("segment_ids")
  if segment_ids is None:
    segment_ids = jnp.ones_like(tokens)
  return tokens, batch.get("positions"), segment_ids


# ----------------------------------------------------------------------------- lm and sft


def _next_token_loss(model: nn.Module, name: str, use_loss_mask: bool, z_loss: float,
                     normalisation: str) -> LossFn:
  _check_normalisation(normalisation)

  def loss_fn(params, batch, rng):
    del rng  # deterministic model (no dropout)
    _require(batch, ("tokens", "loss_mask") if use_loss_mask else ("tokens",), name)
    tokens, positions, segment_ids = _lm_inputs(batch)
    logits = model.apply({"params": params}, tokens, positions, segment_ids)
    logprobs, log_z = target_logprobs(logits, tokens)
    mask = target_mask(segment_ids, batch["loss_mask"] if use_loss_mask else None)
    ce, weight = _reduce(-logprobs, mask, segment_ids, normalisation)
    loss = ce
    aux = {"ce": ce, "weight": weight}
    if z_loss:
      z, _ = _reduce(jnp.square(log_z), mask, segment_ids, normalisation)
      loss = loss + z_loss * z
      aux["z_loss"] = z
    return loss, aux

  return loss_fn


@register_loss("lm")
def lm_loss(model: nn.Module, *, z_loss: float = 0.0, normalisation: str = "token") -> LossFn:
  """Next-token cross-entropy over every non-padding token of packed rows.

  Args:
    model: LM whose apply returns logits `[batch, length, vocab]`.
    z_loss: coefficient of the mean squared log-partition (0 disables it).
    normalisation: "token" = mean over every target token of the batch; "sequence" = mean
      over packed segments of each segment's token-mean.
  """
  return _next_token_loss(model, "lm", False, z_loss, normalisation)


@register_loss("sft")
def sft_loss(model: nn.Module, *, z_loss: float = 0.0, normalisation: str = "token") -> LossFn:
  """Cross-entropy on assistant tokens only (`loss_mask`); options as for `lm`."""
  return _next_token_loss(model, "sft", True, z_loss, normalisation)


# ----------------------------------------------------------------------------- reward model


def listwise_ranking_loss(scores: jax.Array, labels: jax.Array,
                          response_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """SPEC §3.2: mean over lists of -1/(k(n-k)) sum_{pos,neg} log sigmoid(r_pos - r_neg).

  Args:
    scores: float `[batch, list_size]` reward scores.
    labels: `[batch, list_size]`, non-zero = correct response.
    response_mask: `[batch, list_size]`, 0 = empty slot (default: all present).

  Returns:
    (loss, aux): loss is the mean over lists with at least one positive and one negative
    (others carry no pair and are left out); aux has `weight` (lists counted), `pair_accuracy`
    (share of pairs ranked right), the mean positive and negative scores, and
    `metric_weights` (pairs, positives and negatives: what those three are means over).
  """
  scores = scores.astype(jnp.float32)
  present = jnp.ones_like(labels, bool) if response_mask is None else response_mask != 0
  pos = (labels != 0) & present
  neg = (labels == 0) & present
  pairs = (pos[:, :, None] & neg[:, None, :]).astype(jnp.float32)  # [batch, pos i, neg j]
  margin = scores[:, :, None] - scores[:, None, :]
  num_pairs = pairs.sum(axis=(1, 2))
  per_list = -(pairs * jax.nn.log_sigmoid(margin)).sum(axis=(1, 2)) / jnp.maximum(num_pairs, 1.0)
  valid = (num_pairs > 0).astype(jnp.float32)
  num_lists = valid.sum()
  loss = (per_list * valid).sum() / jnp.maximum(num_lists, 1.0)
  pos_f, neg_f = pos.astype(jnp.float32), neg.astype(jnp.float32)
  aux = {
      "weight": num_lists,
      "pair_accuracy": (pairs * (margin > 0)).sum() / jnp.maximum(num_pairs.sum(), 1.0),
      "score_pos": (scores * pos_f).sum() / jnp.maximum(pos_f.sum(), 1.0),
      "score_neg": (scores * neg_f).sum() / jnp.maximum(neg_f.sum(), 1.0),
      "metric_weights": {"pair_accuracy": num_pairs.sum(), "score_pos": pos_f.sum(),
                         "score_neg": neg_f.sum()},
  }
  return loss, aux


@register_loss("rm_listwise")
def rm_listwise_loss(model: nn.Module) -> LossFn:
  """Listwise ranking loss over each query's responses, all scored in one forward.

  Args:
    model: a `reward_model.RewardModel` (apply returns float32 scores `[rows]`).
  """

  def loss_fn(params, batch, rng):
    del rng
    _require(batch, ("tokens", "labels"), "rm_listwise")
    tokens = batch["tokens"]
    if tokens.ndim != 3:
      raise ValueError(f"rm_listwise: tokens must be [batch, list_size, length], got "
                       f"{tokens.shape}")
    batch_size, list_size, length = tokens.shape
    flat = lambda x: None if x is None else x.reshape(batch_size * list_size, length)
    scores = model.apply({"params": params}, flat(tokens), flat(batch.get("positions")),
                         flat(batch.get("segment_ids")))
    return listwise_ranking_loss(scores.reshape(batch_size, list_size), batch["labels"],
                                 batch.get("response_mask"))

  return loss_fn


# ----------------------------------------------------------------------------- GRPO


def group_normalised_advantages(rewards: jax.Array, scale_by_std: bool = True,
                                eps: float = 1e-6) -> jax.Array:
  """SPEC §3.3: (r_i - mean(r)) / std(r) within each group; r_i - mean(r) without scaling.

  Args:
    rewards: float `[num_groups, group_size]`.
    scale_by_std: divide by the group's (population) standard deviation (SPEC); False gives
      the "Dr. GRPO" advantage r_i - mean(r), which leaves low-variance groups small.
    eps: added to the standard deviation.

  Returns:
    float32 `[num_groups, group_size]`. A group whose rewards are all equal gets exactly 0
    in both settings (its fp32 mean can be an ulp off the rewards, which `/ (std + eps)` would
    otherwise blow up to a few hundredths).
  """
  rewards = rewards.astype(jnp.float32)
  centred = rewards - rewards.mean(axis=-1, keepdims=True)
  if scale_by_std:
    centred = centred / (rewards.std(axis=-1, keepdims=True) + eps)
  all_equal = rewards.max(axis=-1, keepdims=True) == rewards.min(axis=-1, keepdims=True)
  return jnp.where(all_equal, 0.0, centred)


@register_loss("grpo")
def grpo_loss(model: nn.Module, *, clip_eps: float = 0.2, kl_beta: float = 1e-3,
              normalisation: str = "sequence") -> LossFn:
  """GRPO (SPEC §3.3): clipped-ratio objective with a per-token k3 KL to a reference.

  Per completion token t: rho = exp(logp - old_logp),
  objective = min(rho A, clip(rho, 1 - eps, 1 + eps) A) - beta (exp(ref - logp) - (ref - logp)
  - 1); the loss is its negative mean. `normalisation="sequence"` (SPEC) averages each
  completion's tokens, then the completions (1/G sum_i 1/|o_i| sum_t); "token" averages over
  every completion token of the batch. Tokens with loss_mask 0 (prompt, interpreter output,
  padding) count nowhere. Without `old_logprobs` the ratio is 1 in value (on-policy); without
  `ref_logprobs`, or with kl_beta 0, there is no KL term.

  Args:
    model: LM whose apply returns logits `[batch, length, vocab]`.
    clip_eps: ratio clip (not reported in SPEC; 0.2 usual).
    kl_beta: KL coefficient (SPEC: 1e-3).
    normalisation: "sequence" or "token".
  """
  _check_normalisation(normalisation)

  def loss_fn(params, batch, rng):
    del rng
    _require(batch, ("tokens", "loss_mask", "advantages"), "grpo")
    tokens, positions, segment_ids = _lm_inputs(batch)
    logits = model.apply({"params": params}, tokens, positions, segment_ids)
    logp, _ = target_logprobs(logits, tokens)
    mask = target_mask(segment_ids, batch["loss_mask"])
    old = batch.get("old_logprobs")
    old = jax.lax.stop_gradient(logp) if old is None else old.astype(jnp.float32)
    advantages = batch["advantages"].astype(jnp.float32)
    if advantages.ndim == 1:
      advantages = jnp.broadcast_to(advantages[:, None], tokens.shape)
    ratio = jnp.exp(logp - old)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    objective = jnp.minimum(ratio * advantages, clipped * advantages)
    ref = batch.get("ref_logprobs")
    kl = jnp.zeros_like(logp)
    if ref is not None and kl_beta:
      log_ratio = ref.astype(jnp.float32) - logp
      kl = jnp.exp(log_ratio) - log_ratio - 1.0
    objective = objective - kl_beta * kl
    loss, weight = _reduce(-objective, mask, segment_ids, normalisation)
    num_tokens = mask.sum()
    token_count = jnp.maximum(num_tokens, 1.0)
    aux = {
        "weight": weight,
        "kl": (kl * mask).sum() / token_count,
        "clip_fraction": (mask * (jnp.abs(ratio - 1.0) > clip_eps)).sum() / token_count,
        "ratio": (ratio * mask).sum() / token_count,
        # Token means, whatever the loss's normalisation.
        "metric_weights": {"kl": num_tokens, "clip_fraction": num_tokens, "ratio": num_tokens},
    }
    return loss, aux

  return loss_fn
