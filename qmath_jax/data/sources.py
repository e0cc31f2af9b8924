"""Readers for every benchmark and training file of the data directory, mapped to one schema.

Each source (``"<name>/<split>"``, e.g. ``"gsm8k/train"``, ``"math/test"``, ``"mawps/addsub"``)
is one jsonl file described in the data directory's MANIFEST.md. Every row becomes a
``Problem``:

  id        "<source>/<row id>" (the file's own id field when it has one, else the line number)
  dataset   the source name, e.g. "gsm8k/test"
  question  the problem statement as the model sees it (body + question where split)
  answer    the gold final answer as a plain string, read as ``evaluation.gold.gold_answer``
            reads it (GSM8K after ``####``, MATH's answer field or last ``\boxed{}``, letters for
            multiple choice, ``choice_answer`` first where a file has one); the grader
            normalises further
  solution  the reference solution text, "" when the file has none
  choices   the options of a multiple-choice problem ("A. ...", "B. ..."), else ()
  meta      the remaining source fields that matter downstream (level, subject, type, ...)

The data directory is a config value: ``load(name, data_dir=...)`` resolves it with
``paths.require_data_dir`` (argument, then $QMATH_DATA_DIR, then ../shared/data).
"""

import dataclasses
import json
import os
import re
from collections.abc import Callable

