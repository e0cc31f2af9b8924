"""RL rewards: SPEC's shaping, the verifier, and the RM scorer against a direct forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax import parallel
from qmath_jax.data import chat
from qmath_jax.data import sources
from qmath_jax.evaluation import benchmarks
from qmath_jax.model import presets
from qmath_jax.rl import rewards
from qmath_jax.sampling.testing import TableTokenizer, default_table
from qmath_jax.train import reward_model

CFG = presets.get_config("tiny", vocab_size=128, hidden_size=32, head_dim=8, intermediate_size=64,
                         max_position_embeddings=256)
TOKENIZER = TableTokenizer(default_table(CFG.vocab_size))


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_shaped_reward_matches_the_formula_by_hand():
  rm = np.array([[2.0, -4.0], [0.0, 10.0]])
  verified = np.array([[1, 0], [0, 1]])
  got = rewards.shaped_reward(rm, verified, alpha=0.5)
  want = np.array([[_sigmoid(1.0), _sigmoid(-2.0) - 1.0],
                   [0.5 - 1.0, _sigmoid(5.0)]])
  assert got.dtype == np.float32 and got.shape == (2, 2)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Correct answers land in (0, 1), wrong ones in (-1, 0), whatever the RM says.
  wide = np.linspace(-30, 30, 61)
  assert np.all(rewards.shaped_reward(wide, 1) > 0) and np.all(rewards.shaped_reward(wide, 1) <= 1)
  assert np.all(rewards.shaped_reward(wide, 0) < 0) and np.all(rewards.shaped_reward(wide, 0) >= -1)
  # alpha scales the RM score before the sigmoid.
  np.testing.assert_allclose(rewards.shaped_reward(2.0, 1, alpha=2.0), _sigmoid(4.0), rtol=1e-6)


@pytest.mark.parametrize("text, gold, want", [
    ("so the total is $\\boxed{12}$.", "12", 1.0),
    ("we get \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("first 3 then 4, the answer is 7", "7", 1.0),
    ("so the total is \\boxed{13}", "12", 0.0),
    ("i do not know", "12", 0.0),
    ("", "12", 0.0),
])
def test_verifier_reward(text, gold, want):
  problem = sources.Problem(id="p", dataset="math", question="q", answer=gold)
  assert rewards.verifier_reward(text, problem) == want


@pytest.mark.parametrize("text, want", [
    ("Thus \\boxed{B: 12}", 1.0),
    ("The correct choice is B.", 1.0),
    ("so it is \\boxed{12}", 0.0),  # a letter gold wants the letter, as evaluation does
])
def test_verifier_reward_grades_letter_golds_of_mixed_sets_as_evaluation_does(text, want):
  problem = sources.Problem(id="p", dataset="cn_middle_school", question="q", answer="B")
  assert problem.is_choice
  assert rewards.verifier_reward(text, problem) == want
  _, (correct,) = benchmarks.grade(benchmarks.to_eval_problem(problem, "cn_middle_school", 0,
                                                              "cn_middle_school"),
                                   [text], "cn_middle_school")
  assert correct == bool(want)


CONVERSATIONS = [
    [{"role": "system", "content": "solve it."},
     {"role": "user", "content": "what is 2+3"},
     {"role": "assistant", "content": "2+3=5 so {5}"}],
    [{"role": "user", "content": "7*8"}, {"role": "assistant", "content": "56"}],
    [{"role": "system", "content": "solve it."},
     {"role": "user", "content": "a long one, 1+1+1+1+1+1+1+1+1+1+1+1+1+1"},
     {"role": "assistant", "content": "count them, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "10-4"}, {"role": "assistant", "content": "6."}],
]


@pytest.fixture(scope="module")
def rm_params():
  """Random RM parameters drawn in numpy (no init compile): norms and biases not ones/zeros."""
  rm = reward_model.make_reward_model(CFG)
  shapes = jax.eval_shape(
      lambda: nn.unbox(rm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))
  rng = np.random.default_rng(3)
  return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def _direct_scores(params):
  """Each conversation alone, unpadded, through RewardModel.apply."""
  apply = jax.jit(reward_model.make_reward_model(CFG).apply)
  out = []
  for messages in CONVERSATIONS:
    ids = jnp.asarray([TOKENIZER.encode(chat.render(messages))], jnp.int32)
    out.append(float(apply({"params": params}, ids)[0]))
  return np.array(out, np.float32)


def test_scorer_equals_a_direct_forward_whatever_the_batch(rm_params):
  want = _direct_scores(rm_params)
  assert np.std(want) > 1e-3  # distinct conversations get distinct scores
  scorer = rewards.RewardModelScorer(CFG, rm_params, TOKENIZER, batch_size=4, max_length=160)
  got = scorer.score(CONVERSATIONS)
  assert got.dtype == np.float32 and got.shape == (len(CONVERSATIONS),)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  # Other batch compositions and padding: one at a time, reversed, another batch size.
  singles = np.concatenate([scorer.score([c]) for c in CONVERSATIONS])
  np.testing.assert_allclose(singles, want, rtol=0, atol=1e-5)
  reversed_ = rewards.RewardModelScorer(CFG, rm_params, TOKENIZER, batch_size=2).score(
      CONVERSATIONS[::-1])
  np.testing.assert_allclose(reversed_[::-1], want, rtol=0, atol=1e-5)
  assert scorer.score([]).shape == (0,)


def test_scorer_on_a_mesh_equals_one_device(rm_params):
  """Rows over data x fsdp, RM weights by the logical rules (as main loads them): same scores."""
  mesh = parallel.make_mesh((2, 2, 2))
  rm = reward_model.make_reward_model(CFG)
  boxed = jax.eval_shape(lambda: rm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  sharded = jax.device_put(rm_params, parallel.tree_shardings(boxed, mesh))
  scorer = rewards.RewardModelScorer(CFG, sharded, TOKENIZER, batch_size=3, mesh=mesh)
  assert scorer.batch_size == 4  # rounded up to the 4 row shards
  np.testing.assert_allclose(scorer.score(CONVERSATIONS), _direct_scores(rm_params), rtol=0,
                             atol=1e-5)


def test_scorer_on_a_mesh_takes_params_committed_to_one_device(rm_params):
  """RM params loaded onto one device (not the mesh's layout) are copied onto the mesh."""
  mesh = parallel.make_mesh((4, 1, 2))
  one_device = jax.device_put(rm_params, jax.devices()[3])
  scorer = rewards.RewardModelScorer(CFG, one_device, TOKENIZER, batch_size=4, mesh=mesh)
  np.testing.assert_allclose(scorer.score(CONVERSATIONS), _direct_scores(rm_params), rtol=0,
                             atol=1e-5)


def test_scorer_rejects_long_conversations_naming_index_and_lengths(rm_params):
  scorer = rewards.RewardModelScorer(CFG, rm_params, TOKENIZER, max_length=100)
  length = len(TOKENIZER.encode(chat.render(CONVERSATIONS[2])))
  with pytest.raises(ValueError, match=rf"conversation 2 has {length} tokens > max_length=100"):
    scorer.score(CONVERSATIONS)
  with pytest.raises(ValueError, match="conversation 0 must end with an assistant message"):
    scorer.score([CONVERSATIONS[0][:2]])


def test_scorer_rejects_token_ids_outside_the_rm_vocabulary(rm_params):
  class WideTokenizer:  # ids past the RM's vocabulary, as another model's tokenizer gives
    pad_id = 0

    def encode(self, text):
      return [1, CFG.vocab_size + 5]

  scorer = rewards.RewardModelScorer(CFG, rm_params, WideTokenizer())
  with pytest.raises(ValueError, match=rf"conversation 0 has token id {CFG.vocab_size + 5} "
                                       rf"outside the reward model's vocabulary of "
                                       rf"{CFG.vocab_size}"):
    scorer.score(CONVERSATIONS[:1])


def test_completion_scores_for_rm_at_n_equal_the_conversation_scores(rm_params):
  scorer = rewards.RewardModelScorer(CFG, rm_params, TOKENIZER, batch_size=4, max_length=160)
  prompts = [chat.render(c[:-1], add_generation_prompt=True) for c in CONVERSATIONS[:2]]
  responses = [[CONVERSATIONS[0][-1]["content"], "wrong"], [CONVERSATIONS[1][-1]["content"]]]
  got = scorer.score_completions(prompts, responses)
  assert [len(row) for row in got] == [2, 1]
  want = scorer.score([CONVERSATIONS[0], CONVERSATIONS[0][:-1] + [
      {"role": "assistant", "content": "wrong"}], CONVERSATIONS[1]])
  np.testing.assert_allclose([got[0][0], got[0][1], got[1][0]], want, rtol=0, atol=1e-6)
