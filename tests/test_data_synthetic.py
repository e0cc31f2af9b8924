"""Synthetic arithmetic problems: exact answers, CoT and TIR formats, knobs, disjoint splits."""

import contextlib
import io
import re

import pytest

from qmath_jax.data import gold
from qmath_jax.data import synthetic


def _evaluate(signature: str) -> int:
  start, *steps = signature.split("|")
  value = int(start)
  for step in steps:
    op, operand = step[0], int(step[1:])
    if op == "/":
      assert value % operand == 0, "division must be exact"
    value = {"+": value + operand, "-": value - operand, "*": value * operand,
             "/": value // operand}[op]
    assert value > 0
  return value


def test_same_seed_same_problems():
  assert synthetic.generate(50, seed=7) == synthetic.generate(50, seed=7)
  assert synthetic.generate(50, seed=7) != synthetic.generate(50, seed=8)
  assert synthetic.corpus(20, seed=1) == synthetic.corpus(20, seed=1)


def test_answers_are_exact_and_solutions_end_in_boxed_answer():
  for problem in synthetic.generate(200, seed=1):
    assert problem.answer == str(_evaluate(problem.meta["signature"]))
    assert problem.solution.endswith(f"The answer is $\\boxed{{{problem.answer}}}$.")
    assert gold.last_boxed(problem.solution) == problem.answer
    # Every written step is true arithmetic.
    for a, op, b, c in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", problem.solution):
      assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
              "/": int(a) // int(b)}[op] == int(c)
      if op == "/":
        assert int(a) % int(b) == 0


def test_question_sentences_start_with_a_capital():
  for problem in synthetic.generate(200, seed=6, cfg=synthetic.SyntheticConfig(1, 2, 9)):
    for sentence in re.split(r"(?<=[.?]) ", problem.question):
      assert sentence[0].isupper(), problem.question


def test_tir_solution_code_prints_its_output_block():
  for problem in synthetic.generate(30, seed=2):
    tir = problem.meta["tir_solution"]
    code = re.search(r"```python\n(.*?)\n```", tir, re.DOTALL).group(1)
    output = re.search(r"```output\n(.*?)\n```", tir, re.DOTALL).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      exec(code, {})  # our own generated arithmetic, no inputs
    assert printed.getvalue().strip() == output == problem.answer
    assert gold.last_boxed(tir) == problem.answer
    assert tir.index("```python") < tir.index("```output") < tir.index("\\boxed")


def test_difficulty_knobs():
  cfg = synthetic.SyntheticConfig(min_steps=5, max_steps=6, max_operand=9)
  for problem in synthetic.generate(50, seed=3, cfg=cfg):
    assert 5 <= problem.meta["steps"] <= 6
    start, *steps = problem.meta["signature"].split("|")
    assert 2 <= int(start) <= 9 and all(int(s[1:]) <= 9 for s in steps)
  with pytest.raises(ValueError, match="min_steps"):
    synthetic.SyntheticConfig(min_steps=3, max_steps=2)


def _values(signature: str) -> list[int]:
  """The quantity after each step of a signature, the start value first."""
  start, *steps = signature.split("|")
  values = [int(start)]
  for step in steps:
    op, operand = step[0], int(step[1:])
    values.append({"+": values[-1] + operand, "-": values[-1] - operand,
                   "*": values[-1] * operand, "/": values[-1] // operand}[op])
  return values


def test_max_value_bounds_every_number():
  bounded = synthetic.SyntheticConfig(min_steps=2, max_steps=3, max_operand=9, max_value=20)
  for problem in synthetic.generate(300, seed=4, cfg=bounded):
    assert max(_values(problem.meta["signature"])) <= 20, problem.meta["signature"]
    assert max(int(n) for n in re.findall(r"\d+", problem.solution)) <= 20, problem.solution
    assert problem.answer == str(_evaluate(problem.meta["signature"]))
  unbounded = synthetic.SyntheticConfig(min_steps=2, max_steps=3, max_operand=9)
  assert any(max(_values(p.meta["signature"])) > 20
             for p in synthetic.generate(300, seed=4, cfg=unbounded))
  with pytest.raises(ValueError, match="max_value"):
    synthetic.SyntheticConfig(max_operand=9, max_value=8)


def test_held_out_split_is_disjoint():
  train = synthetic.generate(2000, seed=0)
  test = synthetic.generate(200, seed=0, split="test")
  other_seed = synthetic.generate(500, seed=5, split="train")
  test_signatures = {p.meta["signature"] for p in test}
  assert len(test_signatures) == 200
  assert not test_signatures & {p.meta["signature"] for p in train + other_seed}
  assert not {p.question for p in test} & {p.question for p in train}
  assert {p.dataset for p in test} == {"synthetic/test"}


def test_corpus_holds_no_held_out_problem():
  test_questions = {p.question for p in synthetic.generate(300, seed=0, split="test")}
  documents = synthetic.corpus(300, seed=0)
  assert len(documents) == 300
  assert not any(q in doc for doc in documents for q in test_questions)
  assert any("```python" in doc for doc in documents)
  assert any(re.fullmatch(r"(-?\d+ [-+*] \d+ = -?\d+\.\n?)+", doc) for doc in documents)