from qmath_jax.data import paths
from qmath_jax.data import records


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem in the common schema (see the module docstring)."""
  id: str
  dataset: str
  question: str
  answer: str
  solution: str = ""
  choices: tuple[str, ...] = ()
  meta: dict = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict:
    return {"id": self.id, "dataset": self.dataset, "question": self.question,
            "answer": self.answer, "solution": self.solution, "choices": list(self.choices),
            "meta": self.meta}

  @classmethod
  def from_dict(cls, row: dict) -> "Problem":
    return cls(id=str(row["id"]), dataset=row["dataset"], question=row["question"],
               answer=str(row["answer"]), solution=row.get("solution") or "",
               choices=tuple(row.get("choices") or ()), meta=dict(row.get("meta") or {}))


def last_boxed(text: str) -> str | None:
  """Content of the last brace-balanced ``\\boxed{...}`` (or ``\\fbox{...}``) in text."""
  start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
  if start < 0:
    return None
  i = text.index("{", start) + 1
  depth = 1
  for j in range(i, len(text)):
    if text[j] == "{":
      depth += 1
    elif text[j] == "}":
      depth -= 1
      if depth == 0:
        return text[i:j]
  return None


def _number(value) -> str:
  """Numbers as written by a person: 27.0 -> "27", 2.50 -> "2.5"."""
  if isinstance(value, bool):
    raise ValueError(f"expected a number, got {value!r}")
  if isinstance(value, (int, float)):
    if float(value).is_integer():
      return str(int(value))
    return repr(float(value))
  return str(value).strip()


def _strip_dollars(text: str) -> str:
  text = str(text).strip()
  if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
    text = text[1:-1].strip()
  return text


def _letters(options) -> tuple[str, ...]:
  return tuple(f"{chr(ord('A') + i)}. {str(o).strip()}" for i, o in enumerate(options))


_OPTION_SPLIT = re.compile(r"(?:^|\s)([A-E])\)\s*")


def _split_options(text: str) -> tuple[str, ...]:
  """'A) 1 B) 2' -> ('A. 1', 'B. 2')."""
  parts = _OPTION_SPLIT.split(text)
  return tuple(f"{parts[i]}. {parts[i + 1].strip()}" for i in range(1, len(parts) - 1, 2))


# Each converter maps a raw row to Problem fields (without id/dataset); a KeyError, TypeError
# or ValueError marks the row bad ("missing or malformed field").
def _gsm8k(row):
  solution = row["answer"]
  if "####" not in solution:
    raise ValueError("answer has no '####' line")
  return dict(question=row["question"], solution=solution,
              answer=solution.split("####")[-1].strip().replace(",", ""))


def _math(row):
  answer = row.get("answer") or last_boxed(row["solution"])
  if answer is None:
    raise ValueError("no answer field and no \\boxed{} in the solution")
  return dict(question=row["problem"], solution=row["solution"], answer=answer,
              meta={k: row[k] for k in ("level", "subject", "unique_id") if k in row})


def _minerva(row):
  answer = last_boxed(row["solution"])
  if answer is None:
    raise ValueError("no \\boxed{} in the solution")
  return dict(question=row["problem"], solution=row["solution"], answer=answer,
              meta={"type": row.get("type")})


def _aime(row):
  return dict(question=row["problem"], answer=_number(row["answer"]),
              solution=row.get("solution") or "")


def _amc(row):
  return dict(question=row["question"], answer=_number(row["answer"]))


def _aqua(row):
  choices = tuple(re.sub(r"^([A-E])\)\s*", r"\1. ", o) for o in row["options"])
  return dict(question=row["question"], answer=row["correct"], solution=row["rationale"],
              choices=choices)


def _asdiv(row):
  answer = re.sub(r"\s*\(.*\)\s*$", "", row["answer"]).strip()
  return dict(question=f"{row['body'].strip()} {row['question'].strip()}", answer=answer,
              solution=row.get("formula") or "", meta={"type": row.get("solution_type")})


def _carp(row):
  return dict(question=row["content"], answer=row["answer"], solution=row.get("steps") or "")


def _cmath(row):
  return dict(question=row["question"], answer=_number(row["answer"]),
              meta={"grade": row.get("grade")})


def _plain(row):
  return dict(question=row["question"], answer=_strip_dollars(row["answer"]))


def _choice_or_answer(row):
  answer = row.get("choice_answer") or row["answer"]
  return dict(question=row["question"], answer=_strip_dollars(answer),
              meta={"answer_text": row["answer"]})


def _gaokao_cloze(row):
  return dict(question=row["question"], answer=_strip_dollars(row["answer"]))


def _gaokao_qa(row):
  options = row["options"]
  return dict(question=row["question"], answer=row["label"],
              choices=tuple(f"{k}. {v}" for k, v in options.items()))


def _mawps(row):
  return dict(question=row["input"], answer=_number(row["target"]))


def _mmlu(row):
  index = row["answer"]
  if not isinstance(index, int) or not 0 <= index < len(row["choices"]):
    raise ValueError(f"answer index {index!r} outside choices")
  return dict(question=row["question"], answer="ABCDE"[index], choices=_letters(row["choices"]),
              meta={"type": row.get("type")})


def _olympiad(row):
  question = row["question"]
  if row.get("context"):
    question = f"{row['context']}\n{question}"
  answers = row["final_answer"]
  answers = answers if isinstance(answers, list) else [answers]
  return dict(question=question, answer=", ".join(_strip_dollars(a) for a in answers),
              solution="\n".join(row.get("solution") or ()),
              meta={k: row.get(k) for k in ("subfield", "unit", "answer_type")})


def _sat(row):
  return dict(question=row["question"], answer=row["Answer"],
              choices=_split_options(row["options"]))


def _svamp(row):
  return dict(question=f"{row['Body'].strip()} {row['Question'].strip()}",
              answer=_number(row["Answer"]), solution=row.get("Equation") or "")


# source name -> (file relative to the data directory, converter, id field or None).
SOURCES: dict[str, tuple[str, Callable[[dict], dict], str | None]] = {
    "aime24/test": ("aime24/test.jsonl", _aime, "id"),
    "amc23/test": ("amc23/test.jsonl", _amc, "id"),
    "aqua/test": ("aqua/test.jsonl", _aqua, None),
    "asdiv/test": ("asdiv/test.jsonl", _asdiv, "idx"),
    "carp_en/demo": ("carp_en/demo.json", _carp, None),
    "carp_en/test": ("carp_en/test.jsonl", _carp, None),
    "cmath/test": ("cmath/test.jsonl", _cmath, None),
    "cn_middle_school/test": ("cn_middle_school/test.jsonl", _choice_or_answer, "idx"),
    "college_math/test": ("college_math/test.jsonl", _plain, None),
    "gaokao2023en/test": ("gaokao2023en/test.jsonl", _plain, None),
    "gaokao2024_I/test": ("gaokao2024_I/test.jsonl", _plain, None),
    "gaokao2024_II/test": ("gaokao2024_II/test.jsonl", _plain, None),
    "gaokao2024_mix/test": ("gaokao2024_mix/test.jsonl", _choice_or_answer, "idx"),
    "gaokao_math_cloze/test": ("gaokao_math_cloze/test.jsonl", _gaokao_cloze, None),
    "gaokao_math_qa/test": ("gaokao_math_qa/test.jsonl", _gaokao_qa, None),
    "gsm8k/test": ("gsm8k/test.jsonl", _gsm8k, "idx"),
    "gsm8k/train": ("gsm8k/train.jsonl", _gsm8k, "idx"),
    "math/test": ("math/test.jsonl", _math, "unique_id"),
    "math/train": ("math/train.jsonl", _math, None),
    "math500/test": ("math500/test.jsonl", _math, "unique_id"),
    "mawps/addsub": ("mawps/addsub.jsonl", _mawps, None),
    "mawps/multiarith": ("mawps/multiarith.jsonl", _mawps, None),
    "mawps/singleeq": ("mawps/singleeq.jsonl", _mawps, None),
    "mawps/singleop": ("mawps/singleop.jsonl", _mawps, None),
    "mawps/test": ("mawps/test.jsonl", _mawps, "idx"),
    "minerva_math/test": ("minerva_math/test.jsonl", _minerva, "idx"),
    "mmlu_stem/test": ("mmlu_stem/test.jsonl", _mmlu, None),
    "olympiadbench/test": ("olympiadbench/test.jsonl", _olympiad, "id"),
    "sat_math/test": ("sat_math/test.jsonl", _sat, "id"),
    "svamp/test": ("svamp/test.jsonl", _svamp, "ID"),
}

TRAIN_SOURCES = ("gsm8k/train", "math/train")
# Every benchmark of the report (SPEC "Decontamination") plus the harness's wider suite.
BENCHMARK_SOURCES = tuple(name for name in SOURCES if name not in TRAIN_SOURCES)


def convert_rows(name: str, path, rows, bad_rows: records.BadRows) -> list[Problem]:
  """Maps (line, raw row) pairs of source ``name`` to Problems; bad rows go to ``bad_rows``."""
  _, converter, id_field = SOURCES[name]
  problems = []
  for line_no, row in rows:
    where = f"{path}:{line_no}"
    try:
      fields = converter(row)
    except KeyError as e:
      bad_rows.add("missing field", where, f"field {e.args[0]!r}")
      continue
    except (TypeError, ValueError, IndexError, AttributeError) as e:
      bad_rows.add("malformed field", where, str(e))
      continue
    if not isinstance(fields["question"], str) or not fields["question"].strip():
      bad_rows.add("empty question", where)
      continue
    if not str(fields["answer"]).strip():
      bad_rows.add("empty answer", where)
      continue
    row_id = row.get(id_field) if id_field else None
    row_id = line_no - 1 if row_id is None else row_id
    fields["answer"] = str(fields["answer"])
    problems.append(Problem(id=f"{name}/{row_id}", dataset=name, **fields))
  return problems


def load(name: str, data_dir=None, *, strict: bool = False,
         bad_rows: records.BadRows | None = None) -> list[Problem]:
  """All problems of source ``name`` (a key of SOURCES), in file order.

  Args:
    name: e.g. "gsm8k/train".
    data_dir: the data directory (config value); None resolves it as ``paths`` does.
    strict: raise ``records.BadRowError`` (naming file and line) at the first bad row.
    bad_rows: report to add bad rows to; a fresh one is made when None.
  """
  if name not in SOURCES:
    raise KeyError(f"unknown source {name!r}; known: {sorted(SOURCES)}")
  bad_rows = bad_rows if bad_rows is not None else records.BadRows(strict=strict)
  path = paths.require_data_dir(data_dir) / SOURCES[name][0]
  return convert_rows(name, path, records.read_jsonl(path, bad_rows), bad_rows)


def load_jsonl_problems(path, *, strict: bool = False,
                        bad_rows: records.BadRows | None = None) -> list[Problem]:
  """Problems from a jsonl file already in the common schema (e.g. written by ``write_jsonl``)."""
  bad_rows = bad_rows if bad_rows is not None else records.BadRows(strict=strict)
  problems = []
  for line_no, row in records.read_jsonl(path, bad_rows):
    try:
      problem = Problem.from_dict(row)
    except KeyError as e:
      bad_rows.add("missing field", f"{path}:{line_no}", f"field {e.args[0]!r}")
      continue
    problems.append(problem)
  return problems


def write_jsonl(problems, path) -> None:
  """Writes Problems (or plain dicts) one JSON object a line, via a temp name and a rename."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for p in problems:
      f.write(json.dumps(p.to_dict() if isinstance(p, Problem) else p, ensure_ascii=False))
      f.write("\n")
  os.replace(tmp, path)
