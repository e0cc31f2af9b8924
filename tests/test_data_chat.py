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


# A TIR transcript with two code/output rounds, as pieces (text, 1 = model-written, 0 = spliced
# by the interpreter loop). In the first round the newline after the closing fence sits before
# "```output" (counted as spliced); in the second the output piece brings its own newline.
TIR_PIECES = [
    ("Let me compute.\n```python\nx = 6 * 7\nprint(x)\n```", 1),
    ("\n```output\n42\n```\n", 0),
    ("Now halve it.\n```python\nprint(x // 2)\n```", 1),
    ("\n```output\n21\n```\n", 0),
    ("So the answer is \\boxed{21}.", 1),
]
TIR_CONTENT = "".join(text for text, _ in TIR_PIECES)
TIR_MESSAGES = [{"role": "system", "content": chat.TIR_SYSTEM},
                {"role": "user", "content": "Half of 6 * 7?"},
                {"role": "assistant", "content": TIR_CONTENT}]


def _tir_expectation(mask_tool_outputs):
  """(byte token, mask) of TIR_MESSAGES written out piece by piece."""
  expected = (
      [("<|im_start|>", 0)] + [(t, 0) for t in _byte_tokens("system\n" + chat.TIR_SYSTEM)]
      + [("<|im_end|>", 0), ("Ċ", 0)]
      + [("<|im_start|>", 0)] + [(t, 0) for t in _byte_tokens("user\nHalf of 6 * 7?")]
      + [("<|im_end|>", 0), ("Ċ", 0)]
      + [("<|im_start|>", 0)] + [(t, 0) for t in _byte_tokens("assistant\n")])
  for text, model_written in TIR_PIECES:
    expected += [(t, int(model_written or not mask_tool_outputs)) for t in _byte_tokens(text)]
  return expected + [("<|im_end|>", 1), ("Ċ", 0)]


def test_tool_output_spans_are_the_spliced_pieces():
  starts = [sum(len(t) for t, _ in TIR_PIECES[:i]) for i in range(len(TIR_PIECES))]
  want = [(start, start + len(text)) for start, (text, model_written)
          in zip(starts, TIR_PIECES) if not model_written]
  assert chat.tool_output_spans(TIR_CONTENT) == want == [(48, 66), (107, 125)]
  assert [TIR_CONTENT[s:e] for s, e in want] == ["\n```output\n42\n```\n",
                                                 "\n```output\n21\n```\n"]


@pytest.mark.parametrize("content, spliced", [
    # Not after a python block: a text block, or model text between the two blocks.
    ("```text\nx\n```\n```output\n1\n```\n", []),
    ("```python\nx\n```\nIt prints:\n```output\n1\n```\n", []),
    # A python block that never ran (the transcript ends there) and plain CoT text.
    ("Try:\n```python\nprint(1)\n```", []),
    ("No code here; 2 + 2 = 4.", []),
    # Output blocks without the trailing newline, or cut before the closing fence.
    ("```python\nprint(1)\n```\n```output\n1\n```", ["\n```output\n1\n```"]),
    ("```python\nprint(1)\n```\n```output\n1", ["\n```output\n1"]),
    # The fence right at the output, as data written without the newline.
    ("```python\nprint(1)\n``````output\n1\n```\nok", ["```output\n1\n```\n"]),
])
def test_tool_output_spans_edge_cases(content, spliced):
  assert [content[s:e] for s, e in chat.tool_output_spans(content)] == spliced


@pytest.mark.parametrize("mask_tool_outputs", [True, False])
def test_tir_mask_leaves_out_exactly_the_interpreter_output(byte_tokenizer, mask_tool_outputs):
  expected = _tir_expectation(mask_tool_outputs)
  ids, mask = chat.encode(byte_tokenizer, TIR_MESSAGES, mask_tool_outputs=mask_tool_outputs)
  assert ids == [byte_tokenizer.token_to_id(t) for t, _ in expected]
  assert mask == [m for _, m in expected]
  trained = byte_tokenizer.decode([i for i, m in zip(ids, mask) if m])
  if mask_tool_outputs:
    assert trained == "".join(t for t, w in TIR_PIECES if w) + chat.IM_END
    assert "```output" not in trained and trained.count("```") == 4  # both python blocks
  else:
    assert trained == TIR_CONTENT + chat.IM_END   # the switch off: the whole reply, as before


