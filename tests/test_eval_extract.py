"""extract_answer: boxed, answer phrases, last number, letters; and the no-JAX import rule."""

import subprocess
import sys

import pytest

from qmath_jax.data import gold
from qmath_jax.evaluation import extract_answer
from qmath_jax.evaluation import normalize_answer


@pytest.mark.parametrize("text,want", [
    ("So $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3, \\frac{\\pi}{2})"),
    ("The result is \\boxed 5.", "5"),
    ("we get \\fbox{12}", "12"),
    ("Thus the answer is 42.", "42"),
    ("The final answer is $3.5$ hours.", "3.5"),
    ("所以答案是 9 个。", "9"),
    ("6 + 7 = 13 and 13 * 2 = 26", "26"),
    ("It costs $1,250 in total", "1250"),
    ("half of it: 3/4", "\\frac{3}{4}"),
    ("no numbers here", ""),
    ("\\boxed{x = 5}", "5"),
    ("\\boxed{10\\%}", "10%"),
    ("\\boxed{\\dfrac{3}{4}\\text{ cm}}", "\\frac{3}{4}"),
])
def test_extracts_final_answer(text, want):
  assert extract_answer(text, "math") == want


def test_unbalanced_box_falls_back():
  assert gold.last_boxed("\\boxed{1 + ") is None
  assert extract_answer("we have 7 \\boxed{1 + ", "math") == "1"


@pytest.mark.parametrize("text,data_name,choice,want", [
    ("The answer is (B).", "aqua", None, "B"),
    ("Therefore \\boxed{C}", "mmlu_stem", None, "C"),
    ("\\boxed{\\text{(D)}}", "sat_math", None, "D"),
    ("\\boxed{B, C}", "gaokao2024_I", True, "BC"),
    ("so A is wrong, B is wrong, the answer is D because", "aqua", None, "D"),
    ("选项 A 错误，故选 C", "gaokao_math_qa", None, "C"),
    ("\\boxed{D. 2}", "cn_middle_school", True, "D"),
    ("\\boxed{12}", "gaokao2024_I", False, "12"),
    ("nothing to choose", "aqua", None, ""),
])
def test_extracts_choice_letters(text, data_name, choice, want):
  assert extract_answer(text, data_name, choice=choice) == want


def test_normalize_is_idempotent():
  for s in ["\\dfrac12", "x = \\left(1, 2\\right]", "30^\\circ", "4\\text{ cm}", "10{,}000",
            "\\text{4:30 p.m.}", "0.50", "50\\%", "\\text{five}"]:
    once = normalize_answer(s)
    assert normalize_answer(once) == once, s


def test_importing_evaluation_does_not_import_jax():
  code = ("import sys, qmath_jax.evaluation as e; "
          "e.math_equal(e.extract_answer('\\\\boxed{1/2}'), '0.5'); "
          "bad = [m for m in ('jax', 'flax', 'numpy', 'sympy') if m in sys.modules]; "
          "print(bad); sys.exit(1 if bad else 0)")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=60)
  assert done.returncode == 0, done.stdout + done.stderr


def test_long_digit_runs_normalise_in_linear_time():
  """The repeating-decimal pattern retried a digit run from every digit: 5 s for 30k digits."""
  import time  # pylint: disable=g-import-not-at-top
  text = "1234567890" * 10_000
  start = time.monotonic()
  assert normalize_answer(text) == text
  assert normalize_answer("3-0.1\\overline{6}") == "3-\\frac{1}{6}"
  assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("text", [
    "1" + " " * 20_000 + "1",                 # percent pattern retried inside a whitespace run
    "the answer is " + "\\boxed{ " * 10_000,  # boxed pattern retried from every unclosed box
    "1" + "\\text{ cm}" * 2_000,               # one unit-stripping pass per unit
])
def test_degenerate_answers_normalise_in_linear_time(text):
  import time  # pylint: disable=g-import-not-at-top
  start = time.monotonic()
  assert isinstance(normalize_answer(text), str)
  assert isinstance(extract_answer(text), str)
  assert time.monotonic() - start < 1.0


def test_long_repeating_decimal_is_left_as_written():
  """int() refuses more than 4300 digits: normalising raised ValueError (so did extraction)."""
  text = "0." + "3" * 5000 + "\\overline{3}"
  assert normalize_answer(text) == text
  assert extract_answer("\\boxed{" + text + "}") == text
  assert normalize_answer("1.2\\overline{3}") == "\\frac{37}{30}"
  assert normalize_answer("5 \\text{ cm}^2") == "5"
  assert normalize_answer("x = \\boxed{5}") == "5"
