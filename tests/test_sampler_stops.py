"""Stop strings (also across token boundaries), end-of-sequence ids, finish reasons, buckets, errors."""

import numpy as np
import pytest

from qmath_jax.model import get_config
from qmath_jax.sampling import sampler as sampler_lib
from qmath_jax.sampling import stops
from qmath_jax.sampling.sampler import Sampler, bucket
from qmath_jax.sampling.testing import TableTokenizer, default_table, perturbed_params

PROMPTS = ["x=1+2", "abc def gh(", "7*8"]
NEW = 12
TABLE = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "ab", "c`", "``", "`\n", "d", "`"]
SMALL = TableTokenizer(TABLE)
IDS = {s: i for i, s in enumerate(TABLE)}


def test_first_stop_spanning_tokens():
  ids = [IDS["ab"], IDS["c`"], IDS["``"], IDS["d"]]  # "abc```d": "```" ends inside token 2
  assert stops.first_stop(SMALL.decode, ids, ["```"]) == (3, 3, "```")
  assert stops.first_stop(SMALL.decode, ids, ["zz"]) is None
  # The earliest-starting stop string wins, whichever token completed it.
  assert stops.first_stop(SMALL.decode, ids, ["```d", "c`"]) == (2, 2, "c`")
  # Already-checked prefixes are not searched again, but the answer is the same.
  assert stops.first_stop(SMALL.decode, ids, ["```"], checked=2) == (3, 3, "```")


def test_has_stop_reads_only_the_tail():
  ids = [IDS["d"]] * 50 + [IDS["ab"], IDS["c`"], IDS["``"], IDS["d"]]
  seen = []

  def decode(part):
    seen.append(len(part))
    return SMALL.decode(part)

  assert stops.has_stop(decode, ids, ["```"], checked=52)  # starts before `checked`
  assert not stops.has_stop(decode, ids, ["c`d"], checked=50)
  assert stops.has_stop(decode, ids, ["dd"], checked=0)
  assert max(seen[:2]) < 25  # the window, not the 54 tokens


def test_stops_in_byte_level_text_split_across_tokens(tmp_path):
  """Byte-level BPE: a character's bytes may come in several tokens (a prefix then decodes to
  U+FFFD). The shortest stopped prefix and the tail-window check agree with a full scan."""
  from qmath_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  texts = ["中文数学题：求解方程 x² + 2x = 3。答案是 1 或 −3。", "naïve café 😀 🎉 ```python\n"]
  tok = tokenizer_lib.train_byte_level_bpe(texts * 10, 300, tmp_path / "tokenizer.json")
  assert len(tok.encode("😀")) > 1  # split over tokens
  rng = np.random.default_rng(0)
  for _ in range(300):
    ids = rng.integers(3, tok.vocab_size, size=int(rng.integers(2, 30))).tolist()
    text = tok.decode(ids)
    start = int(rng.integers(len(text)))
    stop = text[start:start + 2]
    if "\ufffd" in stop:
      continue
    shortest = next(k for k in range(1, len(ids) + 1) if stop in tok.decode(ids[:k]))
    tokens, index, found = stops.first_stop(tok.decode, ids, [stop])
    assert (tokens, found) == (shortest, stop)
    assert tok.decode(ids[:tokens])[index:].startswith(stop)
    assert all(stops.has_stop(tok.decode, ids, [stop], checked) for checked in range(shortest))


def test_completion_finish_reasons():
  decode = SMALL.decode
  eos = (IDS["<|im_end|>"],)
  ids = [IDS["ab"], IDS["c`"], IDS["``"], IDS["d"], IDS["<|im_end|>"], IDS["d"]]
  lps = [-0.1, -0.2, -0.3, -0.4, -0.5, -0.6]
  by_stop = stops.completion(decode, ids, lps, eos, ["```"], 10)
  assert (by_stop.text, by_stop.token_ids, by_stop.logprobs) == ("abc", ids[:3], lps[:3])
  assert (by_stop.finish_reason, by_stop.stop) == ("stop", "```")
  by_eos = stops.completion(decode, ids, lps, eos, ["zz"], 10)
  assert (by_eos.text, by_eos.token_ids, by_eos.finish_reason) == ("abc```d", ids[:5], "stop")
  assert by_eos.stop == "<|im_end|>" and by_eos.logprobs == lps[:5]
  by_length = stops.completion(decode, ids, lps, eos, ["```"], 2)
  assert (by_length.text, by_length.token_ids, by_length.finish_reason) == ("abc`", ids[:2],
                                                                             "length")
  assert by_length.stop is None
  # A stop string after the end-of-sequence id does not count.
  late = stops.completion(decode, ids, lps, eos, ["d<|im_end|>d"], 10)
  assert (late.finish_reason, late.stop, late.token_ids) == ("stop", "<|im_end|>", ids[:5])


