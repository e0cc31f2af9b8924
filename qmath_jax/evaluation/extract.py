"""Final-answer extraction from a model response.

Order (SPEC, "Inference and evaluation"): the last `\\boxed{...}` (brace-balanced, read by
`qmath_jax.data.gold.last_boxed`), else the text after the last "the answer is" / "final answer
is" / "答案是", else the last number. Multiple-choice problems take letters A-E. The result is
normalised with `normalize_answer`.
"""

import re

from qmath_jax.data import gold
from qmath_jax.evaluation import normalize

_ANSWER_PHRASES = re.compile(r"(?:final answer is|the answer is|answer is|答案是|答案为|答案:)",
                             re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|-?\.\d+")
_LETTER = re.compile(r"(?<![A-Za-z\\])([A-E])(?![A-Za-z])")
_LETTER_LIST = re.compile(r"^[\s(]*[A-E](?:[\s,、和与and)(]*[A-E])*[\s,.)]*$")


def _after_answer_phrase(text: str) -> str | None:
  matches = list(_ANSWER_PHRASES.finditer(text))
  if not matches:
    return None
  tail = text[matches[-1].end():].strip().lstrip(":：").strip()
  tail = tail.split("\n", 1)[0].strip()
  # A sentence ends at ". " (not at a decimal point).
  tail = re.split(r"(?<!\d)\.(?:\s|$)|。", tail, maxsplit=1)[0]
  return tail.strip().rstrip(".")


def choice_letters(span: str, last: bool = False) -> str | None:
  """Letters A-E picked from a span: `"B, D"` -> `"BD"`; `"(C) 12"` -> `"C"`."""
  span = normalize.normalize_answer(span) if "\\" in span else span.strip()
  span = span.replace("\\text", "").replace("{", " ").replace("}", " ")
  if _LETTER_LIST.match(span):
    return "".join(sorted(set(re.findall(r"[A-E]", span))))
  found = _LETTER.findall(span)
  if not found:
    return None
  return found[-1] if last else found[0]


def extract_answer(text: str, data_name: str = "math", *, choice: bool | None = None) -> str:
  """Returns the normalised final answer of `text` ("" when none is found).

  Args:
    text: a model response (or a reference solution).
    data_name: dataset name; multiple-choice datasets (``gold.CHOICE_DATASETS``) answer with
      letters.
    choice: overrides the dataset default, for sets that mix choice and open problems
      (gaokao2024_*, cn_middle_school, gaokao2024_mix decide per problem).
  """
  if choice is None:
    choice = gold.base_name(data_name) in gold.CHOICE_DATASETS
  text = text or ""
  span = gold.last_boxed(text)
  if span is None:
    span = _after_answer_phrase(text)
  if choice:
    if span is not None:
      letters = choice_letters(span)
      if letters:
        return letters
    letters = choice_letters(text[-300:], last=True)
    return letters or ""
  if span is None:
    numbers = _NUMBER.findall(text.replace("$", " "))
    span = numbers[-1] if numbers else ""
  return normalize.normalize_answer(span)
