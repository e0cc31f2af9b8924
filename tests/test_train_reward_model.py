"""The reward model: last-token scoring, padding independence, SFT initialisation, RM steps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax import parallel
from qmath_jax.model import presets
from qmath_jax.model.transformer import Transformer
from qmath_jax.train import losses, optimizer as optimizer_lib, reward_model
from qmath_jax.train import state as state_lib, step as step_lib

CFG = presets.get_config("tiny", vocab_size=64, hidden_size=32, head_dim=8, intermediate_size=64)


def test_last_token_index():
  segment_ids = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(reward_model.last_token_index(segment_ids), [2, 4, 0])


def test_score_reads_the_last_token_and_ignores_padding():
  rm = reward_model.make_reward_model(CFG)
  tokens = jnp.array([[5, 6, 7, 0, 0, 0]], jnp.int32)
  params = jax.jit(lambda rng: nn.unbox(rm.init(rng, tokens)["params"]))(jax.random.key(0))
  assert set(params) == {"backbone", "score_head"}
  score = jax.jit(lambda p, t, s: rm.apply({"params": p}, t, None, s))
  pad_ids = jnp.array([[1, 1, 1, 0, 0, 0]], jnp.int32)
  padded = score(params, tokens, pad_ids)
  other_pad = score(params, tokens.at[0, 3:].set(9), pad_ids)
  assert padded.shape == (1,) and padded.dtype == jnp.float32
  np.testing.assert_allclose(other_pad, padded, rtol=1e-5)
  # The score is the head on the backbone's final hidden state at the last real token.
  _, hidden = jax.jit(lambda p, t: Transformer(CFG).apply({"params": p}, t, None, pad_ids,
                                                          return_hidden=True))(
                                                              params["backbone"], tokens)
  head = jax.tree.map(np.asarray, params["score_head"])
  h = np.maximum(np.asarray(hidden[0, 2]) @ head["dense"]["kernel"] + head["dense"]["bias"], 0)
  np.testing.assert_allclose(padded[0], h @ head["out"]["kernel"][:, 0] + head["out"]["bias"][0],
                             rtol=1e-5)


def test_with_backbone_takes_sft_params_and_rejects_mismatches():
  rm = reward_model.make_reward_model(CFG)
  tokens = jnp.zeros((1, 4), jnp.int32)
  shapes = lambda module: jax.eval_shape(
      lambda: nn.unbox(module.init(jax.random.key(0), tokens)["params"]))
  params = shapes(rm)
  sft = shapes(Transformer(CFG))
  merged = reward_model.with_backbone(params, sft)
  assert merged["backbone"] is sft and merged["score_head"] is params["score_head"]
  other = shapes(Transformer(CFG.replace(hidden_size=48)))
  with pytest.raises(ValueError, match=r"backbone parameter .*embedding.*\(64, 48\)"):
    reward_model.with_backbone(params, other)


def test_rm_listwise_steps_train_the_ranking():
  mesh = parallel.make_mesh((2, 2, 2))
  rm = reward_model.make_reward_model(CFG)
  optimizer, schedule = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      peak_lr=1e-2, warmup_steps=0, total_steps=20, decay="constant", weight_decay=0.0))
  init = lambda rng: rm.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
  state, shardings = state_lib.create_train_state(init, optimizer, mesh, seed=0)
  assert state.params["score_head"]["dense"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  train_step = step_lib.make_train_step(losses.get_loss("rm_listwise", rm), optimizer,
                                        mesh=mesh, state_shardings=shardings,
                                        learning_rate_fn=schedule)
  rng = np.random.default_rng(0)
  batch, list_size, length = 4, 6, 10
  labels = np.zeros((batch, list_size), np.int32)
  for b in range(batch):
    labels[b, : b + 1] = 1  # k = 1..4 positives
  # Correct responses end in token 1, wrong ones in token 2: a learnable signal.
  tokens = rng.integers(3, CFG.vocab_size, (batch, list_size, length)).astype(np.int32)
  lengths = rng.integers(5, length + 1, (batch, list_size))
  segment_ids = (np.arange(length) < lengths[..., None]).astype(np.int32)
  tokens[np.arange(batch)[:, None], np.arange(list_size)[None], lengths - 1] = 2 - labels
  data = parallel.shard_batch({"tokens": tokens, "segment_ids": segment_ids, "labels": labels},
                              mesh)
  history = []
  for _ in range(8):
    state, metrics = train_step(state, data)
    history.append(float(metrics["loss"]))
  assert float(metrics["weight"]) == batch
  assert history[-1] < 0.5 * history[0], history
  assert float(metrics["pair_accuracy"]) > 0.9
