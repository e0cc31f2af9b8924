"""ChatML, exactly as Qwen2.5 renders it.

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n
    <|im_start|>assistant\n{answer}<|im_end|>\n

A message is a dict ``{"role": "system" | "user" | "assistant", "content": str}``. The CoT and
TIR system prompts (SPEC) are the ones training data and evaluation prompts both use.

A tool-integrated (TIR) assistant text is the model's text with each interpreter result spliced
in after the python block that produced it (``sampling.tir.output_piece``):

    ...```python\n{code}\n```  +  [\n]```output\n{result}\n```\n  +  {model text}...
    `------- model --------'     `---------- spliced -----------'     `--- model ---'

``tool_output_spans`` finds the spliced parts; ``encode`` keeps them out of the loss mask.
"""

from collections.abc import Sequence

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
ROLES = ("system", "user", "assistant")
FENCE = "```"
TOOL_CODE_LANGUAGE = "python"
TOOL_OUTPUT_OPEN = FENCE + "output\n"

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


def tool_output_spans(content: str) -> list[tuple[int, int]]:
  """[start, end) character spans of the interpreter output blocks spliced into ``content``.

  Fences pair up in order, as the TIR loop pairs them (``sampling.tir.closed_python_block``).
  A block is spliced output when it opens with "```output\\n" and follows a ```python block
  with only whitespace between the two. Its span is what ``sampling.tir.output_piece`` appends:
    - the newline just before "```output": the loop adds it when the model's text stops right
      at the python block's closing fence. When the model's fence token itself carried that
      newline ("```\\n"), the text alone cannot tell, and the newline counts as spliced all
      the same; that token starts at the fence, so its loss mask stays 1 wherever the
      tokenizer keeps "```\\n" as one token.
    - "```output\\n", the result, the closing fence and the newline after it (when present).
  An output block whose closing fence is missing is spliced up to the end of ``content``.
  Everything else is model text: the python block and both its fences, and the text after the
  output block.
  """
  fences, at = [], content.find(FENCE)
  while at >= 0:
    fences.append(at)
    at = content.find(FENCE, at + len(FENCE))
  spans = []
  for k in range(0, len(fences) - 2, 2):
    code_open, code_close, output_open = fences[k], fences[k + 1], fences[k + 2]
    header, newline, _ = content[code_open + len(FENCE):code_close].partition("\n")
    gap = content[code_close + len(FENCE):output_open]
    if (header.strip() != TOOL_CODE_LANGUAGE or not newline or (gap and not gap.isspace())
        or not content.startswith(TOOL_OUTPUT_OPEN, output_open)):
      continue
    start = output_open - 1 if gap.endswith("\n") else output_open
    if k + 3 < len(fences):
      end = fences[k + 3] + len(FENCE)
      end += content.startswith("\n", end)
    else:
      end = len(content)
    spans.append((start, end))
  return spans


def encode(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False,
           mask_tool_outputs: bool = True) -> tuple[list[int], list[int]]:
  """Token ids of ``render(messages, add_generation_prompt)`` and a 0/1 loss mask per id.

  The ids are the tokenizer's encoding of the whole rendered text (exactly what Qwen's template
  gives). The mask is 1 on tokens that start inside an assistant turn's content or its
  ``<|im_end|>`` (see ``assistant_spans``) and 0 elsewhere: system, user, headers, newlines.
  With ``mask_tool_outputs`` it is also 0 on tokens that start inside an interpreter output
  block of an assistant turn (``tool_output_spans``): the model learns to write its code, not
  to predict the sandbox's results. A token that starts in model text and runs on into an
  output block (``"```\\n"`` at a python block's closing fence) stays a target: it holds the
  model's fence. ``tokenizer`` is a ``qmath_jax.data.tokenizer.Tokenizer``.
  """
  for i, m in enumerate(messages):
    if "role" not in m or "content" not in m:
      raise ValueError(f"message {i} lacks 'role' or 'content': {sorted(m)}")
    if not isinstance(m["content"], str):
      raise ValueError(f"message {i} content is {type(m['content']).__name__}, not str")
  ids, offsets = tokenizer.encode_with_offsets(render(messages, add_generation_prompt))
  spans = assistant_spans(messages)
  outputs = []
  if mask_tool_outputs:
    contents = [m["content"] for m in messages if m["role"] == "assistant"]
    outputs = [(start + s, start + e) for (start, _), content in zip(spans, contents)
               for s, e in tool_output_spans(content)]
  mask = [int(any(s <= begin < e for s, e in spans)
              and not any(s <= begin < e for s, e in outputs)) for begin, _ in offsets]
  return ids, mask
