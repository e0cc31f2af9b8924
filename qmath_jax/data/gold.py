"""Gold final answers of benchmark and training rows, per dataset, and the boxed-answer reader.

Pure Python (no JAX, numpy or sympy): the grader, the eval harness and RL reward workers import
it cheaply. Rows are the dicts of the jsonl files in the data directory (field names as in the
files; see its MANIFEST.md). ``dataset`` is the file's folder name (``"gsm8k"``, ``"mawps"``);
a source name such as ``"mawps/addsub"`` means its folder.

A row that lacks what its dataset's gold needs raises ``GoldError`` (``MissingFieldError`` when
a field is absent) naming the dataset and the field.
"""

import re

CHOICE_LETTERS = "ABCDE"
# Datasets whose every problem is answered with letters A-E.
CHOICE_DATASETS = frozenset({"aqua", "sat_math", "mmlu_stem", "gaokao_math_qa"})
# Datasets whose gold is a letter for some rows only (decided per row by the gold itself).
MIXED_CHOICE_DATASETS = frozenset({"gaokao2024_I", "gaokao2024_II", "gaokao2024_mix",
                                   "cn_middle_school"})

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_DOLLAR = re.compile(r"(?<!\\)\$")   # an unescaped dollar sign


class GoldError(ValueError):
  """A row whose gold answer cannot be read; the message names the dataset."""


class MissingFieldError(GoldError):
  """A row lacks a field its dataset needs. ``field`` holds the field's name."""

  def __init__(self, dataset: str, field: str, row: dict):
    self.field = field
    super().__init__(f"{dataset}: row has no {field!r} field (keys: {sorted(row)})")


def base_name(dataset: str) -> str:
  """``"mawps/addsub"`` -> ``"mawps"``; folder names are returned unchanged."""
  return dataset.split("/")[0]


def _field(row: dict, name: str, dataset: str):
  """``row[name]``, or ``MissingFieldError`` when it is absent or null."""
  if name not in row or row[name] is None:
    raise MissingFieldError(dataset, name, row)
  return row[name]


def last_boxed(text: str) -> str | None:
  """Content of the last ``\\boxed{...}`` / ``\\fbox{...}``, or of ``\\boxed x``; else None.

  Braces are matched by depth; the escaped braces ``\\{`` and ``\\}`` are literal text, not
  groups. An unclosed box gives None.
  """
  start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
  if start < 0:
    return None
  i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
  while i < len(text) and text[i] == " ":
    i += 1
  if i >= len(text) or text[i] != "{":
    m = re.match(r"([^\s$]+)", text[i:])
    return m.group(1) if m else None
  depth, j = 0, i
  while j < len(text):
    if text[j] == "\\":   # \{ and \} are literal braces, not groups
      j += 2
      continue
    if text[j] == "{":
      depth += 1
    elif text[j] == "}":
      depth -= 1
      if depth == 0:
        return text[i + 1:j]
    j += 1
  return None


def number_text(value) -> str:
  """Numbers as a person writes them: 27.0 -> "27", 2.50 -> "2.5"; strings stripped."""
  if isinstance(value, bool):
    raise GoldError(f"expected a number, got {value!r}")
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value).strip()


def strip_dollars(text) -> str:
  """``"$\\frac{1}{2}$"`` -> ``"\\frac{1}{2}"``: the dollar signs enclosing one formula removed.

  ``"$5$;$10$"`` (two formulas) is returned as it is; escaped ``\\$`` is text, not a delimiter.
  """
  text = str(text).strip()
  if (len(text) >= 2 and text.startswith("$") and text.endswith("$") and text[-2] != "\\"
      and not _DOLLAR.search(text[1:-1])):
    text = text[1:-1].strip()
  return text


def _boxed_in_solution(row, dataset):
  boxed = last_boxed(str(_field(row, "solution", dataset)))
  if boxed is None:
    raise GoldError(f"{dataset}: solution has no \\boxed answer")
  return boxed


def _gsm8k(row, dataset):
  solution = str(_field(row, "answer", dataset))
  if "####" not in solution:
    raise GoldError(f"{dataset}: answer has no '####' line")
  return solution.split("####")[-1].strip().replace(",", "")


def _math(row, dataset):
  if row.get("answer") not in (None, ""):
    return str(row["answer"])
  return _boxed_in_solution(row, dataset)


def _olympiad(row, dataset):
  answers = _field(row, "final_answer", dataset)
  answers = answers if isinstance(answers, list) else [answers]
  return ", ".join(strip_dollars(a) for a in answers)


def _mmlu(row, dataset):
  index = _field(row, "answer", dataset)
  count = min(len(row.get("choices") or CHOICE_LETTERS), len(CHOICE_LETTERS))
  if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
    raise GoldError(f"{dataset}: answer index {index!r} is outside the {count} choices")
  return CHOICE_LETTERS[index]


def _letter_field(name):
  return lambda row, dataset: str(_field(row, name, dataset)).strip()


def _number_field(name):
  return lambda row, dataset: number_text(_field(row, name, dataset))


def _dollar_field(name):
  return lambda row, dataset: strip_dollars(_field(row, name, dataset))


def _choice_or_answer(row, dataset):
  if row.get("choice_answer"):
    return str(row["choice_answer"]).strip()
  return strip_dollars(_field(row, "answer", dataset))


def _asdiv(row, dataset):
  """``"9 (apples)"`` -> ``"9"``: the unit in parentheses is dropped."""
  return re.sub(r"\s*\(.*?\)", "", str(_field(row, "answer", dataset))).strip()


_ANSWER_FIELD = _number_field("answer")

# dataset folder -> fn(row, dataset) -> gold answer text; a folder not listed reads "answer".
_GOLD = {
    "aime24": _ANSWER_FIELD,
    "amc23": _ANSWER_FIELD,
    "cmath": _ANSWER_FIELD,
    "carp_en": _ANSWER_FIELD,
    "gsm8k": _gsm8k,
    "math": _math,
    "math500": _math,
    "minerva_math": _boxed_in_solution,
    "olympiadbench": _olympiad,
    "mmlu_stem": _mmlu,
    "aqua": _letter_field("correct"),
    "sat_math": _letter_field("Answer"),
    "gaokao_math_qa": _letter_field("label"),
    "svamp": _number_field("Answer"),
    "mawps": _number_field("target"),
    "cn_middle_school": _choice_or_answer,
    "gaokao2024_mix": _choice_or_answer,
    "asdiv": _asdiv,
    "college_math": _dollar_field("answer"),
    "gaokao2023en": _dollar_field("answer"),
    "gaokao2024_I": _dollar_field("answer"),
    "gaokao2024_II": _dollar_field("answer"),
    "gaokao_math_cloze": _dollar_field("answer"),
}


def gold_answer(row: dict, dataset: str) -> str:
  """The gold final answer of one row as a string (the grader normalises it further)."""
  name = base_name(dataset)
  return _GOLD.get(name, _ANSWER_FIELD)(row, name)


def answer_is_choice(answer: str, dataset: str) -> bool:
  """Whether a problem of ``dataset`` with this gold is answered with letters A-E."""
  name = base_name(dataset)
  if name in CHOICE_DATASETS:
    return True
  return name in MIXED_CHOICE_DATASETS and bool(re.fullmatch(r"[A-E]+", answer))


def is_choice(row: dict, dataset: str) -> bool:
  """Whether the row is answered with letters A-E."""
  return answer_is_choice(gold_answer(row, dataset), dataset)
