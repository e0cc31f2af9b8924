"""Gold parsing per dataset, the registry, and gold solutions grading as correct on real files."""

import json

import pytest

from qmath_jax.data import gold
from qmath_jax.data import sources
from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import extract_answer
from qmath_jax.evaluation import math_equal
from qmath_jax.evaluation import prompts

# Synthetic rows, one per dataset layout: (dataset, row, gold, is_choice, text in question).
SYNTHETIC = [
    ("gsm8k", {"question": "Q?", "answer": "2 + 2 = <<2+2=4>>4\n#### 1,204"}, "1204", False, "Q?"),
    ("math", {"problem": "P?", "solution": "so \\boxed{\\frac{1}{2}}.", "answer": ""},
     "\\frac{1}{2}", False, "P?"),
    ("math", {"problem": "P?", "solution": "\\boxed{3}", "answer": "3"}, "3", False, "P?"),
    ("minerva_math", {"problem": "P?", "solution": "gives \\boxed{6.5}"}, "6.5", False, "P?"),
    ("olympiadbench", {"question": "Q?", "context": "Ctx.", "final_answer": ["$2$", "$3$"]},
     "2, 3", False, "Ctx.\nQ?"),
    ("mmlu_stem", {"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 2}, "C", True,
     "(C) c"),
    ("aqua", {"question": "Q?", "options": ["A)1", "B)2"], "correct": "B"}, "B", True, "(B) 2"),
    ("sat_math", {"question": "Q?", "options": "A) 1 B) 2", "Answer": "A"}, "A", True, "A) 1"),
    ("svamp", {"Body": "B", "Question": "Q?", "Answer": 145.0}, "145", False, "B. Q?"),
    ("asdiv", {"body": "B.", "question": "Q?", "answer": "9 (apples)"}, "9", False, "B. Q?"),
    ("mawps", {"input": "Q?", "target": 7.5}, "7.5", False, "Q?"),
    ("carp_en", {"content": "Q?", "answer": "b ^ { 2 }"}, "b ^ { 2 }", False, "Q?"),
    ("cmath", {"question": "问?", "answer": "9"}, "9", False, "问?"),
    ("cn_middle_school", {"question": "问?", "answer": "-2", "choice_answer": "A"}, "A", True,
     "问?"),
    ("cn_middle_school", {"question": "问?", "answer": "1/9", "choice_answer": ""}, "1/9",
     False, "问?"),
    ("gaokao2024_I", {"question": "问?", "answer": "BC", "type": "multi"}, "BC", True, "问?"),
    ("gaokao2024_II", {"question": "问?", "answer": "24;112", "type": "blank"}, "24;112", False,
     "问?"),
    ("gaokao_math_qa", {"question": "问?", "options": {"A": "1", "B": "2"}, "label": "B"}, "B",
     True, "(B) 2"),
    ("college_math", {"question": "Q?", "answer": "$10-4 n$"}, "10-4 n", False, "Q?"),
    ("amc23", {"problem": "P?", "answer": 27.0}, "27", False, "P?"),
]


@pytest.mark.parametrize("name,row,want_gold,want_choice,in_question", SYNTHETIC)
def test_gold_and_question_per_dataset(name, row, want_gold, want_choice, in_question):
  assert gold.gold_answer(row, name) == want_gold
  assert gold.is_choice(row, name) is want_choice
  assert in_question in prompts.question_text(sources.to_problem(row, name))


def test_missing_field_names_dataset_and_field():
  with pytest.raises(gold.GoldError, match=r"gsm8k.*'answer'"):
    gold.gold_answer({"question": "Q"}, "gsm8k")
  with pytest.raises(gold.GoldError, match="index"):
    gold.gold_answer({"question": "Q", "choices": [], "answer": 9}, "mmlu_stem")


def test_bad_jsonl_line_names_file_and_line(tmp_path):
  path = tmp_path / "gsm8k" / "test.jsonl"
  path.parent.mkdir()
  path.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n{oops\n")
  with pytest.raises(ValueError, match=r"test.jsonl:2"):
    benchmarks.load("gsm8k", data_dir=tmp_path)
  path.write_text(json.dumps({"question": "q"}) + "\n")
  with pytest.raises(ValueError, match=r"test\.jsonl:1: missing field.*'answer'"):
    benchmarks.load("gsm8k", data_dir=tmp_path)


def test_registry_reads_through_sources_and_keeps_row_positions(tmp_path):
  for bench in benchmarks.BENCHMARKS.values():
    assert bench.source in sources.SOURCES, bench
    assert gold.base_name(bench.source) == bench.kind, bench
  path = tmp_path / "sat_math" / "test.jsonl"
  path.parent.mkdir()
  rows = [{"id": "0", "question": "Pick one.", "options": "A) $1$ B) 2", "Answer": "B"},
          {"id": "1", "question": "No gold.", "options": "A) 1 B) 2", "Answer": ""},
          {"id": "2", "question": "Pick again.", "options": "A) 3 B) 4", "Answer": "A"}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  problems = benchmarks.load("sat_math", data_dir=tmp_path)
  assert [(p.index, p.id, p.gold, p.choice) for p in problems] == [
      (0, "sat_math/test/0", "B", True), (2, "sat_math/test/2", "A", True)]
  assert problems[0].question == "Pick one.\nAnswer Choices: (A) $1$ (B) 2"
  assert len(benchmarks.load("sat_math", data_dir=tmp_path, keep_empty_gold=True)) == 3
  assert [p.index for p in benchmarks.load("sat_math", data_dir=tmp_path, limit=2)] == [0]


def test_every_registered_file_loads_with_golds(data_dir):
  names = benchmarks.available(data_dir)
  assert set(names) == set(benchmarks.BENCHMARKS)
  for name in names:
    problems = benchmarks.load(name, data_dir)
    assert problems, name
    assert all(p.gold.strip() and p.question.strip() for p in problems), name
    assert len({p.index for p in problems}) == len(problems)
  kept = benchmarks.load("gaokao2023en", data_dir, keep_empty_gold=True)
  assert len(kept) == len(benchmarks.read_rows(data_dir / "gaokao2023en/test.jsonl"))
  assert len(kept) - len(benchmarks.load("gaokao2023en", data_dir)) == 2


def test_gold_boxed_grades_as_itself_on_every_dataset(data_dir):
  """A response boxing the gold answer is graded correct, for every problem of every set."""
  for name in benchmarks.available(data_dir, groups=("en", "zh", "competition", "extra")):
    kind = benchmarks.get(name).kind
    problems = benchmarks.load(name, data_dir)
    wrong = [p.gold for p in problems
             if not math_equal(extract_answer(f"So \\boxed{{{p.gold}}}.", kind, choice=p.choice),
                               p.gold)]
    assert not wrong, (name, wrong[:5])


def _solution_rate(rows, name, solution_field, transform=lambda s: s):
  good = sum(math_equal(extract_answer(transform(r[solution_field]), name),
                        gold.gold_answer(r, name)) for r in rows)
  return good / len(rows)


def _rows(data_dir, path):
  return benchmarks.read_rows(data_dir / path)


def test_math_solutions_grade_correct_fast_subset(data_dir):
  rows = _rows(data_dir, "math/test.jsonl")[::len(_rows(data_dir, "math/test.jsonl")) // 300]
  assert _solution_rate(rows[:300], "math", "solution") >= 0.995


def test_gsm8k_answers_all_grade_correct(data_dir):
  rows = _rows(data_dir, "gsm8k/test.jsonl")
  rate = _solution_rate(rows, "gsm8k", "answer", lambda s: s.replace("####", "The answer is"))
  assert rate == 1.0


def test_math_solutions_grade_correct_full(data_dir):
  for path in ("math/test.jsonl", "math500/test.jsonl"):
    assert _solution_rate(_rows(data_dir, path), "math", "solution") >= 0.995, path
