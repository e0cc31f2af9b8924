"""Test doubles for the sampler: a table tokenizer for tiny random models, a scripted TIR model.

Every id decodes to a fixed string from a table, so a test knows exactly which characters each
token adds: stop strings that span tokens ("``" + "`\\n" completing "```") can be built on
purpose. Ids 0, 1, 2 are the ChatML special tokens, as in the byte-level BPE trained by
`qmath_jax.data.tokenizer.train_byte_level_bpe`.
"""

from collections.abc import Sequence

from qmath_jax.data import chat

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 `\n{}()=+-*/.,"


def default_table(vocab_size: int) -> list[str]:
  """Specials, then single characters, then two-character pieces, until `vocab_size` entries."""
  table = [chat.ENDOFTEXT, chat.IM_START, chat.IM_END] + list(_ALPHABET)
  pairs = (a + b for a in _ALPHABET for b in _ALPHABET)
  while len(table) < vocab_size:
    table.append(next(pairs))
  return table[:vocab_size]


class TableTokenizer:
  """encode/decode over a fixed id -> string table (greedy longest match when encoding)."""

  def __init__(self, table: Sequence[str], eos_ids: Sequence[int] | None = None):
    self.table = list(table)
    if len(set(self.table)) != len(self.table):
      raise ValueError("tokenizer table holds duplicate strings")
    self._ids = {s: i for i, s in enumerate(self.table)}
    self._longest = max(len(s) for s in self.table)
    self._eos = (tuple(eos_ids) if eos_ids is not None
                 else (self._ids[chat.IM_END], self._ids[chat.ENDOFTEXT]))

  @property
  def vocab_size(self) -> int:
    return len(self.table)

  @property
  def pad_id(self) -> int:
    return self._ids[chat.ENDOFTEXT]

  @property
  def eos_ids(self) -> tuple[int, ...]:
    return self._eos

  def token_to_id(self, token: str) -> int:
    if token not in self._ids:
      raise KeyError(f"token {token!r} is not in the table")
    return self._ids[token]

  def encode(self, text: str) -> list[int]:
    ids, i = [], 0
    while i < len(text):
      for size in range(min(self._longest, len(text) - i), 0, -1):
        if text[i:i + size] in self._ids:
          ids.append(self._ids[text[i:i + size]])
          i += size
          break
      else:
        raise ValueError(f"character {text[i]!r} at offset {i} is not in the tokenizer table")
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.table[i] for i in ids)


def perturbed_params(cfg, seed: int = 0, scale: float = 0.1):
  """Fresh parameters plus noise on every leaf, so norms and biases are not ones and zeros."""
  import jax  # pylint: disable=g-import-not-at-top
  from qmath_jax.model import init_params  # pylint: disable=g-import-not-at-top

  @jax.jit
  def make(key, noise_key):
    params = init_params(cfg, key)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(noise_key, len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])

  return make(jax.random.key(seed), jax.random.key(seed + 1))


class CodeThenAnswerSampler:
  """A scripted TIR model (`sampling.tir.IdsSamplerLike`) for tests of the TIR loop's plumbing.

  A context without an interpreter output block gets a python block printing 1, stopped at its
  closing fence; a context with one gets `answer` and the end of the turn. Every sample of a
  prompt is the same; log-probs are 0.
  """

  def __init__(self, tokenizer, answer: str = "so \\boxed{1}"):
    self.tokenizer = tokenizer
    self.answer = answer

  def generate_ids(self, prompt_ids, n=1, **unused):
    from qmath_jax.sampling import types  # pylint: disable=g-import-not-at-top
    del unused
    out = []
    for ids in prompt_ids:
      if chat.TOOL_OUTPUT_OPEN in self.tokenizer.decode(ids):
        text, stop = self.answer, chat.IM_END
      else:
        text, stop = f"{chat.FENCE}{chat.TOOL_CODE_LANGUAGE}\nprint(1)\n", chat.FENCE
      token_ids = self.tokenizer.encode(text + stop)
      out.append([types.Completion(text=text, token_ids=token_ids,
                                   logprobs=[0.0] * len(token_ids),
                                   finish_reason=types.FINISH_STOP, stop=stop)] * n)
    return out
