"""Tokenizers: round trips, special tokens and file detection, for both backends."""

import pytest

from qmath_jax.data import chat
from qmath_jax.data import synthetic
from qmath_jax.data import tokenizer as tokenizer_lib

SAMPLES = (
    "Natalia sold 48/2 = 24 clips in May.",
    "  leading spaces, trailing spaces  \n\n\ttab and blank lines\n",
    "$\\frac{1}{2} + \\sqrt{x^2} = \\boxed{3}$",
    "芳芳买了一本书有99页，看了90页，她还剩多少页没有看？",
    "émigré naïve Ωmega 🙂 ∑ x_i",
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|><|endoftext|>",
    "",
)


@pytest.fixture(scope="module", params=["tokenizer.json", "spm.model"])
def tokenizer(request, tmp_path_factory):
  texts = synthetic.corpus(300, seed=3)
  path = tmp_path_factory.mktemp("tok") / request.param
  if request.param == "tokenizer.json":
    return tokenizer_lib.train_byte_level_bpe(texts, 400, path)
  return tokenizer_lib.train_sentencepiece(texts, 400, path)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tokenizer, text):
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  assert all(0 <= i < tokenizer.vocab_size for i in ids)


def test_special_tokens_written_in_text_map_to_their_ids(tokenizer):
  for token in (chat.ENDOFTEXT, chat.IM_START, chat.IM_END):
    assert tokenizer.encode(token) == [tokenizer.token_to_id(token)]
  ids = tokenizer.encode(f"a{chat.IM_END}b")
  assert tokenizer.token_to_id(chat.IM_END) in ids
  assert tokenizer.eos_ids == (tokenizer.token_to_id(chat.IM_END),
                               tokenizer.token_to_id(chat.ENDOFTEXT))
  assert tokenizer.pad_id == tokenizer.token_to_id(chat.ENDOFTEXT)
  assert len(set(tokenizer.eos_ids + (tokenizer.token_to_id(chat.IM_START),))) == 3


def test_offsets_cover_the_text(tokenizer):
  text = "Mia has 12 apples.\n<|im_end|>\n中文 ok"
  ids, offsets = tokenizer.encode_with_offsets(text)
  assert len(ids) == len(offsets)
  assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
  assert all(a <= b for a, b in offsets)
  assert all(offsets[i][0] <= offsets[i + 1][0] for i in range(len(offsets) - 1))
  im_end = ids.index(tokenizer.token_to_id(chat.IM_END))
  assert text[offsets[im_end][0]:offsets[im_end][1]] == chat.IM_END


def test_unknown_token_raises_naming_it(tokenizer):
  with pytest.raises(KeyError, match="no-such-token"):
    tokenizer.token_to_id("<no-such-token>")


def test_load_tokenizer_picks_by_file(tokenizer):
  loaded = tokenizer_lib.load_tokenizer(tokenizer.path)
  assert type(loaded) is type(tokenizer)
  assert loaded.encode(SAMPLES[2]) == tokenizer.encode(SAMPLES[2])
  if tokenizer.path.name == "tokenizer.json":
    from_dir = tokenizer_lib.load_tokenizer(tokenizer.path.parent)
    assert from_dir.encode(SAMPLES[0]) == tokenizer.encode(SAMPLES[0])


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tokenizer_lib.load_tokenizer(tmp_path / "missing.model")
  odd = tmp_path / "vocab.txt"
  odd.write_text("a\n")
  with pytest.raises(ValueError, match="unknown tokenizer format"):
    tokenizer_lib.load_tokenizer(odd)


def test_sentencepiece_reserves_chatml_symbols_first(tmp_path):
  sp = tokenizer_lib.train_sentencepiece(synthetic.corpus(100, seed=1), 400, tmp_path / "a.model")
  assert [sp.token_to_id(t) for t in tokenizer_lib.SPECIAL_TOKENS] == [1, 2, 3]
  assert sp.vocab_size == 400
