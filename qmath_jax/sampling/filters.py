"""Choosing the next token from fp32 logits: greedy, temperature, top-k and top-p (nucleus).

Order of operations (as in common practice): divide by the temperature, keep the top-k, keep
the nucleus of the renormalised top-k distribution, sample with the Gumbel-max trick. The
reported log-probability is always that of the chosen token under the *untempered, unfiltered*
model distribution, `log_softmax(logits)[token]` in fp32: what GRPO's ratio and KL terms need.

Neither filter sorts the vocabulary. Top-k: a bisection over the 32-bit order-preserving integer
image of each fp32 value finds, in 32 passes over `[rows, vocab]`, the exact k-th largest value.
Top-p: rejection sampling (`nucleus_sample`) draws from the exact nucleus in a few passes. Every
token tied with the boundary value is kept, where a sort would cut ties arbitrarily.

Which filters run is static (no branch inside the decode loop); their values are traced, so
one compiled loop serves every temperature, k and p.
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

  # On accelerators every while-loop iteration costs a host round trip: unroll the 32 passes.
  unroll = jax.default_backend() != "cpu"
  lo, _ = jax.lax.fori_loop(0, _BITS, body, (lo, hi), unroll=unroll)
  return lo


def top_k_mask(logits, k):
  """bool `[rows, vocab]`: the k (>= 1) largest logits per row, and any ties of the k-th."""
  keys = _order_keys(logits)
  threshold = _largest_threshold(keys, lambda sel: sel.sum(-1) >= k)
  return keys >= threshold


def nucleus_sample(scaled, keys, top_p, max_rounds: int = 1000):
  """Samples from the nucleus of softmax(scaled) by rejection, without finding its threshold.

  Token t is in the nucleus iff the tokens strictly more likely than t hold less than `top_p` of
  the mass (ties of the boundary value are all kept). Each round draws one candidate per
  unfinished row (Gumbel-max over the tokens more likely than the row's pivot) and accepts it if
  it is in the nucleus; a rejected candidate and everything at most as likely are out of the
  nucleus, so its probability becomes the pivot. Accepted draws follow the renormalised nucleus
  exactly; a round accepts with probability >= top_p, so few rounds run (two or three passes over
  `[rows, vocab]` each, against 32 for a threshold bisection).

  Args:
    scaled: fp32 `[rows, vocab]` temperature-scaled logits, -inf on filtered tokens.
    keys: PRNG keys `[rows]`.
    top_p: fp32 scalar in (0, 1].
    max_rounds: a bound that is never reached in practice (each round succeeds with
      probability >= top_p); rows still unaccepted take the most likely token.
  Returns:
    int32 tokens `[rows]`.
  """
  probs = jax.nn.softmax(scaled, axis=-1)
  rows = scaled.shape[0]

  def cond(state):
    rounds, _, _, accepted = state
    return (rounds < max_rounds) & ~jnp.all(accepted)

  def body(state):
    rounds, pivot, token, accepted = state
    round_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, rounds)
    noise = jax.vmap(lambda k: jax.random.gumbel(k, scaled.shape[1:], jnp.float32))(round_keys)
    candidate = jnp.argmax(jnp.where(probs > pivot[:, None], scaled + noise, -jnp.inf), axis=-1)
    p_candidate = jnp.take_along_axis(probs, candidate[:, None], axis=-1)
    mass_above = jnp.sum(jnp.where(probs > p_candidate, probs, 0.0), axis=-1)
    ok = ~accepted & (mass_above < top_p)
    return (rounds + 1, jnp.where(accepted | ok, pivot, p_candidate[:, 0]),
            jnp.where(ok, candidate.astype(jnp.int32), token), accepted | ok)

  start = (jnp.zeros((), jnp.int32), jnp.full((rows,), -1.0, jnp.float32),
           jnp.argmax(scaled, axis=-1).astype(jnp.int32), jnp.zeros((rows,), bool))
  return jax.lax.while_loop(cond, body, start)[2]


def sample(logits, keys, temperature, top_k, top_p, *, stochastic: bool, use_top_k: bool,
           use_top_p: bool, num_ids: int = 0):
  """Picks one token per row.

  Which filters run is static (`stochastic`, `use_top_k`, `use_top_p`: one compiled decode loop
  per combination, with no branch inside the loop); their values are traced.

  Args:
    logits: fp32 `[rows, vocab]`.
    keys: PRNG keys `[rows]`, one per row for this step: a row's token depends only on its own
      key and logits, not on the other rows of the batch.
    temperature: fp32 scalar > 0 (ignored when not `stochastic`: greedy argmax, ties to the
      lowest id).
    top_k: int32 scalar >= 1, used when `use_top_k`.
    top_p: fp32 scalar in (0, 1], used when `use_top_p`.
    num_ids: when > 0, only ids below it are chosen (a tokenizer smaller than the model's
      padded vocabulary cannot decode the rest); the log-probs stay over the whole vocabulary.
  Returns:
    (int32 tokens `[rows]`, fp32 log-probs `[rows]` under the untempered model distribution).
  """
  logits = logits.astype(jnp.float32)
  choosable = logits
  if 0 < num_ids < logits.shape[-1]:
    choosable = jnp.where(jnp.arange(logits.shape[-1]) < num_ids, logits, -jnp.inf)
  if stochastic:
    scaled = choosable / temperature
    if use_top_k:
      scaled = jnp.where(top_k_mask(scaled, top_k), scaled, -jnp.inf)
    if use_top_p:
      tokens = nucleus_sample(scaled, keys, top_p)
    else:
      noise = jax.vmap(lambda k: jax.random.gumbel(k, scaled.shape[1:], jnp.float32))(keys)
      tokens = jnp.argmax(scaled + noise, axis=-1).astype(jnp.int32)
  else:
    tokens = jnp.argmax(choosable, axis=-1).astype(jnp.int32)
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  return tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
