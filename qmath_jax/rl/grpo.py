"""One GRPO iteration (SPEC §3.3) through the project's one jitted train step.

    optimizer, schedule = optimizer.make_optimizer(OptimizerConfig(peak_lr=1e-5, ...))
    state, shardings = state.create_train_state(init_params, optimizer, mesh)
    train_step = make_grpo_step(cfg, optimizer, GrpoConfig(...), mesh=mesh,
                                state_shardings=shardings, learning_rate_fn=schedule)
    sampler = Sampler(cfg, state.params, tokenizer)
    for episode, problems in enumerate(problem_batches):
      state, metrics = grpo_iteration(state, train_step, sampler, tokenizer, problems, cfg,
                                      ref_params, config, seed=episode, scorer=scorer)

An iteration: the sampler takes the train state's parameters (`Sampler.update_params`); the
rollout samples G completions per problem and rewards them (`rollout.rollout`); the batch is
built with the sampler's log-probs as `old_logprobs` and the frozen reference model's as
`ref_logprobs`; then the rows, shuffled with the iteration's seed, go through the train step in
minibatches of `minibatch_rows` (SPEC: 4096 samples per episode, global batch 512, so 8
optimizer steps per rollout; the first is on-policy, later ones clip). Afterwards the sampler
still holds the parameters the rollout sampled with: call `update_params(state.params)` before
sampling from the updated policy elsewhere (evaluation, say).

On a mesh that spans several processes every process runs the iteration alike: the sampler
returns every process the same completions, so each builds the same host batch, reads the
reference log-probs whole, and feeds the train step only the rows of each minibatch that its
own devices hold (`parallel.local_rows`).
"""

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
import optax

from qmath_jax import parallel
from qmath_jax.data.sources import Problem
from qmath_jax.model.config import ModelConfig
from qmath_jax.model.transformer import Transformer
from qmath_jax.rl import rewards as rewards_lib
from qmath_jax.rl import rollout as rollout_lib
from qmath_jax.train import losses, step as step_lib
from qmath_jax.train.state import TrainState

STEP_METRICS = ("loss", "kl", "clip_fraction", "ratio", "grad_norm")


@dataclasses.dataclass(frozen=True)
class GrpoConfig:
  """GRPO settings (SPEC §3.3; what it does not report is marked).

  Attributes:
    rollout: sampling and reward settings (G, temperature, max_new_tokens, alpha, ...).
    seq_len: train row length (prompt + completion); longer rows are truncated and counted.
    minibatch_rows: rows per optimizer step (SPEC: 512); None = every row in one step.
    clip_eps: ratio clip (not reported; 0.2).
    kl_beta: KL coefficient (SPEC: 1e-3).
    normalisation: how the loss aggregates its tokens: "sequence" (SPEC: each completion's
      token-mean, then the mean over completions, 1/G sum_i 1/|o_i| sum_t) or "token" (one
      mean over every completion token of the optimizer step's minibatch of
      `minibatch_rows` rows, as DAPO / Dr. GRPO; long completions weigh more). Exact under
      gradient accumulation: the step weights each microbatch by its token (or completion)
      count, so k microbatches give the minibatch's mean, not a mean of microbatch means.
      The advantage's std scaling is `rollout.scale_advantages_by_std`.
    ref_batch_size: rows per reference forward (None = all rows at once).
  """
  rollout: rollout_lib.RolloutConfig = rollout_lib.RolloutConfig()
  seq_len: int = 4096
  minibatch_rows: int | None = None
  clip_eps: float = 0.2
  kl_beta: float = 1e-3
  normalisation: str = "sequence"
  ref_batch_size: int | None = None


