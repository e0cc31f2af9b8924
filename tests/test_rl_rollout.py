"""GRPO rollouts: the built batch lines up with grpo_loss (on-policy ratio 1), masks, advantages."""

import dataclasses

import jax
import numpy as np
import pytest

from qmath_jax import parallel
from qmath_jax.data.sources import Problem
from qmath_jax.model import Transformer, get_config, init_params
from qmath_jax.rl import rewards, rollout as rollout_lib
from qmath_jax.sampling.sampler import Sampler
from qmath_jax.sampling.testing import TableTokenizer, default_table
from qmath_jax.sampling.tir import TirSample
from qmath_jax.sampling.types import Completion
from qmath_jax.train import losses

CFG = get_config("tiny", vocab_size=64, hidden_size=32, head_dim=8, intermediate_size=64,
                 max_position_embeddings=128)
TOKENIZER = TableTokenizer(default_table(CFG.vocab_size))
SYSTEM = "solve."
PROBLEMS = [Problem(id=f"p{i}", dataset="toy", question=q, answer=a)
            for i, (q, a) in enumerate([("2+3", "5"), ("what is 7*8", "56"), ("10-4", "6")])]
CONFIG = rollout_lib.RolloutConfig(group_size=4, temperature=0.7, top_p=0.8, max_new_tokens=10,
                                   system=SYSTEM)
SEQ_LEN = 64


def random_params(cfg, seed=0, scale=0.3):
  """Transformer parameters drawn in numpy (no init compile); norms are not all ones."""
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def first_token_reward(problem, completion):
  """A toy reward that varies inside groups: the parity of the first sampled id."""
  del problem
  return float(completion.token_ids[0] % 2)


@pytest.fixture(scope="module")
def params():
  return random_params(CFG)


@pytest.fixture(scope="module")
def sampler(params):
  return Sampler(CFG, params, TOKENIZER)


@pytest.fixture(scope="module")
def built(sampler):
  out = rollout_lib.rollout(sampler, TOKENIZER, PROBLEMS, CONFIG, seed=1, seq_len=SEQ_LEN,
                            reward_fn=first_token_reward)
  batch, stats = rollout_lib.build_batch(out, SEQ_LEN, TOKENIZER.pad_id)
  return out, batch, stats


def test_on_policy_batch_gives_ratio_one_no_clipping_no_kl(params, built):
  _, batch, stats = built
  assert stats["truncated"] == 0
  batch = dict(batch, ref_logprobs=rollout_lib.reference_logprobs(CFG, params, batch))
  mask = batch["loss_mask"] == 1
  # The sampler's log-probs sit where the training forward scores the same tokens.
  np.testing.assert_allclose(batch["old_logprobs"][mask], batch["ref_logprobs"][mask],
                             rtol=0, atol=1e-4)
  loss_fn = jax.jit(losses.get_loss("grpo", Transformer(CFG)))
  _, aux = loss_fn(params, batch, jax.random.key(0))
  assert abs(float(aux["ratio"]) - 1.0) < 1e-5
  assert float(aux["clip_fraction"]) == 0.0
  assert abs(float(aux["kl"])) < 1e-6
  assert float(aux["weight"]) == len(PROBLEMS) * CONFIG.group_size  # every completion counted
  # The same check fails when the log-probs are off by one column.
  shifted = dict(batch, old_logprobs=np.roll(batch["old_logprobs"], 1, axis=1))
  _, aux = loss_fn(params, shifted, jax.random.key(0))
  assert abs(float(aux["ratio"]) - 1.0) > 1e-2


