"""The benchmark registry: which source each benchmark reads, its rules, and its report group.

Rows are read by ``qmath_jax.data.sources`` (the one reader of the data directory; see its
MANIFEST.md), strictly: a bad line raises ``records.BadRowError`` naming the file and line.
What is evaluation's own lives here: names, groups, the report's averages, and the problem as
it is prompted and graded.
"""

import dataclasses
import pathlib
from collections.abc import Sequence

from qmath_jax.data import gold
from qmath_jax.data import paths
from qmath_jax.data import records
from qmath_jax.data import sources
from qmath_jax.evaluation import extract
from qmath_jax.evaluation import grader
from qmath_jax.evaluation import prompts


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One evaluation file. `kind` is the dataset whose rules (gold, prompt) apply."""
  name: str
  source: str  # a key of `sources.SOURCES`
  kind: str
  group: str   # "en", "zh", "competition", "extra" or "train"


@dataclasses.dataclass(frozen=True)
class Problem:
  """One benchmark problem, ready to prompt and grade."""
  dataset: str
  index: int       # row position in the file (0-based); the resume key
  id: str
  question: str    # the user turn: statement plus lettered options (`prompts.question_text`)
  gold: str
  choice: bool     # answered with letters A-E


def _bench(name, source, group, kind=None):
  return Benchmark(name=name, source=source, kind=kind or name, group=group)


BENCHMARKS = {b.name: b for b in (
    _bench("gsm8k", "gsm8k/test", "en"),
    _bench("math", "math/test", "en"),
    _bench("minerva_math", "minerva_math/test", "en"),
    _bench("gaokao2023en", "gaokao2023en/test", "en"),
    _bench("olympiadbench", "olympiadbench/test", "en"),
    _bench("college_math", "college_math/test", "en"),
    _bench("mmlu_stem", "mmlu_stem/test", "en"),
    _bench("gaokao2024_mix", "gaokao2024_mix/test", "zh"),
    _bench("cmath", "cmath/test", "zh"),
    _bench("cn_middle_school", "cn_middle_school/test", "zh"),
    _bench("aime24", "aime24/test", "competition"),
    _bench("amc23", "amc23/test", "competition"),
    _bench("math500", "math500/test", "extra"),
    _bench("gaokao2024_I", "gaokao2024_I/test", "extra"),
    _bench("gaokao2024_II", "gaokao2024_II/test", "extra"),
    _bench("gaokao_math_cloze", "gaokao_math_cloze/test", "extra"),
    _bench("gaokao_math_qa", "gaokao_math_qa/test", "extra"),
    _bench("aqua", "aqua/test", "extra"),
    _bench("sat_math", "sat_math/test", "extra"),
    _bench("asdiv", "asdiv/test", "extra"),
    _bench("svamp", "svamp/test", "extra"),
    _bench("carp_en", "carp_en/test", "extra"),
    _bench("mawps", "mawps/test", "extra"),
    _bench("mawps_addsub", "mawps/addsub", "extra", kind="mawps"),
    _bench("mawps_multiarith", "mawps/multiarith", "extra", kind="mawps"),
    _bench("mawps_singleeq", "mawps/singleeq", "extra", kind="mawps"),
    _bench("mawps_singleop", "mawps/singleop", "extra", kind="mawps"),
    _bench("gsm8k_train", "gsm8k/train", "train", kind="gsm8k"),
    _bench("math_train", "math/train", "train", kind="math"),
)}

# The report's averages (SPEC "Reported results"): the 7 English and 3 Chinese benchmarks.
# GaoKao (Chinese) is represented by gaokao2024_mix, the 91-problem 2024 set.
REPORT_GROUPS = {
    "en_avg": ("gsm8k", "math", "minerva_math", "gaokao2023en", "olympiadbench",
               "college_math", "mmlu_stem"),
    "zh_avg": ("gaokao2024_mix", "cmath", "cn_middle_school"),
}


def get(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
  return BENCHMARKS[name]


def read_rows(path: pathlib.Path) -> list[dict]:
  """All raw JSON rows of a jsonl file; a bad line raises ``records.BadRowError`` at file:line."""
  return [row for _, row in records.read_jsonl(path, records.BadRows(strict=True))]


def to_eval_problem(problem: sources.Problem, name: str, index: int, kind: str,
                    row: dict | None = None) -> Problem:
  """A source problem as benchmark `name` prompts and grades it (`kind`'s choice rule).

  `row`, the file's raw row, gives the options exactly as Qwen's harness spaces them
  (`prompts.question_text`); without it they are rebuilt from `problem.choices`.
  """
  return Problem(dataset=name, index=index, id=problem.id,
                 question=prompts.question_text(problem, row), gold=problem.answer,
                 choice=gold.answer_is_choice(problem.answer, kind))


def grade_texts(texts: Sequence[str], gold_answer: str, data_name: str, choice: bool | None,
                timeout: float = 3.0) -> tuple[list[str], list[bool]]:
  """(extracted answers, correct) of responses: `extract_answer` with the choice rule, then
  `math_equal` against `gold_answer`. The one scoring of evaluation, the sampling rounds and the
  RL verifier reward. An empty gold matches nothing."""
  preds = [extract.extract_answer(t, data_name, choice=choice) for t in texts]
  if not gold_answer.strip():
    return preds, [False] * len(preds)
  return preds, [grader.math_equal(p, gold_answer, timeout=timeout) for p in preds]


def grade(problem: Problem, texts: Sequence[str], kind: str,
          timeout: float = 3.0) -> tuple[list[str], list[bool]]:
  """`grade_texts` of responses to benchmark `problem` (of dataset kind `kind`)."""
  return grade_texts(texts, problem.gold, kind, problem.choice, timeout)


def load(name: str, data_dir=None, limit: int | None = None,
         keep_empty_gold: bool = False) -> list[Problem]:
  """The problems of benchmark `name` (of its first `limit` rows when given).

  Rows whose gold answer is empty cannot be graded and are left out unless `keep_empty_gold`
  (gaokao2023en has two such rows); `Problem.index` stays the row position.
  """
  bench = get(name)
  rows = sources.load(bench.source, data_dir, strict=True, keep_empty_answers=True)
  raw = read_rows(sources.path_of(bench.source, data_dir))
  if len(raw) != len(rows):
    raise ValueError(f"{name}: {len(raw)} raw rows but {len(rows)} problems")
  if limit is not None:
    rows = rows[:limit]
  problems = [to_eval_problem(p, name, index, bench.kind, raw[index])
              for index, p in enumerate(rows)]
  return problems if keep_empty_gold else [p for p in problems if p.gold.strip()]


def available(data_dir=None, groups=None) -> list[str]:
  """Registered benchmarks whose file exists (optionally only those in `groups`)."""
  root = paths.find_data_dir(data_dir)
  if root is None:
    return []
  return [n for n, b in BENCHMARKS.items()
          if (groups is None or b.group in groups) and sources.path_of(b.source, root).is_file()]
