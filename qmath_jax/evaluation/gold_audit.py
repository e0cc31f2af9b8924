"""Audit of the production scorer against each benchmark's own references.

For every problem of a benchmark, four kinds of response go through exactly the eval stage's
scoring (`benchmarks.grade`: `extract_answer` with the problem's choice rule, then
`math_equal` against `Problem.gold`):

  perfect   a short worked response ending "the final answer is $\\boxed{GOLD}$" (distractor
            numbers in the reasoning), which must be marked correct;
  solution  the row's own reference solution (MATH/Minerva/AIME `solution`, GSM8K `answer`
            with "####" read as "The answer is", AQuA `rationale`, ASDiv `formula`, CARP
            `steps`, OlympiadBench `solution` list), where the file has one; SVAMP's
            `Equation` ("( 290.0 / 2.0 )") does not state its value and is left out;
  alternate the gold as a model often writes it instead (`\\dfrac`, `a/b`, `x = ` prefix, `\\$`,
            thousands commas, `a \\times 10^{b}`, `5, 10` for the blanks `5;10`), each boxed;
            these must be marked correct too;
  wrong     another problem's (different) gold, and the gold with its first digit changed,
            each boxed; neither should be marked correct.

    rates = audit(["math500", "aime24"], data_dir, stride=1)

Rows are read through `qmath_jax.data.sources`; no dataset text is stored here.
"""

import re

from qmath_jax.data import sources
from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import normalize


# Datasets whose `solution` text (sources.Problem.solution) is not a response with an answer.
NO_SOLUTION_RESPONSE = frozenset({"svamp"})


def perfect_response(gold: str) -> str:
  """A worked response in the prompted format whose final answer is `gold`."""
  return ("Let's reason step by step. First, 12 + 30 = 42, and 42 / 6 = 7.\n"
          f"Therefore, the final answer is $\\boxed{{{gold}}}$.")


def solution_response(solution: str, kind: str) -> str:
  """The reference solution as a model response ("" when the row has none)."""
  if kind == "gsm8k":
    return solution.replace("####", "The answer is")
  if kind in NO_SOLUTION_RESPONSE:
    return ""
  return solution


def alternate_forms(gold: str) -> list[str]:
  """Other ways to write the normalised `gold` that a grader should accept."""
  g = normalize.normalize_answer(gold)
  out = []
  if "\\frac" in g:
    out.append(g.replace("\\frac", "\\dfrac"))
  m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", g)
  if m:
    out.append(f"{m.group(1)}{m.group(2)}/{m.group(3)}")
  if re.fullmatch(r"-?(?:\d+(?:\.\d+)?|\\frac\{\d+\}\{\d+\})", g):
    out.append("x = " + g)
  if re.fullmatch(r"\d+(?:\.\d\d)?", g):
    out.append("\\$" + g)
  if re.fullmatch(r"-?\d{4,}", g):
    digits = g.lstrip("-")
    out.append(f"{g[:len(g) - len(digits)]}{int(digits):,}")
    exponent = len(digits) - 1
    mantissa = f"{digits[0]}.{digits[1:]}".rstrip("0").rstrip(".")
    out.append(f"{g[:len(g) - len(digits)]}{mantissa} \\times 10^{{{exponent}}}")
  if ";" in g:
    out.append(", ".join(part.strip() for part in g.split(";")))
  return out


def digit_changed(gold: str) -> str | None:
  """The normalised `gold` with its first digit d replaced by (d+1) mod 10; None without one.

  The first digit, not the last: a changed 5th significant digit is within the grader's
  relative 1e-4 for decimals, and a changed unit exponent (`cm^2`) is no change at all;
  digits of subscripts are skipped (the label of `C_{1}=5` is dropped by normalisation).
  """
  gold = normalize.normalize_answer(gold)
  labels = re.sub(r"_\{[^{}]*\}|_\d", lambda m: " " * len(m.group()), gold)  # C_{1}=: a name
  m = re.search(r"\d", labels)
  if m is None:
    return None
  k = m.start()
  return gold[:k] + str((int(gold[k]) + 1) % 10) + gold[k + 1:]


def score(problem: benchmarks.Problem, response: str, kind: str,
          timeout: float = 3.0) -> tuple[str, bool]:
  """(extracted answer, correct) exactly as the eval stage grades `response`."""
  (pred,), (correct,) = benchmarks.grade(problem, [response], kind, timeout)
  return pred, correct


def load_with_solutions(name: str, data_dir=None):
  """[(Problem, reference solution text)] of benchmark `name`, rows with a gold only."""
  rows = sources.load(benchmarks.get(name).source, data_dir, strict=True,
                      keep_empty_answers=True)
  return [(problem, rows[problem.index].solution)
          for problem in benchmarks.load(name, data_dir)]


def _other_gold(problems, k):
  """The gold of the next problem whose normalised gold differs from problem k's."""
  mine = normalize.compact(normalize.normalize_answer(problems[k].gold))
  for step in range(1, len(problems)):
    other = problems[(k + step) % len(problems)].gold
    if normalize.compact(normalize.normalize_answer(other)) != mine:
      return other
  return None


def audit_dataset(name: str, data_dir=None, stride: int = 1, timeout: float = 3.0,
                  keep_failures: int = 0) -> dict:
  """Per-dataset rates in percent over every `stride`-th row, plus up to `keep_failures`
  examples of each failure kind (index, gold, extracted answer)."""
  kind = benchmarks.get(name).kind
  pairs = load_with_solutions(name, data_dir)
  problems = [p for p, _ in pairs]
  counts = {"perfect": [0, 0], "solution": [0, 0], "alternate": [0, 0], "wrong": [0, 0]}
  failures = {key: [] for key in counts}

  def tally(key, problem, response, want):
    pred, correct = score(problem, response, kind, timeout)
    counts[key][0] += correct
    counts[key][1] += 1
    if correct != want and len(failures[key]) < keep_failures:
      failures[key].append({"index": problem.index, "gold": problem.gold, "pred": pred})

  for k in range(0, len(pairs), stride):
    problem, solution = pairs[k]
    tally("perfect", problem, perfect_response(problem.gold), True)
    response = solution_response(solution, kind) if solution.strip() else ""
    if response:
      tally("solution", problem, response, True)
    if not problem.choice:
      for form in alternate_forms(problem.gold):
        tally("alternate", problem, perfect_response(form), True)
    for wrong in (_other_gold(problems, k), digit_changed(problem.gold)):
      if wrong is not None:
        tally("wrong", problem, perfect_response(wrong), False)

  def rate(key):
    hit, n = counts[key]
    return round(100.0 * hit / n, 2) if n else None

  out = {"rows": len(pairs), "checked": counts["perfect"][1],
         "perfect_correct_pct": rate("perfect"), "solution_correct_pct": rate("solution"),
         "solutions": counts["solution"][1], "alternate_correct_pct": rate("alternate"),
         "alternates": counts["alternate"][1], "wrong_marked_correct_pct": rate("wrong"),
         "wrong_checked": counts["wrong"][1]}
  if keep_failures:
    out["failures"] = failures
  return out


def audit(names, data_dir=None, stride: int = 1, timeout: float = 3.0,
          keep_failures: int = 0) -> dict:
  """`audit_dataset` for each name, keyed by name."""
  return {name: audit_dataset(name, data_dir, stride, timeout, keep_failures)
          for name in names}
