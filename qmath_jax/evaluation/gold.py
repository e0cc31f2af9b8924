"""Per-dataset reading of raw benchmark rows: question text, gold answer, choice flag.

Rows are the dicts of the jsonl files in the data directory (field names as in the files; see
its MANIFEST.md). Every function takes `(row, data_name)` and raises `GoldError` naming the
dataset and the missing field when a row does not have what its dataset needs.
"""

import re

from qmath_jax.evaluation import extract

CHOICE_LETTERS = "ABCDE"
# Sets whose gold is sometimes a letter (decided per row).
MIXED_CHOICE_DATASETS = frozenset({"gaokao2024_I", "gaokao2024_II", "gaokao2024_mix",
                                   "cn_middle_school"})
CHINESE_DATASETS = frozenset({"cmath", "cn_middle_school", "gaokao2024_I", "gaokao2024_II",
                              "gaokao2024_mix", "gaokao_math_cloze", "gaokao_math_qa"})


class GoldError(ValueError):
  """A row lacks the field its dataset needs."""


def _field(row: dict, name: str, data_name: str):
  if name not in row or row[name] is None:
    raise GoldError(f"{data_name}: row has no {name!r} field (keys: {sorted(row)})")
  return row[name]


def _number_text(value) -> str:
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value).strip()


def gold_answer(row: dict, data_name: str) -> str:
  """The gold final answer of one row, as a string (not yet normalised)."""
  name = _base_name(data_name)
  if name == "gsm8k":
    return _field(row, "answer", name).split("####")[-1].strip().replace(",", "")
  if name in ("math", "math500"):
    if row.get("answer") not in (None, ""):
      return str(row["answer"])
    boxed = extract.last_boxed(_field(row, "solution", name))
    if boxed is None:
      raise GoldError(f"{name}: solution has no \\boxed answer")
    return boxed
  if name == "minerva_math":
    boxed = extract.last_boxed(_field(row, "solution", name))
    if boxed is None:
      raise GoldError(f"{name}: solution has no \\boxed answer")
    return boxed
  if name == "olympiadbench":
    answers = _field(row, "final_answer", name)
    return ", ".join(a.strip().strip("$") for a in answers) if isinstance(answers, list) \
        else str(answers).strip("$")
  if name == "mmlu_stem":
    index = _field(row, "answer", name)
    if not isinstance(index, int) or not 0 <= index < len(CHOICE_LETTERS):
      raise GoldError(f"{name}: answer index {index!r} is not 0..4")
    return CHOICE_LETTERS[index]
  if name == "aqua":
    return str(_field(row, "correct", name)).strip()
  if name in ("sat_math", "svamp"):
    return _number_text(_field(row, "Answer", name))
  if name == "gaokao_math_qa":
    return str(_field(row, "label", name)).strip()
  if name in ("cn_middle_school", "gaokao2024_mix"):
    if row.get("choice_answer"):
      return str(row["choice_answer"]).strip()
    return str(_field(row, "answer", name)).strip()
  if name == "asdiv":
    return re.sub(r"\(.*?\)", "", str(_field(row, "answer", name))).strip()
  if name == "mawps":
    return _number_text(_field(row, "target", name))
  if name == "college_math":
    return str(_field(row, "answer", name)).strip().strip("$").strip()
  return _number_text(_field(row, "answer", name))


def is_choice(row: dict, data_name: str) -> bool:
  """Whether the row is answered with letters A-E."""
  name = _base_name(data_name)
  if name in extract.CHOICE_DATASETS:
    return True
  if name in MIXED_CHOICE_DATASETS:
    return bool(re.fullmatch(r"[A-E]+", gold_answer(row, name)))
  return False


def _choices_text(options) -> str:
  if isinstance(options, dict):
    return " ".join(f"({k}) {str(v).strip()}" for k, v in sorted(options.items()))
  if isinstance(options, str):
    return options.strip()
  out = []
  for k, option in enumerate(options):
    option = str(option).strip()
    m = re.match(r"^\(?([A-E])\)\s*(.*)$", option, re.DOTALL)
    out.append(f"({m.group(1)}) {m.group(2)}" if m else f"({CHOICE_LETTERS[k]}) {option}")
  return " ".join(out)


def question_text(row: dict, data_name: str) -> str:
  """The problem statement shown to the model (choices appended for choice sets)."""
  name = _base_name(data_name)
  if name in ("math", "math500", "minerva_math", "aime24", "amc23"):
    return str(_field(row, "problem", name)).strip()
  if name == "asdiv":
    return f"{_field(row, 'body', name).strip()} {_field(row, 'question', name).strip()}"
  if name == "svamp":
    body = _field(row, "Body", name).strip()
    body = body if body.endswith(".") else body + "."
    return f"{body} {_field(row, 'Question', name).strip()}"
  if name == "mawps":
    return str(_field(row, "input", name)).strip()
  if name == "carp_en":
    return str(_field(row, "content", name)).strip()
  question = str(_field(row, "question", name)).strip()
  if name == "olympiadbench" and row.get("context"):
    question = f"{row['context'].strip()}\n{question}"
  if name == "aqua":
    return f"{question}\nAnswer Choices: {_choices_text(_field(row, 'options', name))}"
  if name == "sat_math":
    return f"{question}\nAnswer Choices: {_choices_text(_field(row, 'options', name))}"
  if name == "mmlu_stem":
    return f"{question}\nAnswer Choices: {_choices_text(_field(row, 'choices', name))}"
  if name == "gaokao_math_qa":
    return f"{question}\n选项：{_choices_text(_field(row, 'options', name))}"
  return question


def _base_name(data_name: str) -> str:
  """`mawps/addsub` -> `mawps`; names are otherwise the data directory's folder names."""
  return data_name.split("/")[0]
