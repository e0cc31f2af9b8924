"""Each registered loss against a hand computation (python floats, explicit loops)."""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax.train import losses


class FixedOutput(nn.Module):
  """Returns a stored array whatever the tokens: lets a test choose the logits or scores."""
  value: np.ndarray

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None):
    del positions, segment_ids
    out = self.param("out", lambda _: jnp.asarray(self.value))
    return out.reshape(tokens.shape[:1] + self.value.shape[1:])


def _params(model):
  return {"out": jnp.asarray(model.value)}


def _log_softmax(row):
  m = max(row)
  z = m + math.log(sum(math.exp(x - m) for x in row))
  return [x - z for x in row], z


def _packed_batch(rng, batch=2, length=7, vocab=5):
  tokens = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  # Row 0: segments 1 (3 tokens), 2 (3 tokens), pad. Row 1: one segment of 5, 2 pads.
  segment_ids = np.array([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 0, 0]], np.int32)
  loss_mask = np.array([[0, 1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1, 0]], np.int32)
  return {"tokens": tokens, "segment_ids": segment_ids, "loss_mask": loss_mask}


def _hand_ce(logits, batch, use_loss_mask, normalisation, z_coef=0.0):
  """Loops over (row, t): token t is a target when it and t-1 share a non-zero segment."""
  per_segment = {}
  for b in range(logits.shape[0]):
    for t in range(1, logits.shape[1]):
      seg = batch["segment_ids"][b, t]
      if seg == 0 or batch["segment_ids"][b, t - 1] != seg:
        continue
      if use_loss_mask and not batch["loss_mask"][b, t]:
        continue
      logp, z = _log_softmax([float(x) for x in logits[b, t - 1]])
      value = -logp[batch["tokens"][b, t]] + z_coef * z * z
      per_segment.setdefault((b, seg), []).append(value)
  values = [v for seg in per_segment.values() for v in seg]
  if normalisation == "token":
    return sum(values) / len(values), len(values)
  means = [sum(v) / len(v) for v in per_segment.values()]
  return sum(means) / len(means), len(means)


@pytest.mark.parametrize("name", ["lm", "sft"])
@pytest.mark.parametrize("normalisation", ["token", "sequence"])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_next_token_losses_match_hand_computation(name, normalisation, z_loss):
  rng = np.random.default_rng(0)
  batch = _packed_batch(rng)
  logits = rng.normal(size=(2, 7, 5)).astype(np.float32) * 2
  model = FixedOutput(logits)
  loss_fn = losses.get_loss(name, model, z_loss=z_loss, normalisation=normalisation)
  loss, aux = loss_fn(_params(model), {k: jnp.asarray(v) for k, v in batch.items()}, None)
  expected, count = _hand_ce(logits, batch, name == "sft", normalisation, z_loss)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(aux["weight"]) == count


def test_sft_ignores_tokens_outside_loss_mask():
  rng = np.random.default_rng(1)
  batch = _packed_batch(rng)
  logits = rng.normal(size=(2, 7, 5)).astype(np.float32)
  model = FixedOutput(logits)
  loss_fn = losses.get_loss("sft", model)
  base, _ = loss_fn(_params(model), batch, None)
  changed = logits.copy()
  changed[0, 2] += 50.0  # predicts token 3, the first of segment 2: never a target
  changed[1, 0] += 50.0  # predicts token 1 of row 1, loss_mask 0
  model2 = FixedOutput(changed)
  again, _ = loss_fn(_params(model2), batch, None)
  np.testing.assert_allclose(float(again), float(base), rtol=1e-6)