def test_rows_hold_prompt_then_completion_and_mask_only_the_completion(built):
  out, batch, _ = built
  row = 0
  for prompt, group in zip(out.prompt_ids, out.completions):
    for c in group:
      start, end = len(prompt), len(prompt) + len(c.token_ids)
      np.testing.assert_array_equal(batch["tokens"][row, :end], prompt + c.token_ids)
      assert np.all(batch["tokens"][row, end:] == TOKENIZER.pad_id)
      np.testing.assert_array_equal(batch["segment_ids"][row], np.arange(SEQ_LEN) < end)
      np.testing.assert_array_equal(batch["positions"][row, :end], np.arange(end))
      np.testing.assert_array_equal(np.flatnonzero(batch["loss_mask"][row]),
                                    np.arange(start, end))
      np.testing.assert_allclose(batch["old_logprobs"][row, start:end], c.logprobs)
      assert np.all(batch["old_logprobs"][row, :start] == 0)
      row += 1
  assert row == batch["tokens"].shape[0] == len(PROBLEMS) * CONFIG.group_size
  prompt_tokens = TOKENIZER.encode(rollout_lib.prompt_text(PROBLEMS[1], SYSTEM))
  assert out.prompt_ids[1] == prompt_tokens


def test_advantages_are_group_normalised_rewards(built):
  out, batch, _ = built
  want = np.array([[first_token_reward(p, c) for c in group]
                   for p, group in zip(PROBLEMS, out.completions)])
  np.testing.assert_array_equal(out.rewards, want)
  assert want.std(axis=1).max() > 0  # some group has rewards to tell apart
  hand = (want - want.mean(1, keepdims=True)) / (want.std(1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(out.advantages, hand, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(batch["advantages"], hand.reshape(-1), rtol=1e-5, atol=1e-6)


def test_unscaled_advantages_are_centred_rewards(sampler, built):
  """`scale_advantages_by_std=False` (Dr. GRPO): r_i - mean(r), the same samples otherwise."""
  config = dataclasses.replace(CONFIG, scale_advantages_by_std=False)
  out = rollout_lib.rollout(sampler, TOKENIZER, PROBLEMS, config, seed=1, seq_len=SEQ_LEN,
                            reward_fn=first_token_reward)
  np.testing.assert_array_equal(out.rewards, built[0].rewards)
  want = out.rewards - out.rewards.mean(1, keepdims=True)
  np.testing.assert_allclose(out.advantages, want, rtol=1e-6, atol=1e-7)


def test_same_seed_same_batch(sampler, built):
  _, batch, _ = built
  again = rollout_lib.rollout(sampler, TOKENIZER, PROBLEMS, CONFIG, seed=1,
                              reward_fn=first_token_reward)
  again_batch, _ = rollout_lib.build_batch(again, SEQ_LEN, TOKENIZER.pad_id)
  for key in batch:
    np.testing.assert_array_equal(again_batch[key], batch[key], err_msg=key)
  other = rollout_lib.rollout(sampler, TOKENIZER, PROBLEMS, CONFIG, seed=2,
                              reward_fn=first_token_reward)
  other_batch, _ = rollout_lib.build_batch(other, SEQ_LEN, TOKENIZER.pad_id)
  assert not np.array_equal(other_batch["tokens"], batch["tokens"])


def test_long_rows_are_truncated_and_counted(built):
  out, batch, _ = built
  prompt_len = max(len(p) for p in out.prompt_ids)
  seq_len = prompt_len + 3
  short, stats = rollout_lib.build_batch(out, seq_len, TOKENIZER.pad_id)
  lengths = [len(p) + len(c.token_ids) for p, g in zip(out.prompt_ids, out.completions)
             for c in g]
  assert stats["truncated"] == sum(n > seq_len for n in lengths) > 0
  np.testing.assert_array_equal(short["tokens"], batch["tokens"][:, :seq_len])
  np.testing.assert_array_equal(short["loss_mask"], batch["loss_mask"][:, :seq_len])
  with pytest.raises(ValueError, match=r"prompt of \d+ tokens leaves no room"):
    rollout_lib.build_batch(out, prompt_len, TOKENIZER.pad_id)


def test_reference_logprobs_in_chunks_equal_one_forward(params, built):
  _, batch, _ = built
  whole = rollout_lib.reference_logprobs(CFG, params, batch)
  chunked = rollout_lib.reference_logprobs(CFG, params, batch, batch_size=5)
  assert whole.dtype == np.float32 and whole.shape == batch["tokens"].shape
  np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)
  assert np.all(whole[batch["segment_ids"] == 0] == 0) and np.all(whole[:, 0] == 0)


def test_reference_logprobs_on_a_mesh_equal_one_device(params, built):
  """Rows split over data x fsdp, weights by the logical rules: the same log-probs."""
  _, batch, _ = built
  mesh = parallel.make_mesh((2, 2, 2))
  boxed = jax.eval_shape(lambda: init_params(CFG, jax.random.key(0), boxed=True))
  sharded = jax.device_put(params, parallel.tree_shardings(boxed, mesh))
  on_mesh = rollout_lib.reference_logprobs(CFG, sharded, batch, batch_size=5, mesh=mesh)
  np.testing.assert_allclose(on_mesh, rollout_lib.reference_logprobs(CFG, params, batch),
                             rtol=0, atol=1e-5)


class ScriptedSampler:
  """Returns fixed completions (the SamplerLike interface), cycling through `texts`."""

  def __init__(self, completions):
    self.completions = completions

  def generate(self, prompts, n=1, **kwargs):
    del kwargs
    return [[self.completions[(i * n + j) % len(self.completions)] for j in range(n)]
            for i in range(len(prompts))]


class LengthScorer:
  """A scorer double: the RM score is the response length minus 10."""

  def __init__(self):
    self.calls = []

  def score(self, conversations):
    self.calls.append(conversations)
    return np.array([len(c[-1]["content"]) - 10.0 for c in conversations], np.float32)


def _completion(text):
  ids = TOKENIZER.encode(text.replace("\\boxed", "").replace("$", ""))
  return Completion(text=text, token_ids=ids, logprobs=[-1.0] * len(ids), finish_reason="stop")


def test_default_reward_is_the_verifier_shaped_by_the_scorer():
  texts = ["so \\boxed{5}", "it is 6", "\\boxed{5}", "no idea"]
  sampler = ScriptedSampler([_completion(t) for t in texts])
  config = rollout_lib.RolloutConfig(group_size=4, system=SYSTEM)
  problems = PROBLEMS[:1]
  plain = rollout_lib.rollout(sampler, TOKENIZER, problems, config, seed=0)
  np.testing.assert_array_equal(plain.verified, [[1, 0, 1, 0]])
  np.testing.assert_array_equal(plain.rewards, plain.verified)
  scorer = LengthScorer()
  shaped = rollout_lib.rollout(sampler, TOKENIZER, problems, config, seed=0, scorer=scorer)
  assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 4  # one batched score call
  assert scorer.calls[0][0][:2] == [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": "2+3"}]
  want = rewards.shaped_reward([len(t) - 10.0 for t in texts], [1, 0, 1, 0], alpha=0.5)
  np.testing.assert_allclose(shaped.rewards[0], want, rtol=1e-6)
  with pytest.raises(ValueError, match="reward_fn or scorer"):
    rollout_lib.rollout(sampler, TOKENIZER, problems, config, seed=0, scorer=scorer,
                        reward_fn=first_token_reward)


def test_interpreter_output_tokens_are_left_out_of_the_loss():
  pieces = [("x=1\n", 1), ("```output\n1\n```\n", 0), ("so 1", 1)]
  ids = [t for text, _ in pieces for t in TOKENIZER.encode(text)]
  model_mask = [m for text, m in pieces for _ in TOKENIZER.encode(text)]
  sample = TirSample(text="", token_ids=ids, model_mask=model_mask,
                     logprobs=[-0.5 if m else 0.0 for m in model_mask], finish_reason="stop")
  out = rollout_lib.rollout(ScriptedSampler([sample]), TOKENIZER, PROBLEMS[:1],
                            rollout_lib.RolloutConfig(group_size=2, system=SYSTEM), seed=0)
  batch, _ = rollout_lib.build_batch(out, SEQ_LEN, TOKENIZER.pad_id)
  start = len(out.prompt_ids[0])
  np.testing.assert_array_equal(batch["loss_mask"][0, start:start + len(ids)], model_mask)
  assert batch["loss_mask"][0].sum() == sum(model_mask)
