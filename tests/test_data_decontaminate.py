"""Decontamination: planted near-duplicates of benchmark problems are removed, clean rows kept."""

import json
import os
import random
import subprocess
import sys

import pytest

from qmath_jax.data import decontaminate
from qmath_jax.data import sources
from qmath_jax.data import synthetic


def _lcs_reference(a, b):
  table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i, x in enumerate(a):
    for j, y in enumerate(b):
      table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
  return table[-1][-1]


def test_lcs_length_matches_dynamic_programming():
  rng = random.Random(0)
  for _ in range(200):
    a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
    b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
    assert decontaminate.lcs_length(a, b) == _lcs_reference(a, b)
  assert decontaminate.lcs_ratio(["x", "y"], ["x", "y"]) == 1.0
  assert decontaminate.lcs_ratio([], []) == 0.0


def test_words_normalise_case_punctuation_cjk_and_figures():
  assert decontaminate.words("What's $2+2$?  ANSWER: 4.") == ["what", "s", "2", "2", "answer", "4"]
  assert decontaminate.words("芳芳买了书") == ["芳", "芳", "买", "了", "书"]
  assert decontaminate.words("Find x. [asy] draw((0,0)--(1,1)); [/asy] Done") == ["find", "x",
                                                                                   "done"]


def _perturbations(problem: sources.Problem, rng: random.Random) -> list[tuple[str, str]]:
  """Near-duplicates of one benchmark problem: (how, question text)."""
  text = problem.question
  tokens = text.split()
  swapped = list(tokens)
  for i in range(0, len(swapped), 6):           # change every 6th word: no 13-gram survives
    swapped[i] = rng.choice(["blue", "seven", "quietly", "frog"])
  return [
      ("case and punctuation", text.upper().replace(",", " ; ").replace(".", " !")),
      ("wrapped", f"Solve the following problem carefully. {text} Show all your work."),
      ("words replaced", " ".join(swapped)),
  ]


def _clean_rows() -> list[sources.Problem]:
  """Training rows unrelated to any benchmark: synthetic word problems, one template family."""
  return synthetic.generate(150, seed=4)


def _planted_check(benchmark: list[sources.Problem], seed: int):
  rng = random.Random(seed)
  targets = [p for p in benchmark
             if len(p.question.split()) >= 25 and "[asy]" not in p.question][:12]
  planted = []
  for problem in targets:
    for how, text in _perturbations(problem, rng):
      planted.append(sources.Problem(id=f"planted/{problem.id}/{how}", dataset="train",
                                     question=text, answer="0"))
  clean = _clean_rows()
  train = clean + planted
  rng.shuffle(train)
  decontaminator = decontaminate.Decontaminator(benchmark)
  kept, report = decontaminator.filter(train)
  return clean, planted, kept, report


def test_catches_planted_near_duplicates_of_math_test(data_dir):
  benchmark = sources.load("math/test", data_dir)
  clean, planted, kept, report = _planted_check(benchmark, seed=1)
  removed = {r.row_id: r for r in report.removed}
  assert set(removed) == {p.id for p in planted}
  assert sorted(p.id for p in kept) == sorted(p.id for p in clean)
  for row_id, removal in removed.items():
    assert row_id.startswith(f"planted/{removal.benchmark_id}/")
    assert removal.benchmark == "math/test"
  reasons = {r.row_id.rsplit("/", 1)[1]: r.reason for r in report.removed}
  assert reasons["words replaced"] == "lcs"
  assert report.counts()["kept"] == len(clean)


def test_catches_planted_near_duplicates_without_data_files():
  benchmark = [sources.Problem(id=f"bench/{i}", dataset="bench", question=q, answer="1")
               for i, q in enumerate([
                   "A train leaves the station at noon traveling at sixty miles per hour toward a "
                   "city that is one hundred and eighty miles away; at what time does it arrive?",
                   "Let f be a function such that f of x plus two times f of one minus x equals "
                   "three x squared for every real number x. Find f of three.",
               ])]
  benchmark += [sources.Problem(id=f"bench/x{i}", dataset="bench", answer="1",
                                question=f"Compute the sum of the first {n} odd positive integers "
                                         f"and then divide the result by {n}; what remains?")
                for i, n in enumerate((10, 20, 30))]
  clean, planted, kept, report = _planted_check(benchmark, seed=2)
  assert {r.row_id for r in report.removed} == {p.id for p in planted}
  assert len(kept) == len(clean)


