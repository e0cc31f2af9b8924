"""ChatML, exactly as Qwen2.5 renders it.

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n
    <|im_start|>assistant\n{answer}<|im_end|>\n

A message is a dict ``{"role": "system" | "user" | "assistant", "content": str}``.
"""

from collections.abc import Sequence

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
ROLES = ("system", "user", "assistant")


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
