"""GRPO iterations: a toy reward rises over a few steps; same seed, same metrics."""

import jax
import numpy as np
import optax
import pytest

from qmath_jax import parallel
from qmath_jax.data.sources import Problem
from qmath_jax.model import Transformer, get_config, init_params
from qmath_jax.rl import grpo, rollout as rollout_lib
from qmath_jax.sampling.sampler import Sampler
from qmath_jax.sampling.testing import TableTokenizer, default_table
from qmath_jax.train import losses, optimizer as optimizer_lib, state as state_lib

CFG = get_config("tiny", vocab_size=64, hidden_size=32, head_dim=8, intermediate_size=64,
                 max_position_embeddings=128)
TOKENIZER = TableTokenizer(default_table(CFG.vocab_size))
PROBLEMS = [Problem(id=f"p{i}", dataset="toy", question=q, answer=a)
            for i, (q, a) in enumerate([("2+3", "5"), ("7*8", "56"), ("10-4", "6"), ("9/3", "3")])]
CONFIG = grpo.GrpoConfig(
    rollout=rollout_lib.RolloutConfig(group_size=8, temperature=1.0, max_new_tokens=2,
                                      system="solve."),
    seq_len=48, minibatch_rows=16)
ITERATIONS = 8
TARGET = set(range(3, 23))  # the letters a..t: about a third of the vocabulary


def target_first_token(problem, completion):
  """Toy reward: 1 when the completion starts with a token of TARGET."""
  del problem
  return float(completion.token_ids[0] in TARGET)


def train(seed=0, iterations=ITERATIONS):
  """Runs GRPO iterations from the same random start; returns each iteration's metrics."""
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  optimizer, schedule = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      peak_lr=5e-2, end_lr=5e-2, warmup_steps=0, total_steps=100, decay="constant",
      weight_decay=0.0))
  shapes = jax.eval_shape(lambda: init_params(CFG, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  ref_params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype),
                            shapes)
  state, shardings = state_lib.create_train_state(lambda _: ref_params, optimizer, mesh)
  train_step = grpo.make_grpo_step(CFG, optimizer, CONFIG, mesh=mesh, state_shardings=shardings,
                                   learning_rate_fn=schedule)
  sampler = Sampler(CFG, ref_params, TOKENIZER)
  history = []
  for i in range(iterations):
    state, metrics = grpo.grpo_iteration(state, train_step, sampler, TOKENIZER, PROBLEMS, CFG,
                                         ref_params, CONFIG, seed=seed * 1000 + i,
                                         reward_fn=target_first_token)
    history.append(metrics)
  return history


@pytest.fixture(scope="module")
def history():
  return train()


def test_grpo_raises_the_toy_reward(history):
  rewards = [m["reward"] for m in history]
  assert np.mean(rewards[-2:]) > rewards[0] + 0.4, rewards
  rollout_rows = len(PROBLEMS) * CONFIG.rollout.group_size
  for m in history:
    assert m["steps"] == rollout_rows // CONFIG.minibatch_rows
    assert m["completion_length"] <= CONFIG.rollout.max_new_tokens and m["truncated"] == 0
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["clip_fraction"] <= 1 and m["kl"] >= 0
    assert abs(m["ratio"] - 1) < 0.2 and np.isfinite(m["loss"])
  assert history[-1]["kl"] > history[0]["kl"]  # the policy moved away from the reference


def test_same_seed_gives_the_same_metrics(history):
  again = train(iterations=2)
  assert again == history[:2]


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_grpo_step_is_exact_under_gradient_accumulation(normalisation):
  """Two microbatches give the minibatch's loss and update, not a mean of microbatch means."""
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  rows, length = 4, 16
  # Rows 0, 2 (microbatch 0: row r goes to r % 2) hold 11 and 10 completion tokens, rows 1, 3
  # (microbatch 1) 1 and 2, so a mean of microbatch token-means differs from the token-mean.
  ends = np.array([15, 5, 14, 6])
  segment_ids = (np.arange(length)[None] < ends[:, None]).astype(np.int32)
  batch = {
      "tokens": rng.integers(0, CFG.vocab_size, (rows, length)).astype(np.int32),
      "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)) * segment_ids,
      "segment_ids": segment_ids,
      "loss_mask": segment_ids * (np.arange(length)[None] >= 4),
      "old_logprobs": (rng.normal(size=(rows, length)) * 0.1 - 4.0).astype(np.float32),
      "ref_logprobs": (rng.normal(size=(rows, length)) * 0.1 - 4.0).astype(np.float32),
      "advantages": np.array([1.0, -1.5, -0.5, 1.0], np.float32),
  }
  config = grpo.GrpoConfig(kl_beta=0.1, normalisation=normalisation)
  shapes = jax.eval_shape(lambda: init_params(CFG, jax.random.key(0)))
  params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  results = []
  for k in (1, 2):
    optimizer = optax.sgd(1.0)  # the update is minus the gradient: compare gradients
    state, shardings = state_lib.create_train_state(lambda _: params, optimizer, mesh)
    train_step = grpo.make_grpo_step(CFG, optimizer, config, mesh=mesh,
                                     state_shardings=shardings, num_microbatches=k)
    state, metrics = train_step(state, parallel.shard_batch(batch, mesh, rows))
    grads = jax.tree.map(lambda new, old: np.asarray(old) - np.asarray(new),
                         jax.device_get(state.params), params)
    results.append((float(metrics["loss"]), grads))
  (loss1, grads1), (loss2, grads2) = results
  np.testing.assert_allclose(loss2, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6),
               grads2, grads1)
  if normalisation == "token":  # the test can tell: a mean of microbatch means is another number
    loss_fn = losses.get_loss("grpo", Transformer(CFG), kl_beta=0.1, normalisation="token")
    halves = [loss_fn(params, {k: v[r::2] for k, v in batch.items()}, None)[0] for r in (0, 1)]
    assert abs(float(np.mean(halves)) - loss1) > 0.05