def test_solutions_are_checked_and_short_benchmark_texts_count_whole():
  bench = [sources.Problem(id="b/0", dataset="b", question="Simplify the expression x plus x "
                           "plus x plus x.", answer="4x",
                           solution="Adding the four copies of x together gives four times x, "
                                    "which is written as 4x in simplest form.")]
  decontaminator = decontaminate.Decontaminator(bench)
  leaked = decontaminator.match("Some other question entirely about numbers?",
                                "As shown: adding the four copies of x together gives four times "
                                "x, which is written as 4x.")
  assert leaked is not None and leaked.reason == "13-gram in solution"
  short = decontaminator.match("Please simplify the expression x plus x plus x plus x now.")
  assert short is not None and short.reason == "13-gram in question"
  assert decontaminator.match("How many legs do three spiders have in total?") is None


def test_templated_problems_are_flagged_by_lcs():
  # Synthetic problems share one template, so held-out ones look like near-duplicates of the
  # training ones: decontaminating the demo's train split against its test split removes most.
  test_split = synthetic.generate(20, seed=3, split="test")
  _, report = decontaminate.Decontaminator(test_split).filter(synthetic.generate(20, seed=3))
  assert report.counts()["removed"] >= 10


def test_report_file(tmp_path):
  bench = [sources.Problem(id=f"b/{i}", dataset="bench", answer="1",
                           question=f"Question number {i} asks for the number of ways to tile a "
                                    f"board of size {i} by {i + 7} with dominoes exactly.")
           for i in range(3)]
  clean = [sources.Problem(id="t/0", dataset="train", answer="2", question="What is 1 + 1?")]
  _, report = decontaminate.Decontaminator(bench).filter(bench[:2] + clean)
  report.write_jsonl(tmp_path / "removed.jsonl")
  lines = (tmp_path / "removed.jsonl").read_text().splitlines()
  assert len(lines) == 2 and '"reason": "13-gram in question"' in lines[0]
  assert report.counts() == {"kept": 1, "removed": 2, "by_reason": {"13-gram in question": 2},
                             "by_benchmark": {"bench": 2}}


@pytest.mark.slow
def test_cli_on_real_training_split(data_dir, tmp_path):
  decontaminate.main(["--train=gsm8k/train", f"--out={tmp_path / 'clean.jsonl'}",
                      f"--report={tmp_path / 'removed.jsonl'}", f"--data_dir={data_dir}"])
  kept = sources.load_jsonl_problems(tmp_path / "clean.jsonl")
  removed = (tmp_path / "removed.jsonl").read_text().splitlines()
  assert len(kept) + len(removed) == 7473 and 0 < len(removed) < 500


def test_knobs_turn_off_solution_and_short_question_tests():
  bench = [sources.Problem(id="b/0", dataset="b", answer="5",
                           question="What is the greatest common factor of 84 and 112 today?",
                           solution="Both are multiples of 28 so the greatest common factor of "
                                    "the two numbers is 28 in the end.")]
  near = "What is the greatest common factor of 90 and 120 today?"
  copied = "Both are multiples of 28 so the greatest common factor of the two numbers is 28."
  default = decontaminate.Decontaminator(bench)
  assert default.match(near).reason == "lcs"
  assert default.match("Unrelated?", copied).reason == "13-gram in solution"
  relaxed = decontaminate.Decontaminator(bench, check_solutions=False, lcs_min_words=15)
  assert relaxed.match(near) is None
  assert relaxed.match("Unrelated?", copied) is None


def test_same_result_under_any_string_hash_seed(tmp_path):
  script = (
      "from qmath_jax.data import decontaminate, sources, synthetic\n"
      "bench = synthetic.generate(40, seed=1, split='test')\n"
      "_, report = decontaminate.Decontaminator(bench, max_candidates=2).filter(\n"
      "    synthetic.generate(60, seed=1))\n"
      "print([(r.row_id, r.reason, r.benchmark_id) for r in report.removed])\n")
  outputs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
             for seed in ("1", "2", "3")}
  assert len(outputs) == 1 and "synthetic/train" in outputs.pop()


def test_benchmark_rows_without_a_gold_answer_are_still_indexed(tmp_path):
  # gaokao2023en/test has two rows whose answer is empty: ungradable, but their problem text is
  # benchmark text all the same and training data must not contain it.
  question = ("The function f satisfies f of x plus f of one minus x equals two for every real "
              "number x; find the sum of f at the nineteen points one twentieth to nineteen "
              "twentieths.")
  rows = [{"question": question, "answer": ""},
          {"question": "Find the least prime larger than forty that is one more than a square.",
           "answer": "$101$"}]
  (tmp_path / "gaokao2023en").mkdir()
  (tmp_path / "gaokao2023en" / "test.jsonl").write_text(
      "".join(json.dumps(row) + "\n" for row in rows))
  benchmark = decontaminate.benchmark_problems(tmp_path, names=("gaokao2023en/test",))
  assert [p.id for p in benchmark] == ["gaokao2023en/test/0", "gaokao2023en/test/1"]
  removal = decontaminate.Decontaminator(benchmark).match(question)
  assert removal is not None and removal.benchmark_id == "gaokao2023en/test/0"
