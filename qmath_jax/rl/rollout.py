"""GRPO rollouts (SPEC §3.3): G samples per problem, rewards, group advantages, the train batch.

    out = rollout(sampler, tokenizer, problems, RolloutConfig(group_size=32), seed=0,
                  scorer=rm_scorer)                 # or reward_fn=lambda problem, c: ...
    batch, stats = build_batch(out, seq_len=4096, pad_id=tokenizer.pad_id)
    batch["ref_logprobs"] = reference_logprobs(cfg, ref_params, batch)
    loss, aux = losses.get_loss("grpo", model)(params, batch, rng)

Rewards: a `reward_fn(problem, completion) -> float` when given; otherwise the SPEC reward,
`rewards.shaped_reward(r_m, r_v, alpha)` with r_m from `scorer` (all P x G conversations in one
`score` call), or the verifier reward r_v alone without a scorer. The verifier reward is always
computed too (`Rollout.verified`, the accuracy metric). In a multi-process run the host-side
rewards (verifier, `reward_fn`) are computed by the writer process and shared, so every process
builds the same batch.

The batch (`build_batch`) has one row per completion, in (problem, sample) order, laid out for
`train.losses.grpo_loss`: the prompt ids then the completion ids, right-padded. Everything
per-token is target-aligned (entry t describes token t, predicted from position t - 1), so the
sampler's log-prob of completion token k sits at column `len(prompt) + k`, exactly where
`losses.target_logprobs` puts the training forward's log-prob of the same token. The sampler
reports log-probs under the unfiltered temperature-1 model, which is what the training forward
computes, so on-policy the ratio is 1 whatever the sampling temperature or top-p.

Rows longer than `seq_len`: the completion is truncated to fit and the row counted in
`stats["truncated"]`; it keeps the reward and advantage of its whole completion, so groups stay
whole. Prompts that leave no room for one completion token raise ValueError before sampling.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qmath_jax import parallel
from qmath_jax.data import chat, pipelines
from qmath_jax.data.sources import Problem
from qmath_jax.model.config import ModelConfig
from qmath_jax.model.transformer import Transformer
from qmath_jax.rl import rewards as rewards_lib
from qmath_jax.train import losses

RewardFn = Callable[[Problem, object], float]


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """How a rollout samples (SPEC §3.3; what it does not report is marked).

  Attributes:
    group_size: G, samples per problem (SPEC: 32).
    temperature, top_p, top_k: sampling settings (not reported; 1.0 samples the policy).
    max_new_tokens: longest completion (SPEC's evaluation limit: 2048).
    stop: stop strings besides the tokenizer's end-of-sequence ids.
    system: system prompt of the ChatML prompt (CoT by default).
    alpha: RM score scale of the shaped reward (SPEC: 0.5).
    scale_advantages_by_std: advantage (r_i - mean(r)) / std(r) over the group (SPEC); False
      gives r_i - mean(r) ("Dr. GRPO"). See `losses.group_normalised_advantages`.
  """
  group_size: int = 32
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  max_new_tokens: int = 2048
  stop: tuple[str, ...] = ()
  system: str = chat.COT_SYSTEM
  alpha: float = 0.5
  scale_advantages_by_std: bool = True

  def __post_init__(self):
    if self.group_size < 2:
      raise ValueError(f"group_size={self.group_size}: GRPO needs at least 2 samples per problem")


@dataclasses.dataclass
class Rollout:
  """Sampled groups and their rewards.

  Attributes:
    problems: the P problems.
    prompt_ids: P prompt token-id lists (the ChatML prompt as the sampler saw it).
    completions: `[P][G]` sampler completions (`sampling.types.Completion`, or TIR samples,
      whose `model_mask` marks interpreter output with 0).
    rewards: float32 `[P, G]`.
    verified: float32 `[P, G]`, the verifier reward (1 = correct final answer).
    advantages: float32 `[P, G]`, `losses.group_normalised_advantages(rewards)` (scaled by
      the group's std or not, as `RolloutConfig.scale_advantages_by_std`).
  """
  problems: list[Problem]
  prompt_ids: list[list[int]]
  completions: list[list[object]]
  rewards: np.ndarray
  verified: np.ndarray
  advantages: np.ndarray


def prompt_text(problem: Problem, system: str = chat.COT_SYSTEM) -> str:
  """The ChatML prompt of `problem`, ending in `<|im_start|>assistant\\n` (as rl_pipeline)."""
  return chat.render(pipelines.prompt_messages(problem, system), add_generation_prompt=True)


def rollout(sampler, tokenizer, problems: Sequence[Problem], config: RolloutConfig, *,
            seed: int, seq_len: int | None = None, reward_fn: RewardFn | None = None,
            scorer: rewards_lib.ScorerLike | None = None) -> Rollout:
  """Samples G completions per problem and rewards them.

  Args:
    sampler: a `sampling.types.SamplerLike`.
    tokenizer: the sampler's tokenizer (encodes the prompts exactly as the sampler does).
    problems: P problems with gold answers.
    config: sampling and reward settings.
    seed: sampling seed (same seed, same rollout).
    seq_len: the train row length; prompts that leave no room for a completion token raise.
    reward_fn: `(problem, completion) -> float`; default: the SPEC reward (module docstring).
    scorer: a `rewards.ScorerLike` (e.g. `rewards.RewardModelScorer`), used by the default
      reward only.

  Returns:
    A Rollout.
  """
  if reward_fn is not None and scorer is not None:
    raise ValueError("pass reward_fn or scorer, not both: the scorer feeds the default reward")
  problems = list(problems)
  prompts = [prompt_text(p, config.system) for p in problems]
  prompt_ids = [list(tokenizer.encode(text)) for text in prompts]
  if seq_len is not None:
    for problem, ids in zip(problems, prompt_ids):
      if len(ids) >= seq_len:
        raise ValueError(f"problem {problem.id!r}: prompt of {len(ids)} tokens leaves no room "
                         f"for a completion in seq_len={seq_len}")
  group = config.group_size
  completions = sampler.generate(prompts, group, temperature=config.temperature,
                                 top_p=config.top_p, top_k=config.top_k,
                                 max_new_tokens=config.max_new_tokens, stop=config.stop,
                                 seed=seed)
  if len(completions) != len(problems) or any(len(c) != group for c in completions):
    raise ValueError(f"sampler returned {[len(c) for c in completions]} completions for "
                     f"{len(problems)} prompts x group_size={group}")
  # Host-only rewards run on the writer process and are shared: a grader timeout on one
  # process cannot give the processes different rewards.
  verified = parallel.on_writer(lambda: np.array(
      [[rewards_lib.verifier_reward(c.text, p)
        for c in group_completions] for p, group_completions in zip(problems, completions)],
      np.float32).reshape(len(problems), group))
  if reward_fn is not None:
    rewards = parallel.on_writer(lambda: np.array(
        [[reward_fn(p, c) for c in group_completions]
         for p, group_completions in zip(problems, completions)],
        np.float32).reshape(len(problems), group))
  elif scorer is not None:
    conversations = [pipelines.prompt_messages(p, config.system) +
                     [{"role": "assistant", "content": c.text}]
                     for p, group_completions in zip(problems, completions)
                     for c in group_completions]
    scores = np.asarray(scorer.score(conversations), np.float32).reshape(len(problems), group)
    rewards = rewards_lib.shaped_reward(scores, verified, config.alpha)
  else:
    rewards = verified.copy()
  advantages = np.asarray(losses.group_normalised_advantages(
      jnp.asarray(rewards), scale_by_std=config.scale_advantages_by_std), np.float32)
  return Rollout(problems, prompt_ids, completions, rewards, verified, advantages)


def build_batch(out: Rollout, seq_len: int, pad_id: int) -> tuple[dict, dict]:
  """The GRPO train batch of a rollout (layout in `train.losses`), one row per completion.

  Args:
    out: a Rollout.
    seq_len: row length L.
    pad_id: token id of padding.

  Returns:
    (batch, stats). batch: tokens, positions, segment_ids, loss_mask int32 `[rows, L]`;
    old_logprobs float32 `[rows, L]` (0 off the completion); advantages float32 `[rows]`.
    stats: rows, truncated (rows whose completion was cut to fit L), completion_tokens (mean
    sampled tokens per completion, before truncation).
  """
  rows = sum(len(c) for c in out.completions)
  tokens = np.full((rows, seq_len), pad_id, np.int32)
  positions = np.zeros((rows, seq_len), np.int32)
  segment_ids = np.zeros((rows, seq_len), np.int32)
  loss_mask = np.zeros((rows, seq_len), np.int32)
  old_logprobs = np.zeros((rows, seq_len), np.float32)
  truncated, lengths, row = 0, [], 0
  for prompt, group_completions in zip(out.prompt_ids, out.completions):
    start = len(prompt)
    if start >= seq_len:
      raise ValueError(f"prompt of {start} tokens leaves no room in seq_len={seq_len}")
    for c in group_completions:
      ids = list(c.token_ids)
      lengths.append(len(ids))
      mask = np.asarray(c.model_mask if c.model_mask is not None else [1] * len(ids), np.int32)
      if len(c.logprobs) != len(ids) or len(mask) != len(ids):
        raise ValueError(f"row {row}: {len(ids)} token ids, {len(c.logprobs)} log-probs and "
                         f"{len(mask)} mask entries")
      keep = min(len(ids), seq_len - start)
      truncated += keep < len(ids)
      end = start + keep
      tokens[row, :start] = prompt
      tokens[row, start:end] = ids[:keep]
      positions[row, :end] = np.arange(end)
      segment_ids[row, :end] = 1
      loss_mask[row, start:end] = mask[:keep]
      old_logprobs[row, start:end] = np.asarray(c.logprobs[:keep], np.float32)
      row += 1
  batch = {"tokens": tokens, "positions": positions, "segment_ids": segment_ids,
           "loss_mask": loss_mask, "old_logprobs": old_logprobs,
           "advantages": out.advantages.reshape(-1).astype(np.float32)}
  stats = {"rows": rows, "truncated": int(truncated),
           "completion_tokens": float(np.mean(lengths)) if lengths else 0.0}
  return batch, stats


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"))
def _target_logprobs(params, tokens, positions, segment_ids, *, cfg: ModelConfig, mesh):
  """fp32 `[rows, L]` target-aligned log-probs; on a mesh, whole on every device (host-read)."""
  logits = Transformer(cfg).apply({"params": params}, tokens, positions, segment_ids)
  logprobs, _ = losses.target_logprobs(logits, tokens)
  logprobs = logprobs * losses.target_mask(segment_ids)
  if mesh is None:
    return logprobs
  return jax.lax.with_sharding_constraint(logprobs, parallel.replicated(mesh))


def reference_logprobs(model_config: ModelConfig, ref_params, batch: dict,
                       batch_size: int | None = None, *, mesh=None) -> np.ndarray:
  """Target-aligned fp32 log-probs `[rows, L]` of `batch`'s tokens under a frozen model.

  Args:
    model_config: the reference model's config.
    ref_params: its `Transformer` parameters (e.g. the SFT model's); global arrays on `mesh`
      when it spans several processes.
    batch: tokens, positions, segment_ids `[rows, L]` (as `build_batch` makes them); on a
      mesh that spans several processes, the same host arrays on every process.
    batch_size: rows per forward (default: all at once); the last chunk is padded to it, so
      one shape compiles. On a mesh it is rounded up to a multiple of data x fsdp.
    mesh: optional mesh: each chunk's rows are split over its ('data', 'fsdp') axes and the
      log-probs come back whole on every device, so every process reads them all.

  Returns:
    float32 `[rows, L]`: log p_ref(tokens[t] | tokens[:t]) at column t; 0 where no token is
    predicted (column 0 of each row, padding).
  """
  if mesh is None and any(isinstance(x, jax.Array) and not x.is_fully_addressable
                          for x in jax.tree.leaves(ref_params)):
    raise ValueError("ref_params span several processes: pass their mesh to reference_logprobs")
  tokens, positions, segment_ids = (np.asarray(batch[k], np.int32)
                                    for k in ("tokens", "positions", "segment_ids"))
  rows = tokens.shape[0]
  size = min(batch_size or rows, rows)
  if mesh is not None:
    shards = parallel.batch_shards(mesh)
    size = -(-size // shards) * shards

  out = np.zeros(tokens.shape, np.float32)
  for start in range(0, rows, size):
    chunk = slice(start, min(start + size, rows))
    pad = size - (chunk.stop - chunk.start)
    fill = lambda x: parallel.host_array_on_mesh(
        np.concatenate([x[chunk], np.zeros((pad,) + x.shape[1:], x.dtype)]), mesh)
    with parallel.on_mesh(mesh):
      logprobs = _target_logprobs(ref_params, fill(tokens), fill(positions), fill(segment_ids),
                                  cfg=model_config, mesh=mesh)
    out[chunk] = np.asarray(logprobs, np.float32)[:size - pad]
  return out
