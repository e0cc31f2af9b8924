"""ChatML, exactly as Qwen2.5 renders it.

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n
    <|im_start|>assistant\n{answer}<|im_end|>\n

A message is a dict ``{"role": "system" | "user" | "assistant", "content": str}``. The CoT and
TIR system prompts (SPEC) are the ones training data and evaluation prompts both use.
"""

from collections.abc import Sequence

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
ROLES = ("system", "user", "assistant")

COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
TIR_SYSTEM = ("Please integrate natural language reasoning with programs to solve the problem "
              "above, and put your final answer within \\boxed{}.")
SYSTEM_PROMPTS = {"cot": COT_SYSTEM, "tir": TIR_SYSTEM}


def render_turn(role: str, content: str) -> str:
  """One complete turn, including its trailing newline."""
  if role not in ROLES:
    raise ValueError(f"unknown chat role {role!r}; expected one of {ROLES}")
  return f"{IM_START}{role}\n{content}{IM_END}\n"


def render(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
  """Renders a conversation; with add_generation_prompt, opens an assistant turn at the end."""
  text = "".join(render_turn(m["role"], m["content"]) for m in messages)
  if add_generation_prompt:
    text += f"{IM_START}assistant\n"
  return text


def assistant_spans(messages: Sequence[dict]) -> list[tuple[int, int]]:
  """[start, end) character spans of each assistant turn's content and its ``<|im_end|>``.

  Offsets are into ``render(messages)``; the header ``<|im_start|>assistant\\n`` and the newline
  after ``<|im_end|>`` lie outside the spans.
  """
  spans, offset = [], 0
  for m in messages:
    turn = render_turn(m["role"], m["content"])
    if m["role"] == "assistant":
      start = offset + len(IM_START) + len("assistant\n")
      spans.append((start, start + len(m["content"]) + len(IM_END)))
    offset += len(turn)
  return spans


def encode(tokenizer, messages: Sequence[dict],
           add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
  """Token ids of ``render(messages, add_generation_prompt)`` and a 0/1 loss mask per id.

  The ids are the tokenizer's encoding of the whole rendered text (exactly what Qwen's template
  gives). The mask is 1 on tokens that start inside an assistant turn's content or its
  ``<|im_end|>`` (see ``assistant_spans``) and 0 elsewhere: system, user, headers, newlines.
  ``tokenizer`` is a ``qmath_jax.data.tokenizer.Tokenizer``.
  """
  for i, m in enumerate(messages):
    if "role" not in m or "content" not in m:
      raise ValueError(f"message {i} lacks 'role' or 'content': {sorted(m)}")
    if not isinstance(m["content"], str):
      raise ValueError(f"message {i} content is {type(m['content']).__name__}, not str")
  ids, offsets = tokenizer.encode_with_offsets(render(messages, add_generation_prompt))
  spans = assistant_spans(messages)
  mask = [int(any(s <= begin < e for s, e in spans)) for begin, _ in offsets]
  return ids, mask