def make_grpo_step(model_config: ModelConfig, optimizer: optax.GradientTransformation,
                   config: GrpoConfig, *, mesh, state_shardings: TrainState,
                   learning_rate_fn=None, num_microbatches: int = 1) -> step_lib.TrainStep:
  """`train.step.make_train_step` with the registered `grpo` loss of `config`."""
  loss_fn = losses.get_loss("grpo", Transformer(model_config), clip_eps=config.clip_eps,
                            kl_beta=config.kl_beta, normalisation=config.normalisation)
  return step_lib.make_train_step(loss_fn, optimizer, mesh=mesh, state_shardings=state_shardings,
                                  learning_rate_fn=learning_rate_fn,
                                  num_microbatches=num_microbatches)


def grpo_iteration(state: TrainState, train_step: step_lib.TrainStep, sampler, tokenizer,
                   problems: Sequence[Problem], model_config: ModelConfig, ref_params,
                   config: GrpoConfig, *, seed: int, reward_fn: rollout_lib.RewardFn | None = None,
                   scorer: rewards_lib.ScorerLike | None = None) -> tuple[TrainState, dict]:
  """Samples, rewards and trains on one batch of problems.

  Args:
    state: the policy's train state (donated to the step: use the returned one).
    train_step: from `make_grpo_step`.
    sampler: a `sampling.sampler.Sampler` (anything with `update_params` and `generate`).
    tokenizer: the sampler's tokenizer.
    problems: P problems; the rollout has P x G rows.
    model_config: the policy's (and reference's) config.
    ref_params: the frozen reference model's parameters (SPEC: the SFT model).
    config: GRPO settings.
    seed: sampling and shuffling seed (same seed and state, same metrics).
    reward_fn, scorer: as `rollout.rollout` (default: verifier reward, shaped when a scorer
      is given).

  Returns:
    (state, metrics): metrics are Python floats: reward (mean), accuracy (mean verifier
    reward), completion_length (mean sampled tokens), truncated (rows cut to seq_len), steps
    (optimizer steps), and the mean over steps of loss, kl, clip_fraction, ratio, grad_norm.

  Raises:
    ValueError: the rows do not split into `minibatch_rows`.
    step.NonFiniteStepError: a step's loss or gradient was not finite.
  """
  sampler.update_params(state.params)
  out = rollout_lib.rollout(sampler, tokenizer, problems, config.rollout, seed=seed,
                            seq_len=config.seq_len, reward_fn=reward_fn, scorer=scorer)
  batch, stats = rollout_lib.build_batch(out, config.seq_len, tokenizer.pad_id)
  mesh = train_step.mesh
  batch["ref_logprobs"] = rollout_lib.reference_logprobs(model_config, ref_params, batch,
                                                         config.ref_batch_size, mesh=mesh)
  rows = stats["rows"]
  per_step = config.minibatch_rows or rows
  if rows % per_step:
    raise ValueError(f"{rows} rollout rows (problems x group_size) do not split into "
                     f"minibatch_rows={per_step}")
  parallel.check_batch_size(per_step, mesh, name="GRPO minibatch (minibatch_rows)")
  own_rows = parallel.local_rows(per_step, mesh)  # of each minibatch, this process's devices'
  order = np.random.default_rng(seed).permutation(rows)
  step_metrics = []
  for start in range(0, rows, per_step):
    rows_here = order[start:start + per_step][own_rows]
    minibatch = {k: v[rows_here] for k, v in batch.items()}
    state, metrics = train_step(state, parallel.shard_batch(minibatch, mesh, per_step))
    step_lib.raise_if_not_finite(metrics, int(jax.device_get(state.step)))
    step_metrics.append(jax.device_get({k: metrics[k] for k in STEP_METRICS}))
  summary = {
      "reward": float(out.rewards.mean()),
      "accuracy": float(out.verified.mean()),
      "completion_length": stats["completion_tokens"],
      "truncated": float(stats["truncated"]),
      "steps": float(len(step_metrics)),
  }
  summary.update({k: float(np.mean([m[k] for m in step_metrics])) for k in STEP_METRICS})
  return state, summary