def test_cot_mask_does_not_depend_on_the_switch(merged_tokenizer):
  on = chat.encode(merged_tokenizer, MESSAGES)
  off = chat.encode(merged_tokenizer, MESSAGES, mask_tool_outputs=False)
  assert on == off



@pytest.fixture(scope="module")
def tir_loop_samples():
  """(question, TirSample) from `sampling.tir`'s own splice code: the scripted model of
  test_tir_loop (one token per character) on its prompts A, B, C, programs run in a sandbox."""
  from qmath_jax.sampling import tir  # pylint: disable=g-import-not-at-top
  from qmath_jax.sandbox import PythonSandbox  # pylint: disable=g-import-not-at-top
  import test_tir_loop as loop  # pylint: disable=g-import-not-at-top
  scripts = {loop.PROMPT_A: loop.A1 + loop.A2,
             loop.PROMPT_B: loop.B1 + loop.B2 + loop.B3 + loop.B4,
             loop.PROMPT_C: loop.C1 + loop.C2}
  box = PythonSandbox(timeout=1.0, num_workers=1)
  try:
    out = tir.generate_tir(loop.ScriptedModel(scripts), loop.CharTokenizer(), box, list(scripts))
  finally:
    box.close()
  samples = [group[0] for group in out]
  assert [len(s.calls) for s in samples] == [1, 4, 1]
  return [(question, sample, sample.token_ids[-1] == loop.EOS_ID)
          for question, sample in zip("ABC", samples)]


def _loop_case(question, sample, ends_turn):
  """Messages of a loop sample, [start, stop) of its content, and its per-character model_mask.

  The loop's ids are one per character of the response text, plus the end token when the model
  ended its turn, so model_mask without that last entry is a 0/1 per character of the text.
  """
  char_mask = sample.model_mask[:len(sample.model_mask) - ends_turn]
  assert len(char_mask) == len(sample.text)
  messages = [{"role": "user", "content": question},
              {"role": "assistant", "content": sample.text}]
  (start, _), = chat.assistant_spans(messages)
  return messages, start, start + len(sample.text), char_mask


def test_sft_mask_equals_the_tir_loop_model_mask_per_character(byte_tokenizer,
                                                                tir_loop_samples):
  """One token per character on both sides: the SFT mask of the assistant content equals the
  loop's model_mask character for character, and <|im_end|> is trained as the loop's end token
  is (sample B stopped at its call limit, without an end token)."""
  for question, sample, ends_turn in tir_loop_samples:
    messages, start, stop, char_mask = _loop_case(question, sample, ends_turn)
    _, mask = chat.encode(byte_tokenizer, messages)
    _, offsets = byte_tokenizer.encode_with_offsets(chat.render(messages))
    assert [m for m, (b, _) in zip(mask, offsets) if start <= b < stop] == char_mask, question
    assert [m for m, (b, _) in zip(mask, offsets) if b == stop] == [1]
    assert ends_turn == (question != "B") and (not ends_turn or sample.model_mask[-1] == 1)


def test_sft_mask_agrees_with_the_tir_loop_model_mask_with_merges(merged_tokenizer,
                                                                   tir_loop_samples):
  """Merged tokens may span model and spliced characters (a boundary of re-tokenizing the
  whole transcript); the mask goes by a token's first character, so each content token's SFT
  mask equals the loop's model_mask of the character it starts at."""
  for question, sample, ends_turn in tir_loop_samples:
    messages, start, stop, char_mask = _loop_case(question, sample, ends_turn)
    _, mask = chat.encode(merged_tokenizer, messages)
    _, offsets = merged_tokenizer.encode_with_offsets(chat.render(messages))
    content = [(m, b) for m, (b, _) in zip(mask, offsets) if start <= b < stop]
    assert [m for m, _ in content] == [char_mask[b - start] for _, b in content], question
    assert {m for m, _ in content} == {0, 1}