def _hand_listwise(scores, labels):
  pos = [s for s, y in zip(scores, labels) if y]
  neg = [s for s, y in zip(scores, labels) if not y]
  total = sum(math.log(1.0 / (1.0 + math.exp(-(p - n)))) for p in pos for n in neg)
  return -total / (len(pos) * len(neg))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_rm_listwise_matches_spec_formula_for_every_k(k):
  rng = np.random.default_rng(k)
  scores = rng.normal(size=6).astype(np.float32) * 3
  labels = np.zeros(6, np.int32)
  labels[rng.permutation(6)[:k]] = 1
  model = FixedOutput(scores.reshape(6, 1))
  loss_fn = losses.get_loss("rm_listwise", model)
  batch = {"tokens": jnp.zeros((1, 6, 4), jnp.int32), "labels": jnp.asarray(labels[None])}
  loss, aux = loss_fn(_params(model), batch, None)
  np.testing.assert_allclose(float(loss), _hand_listwise(scores.tolist(), labels), rtol=1e-5)
  assert float(aux["weight"]) == 1.0
  pairs = [(p, n) for p, yp in zip(scores, labels) if yp for n, yn in zip(scores, labels) if not yn]
  np.testing.assert_allclose(float(aux["pair_accuracy"]),
                             sum(p > n for p, n in pairs) / len(pairs), rtol=1e-6)


def test_rm_listwise_averages_lists_and_skips_lists_without_pairs():
  scores = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0], [3.0, -2.0, 0.1, 0.4]],
                    np.float32)
  labels = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 1, 0, 0]], np.int32)
  loss, aux = losses.listwise_ranking_loss(jnp.asarray(scores), jnp.asarray(labels))
  expected = (_hand_listwise(scores[0], labels[0]) + _hand_listwise(scores[2], labels[2])) / 2
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(aux["weight"]) == 2.0


