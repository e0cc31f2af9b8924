"""Stop strings, checked on the host on decoded text, and the Completion each row becomes.

A stop string may span several tokens (a closing python fence "```" can arrive as "``" + "`\n"),
so it is looked for in decoded text rather than in ids. The sampler decodes on device in chunks
of steps and, between chunks, asks `first_stop` about the tokens each unfinished row has so far;
rows found stopped are marked done for the next chunk, and whatever they sampled past the stop
is cut here. End-of-sequence ids are also checked on device after every step.
"""

from collections.abc import Callable, Sequence

from qmath_jax.sampling.types import FINISH_LENGTH, FINISH_STOP, Completion

Decode = Callable[[Sequence[int]], str]


def _earliest(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
  """(char index, stop) of the stop string that starts first in `text` (longest on a tie)."""
  found = [(text.find(s), -len(s), s) for s in stops if s in text]
  if not found:
    return None
  index, _, stop = min(found)
  return index, stop


def has_stop(decode: Decode, ids: Sequence[int], stops: Sequence[str], checked: int = 0) -> bool:
  """Whether the text of `ids` holds a stop string, given that the text of `ids[:checked]` holds none.

  Decodes only a tail window: the tokens after `checked` plus enough before it to hold any stop
  string that starts earlier (a byte-level token may carry as little as one byte of a character
  of up to four bytes), so checking a growing row after every chunk costs O(chunk), not O(length).
  """
  if not stops or len(ids) <= checked:
    return False
  reach = 4 * max(len(s) for s in stops) + 4
  tail = decode(ids[max(0, checked - reach):])
  return any(s in tail for s in stops)


def first_stop(decode: Decode, ids: Sequence[int], stops: Sequence[str],
               checked: int = 0) -> tuple[int, int, str] | None:
  """The shortest prefix of `ids` whose text contains a stop string.

  Args:
    decode: ids -> text.
    ids: the tokens generated so far.
    stops: stop strings (non-empty).
    checked: a prefix length already known to hold no stop string (its text was checked).
  Returns:
    (tokens, char index, stop): `ids[:tokens]` is the shortest prefix whose text contains a
    stop string, which begins at `char index` of that text; None when the text has none.
  """
  if not stops or len(ids) <= checked or _earliest(decode(ids), stops) is None:
    return None
  lo, hi = checked, len(ids)  # text of ids[:lo] holds no stop; text of ids[:hi] does
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if _earliest(decode(ids[:mid]), stops) is None:
      lo = mid
    else:
      hi = mid
  index, stop = _earliest(decode(ids[:hi]), stops)
  return hi, index, stop


def completion(decode: Decode, ids: Sequence[int], logprobs: Sequence[float],
               eos_ids: Sequence[int], stops: Sequence[str], max_new_tokens: int) -> Completion:
  """Turns one row's sampled tokens into a Completion.

  `ids` may run past the end (tokens sampled after an end-of-sequence id or a stop string, or
  beyond `max_new_tokens`); the earliest of: an end-of-sequence id, a stop string, the length
  limit, ends the completion.
  """
  ids, logprobs = list(ids[:max_new_tokens]), list(logprobs[:max_new_tokens])
  eos_at = next((i for i, t in enumerate(ids) if t in eos_ids), None)
  if eos_at is not None:
    ids, logprobs = ids[:eos_at + 1], logprobs[:eos_at + 1]
  found = first_stop(decode, ids, stops)
  if found is not None and (eos_at is None or found[0] <= eos_at + 1):
    tokens, index, stop = found
    return Completion(text=decode(ids[:tokens])[:index], token_ids=ids[:tokens],
                      logprobs=logprobs[:tokens], finish_reason=FINISH_STOP, stop=stop)
  if eos_at is not None:
    return Completion(text=decode(ids[:eos_at]), token_ids=ids, logprobs=logprobs,
                      finish_reason=FINISH_STOP, stop=decode([ids[eos_at]]))
  return Completion(text=decode(ids), token_ids=ids, logprobs=logprobs,
                    finish_reason=FINISH_LENGTH, stop=None)
