"""Readers for every benchmark and training file of the data directory, mapped to one schema.

Each source (``"<name>/<split>"``, e.g. ``"gsm8k/train"``, ``"math/test"``, ``"mawps/addsub"``)
is one jsonl file described in the data directory's MANIFEST.md. Every row becomes a
``Problem``:

  id        "<source>/<row id>" (the file's own id field when it has one, else the line number)
  dataset   the source name, e.g. "gsm8k/test"
  question  the problem statement as the model sees it (body + question where split)
  answer    the gold final answer as a plain string, read by ``gold.gold_answer`` (GSM8K
            after ``####``, MATH's answer field or last ``\boxed{}``, letters for multiple
            choice, ``choice_answer`` first where a file has one); the grader normalises further
  solution  the reference solution text, "" when the file has none
  choices   the options of a multiple-choice problem ("A. ...", "B. ..."), else ()
  meta      the remaining source fields that matter downstream (level, subject, type, ...)

The data directory is a config value: ``load(name, data_dir=...)`` resolves it with
``paths.require_data_dir`` (argument, then $QMATH_DATA_DIR, then ../shared/data).
"""

import dataclasses
import re
from collections.abc import Callable

from qmath_jax.data import gold
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

  @property
  def is_choice(self) -> bool:
    """Answered with letters A-E: the problem lists options, or its dataset and gold make it a
    choice problem the way evaluation decides (``gold.answer_is_choice``)."""
    return bool(self.choices) or gold.answer_is_choice(self.answer.strip(), self.dataset)

  def to_dict(self) -> dict:
    return {"id": self.id, "dataset": self.dataset, "question": self.question,
            "answer": self.answer, "solution": self.solution, "choices": list(self.choices),
            "meta": self.meta}

  @classmethod
  def from_dict(cls, row: dict) -> "Problem":
    """The inverse of ``to_dict``; a null answer means none ("").

    Raises KeyError naming a missing field, TypeError naming a field of the wrong type.
    """
    answer = "" if row["answer"] is None else row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
      raise TypeError(f"field 'answer' is a {type(answer).__name__}, not text or a number")
    text = {"dataset": row["dataset"], "question": row["question"],
            "solution": row.get("solution") or ""}
    for name, value in text.items():
      if not isinstance(value, str):
        raise TypeError(f"field {name!r} is a {type(value).__name__}, not text")
    choices = row.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
      raise TypeError("field 'choices' is not a list of text")
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
      raise TypeError(f"field 'meta' is a {type(meta).__name__}, not an object")
    return cls(id=str(row["id"]), answer=str(answer), choices=tuple(choices), meta=dict(meta),
               **text)


def _letters(options) -> tuple[str, ...]:
  return tuple(f"{chr(ord('A') + i)}. {str(o).strip()}" for i, o in enumerate(options))


_OPTION_SPLIT = re.compile(r"(?:^|\s)([A-E])\)\s*")


def _split_options(text: str) -> tuple[str, ...]:
  """'A) 1 B) 2' -> ('A. 1', 'B. 2')."""
  parts = _OPTION_SPLIT.split(text)
  return tuple(f"{parts[i]}. {parts[i + 1].strip()}" for i in range(1, len(parts) - 1, 2))


# Each layout maps a raw row of its dataset to the Problem fields other than id, dataset and
# answer (the answer is ``gold.gold_answer``). A KeyError, ``gold.GoldError``, TypeError or
# ValueError marks the row bad ("missing field" or "malformed field").
def _gsm8k(row):
  return dict(question=row["question"], solution=row["answer"])


def _math(row):
  return dict(question=row["problem"], solution=row["solution"],
              meta={k: row[k] for k in ("level", "subject", "unique_id") if k in row})


def _minerva(row):
  return dict(question=row["problem"], solution=row["solution"], meta={"type": row.get("type")})


def _aime(row):
  return dict(question=row["problem"], solution=row.get("solution") or "")


def _amc(row):
  return dict(question=row["problem"] if row.get("problem") else row["question"])


def _aqua(row):
  choices = tuple(re.sub(r"^\(?([A-E])\)\s*", r"\1. ", o.strip()) for o in row["options"])
  return dict(question=row["question"], solution=row.get("rationale") or "", choices=choices)


def _asdiv(row):
  return dict(question=f"{row['body'].strip()} {row['question'].strip()}",
              solution=row.get("formula") or "", meta={"type": row.get("solution_type")})