def test_buckets():
  assert [bucket(x) for x in (1, 16, 17, 24, 25, 33, 48, 49, 100, 2048)] == [
      16, 16, 24, 24, 32, 48, 48, 64, 128, 2048]


@pytest.fixture(scope="module")
def model():
  cfg = get_config("tiny")
  params = perturbed_params(cfg)
  return cfg, params, default_table(cfg.vocab_size)


@pytest.fixture(scope="module")
def free_run(model):
  """Greedy completions with no stop at all (the reference the stop tests cut)."""
  cfg, params, table = model
  out = Sampler(cfg, params, TableTokenizer(table, eos_ids=())).generate(PROMPTS,
                                                                        max_new_tokens=NEW)
  return [group[0] for group in out]


def _spanning_stop(table, ids):
  """(stop string, tokens that complete it) spanning a boundary, first found in the text there."""
  text = "".join(table[i] for i in ids)
  ends = np.cumsum([len(table[i]) for i in ids])
  for t in range(2, len(ids)):
    candidate = text[ends[t - 1] - 1:ends[t - 1] + 1]  # last char of token t-1, first of t
    if len(candidate) == 2 and text.find(candidate) == ends[t - 1] - 1:
      return candidate, t + 1
  raise AssertionError("no boundary-spanning stop string found")


@pytest.mark.parametrize("interval,cache", [(32, 64), (4, 64), (4, 2)],
                         ids=["one_chunk", "chunks_of_4", "chunks_of_4_growing_cache"])
def test_stop_string_spanning_tokens_stops_there(model, free_run, interval, cache):
  cfg, params, table = model
  stop, tokens = _spanning_stop(table, free_run[1].token_ids)
  sampler = Sampler(cfg, params, TableTokenizer(table, eos_ids=()), stop_check_interval=interval,
                    initial_cache_len=cache)
  out = sampler.generate(PROMPTS, max_new_tokens=NEW, stop=[stop, "no such text"])
  got = out[1][0]
  assert got.finish_reason == "stop" and got.stop == stop
  assert got.token_ids == free_run[1].token_ids[:tokens]
  assert got.text == free_run[1].text[:free_run[1].text.find(stop)]
  assert len(got.logprobs) == tokens
  np.testing.assert_allclose(got.logprobs, free_run[1].logprobs[:tokens], atol=1e-6)
  for other, ref in ((out[0][0], free_run[0]), (out[2][0], free_run[2])):
    if stop not in ref.text:  # rows without the stop string run to the length limit
      assert other.finish_reason == "length" and other.token_ids == ref.token_ids


def test_end_of_sequence_id_stops_row(model, free_run):
  cfg, params, table = model
  ids = free_run[0].token_ids
  at = next(i for i in range(3, NEW) if ids[i] not in ids[:i])  # first occurrence at i
  before = dict(sampler_lib.TRACES)
  sampler = Sampler(cfg, params, TableTokenizer(table, eos_ids=(ids[at], 250)))
  got = sampler.generate(PROMPTS, max_new_tokens=NEW)[0][0]
  assert dict(sampler_lib.TRACES) == before  # another tokenizer's eos ids: no recompile
  assert got.token_ids == ids[:at + 1] and got.finish_reason == "stop"
  assert got.stop == table[ids[at]] and got.text == "".join(table[i] for i in ids[:at])


