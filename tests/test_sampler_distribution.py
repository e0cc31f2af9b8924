"""Sampled tokens follow their target distributions (chi-square), and the filters are exact."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax.model import Transformer, get_config
from qmath_jax.sampling import filters
from qmath_jax.sampling.sampler import Sampler
from qmath_jax.sampling.testing import TableTokenizer, default_table, perturbed_params

SAMPLES = 2048
PROMPT = "ab"


def _chi2_sf(statistic: float, dof: int) -> float:
  """Upper tail of the chi-square distribution (scipy when present, else Wilson-Hilferty)."""
  try:
    from scipy import stats  # pylint: disable=g-import-not-at-top
    return float(stats.chi2.sf(statistic, dof))
  except ImportError:
    z = ((statistic / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def chi_square_p(counts, expected_probs):
  """p-value of `counts` under `expected_probs`; bins expected below 5 are pooled."""
  counts = np.asarray(counts, np.float64)
  expected = np.asarray(expected_probs, np.float64) * counts.sum()
  small = expected < 5
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  keep = exp > 0
  statistic = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
  return _chi2_sf(statistic, int(keep.sum()) - 1)


def _target(logits, temperature, top_k=0, top_p=1.0):
  """The distribution sampling should follow, built by sorting (the textbook definition)."""
  probs = np.exp(logits / temperature - np.max(logits / temperature))
  order = np.argsort(-probs, kind="stable")
  keep = np.zeros_like(probs, bool)
  keep[order[:top_k if top_k else len(probs)]] = True
  probs = np.where(keep, probs, 0.0)
  probs /= probs.sum()
  cumulative = np.cumsum(probs[order])
  cut = min(int(np.searchsorted(cumulative, top_p)) + 1, len(probs))  # mass >= top_p
  nucleus = np.zeros_like(keep)
  nucleus[order[:cut]] = True
  probs = np.where(nucleus, probs, 0.0)
  return probs / probs.sum()


@pytest.fixture(scope="module")
def small_vocab():
  cfg = get_config("tiny", vocab_size=16)
  params = perturbed_params(cfg, seed=5)
  tokenizer = TableTokenizer(default_table(16), eos_ids=())
  tokens = jnp.asarray([tokenizer.encode(PROMPT)])
  logits = np.asarray(Transformer(cfg).apply({"params": params}, tokens)[0, -1], np.float64)
  return Sampler(cfg, params, tokenizer), logits


def _first_token_counts(sampler, **knobs):
  out = sampler.generate([PROMPT], n=SAMPLES, max_new_tokens=1, seed=11, **knobs)
  return np.bincount([c.token_ids[0] for c in out[0]], minlength=16)


@pytest.mark.parametrize("knobs", [
    dict(temperature=0.7),
    dict(temperature=1.0, top_p=0.8),
    dict(temperature=1.5, top_k=4),
], ids=["temperature", "top_p", "top_k"])
def test_first_tokens_follow_target_distribution(small_vocab, knobs):
  sampler, logits = small_vocab
  target = _target(logits, knobs["temperature"], knobs.get("top_k", 0), knobs.get("top_p", 1.0))
  counts = _first_token_counts(sampler, **knobs)
  assert counts.sum() == SAMPLES
  assert np.all(counts[target == 0] == 0), "a filtered-out token was sampled"
  assert chi_square_p(counts, target) > 1e-3
  # The test has power: the untempered, unfiltered distribution is rejected.
  assert chi_square_p(counts, _target(logits, 1.0)) < 1e-6


def test_nucleus_is_strictly_smaller_than_vocabulary(small_vocab):
  _, logits = small_vocab
  assert 1 < np.count_nonzero(_target(logits, 1.0, top_p=0.8)) < 10


def _sorted_top_k(x, k):
  kth = np.sort(x, axis=-1)[:, -k][:, None]
  return x >= kth


def _sorted_top_p(x, p):
  x = x.astype(np.float64)
  probs = np.exp(x - x.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.zeros_like(x, bool)
  for r in range(x.shape[0]):
    order = np.argsort(-x[r], kind="stable")
    cut = min(int(np.searchsorted(np.cumsum(probs[r, order]), p)) + 1, x.shape[1])
    out[r] = x[r] >= x[r, order[cut - 1]]  # the cut value and its ties
  return out


def test_filters_equal_sorting():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 300)).astype(np.float32) * 3
  x[0, :5] = -np.inf           # already filtered entries
  x[1, 10:20] = x[1, 0]        # ties
  x[2] = -np.abs(x[2]) - 50    # all negative
  top_k_mask = jax.jit(filters.top_k_mask)
  for k in (1, 7, 300):
    np.testing.assert_array_equal(np.asarray(top_k_mask(jnp.asarray(x), jnp.int32(k))),
                                  _sorted_top_k(x, k))
  draws = 512
  keys = jax.random.split(jax.random.key(0), draws)
  nucleus_sample = jax.jit(lambda row, p: filters.nucleus_sample(
      jnp.broadcast_to(row, (draws, row.shape[0])), keys, p))
  for p in (0.05, 0.5, 0.9):
    nucleus = _sorted_top_p(x, p)
    for row in (0, 1, 3):
      tokens = np.asarray(nucleus_sample(jnp.asarray(x[row]), jnp.float32(p)))
      assert nucleus[row, tokens].all(), (p, row)  # never outside the nucleus
      if nucleus[row].sum() <= 3:                  # and every member of a small one is drawn
        assert set(tokens) == set(np.flatnonzero(nucleus[row]))


def test_logprobs_are_untempered():
  logits = jnp.asarray([[2.0, 1.0, 0.5, -1.0]])
  keys = jax.random.split(jax.random.key(0), 1)
  for kwargs in (dict(stochastic=False, use_top_k=False, use_top_p=False),
                 dict(stochastic=True, use_top_k=True, use_top_p=True)):
    token, logprob = filters.sample(logits, keys, jnp.float32(0.3), jnp.int32(2),
                                    jnp.float32(0.5), **kwargs)
    assert int(token[0]) == 0
    np.testing.assert_allclose(float(logprob[0]), float(jax.nn.log_softmax(logits)[0, 0]),
                               rtol=1e-6)