def _carp(row):
  return dict(question=row["content"], solution=row.get("steps") or "")


def _cmath(row):
  return dict(question=row["question"], meta={"grade": row.get("grade")})


def _plain(row):
  return dict(question=row["question"])


def _choice_or_answer(row):
  return dict(question=row["question"], meta={"answer_text": row["answer"]})


def _gaokao_qa(row):
  options = row["options"]
  return dict(question=row["question"],
              choices=tuple(f"{k}. {str(v).strip()}" for k, v in sorted(options.items())))


def _mawps(row):
  return dict(question=row["input"])


def _mmlu(row):
  return dict(question=row["question"], choices=_letters(row["choices"]),
              meta={"type": row.get("type")})


def _olympiad(row):
  question = row["question"]
  if row.get("context"):
    question = f"{row['context'].strip()}\n{question}"
  return dict(question=question, solution="\n".join(row.get("solution") or ()),
              meta={k: row.get(k) for k in ("subfield", "unit", "answer_type")})


def _sat(row):
  return dict(question=row["question"], choices=_split_options(row["options"]))


def _svamp(row):
  body = row["Body"].strip()
  body = body if body.endswith(".") else body + "."
  return dict(question=f"{body} {row['Question'].strip()}", solution=row.get("Equation") or "")


# dataset folder -> its row layout.
LAYOUTS: dict[str, Callable[[dict], dict]] = {
    "aime24": _aime, "amc23": _amc, "aqua": _aqua, "asdiv": _asdiv, "carp_en": _carp,
    "cmath": _cmath, "cn_middle_school": _choice_or_answer, "college_math": _plain,
    "gaokao2023en": _plain, "gaokao2024_I": _plain, "gaokao2024_II": _plain,
    "gaokao2024_mix": _choice_or_answer, "gaokao_math_cloze": _plain,
    "gaokao_math_qa": _gaokao_qa, "gsm8k": _gsm8k, "math": _math, "math500": _math,
    "mawps": _mawps, "minerva_math": _minerva, "mmlu_stem": _mmlu,
    "olympiadbench": _olympiad, "sat_math": _sat, "svamp": _svamp,
}

# source name -> (file relative to the data directory, id field or None). The layout is the
# one of the source's folder (LAYOUTS), and so are the gold rules (``gold.gold_answer``).
SOURCES: dict[str, tuple[str, str | None]] = {
    "aime24/test": ("aime24/test.jsonl", "id"),
    "amc23/test": ("amc23/test.jsonl", "id"),
    "aqua/test": ("aqua/test.jsonl", None),
    "asdiv/test": ("asdiv/test.jsonl", "idx"),
    "carp_en/demo": ("carp_en/demo.json", None),
    "carp_en/test": ("carp_en/test.jsonl", None),
    "cmath/test": ("cmath/test.jsonl", None),
    "cn_middle_school/test": ("cn_middle_school/test.jsonl", "idx"),
    "college_math/test": ("college_math/test.jsonl", None),
    "gaokao2023en/test": ("gaokao2023en/test.jsonl", None),
    "gaokao2024_I/test": ("gaokao2024_I/test.jsonl", None),
    "gaokao2024_II/test": ("gaokao2024_II/test.jsonl", None),
    "gaokao2024_mix/test": ("gaokao2024_mix/test.jsonl", "idx"),
    "gaokao_math_cloze/test": ("gaokao_math_cloze/test.jsonl", None),
    "gaokao_math_qa/test": ("gaokao_math_qa/test.jsonl", None),
    "gsm8k/test": ("gsm8k/test.jsonl", "idx"),
    "gsm8k/train": ("gsm8k/train.jsonl", "idx"),
    "math/test": ("math/test.jsonl", "unique_id"),
    "math/train": ("math/train.jsonl", None),
    "math500/test": ("math500/test.jsonl", "unique_id"),
    "mawps/addsub": ("mawps/addsub.jsonl", None),
    "mawps/multiarith": ("mawps/multiarith.jsonl", None),
    "mawps/singleeq": ("mawps/singleeq.jsonl", None),
    "mawps/singleop": ("mawps/singleop.jsonl", None),
    "mawps/test": ("mawps/test.jsonl", "idx"),
    "minerva_math/test": ("minerva_math/test.jsonl", "idx"),
    "mmlu_stem/test": ("mmlu_stem/test.jsonl", None),
    "olympiadbench/test": ("olympiadbench/test.jsonl", "id"),
    "sat_math/test": ("sat_math/test.jsonl", "id"),
    "svamp/test": ("svamp/test.jsonl", "ID"),
}