@pytest.mark.parametrize("stop", [(), ("no such text",)], ids=["no_stop", "stop_strings"])
def test_rows_end_at_the_models_last_position(model, free_run, stop):
  """Prompt + completion fill at most max_position_embeddings: a longer prompt gets fewer new
  tokens (finish "length"), the other rows of its batch keep their max_new_tokens."""
  cfg, params, table = model
  tokenizer = TableTokenizer(table, eos_ids=())
  lengths = [len(tokenizer.encode(p)) for p in PROMPTS]
  limit = min(lengths) + NEW  # the shortest prompt keeps all NEW tokens, the others fewer
  sampler = Sampler(cfg.replace(max_position_embeddings=limit), params, tokenizer,
                    initial_cache_len=4, stop_check_interval=3)
  out = sampler.generate(PROMPTS, max_new_tokens=NEW, stop=stop)
  rooms = [min(NEW, limit - length) for length in lengths]
  assert min(rooms) < NEW - 2 and max(rooms) == NEW
  for got, ref, room in zip(out, free_run, rooms):
    assert got[0].token_ids == ref.token_ids[:room] and got[0].finish_reason == "length"
    assert got[0].text == tokenizer.decode(ref.token_ids[:room])
    np.testing.assert_allclose(got[0].logprobs, ref.logprobs[:room], atol=1e-6)
  with pytest.raises(ValueError, match=f"prompt 1 has {limit} tokens"):
    sampler.generate_ids([[3], [3] * limit])


def test_similar_calls_reuse_compiled_functions(model, free_run):
  cfg, params, table = model
  sampler = Sampler(cfg, params, TableTokenizer(table, eos_ids=()))
  before = dict(sampler_lib.TRACES)
  # Other prompt count and lengths, other max_new_tokens, same buckets (4 groups, 16, 16).
  out = sampler.generate(["ab", "q(x)=1", "1", "y"], max_new_tokens=NEW - 3)
  out += sampler.generate(["zz", "1", "2+2=4"], max_new_tokens=NEW + 2)
  assert dict(sampler_lib.TRACES) == before
  assert [len(c[0].token_ids) for c in out] == [NEW - 3] * 4 + [NEW + 2] * 3
  assert all(c[0].finish_reason == "length" for c in out)


def test_bad_arguments_are_named(model):
  cfg, params, table = model
  sampler = Sampler(cfg, params, TableTokenizer(table, eos_ids=()))
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    sampler.generate(["ab", ""])
  with pytest.raises(ValueError, match="prompt 0 has 4096 tokens: max_position_embeddings=4096"):
    sampler.generate_ids([[3] * 4096])
  with pytest.raises(ValueError, match="top_p=0"):
    sampler.generate(["ab"], top_p=0.0)
  with pytest.raises(ValueError, match="non-empty strings"):
    sampler.generate(["ab"], stop=[""])
  with pytest.raises(ValueError, match="prompt 0 holds token id 999"):
    sampler.generate_ids([[1, 999]])
  with pytest.raises(ValueError, match="lm_head has shape"):
    Sampler(cfg, dict(params, lm_head=params["lm_head"][:, :10]), sampler.tokenizer)


def test_ids_the_tokenizer_lacks_are_never_sampled(model):
  """A model vocabulary padded past the tokenizer's (Qwen: 151936 rows, 151665 ids): the ids
  without a token are never chosen, so every completion decodes; log-probs stay those of the
  whole vocabulary."""
  cfg, params, table = model
  small = TableTokenizer(table[:200], eos_ids=())
  knobs = dict(n=16, temperature=1.5, max_new_tokens=6, seed=0)
  out = Sampler(cfg, params, small).generate(PROMPTS, **knobs)
  ids = [t for group in out for c in group for t in c.token_ids]
  assert len(ids) == len(PROMPTS) * 16 * 6 and max(ids) < 200
  assert out[0][0].text == small.decode(out[0][0].token_ids)
  whole = Sampler(cfg, params, TableTokenizer(table, eos_ids=())).generate(PROMPTS, **knobs)
  assert max(t for group in whole for c in group for t in c.token_ids) >= 200  # test has power
  greedy = Sampler(cfg, params, small).generate(PROMPTS, max_new_tokens=NEW)
  whole_greedy = Sampler(cfg, params, TableTokenizer(table, eos_ids=())).generate(
      PROMPTS, max_new_tokens=NEW)
  assert all(max(c[0].token_ids) < 200 for c in greedy)
  assert any(max(c[0].token_ids) >= 200 for c in whole_greedy)
  for got, ref in zip(greedy, whole_greedy):
    if max(ref[0].token_ids) < 200:  # same tokens, log-probs not renormalised
      assert got[0].token_ids == ref[0].token_ids
      np.testing.assert_allclose(got[0].logprobs, ref[0].logprobs, atol=1e-6)
