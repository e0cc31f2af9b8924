"""GRPO iterations: a toy reward rises over a few steps; same seed, same metrics."""

import jax
import numpy as np
import pytest

from qmath_jax import parallel
from qmath_jax.data.sources import Problem
from qmath_jax.model import get_config, init_params
from qmath_jax.rl import grpo, rollout as rollout_lib
from qmath_jax.sampling.sampler import Sampler
from qmath_jax.sampling.testing import TableTokenizer, default_table
from qmath_jax.train import optimizer as optimizer_lib, state as state_lib

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