def test_rm_listwise_response_mask_drops_empty_slots():
  scores = np.array([[0.5, -1.0, 2.0, 9.0]], np.float32)
  labels = np.array([[1, 0, 0, 0]], np.int32)
  mask = np.array([[1, 1, 1, 0]], np.int32)
  loss, _ = losses.listwise_ranking_loss(jnp.asarray(scores), jnp.asarray(labels),
                                         jnp.asarray(mask))
  np.testing.assert_allclose(float(loss), _hand_listwise(scores[0, :3], labels[0, :3]),
                             rtol=1e-5)


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_grpo_matches_hand_computation(normalisation):
  rng = np.random.default_rng(3)
  b, length, vocab, eps, beta = 3, 6, 5, 0.2, 0.1
  logits = rng.normal(size=(b, length, vocab)).astype(np.float32)
  tokens = rng.integers(0, vocab, (b, length)).astype(np.int32)
  segment_ids = np.array([[1] * 6, [1] * 5 + [0], [1] * 4 + [0] * 2], np.int32)
  loss_mask = np.array([[0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 0, 0]], np.int32)
  old = rng.normal(size=(b, length)).astype(np.float32) * 0.3 - 1.5
  ref = rng.normal(size=(b, length)).astype(np.float32) * 0.3 - 1.5
  adv = np.array([1.0, -0.5, 2.0], np.float32)
  model = FixedOutput(logits)
  loss_fn = losses.get_loss("grpo", model, clip_eps=eps, kl_beta=beta,
                            normalisation=normalisation)
  batch = {"tokens": tokens, "segment_ids": segment_ids, "loss_mask": loss_mask,
           "old_logprobs": old, "ref_logprobs": ref, "advantages": adv}
  loss, aux = loss_fn(_params(model), {k: jnp.asarray(v) for k, v in batch.items()}, None)

  per_seq, all_tokens = [], []
  for i in range(b):
    terms = []
    for t in range(1, length):
      if not (loss_mask[i, t] and segment_ids[i, t] and segment_ids[i, t - 1] == segment_ids[i, t]):
        continue
      logp = _log_softmax([float(x) for x in logits[i, t - 1]])[0][tokens[i, t]]
      rho = math.exp(logp - float(old[i, t]))
      a = float(adv[i])
      pg = min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a)
      kl = math.exp(float(ref[i, t]) - logp) - (float(ref[i, t]) - logp) - 1
      terms.append(pg - beta * kl)
    per_seq.append(sum(terms) / len(terms))
    all_tokens.extend(terms)
  expected = (-sum(per_seq) / len(per_seq) if normalisation == "sequence"
              else -sum(all_tokens) / len(all_tokens))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(aux["weight"]) == (3 if normalisation == "sequence" else len(all_tokens))


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_match_hand_computation(scale_by_std):
  # Row 0 varies; rows 1-3 are all-equal groups, of values fp32 cannot hold exactly (an fp32
  # mean an ulp off once gave 0.03-0.1 here when divided by std + eps).
  rewards = np.array([[0.7, -0.2, 0.3, -0.9, 0.1, 0.4, -0.6, 0.8], [0.3] * 8, [-0.62] * 8,
                      [1.0] * 8], np.float32)
  adv = np.asarray(losses.group_normalised_advantages(jnp.asarray(rewards),
                                                      scale_by_std=scale_by_std))
  assert adv.dtype == np.float32
  row = [float(r) for r in rewards[0]]
  mean = sum(row) / len(row)
  std = math.sqrt(sum((r - mean) ** 2 for r in row) / len(row))
  scale = std + 1e-6 if scale_by_std else 1.0
  np.testing.assert_allclose(adv[0], [(r - mean) / scale for r in row], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(adv[1:], np.zeros((3, 8)))  # exactly 0, no NaN


def test_group_advantages_default_is_the_spec_std_scaling():
  rewards = jnp.asarray([[1.0, 0.0, 0.0, 0.0]])
  np.testing.assert_allclose(np.asarray(losses.group_normalised_advantages(rewards)),
                             [[3 ** 0.5, -(3 ** -0.5), -(3 ** -0.5), -(3 ** -0.5)]], rtol=1e-5)
  np.testing.assert_allclose(
      np.asarray(losses.group_normalised_advantages(rewards, scale_by_std=False)),
      [[0.75, -0.25, -0.25, -0.25]], rtol=1e-6)


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_grpo_aggregation_weights_long_completions_only_in_token_mode(normalisation):
  """On-policy, no KL: the loss is minus the (sequence- or token-) mean of the advantages."""
  b, length, vocab = 3, 9, 4
  logits = np.random.default_rng(0).normal(size=(b, length, vocab)).astype(np.float32)
  tokens = np.zeros((b, length), np.int32)
  # Completions of 6, 1 and 3 tokens after a 2-token prompt; padding after them.
  lengths = np.array([6, 1, 3])
  segment_ids = (np.arange(length)[None] < 2 + lengths[:, None]).astype(np.int32)
  loss_mask = segment_ids * (np.arange(length)[None] >= 2)
  adv = np.array([1.0, -2.0, 0.5], np.float32)
  model = FixedOutput(logits)
  loss_fn = losses.get_loss("grpo", model, kl_beta=0.0, normalisation=normalisation)
  batch = {"tokens": tokens, "segment_ids": segment_ids, "loss_mask": loss_mask,
           "advantages": adv}
  loss, aux = loss_fn(_params(model), {k: jnp.asarray(v) for k, v in batch.items()}, None)
  if normalisation == "sequence":
    expected, weight = -adv.mean(), 3  # (1 - 2 + 0.5) / 3
  else:
    expected, weight = -(adv * lengths).sum() / lengths.sum(), 10  # (6 - 2 + 1.5) / 10
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert float(aux["weight"]) == weight


def test_unknown_loss_name_lists_the_registered_ones():
  with pytest.raises(KeyError, match=r"unknown loss 'dpo'.*grpo, lm, rm_listwise, sft"):
    losses.get_loss("dpo", FixedOutput(np.zeros((1, 1), np.float32)))


def test_missing_batch_field_is_named():
  model = FixedOutput(np.zeros((1, 4, 3), np.float32))
  loss_fn = losses.get_loss("sft", model)
  with pytest.raises(KeyError, match="loss_mask"):
    loss_fn(_params(model), {"tokens": jnp.zeros((1, 4), jnp.int32)}, None)


def test_bad_normalisation_is_rejected():
  with pytest.raises(ValueError, match="normalisation"):
    losses.get_loss("lm", FixedOutput(np.zeros((1, 1), np.float32)), normalisation="row")
