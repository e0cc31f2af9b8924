"""Choosing the next token from fp32 logits: greedy, temperature, top-k and top-p (nucleus).

Order of operations (as in common practice): divide by the temperature, keep the top-k, keep
the nucleus of the renormalised top-k distribution, sample with the Gumbel-max trick. The
reported log-probability is always that of the chosen token under the *untempered, unfiltered*
model distribution, `log_softmax(logits)[token]` in fp32: what GRPO's ratio and KL terms need.

Top-k and top-p thresholds are found without sorting the vocabulary: a bisection over the 32-bit
order-preserving integer image of each fp32 value finds, in 32 passes over `[rows, vocab]`, the
exact k-th largest value (or the exact smallest value still inside the nucleus). Every token tied
with that threshold value is kept, where a sort would cut ties arbitrarily.

All knobs are traced values, so one compiled decode loop serves greedy and every sampling setting.
"""

import jax
import jax.numpy as jnp

_BITS = 32


def _order_keys(x):
  """fp32 `[rows, vocab]` -> uint32 keys with the same order (including negative values)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))


def _largest_threshold(keys, holds):
  """Per row, the largest uint32 t for which `holds(keys >= t)` is True (keys.min() always holds).

  Args:
    keys: uint32 `[rows, vocab]`.
    holds: maps a bool `[rows, vocab]` selection to bool `[rows]`; monotone (a larger selection
      holds whenever a smaller one does).
  Returns:
    uint32 `[rows, 1]`.
  """
  lo = keys.min(axis=-1, keepdims=True)
  hi = keys.max(axis=-1, keepdims=True)

  def body(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo + 1) // 2
    ok = holds(keys >= mid)[:, None]
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, _BITS, body, (lo, hi))
  return lo


def top_k_mask(logits, k):
  """bool `[rows, vocab]`: the k largest logits per row (and their ties); k <= 0 keeps all."""
  keys = _order_keys(logits)
  threshold = _largest_threshold(keys, lambda sel: sel.sum(-1) >= k)
  return jnp.where(k > 0, keys >= threshold, True)


def top_p_mask(logits, p):
  """bool `[rows, vocab]`: the smallest set of most likely tokens whose probability is >= p.

  `logits` may hold -inf (already filtered tokens). p >= 1 keeps every token.
  """
  probs = jax.nn.softmax(logits, axis=-1)
  keys = _order_keys(logits)
  threshold = _largest_threshold(
      keys, lambda sel: jnp.sum(jnp.where(sel, probs, 0.0), axis=-1) >= p)
  return jnp.where(p < 1.0, keys >= threshold, True)


def sample(logits, keys, temperature, top_k, top_p):
  """Picks one token per row.

  Args:
    logits: fp32 `[rows, vocab]`.
    keys: PRNG keys `[rows]`, one per row for this step: a row's token depends only on its own
      key and logits, not on the other rows of the batch.
    temperature: fp32 scalar; 0 means greedy (argmax, ties to the lowest id).
    top_k: int32 scalar; <= 0 means no top-k.
    top_p: fp32 scalar in (0, 1]; 1 means no nucleus filter.
  Returns:
    (int32 tokens `[rows]`, fp32 log-probs `[rows]` under the untempered model distribution).
  """
  logits = logits.astype(jnp.float32)

  def greedy(_):
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def stochastic(_):
    scaled = logits / jnp.maximum(temperature, 1e-6)
    scaled = jax.lax.cond(top_k > 0, lambda s: jnp.where(top_k_mask(s, top_k), s, -jnp.inf),
                          lambda s: s, scaled)
    scaled = jax.lax.cond(top_p < 1.0, lambda s: jnp.where(top_p_mask(s, top_p), s, -jnp.inf),
                          lambda s: s, scaled)
    noise = jax.vmap(lambda k: jax.random.gumbel(k, scaled.shape[1:], jnp.float32))(keys)
    return jnp.argmax(scaled + noise, axis=-1).astype(jnp.int32)

  tokens = jax.lax.cond(temperature > 0, stochastic, greedy, None)
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  return tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
