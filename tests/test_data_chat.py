"""ChatML ids and the assistant-only loss mask, against a hand-written expectation."""

import pytest

from qmath_jax.data import chat
from qmath_jax.data import synthetic
from qmath_jax.data import tokenizer as tokenizer_lib

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "1+1?"},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "\n4"},
]


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory):
  """A byte-level BPE with no merges: each byte is one token, so ids are predictable by hand."""
  path = tmp_path_factory.mktemp("bytes") / "tokenizer.json"
  return tokenizer_lib.train_byte_level_bpe(["abc"], 256 + 3, path)


@pytest.fixture(scope="module", params=["tokenizer.json", "spm.model"])
def merged_tokenizer(request, tmp_path_factory):
  texts = synthetic.corpus(300, seed=5) + [chat.render(MESSAGES)] * 20
  path = tmp_path_factory.mktemp("merged") / request.param
  if request.param == "tokenizer.json":
    return tokenizer_lib.train_byte_level_bpe(texts, 500, path)
  return tokenizer_lib.train_sentencepiece(texts, 500, path)


def _byte_tokens(text):
  """Hand-made expectation helper: one byte-level symbol per character (ASCII only)."""
  byte_level = {"\n": "Ċ", " ": "Ġ"}
  return [byte_level.get(c, c) for c in text]


def test_chatml_ids_and_mask_match_hand_written_expectation(byte_tokenizer):
  # Written out from Qwen's template: header and user/system turns 0, assistant content and its
  # <|im_end|> 1, the newline after <|im_end|> 0; the second answer starts with its own newline.
  expected = (
      [("<|im_start|>", 0)] + [(t, 0) for t in _byte_tokens("system\nBe brief.")]
      + [("<|im_end|>", 0), ("Ċ", 0)]
      + [("<|im_start|>", 0)] + [(t, 0) for t in _byte_tokens("user\n1+1?")]
      + [("<|im_end|>", 0), ("Ċ", 0)]
      + [("<|im_start|>", 0)] + [(t, 0) for t in _byte_tokens("assistant\n")]
      + [("2", 1), ("<|im_end|>", 1), ("Ċ", 0)]
      + [("<|im_start|>", 0)] + [(t, 0) for t in _byte_tokens("user\n2+2?")]
      + [("<|im_end|>", 0), ("Ċ", 0)]
      + [("<|im_start|>", 0)] + [(t, 0) for t in _byte_tokens("assistant\n")]
      + [("Ċ", 1), ("4", 1), ("<|im_end|>", 1), ("Ċ", 0)]
  )
  ids, mask = chat.encode(byte_tokenizer, MESSAGES)
  expected_ids = [byte_tokenizer.token_to_id(t) for t, _ in expected]
  assert ids == expected_ids
  assert mask == [m for _, m in expected]


def test_generation_prompt_ends_with_assistant_header_and_masks_nothing(byte_tokenizer):
  ids, mask = chat.encode(byte_tokenizer, MESSAGES[:2], add_generation_prompt=True)
  assert byte_tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
  assert sum(mask) == 0


def test_mask_selects_exactly_assistant_text_with_merges(merged_tokenizer):
  ids, mask = chat.encode(merged_tokenizer, MESSAGES)
  assert ids == merged_tokenizer.encode(chat.render(MESSAGES))
  masked = [i for i, m in zip(ids, mask) if m]
  assert merged_tokenizer.decode(masked) == "2<|im_end|>\n4<|im_end|>"
  # Each masked run ends at an <|im_end|> and nothing after the last one is masked.
  im_end = merged_tokenizer.token_to_id(chat.IM_END)
  assert [ids[i] for i in range(len(ids)) if mask[i] and (i + 1 == len(ids) or
                                                          not mask[i + 1])] == [im_end, im_end]


def test_assistant_spans_index_the_rendered_text():
  text = chat.render(MESSAGES)
  spans = chat.assistant_spans(MESSAGES)
  assert [text[s:e] for s, e in spans] == ["2<|im_end|>", "\n4<|im_end|>"]


def test_bad_messages_raise(byte_tokenizer):
  with pytest.raises(ValueError, match="message 1 lacks"):
    chat.encode(byte_tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant"}])
  with pytest.raises(ValueError, match="unknown chat role"):
    chat.encode(byte_tokenizer, [{"role": "tool", "content": "x"}])
