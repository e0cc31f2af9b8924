"""The production scorer against every benchmark's own references (`gold_audit`).

Synthetic checks of the audit's helpers run everywhere; the per-dataset floors read the real
files and skip without the data directory. Each dataset is sampled deterministically (every
k-th row, at most ~200 rows) so the whole file runs in seconds.
"""

import pytest

from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import gold_audit

# Reference solutions that are responses ending in their answer: floor on the share graded
# correct (the misses are data: e.g. MATH row whose `answer` is a sentence, AIME's
# `\framebox`, AQuA rationales that never name the letter).
SOLUTION_FLOORS = {"gsm8k": 100.0, "math": 99.0, "math500": 99.5, "minerva_math": 99.5,
                   "aime24": 90.0, "aqua": 90.0}
# Model-style rewrites of the gold (`gold_audit.alternate_forms`): 100% except where a
# ';'-separated blank itself holds commas ("621,200 mg ; 1.42 lb"), which ", " makes ambiguous.
ALTERNATE_FLOORS = {"college_math": 97.0, "gaokao_math_cloze": 95.0}
MAX_WRONG_PCT = 0.5   # wrong answers (another row's gold, a changed digit) graded correct
SAMPLE = 200


def test_digit_changed_skips_labels_and_changes_the_leading_digit():
  assert gold_audit.digit_changed("0.35625") == "1.35625"
  assert gold_audit.digit_changed("C_{1}=5, C_{2}=7") == "C_{1}=6, C_{2}=7"
  assert gold_audit.digit_changed("864 \\mbox{ inches}^2") == "964"
  assert gold_audit.digit_changed("x") is None


def test_alternate_forms():
  assert gold_audit.alternate_forms("-\\frac{3}{4}") == [
      "-\\dfrac{3}{4}", "-3/4", "x = -\\frac{3}{4}"]
  assert gold_audit.alternate_forms("-1200") == ["x = -1200", "-1,200", "-1.2 \\times 10^{3}"]
  assert gold_audit.alternate_forms("$5$;$10$") == ["5, 10"]


def test_score_is_the_eval_stage_path():
  problem = benchmarks.Problem(dataset="math", index=0, id="x", question="Q?",
                               gold="\\frac{1}{2}", choice=False)
  assert gold_audit.score(problem, gold_audit.perfect_response("0.5"), "math") == ("0.5", True)
  assert not gold_audit.score(problem, gold_audit.perfect_response("2"), "math")[1]
  letter = benchmarks.Problem(dataset="aqua", index=0, id="y", question="Q?", gold="C",
                              choice=True)
  assert gold_audit.score(letter, "so \\boxed{\\text{(C)}}", "aqua") == ("C", True)
  for response in ("\\boxed{0.5}", "so 1/2", "\\boxed{2}"):   # the eval stage's own grading
    assert benchmarks.grade(problem, [response], "math", 3.0) == tuple(
        [x] for x in gold_audit.score(problem, response, "math"))
  assert gold_audit.solution_response("a\n#### 5", "gsm8k") == "a\nThe answer is 5"
  assert gold_audit.solution_response("( 290.0 / 2.0 )", "svamp") == ""


def _names(data_dir):
  return benchmarks.available(data_dir, groups=("en", "zh", "competition", "extra"))


def test_every_dataset_grades_perfect_right_and_wrong_wrong(data_dir):
  failures = {}
  for name in _names(data_dir):
    rows = len(benchmarks.load(name, data_dir))
    stride = max(1, rows // SAMPLE)
    result = gold_audit.audit_dataset(name, data_dir, stride=stride, keep_failures=3)
    if (result["perfect_correct_pct"] < 100.0 or
        result["wrong_marked_correct_pct"] > MAX_WRONG_PCT):
      failures[name] = result
    floor = SOLUTION_FLOORS.get(name)
    if floor is not None and result["solution_correct_pct"] < floor:
      failures[name] = result
    alternate = result["alternate_correct_pct"]
    if alternate is not None and alternate < ALTERNATE_FLOORS.get(name, 100.0):
      failures[name] = result
  assert not failures, failures