TRAIN_SOURCES = ("gsm8k/train", "math/train")
# Every benchmark of the report (SPEC "Decontamination") plus the harness's wider suite.
BENCHMARK_SOURCES = tuple(name for name in SOURCES if name not in TRAIN_SOURCES)


def to_problem(row: dict, name: str, row_id=0) -> Problem:
  """One raw row of source (or dataset folder) ``name`` as a Problem with id "<name>/<row_id>".

  Raises KeyError (a missing field), ``gold.GoldError``, TypeError or ValueError for a row its
  dataset cannot read. Emptiness is not checked here (``convert_rows`` does).
  """
  dataset = gold.base_name(name)
  if dataset not in LAYOUTS:
    raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(LAYOUTS)}")
  fields = LAYOUTS[dataset](row)
  question = fields.pop("question")
  if not isinstance(question, str):
    raise TypeError(f"question is a {type(question).__name__}, not text")
  return Problem(id=f"{name}/{row_id}", dataset=name, question=question.strip(),
                 answer=gold.gold_answer(row, dataset), **fields)


def convert_rows(name: str, path, rows, bad_rows: records.BadRows, *,
                 keep_empty_answers: bool = False) -> list[Problem]:
  """Maps (line, raw row) pairs of source ``name`` to Problems; bad rows go to ``bad_rows``.

  A row whose gold answer is empty is bad ("empty answer") unless ``keep_empty_answers``.
  """
  id_field = SOURCES[name][1]
  problems = []
  for line_no, row in rows:
    where = f"{path}:{line_no}"
    row_id = row.get(id_field) if id_field else None
    try:
      problem = to_problem(row, name, line_no - 1 if row_id is None else row_id)
    except gold.MissingFieldError as e:
      bad_rows.add("missing field", where, f"field {e.field!r}")
      continue
    except KeyError as e:
      bad_rows.add("missing field", where, f"field {e.args[0]!r}")
      continue
    except (TypeError, ValueError, IndexError, AttributeError) as e:
      bad_rows.add("malformed field", where, str(e))
      continue
    if not problem.question:
      bad_rows.add("empty question", where)
      continue
    if not problem.answer.strip() and not keep_empty_answers:
      bad_rows.add("empty answer", where)
      continue
    problems.append(problem)
  return problems


def path_of(name: str, data_dir=None):
  """The file of source ``name`` (a key of SOURCES) in the data directory."""
  if name not in SOURCES:
    raise KeyError(f"unknown source {name!r}; known: {sorted(SOURCES)}")
  return paths.require_data_dir(data_dir) / SOURCES[name][0]


def load(name: str, data_dir=None, *, strict: bool = False,
         bad_rows: records.BadRows | None = None,
         keep_empty_answers: bool = False) -> list[Problem]:
  """All problems of source ``name`` (a key of SOURCES), in file order.

  Args:
    name: e.g. "gsm8k/train".
    data_dir: the data directory (config value); None resolves it as ``paths`` does.
    strict: raise ``records.BadRowError`` (naming file and line) at the first bad row.
    bad_rows: report to add bad rows to; a fresh one is made when None.
    keep_empty_answers: keep rows whose gold answer is empty (answer "") instead of counting
      them as bad, so that every row of the file has its place in the list.
  """
  path = path_of(name, data_dir)
  if not path.is_file():
    raise FileNotFoundError(f"source {name!r}: {path} does not exist")
  bad_rows = bad_rows if bad_rows is not None else records.BadRows(strict=strict)
  return convert_rows(name, path, records.read_jsonl(path, bad_rows), bad_rows,
                      keep_empty_answers=keep_empty_answers)


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
    except TypeError as e:
      bad_rows.add("malformed field", f"{path}:{line_no}", str(e))
      continue
    problems.append(problem)
  return problems


def write_jsonl(problems, path) -> None:
  """Writes Problems (or plain dicts) one JSON object a line, via a temp name and a rename."""
  records.write_jsonl((p.to_dict() if isinstance(p, Problem) else p for p in problems), path)
