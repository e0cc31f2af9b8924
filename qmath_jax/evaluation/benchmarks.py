"""The benchmark registry over the data directory (see its MANIFEST.md).

Each benchmark names one jsonl file and the dataset whose gold/prompt rules apply. Rows are read
directly (JSON lines, UTF-8); a bad line raises an error naming the file and line.
"""

import dataclasses
import json
import pathlib

from qmath_jax.data import paths
from qmath_jax.evaluation import gold


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One evaluation file. `kind` is the dataset whose rules (gold, prompt) apply."""
  name: str
  path: str
  kind: str
  group: str   # "en", "zh", "competition", "extra" or "train"


@dataclasses.dataclass(frozen=True)
class Problem:
  """One benchmark problem, ready to prompt and grade."""
  dataset: str
  index: int       # row position in the file (0-based); the resume key
  id: str
  question: str
  gold: str
  choice: bool     # answered with letters A-E


def _bench(name, path, group, kind=None):
  return Benchmark(name=name, path=path, kind=kind or name, group=group)


BENCHMARKS = {b.name: b for b in (
    _bench("gsm8k", "gsm8k/test.jsonl", "en"),
    _bench("math", "math/test.jsonl", "en"),
    _bench("minerva_math", "minerva_math/test.jsonl", "en"),
    _bench("gaokao2023en", "gaokao2023en/test.jsonl", "en"),
    _bench("olympiadbench", "olympiadbench/test.jsonl", "en"),
    _bench("college_math", "college_math/test.jsonl", "en"),
    _bench("mmlu_stem", "mmlu_stem/test.jsonl", "en"),
    _bench("gaokao2024_mix", "gaokao2024_mix/test.jsonl", "zh"),
    _bench("cmath", "cmath/test.jsonl", "zh"),
    _bench("cn_middle_school", "cn_middle_school/test.jsonl", "zh"),
    _bench("aime24", "aime24/test.jsonl", "competition"),
    _bench("amc23", "amc23/test.jsonl", "competition"),
    _bench("math500", "math500/test.jsonl", "extra"),
    _bench("gaokao2024_I", "gaokao2024_I/test.jsonl", "extra"),
    _bench("gaokao2024_II", "gaokao2024_II/test.jsonl", "extra"),
    _bench("gaokao_math_cloze", "gaokao_math_cloze/test.jsonl", "extra"),
    _bench("gaokao_math_qa", "gaokao_math_qa/test.jsonl", "extra"),
    _bench("aqua", "aqua/test.jsonl", "extra"),
    _bench("sat_math", "sat_math/test.jsonl", "extra"),
    _bench("asdiv", "asdiv/test.jsonl", "extra"),
    _bench("svamp", "svamp/test.jsonl", "extra"),
    _bench("carp_en", "carp_en/test.jsonl", "extra"),
    _bench("mawps", "mawps/test.jsonl", "extra"),
    _bench("mawps_addsub", "mawps/addsub.jsonl", "extra", kind="mawps"),
    _bench("mawps_multiarith", "mawps/multiarith.jsonl", "extra", kind="mawps"),
    _bench("mawps_singleeq", "mawps/singleeq.jsonl", "extra", kind="mawps"),
    _bench("mawps_singleop", "mawps/singleop.jsonl", "extra", kind="mawps"),
    _bench("gsm8k_train", "gsm8k/train.jsonl", "train", kind="gsm8k"),
    _bench("math_train", "math/train.jsonl", "train", kind="math"),
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
  """All JSON rows of a jsonl file; a bad line raises ValueError naming file and line."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from e
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
      rows.append(row)
  return rows


def problems_from_rows(rows: list[dict], name: str, kind: str | None = None,
                       source: str = "<rows>") -> list[Problem]:
  """Problems of one dataset from raw rows; errors name `source` and the line."""
  kind = kind or name
  out = []
  for index, row in enumerate(rows):
    try:
      out.append(Problem(
          dataset=name, index=index,
          id=str(row.get("unique_id", row.get("id", row.get("idx", row.get("ID", index))))),
          question=gold.question_text(row, kind), gold=gold.gold_answer(row, kind),
          choice=gold.is_choice(row, kind)))
    except gold.GoldError as e:
      raise ValueError(f"{source}: row {index + 1}: {e}") from e
  return out


def load(name: str, data_dir=None, limit: int | None = None,
         keep_empty_gold: bool = False) -> list[Problem]:
  """The problems of benchmark `name` (of its first `limit` rows when given).

  Rows whose gold answer is empty cannot be graded and are left out unless `keep_empty_gold`
  (gaokao2023en has two such rows); `Problem.index` stays the row position.
  """
  bench = get(name)
  path = paths.require_data_dir(data_dir) / bench.path
  if not path.is_file():
    raise FileNotFoundError(f"benchmark {name!r}: {path} does not exist")
  rows = read_rows(path)
  if limit is not None:
    rows = rows[:limit]
  problems = problems_from_rows(rows, name, bench.kind, source=str(path))
  return problems if keep_empty_gold else [p for p in problems if p.gold.strip()]


def available(data_dir=None, groups=None) -> list[str]:
  """Registered benchmarks whose file exists (optionally only those in `groups`)."""
  root = paths.find_data_dir(data_dir)
  if root is None:
    return []
  return [n for n, b in BENCHMARKS.items()
          if (groups is None or b.group in groups) and (root / b.path).is_file()]
