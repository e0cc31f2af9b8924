"""math_equal per equivalence class, its refusals, and its timeout in threads and processes."""

import concurrent.futures
import multiprocessing
import time

import pytest

from qmath_jax.evaluation import grader
from qmath_jax.evaluation import math_equal
from qmath_jax.evaluation import symbolic

EQUAL = {
    "fractions": [("\\frac{1}{2}", "\\frac{2}{4}"), ("1/2", "\\frac{1}{2}"),
                  ("\\frac12", "\\frac{1}{2}"), ("-\\frac{3}{4}", "\\frac{-3}{4}"),
                  ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2")],
    "decimals_percents": [("0.5", "\\frac{1}{2}"), ("3.50", "3.5"), ("12.0", "12"),
                          ("50\\%", "0.5"), ("0.25", "25\\%"), ("7.25%", "7.25"),
                          ("0.3333", "\\frac{1}{3}"), (".75", "0.75"),
                          ("0.1\\overline{6}", "\\frac{1}{6}")],
    "dfrac_frac": [("\\dfrac{3}{5}", "\\frac{3}{5}"), ("\\tfrac{3}{5}", "0.6"),
                   ("\\dfrac{\\pi}{4}", "\\frac{\\pi}{4}")],
    "units_text": [("4\\text{ cm}", "4"), ("12 \\mbox{ inches}", "12"), ("5\\text{ dollars}", "5"),
                   ("6.5 \\mathrm{~m}", "6.5"), ("\\text{4:30 p.m.}", "4:30 p.m."),
                   ("\\text{(C)}", "(C)"), ("\\text{five}", "5"), ("10{,}000", "10000"),
                   ("10,000", "10000"), ("18 square feet", "18"), ("\\$18.90", "18.9"),
                   ("2:00 PM", "2:00\\text{ p.m.}")],
    "degrees": [("30^\\circ", "30"), ("30^{\\circ}", "30"), ("45°", "45"),
                ("90 degrees", "90")],
    "intervals": [("(1,2]", "(1, 2]"), ("\\left[ -1, 3 \\right)", "[-1,3)"),
                  ("(-\\infty, 0) \\cup (1, \\infty)", "(1,\\infty)\\cup(-\\infty,0)"),
                  ("[\\frac{1}{2}, 1]", "[0.5, 1]")],
    "tuples": [("(1, 2)", "\\left( 1,2 \\right)"), ("(3, \\frac{\\pi}{2})", "(3,\\pi/2)"),
               ("(1,-2,3)", "(1, -2, 3)")],
    "matrices": [("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
                  "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
                 ("\\begin{pmatrix} \\frac{1}{2} \\\\ -1 \\end{pmatrix}",
                  "\\begin{pmatrix} 0.5 \\\\ -1 \\end{pmatrix}")],
    "equations": [("y=2x+1", "y = 1 + 2x"), ("2x+2y=6", "x+y=3"), ("x-y=1", "y-x=-1"),
                  ("x=3", "3"), ("x^2+y^2=4", "y^2 + x^2 - 4 = 0")],
    "sets": [("\\{1,2,3\\}", "\\{3,1,2\\}"), ("1, 2", "2, 1"), ("x=1, x=2", "2, 1"),
             ("1\\pm\\sqrt{2}", "1-\\sqrt{2}, 1+\\sqrt{2}"), ("\\emptyset", "\\varnothing")],
    "multiple_choice": [("B", "B"), ("b", "B"), ("BC", "CB"), ("AD", "DA"), ("(C)", "C"),
                        ("B, D", "DB")],
    "chinese": [("必要不充分条件", "必要不充分条件"), ("9个", "9"), ("12元", "12"),
                ("x=1或x=2", "1, 2"), ("3.5千克", "3.5")],
    "expressions": [("x^2+2x+1", "(x+1)^2"), ("\\sin^2 x+\\cos^2 x", "1"),
                    ("2\\sqrt{2}", "\\sqrt{8}"), ("e^{i\\pi}", "-1"), ("\\log_2 8", "3"),
                    ("\\binom{5}{2}", "10"), ("5!", "120"), ("2^{1009}", "2^{1009}"),
                    ("-i", "\\frac{1}{i}"), ("\\frac{a+b}{2}", "\\frac{b}{2}+\\frac{a}{2}")],
}

NOT_EQUAL = {
    "fractions": [("\\frac{1}{3}", "\\frac{1}{2}"), ("1", "\\frac{4036082}{4036081}")],
    "decimals_percents": [("0.333", "\\frac{1}{3}"), ("100001", "100000"),
                          ("200", "2"), ("0.5", "50")],
    "units_text": [("4", "4t"), ("4", "4x"), ("4 m", "4n")],
    "degrees": [("30", "60^\\circ")],
    "intervals": [("(1,2)", "(1,2]"), ("[1,2]", "(1,2)"), ("(1,3)", "(1,2)")],
    "tuples": [("(1,2)", "(2,1)"), ("(1,2)", "(1,2,3)")],
    "matrices": [("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
                  "\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}"),
                 ("\\begin{pmatrix}1&2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
                 ("2\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}")],
    "equations": [("y=2x+1", "y=2x-1"), ("x+y=4", "x+y=3")],
    "sets": [("\\{1,2\\}", "\\{1,2,3\\}"), ("1, 2", "1, 3")],
    "multiple_choice": [("C", "B"), ("B", "BC"), ("12", "B")],
    "chinese": [("充分不必要条件", "必要不充分条件"), ("8个", "9")],
    "expressions": [("x^2+2x", "(x+1)^2"), ("\\sqrt{2}", "\\frac{1414214}{1000000}"),
                    ("2^{1008}", "2^{1009}"), ("\\sin x", "\\cos x")],
    "junk": [("", "1"), ("hello world", "1"), ("\\frac{1}{0}", "1")],
}


@pytest.mark.parametrize("kind,pred,gold",
                         [(k, p, g) for k, pairs in EQUAL.items() for p, g in pairs])
def test_equivalent_answers_are_equal(kind, pred, gold):
  assert math_equal(pred, gold), (kind, pred, gold)


@pytest.mark.parametrize("kind,pred,gold",
                         [(k, p, g) for k, pairs in NOT_EQUAL.items() for p, g in pairs])
def test_different_answers_are_not_equal(kind, pred, gold):
  assert not math_equal(pred, gold), (kind, pred, gold)


def test_none_is_never_equal():
  assert not math_equal(None, "1")
  assert not math_equal("1", None)


def test_numbers_equal_rules():
  F = grader.Fraction
  assert grader.numbers_equal(F("0.99995"), F(1))
  assert not grader.numbers_equal(F(99999), F(100000), approximate=False)
  assert grader.numbers_equal(F(50), F(1, 2), percent=True)
  assert not grader.numbers_equal(F(50), F(1, 2), percent=False)


# An answer only sympy can settle, and slowly: 3,000,000! is evaluated exactly (about a minute).
SLOW_PRED = "\\frac{(3000000)!}{(2999999)!}"
SLOW_GOLD = "3000000"


def _timed_check():
  start = time.monotonic()
  verdict = math_equal(SLOW_PRED, SLOW_GOLD, timeout=1.0)
  return verdict, time.monotonic() - start


def test_sympy_hard_expression_times_out_cleanly():
  symbolic.worker().equal(["num", "1"], ["num", "1"], timeout=30)   # start the worker first
  verdict, elapsed = _timed_check()
  assert verdict is False
  assert elapsed < 5.0
  # The killed worker is replaced: the next symbolic check works.
  assert symbolic.symbolic_equal(["pow", ["num", "2"], ["num", "3000"]],
                                 ["pow", ["num", "8"], ["num", "1000"]], timeout=30)


def test_timeout_bounds_the_whole_comparison():
  symbolic.worker().equal(["num", "1"], ["num", "1"], timeout=30)
  pred = "\\{" + ", ".join([SLOW_PRED] * 6) + "\\}"
  gold = "\\{" + ", ".join([SLOW_GOLD] * 6) + "\\}"
  start = time.monotonic()
  assert not math_equal(pred, gold, timeout=1.0)
  assert time.monotonic() - start < 5.0


def test_timeout_works_in_threads():
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda _: _timed_check(), range(2)))
  for verdict, elapsed in results:
    assert verdict is False
    assert elapsed < 40.0   # worker start-up (sympy import) + the 1 s timeout


def test_timeout_works_in_worker_processes():
  ctx = multiprocessing.get_context("spawn")   # as reward workers usually start
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
    verdict, elapsed = pool.submit(_timed_check).result(timeout=60)
  assert verdict is False
  assert elapsed < 40.0


def test_grading_in_threads_matches_serial():
  pairs = [(p, g) for pairs in EQUAL.values() for p, g in pairs]
  pairs += [(p, g) for pairs in NOT_EQUAL.values() for p, g in pairs]
  serial = [math_equal(p, g) for p, g in pairs]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    threaded = list(pool.map(lambda pg: math_equal(*pg), pairs))
  assert threaded == serial


def test_sympy_fallback_settles_what_floats_cannot(monkeypatch):
  calls = []
  real = symbolic.symbolic_equal
  monkeypatch.setattr(symbolic, "symbolic_equal",
                      lambda *a, **k: calls.append(a) or real(*a, **k))
  assert math_equal("\\frac{2004!}{2003!}", "2004")
  assert not math_equal("\\frac{9}{2004!}", "\\frac{1}{2004!}")   # both underflow as floats
  assert math_equal("2^{5000}", "4^{2500}")                         # exact integers
  assert not math_equal("2^{5000}+1", "4^{2500}")
  assert len(calls) == 2


def test_equations_without_variables_compare_side_by_side():
  """Two numeric statements are not equal "up to a factor" (college_math golds like these)."""
  assert not math_equal("\\log (1.01)=-2", "\\log (0.01)=-2")
  assert not math_equal("300 \\cos (\\frac{\\pi}{6}) 20=3464.1",
                        "200 \\cos (\\frac{\\pi}{6}) 20=3464.1")
  assert not math_equal("\\sin \\frac{\\pi}{6}=\\frac{1}{2}", "\\sin \\frac{\\pi}{2}=1")  # both true
  assert math_equal("\\log_{10} (0.01)=-2", "\\log_{10} 0.01 = -2")
  assert math_equal("-2 = \\log_{10} (0.01)", "\\log_{10} 0.01 = -2")
  assert math_equal("2x+2y=6", "x+y=3")   # with variables: still up to a factor


def test_values_below_the_absolute_floor_do_not_make_expressions_equal():
  """At the sample points x^{-101} and e^{-40t} are below 1e-12: that is no evidence."""
  assert not math_equal("-200 x^{-101}", "-100 x^{-101}")
  assert not math_equal("-e^{-50 t}(2 \\cos 30 t-86 \\sin 30 t)",
                        "I=-e^{-40 t}(2 \\cos 30 t-86 \\sin 30 t)")
  assert math_equal("-100 x^{-101}", "-\\frac{100}{x^{101}}")
  assert math_equal("e^{-40 t} \\cdot e^{-10 t}", "e^{-50 t}")
  assert math_equal("\\sin^2 x+\\cos^2 x-1", "0")


def test_floor_and_ceiling_are_checked_at_integer_points():
  """Step functions agree at small reals; olympiad golds are floors of integer formulas."""
  assert not math_equal("\\lfloor\\frac{2 n-1}{6}\\rfloor", "\\lfloor\\frac{2 n-1}{5}\\rfloor")
  assert not math_equal("\\lceil \\frac{n}{3} \\rceil", "\\lceil \\frac{n}{4} \\rceil")
  assert not math_equal("\\lfloor\\frac{2 n-1}{6}\\rfloor + n", "\\lfloor\\frac{2 n-1}{5}\\rfloor + n")
  assert math_equal("\\left\\lfloor \\frac{2n-1}{5} \\right\\rfloor", "\\lfloor (2n-1)/5 \\rfloor")
  assert math_equal("\\lfloor \\frac{n}{2} \\rfloor + 1", "\\lfloor \\frac{n+2}{2} \\rfloor")


def test_words_are_not_products_of_variables():
  """A word answer is text: as a product of letters "seat" would equal "east"."""
  assert not math_equal("seat", "east")
  assert not math_equal("\\text{Evenly}", "\\text{Evelyn}")
  assert not math_equal("The height is 600 feet after lift-off",
                        "The height is 500 feet after lift-off.")
  assert math_equal("\\text{east}", "East")
  assert math_equal("abc", "cba")             # three letters are still a product
  assert math_equal("sinx", "\\sin x")        # function names spelled without a backslash
  assert math_equal("\\sqrt{2} \\cdot \\sqrt{2}", "2")


def test_semicolon_separated_blanks_match_in_order():
  """Fill-in golds list one answer per blank with ';' (gaokao cloze, college_math)."""
  assert math_equal("5, 10", "5;10")
  assert math_equal("\\frac{1}{4}, (y-\\frac{1}{2})^{2}", "\\frac{1}{4} ;(y-\\frac{1}{2})^{2}")
  assert math_equal("5; 10", "5;10")
  assert math_equal("a=5; b=0.5", "5;\\frac{1}{2}")
  assert not math_equal("10, 5", "5;10")     # blanks are in order
  assert not math_equal("5", "5;10")
  assert not math_equal("5, 10, 15", "5;10")


def _fast(fn, *args, limit_s=1.0):
  start = time.monotonic()
  out = fn(*args)
  assert time.monotonic() - start < limit_s, (fn.__name__, args[:1])
  return out


def test_huge_exponents_in_scientific_notation_are_not_built():
  """`1e999999999` held a 415 MB integer (minutes); numbers this far apart are not equal."""
  assert not _fast(math_equal, "1e999999999", "1")
  assert not _fast(math_equal, "1", "1e-999999999")
  assert not _fast(math_equal, "1e999999999", "1e999999998")
  assert _fast(math_equal, "1e999999999", "10e999999998")
  assert _fast(math_equal, "1.00001e999999999", "1e999999999")   # relative 1e-4
  assert _fast(math_equal, "50e999999997\\%", "0.5e999999997")   # the percent rule
  assert not _fast(math_equal, "2e999999999", "1e999999999")
  assert not _fast(math_equal, "0e999999999", "1")
  assert _fast(math_equal, "0e999999999", "0")


def test_root_of_huge_index_is_not_checked_by_powering():
  """`\\sqrt[10^{10}]{2}` tried 2**(10**10) to see whether the root was exact."""
  assert not _fast(math_equal, "\\sqrt[10^{10}]{2}", "2")
  assert _fast(math_equal, "\\sqrt[10^{10}]{1}", "1")
  assert _fast(math_equal, "\\sqrt[3]{8}", "2")


def test_scientific_notation_is_a_number_against_an_expression():
  """The LaTeX parser read `-40.699e0` as -40.699*e*0 = 0 and `2e3` as 6e."""
  assert not math_equal("-40.699e0", "0\\times 10^{-2}")
  assert not math_equal("2e3", "6e")
  assert not math_equal("6e", "2e3")
  assert math_equal("2e3", "2\\times 10^{3}")
  assert math_equal("1.5e-2", "\\frac{3}{2} \\cdot 10^{-2}")
  assert math_equal("x = 2e3", "x = 2000")
  assert math_equal("2e", "e+e")   # a number times e is still e's multiple


def test_replacement_worker_starts_right_after_a_timeout():
  """The next check used to wait for a fresh sympy import on top of its own timeout."""
  symbolic.worker().equal(["num", "1"], ["num", "1"], timeout=30)
  assert math_equal(SLOW_PRED, SLOW_GOLD, timeout=0.5) is False
  replacement = symbolic.worker().proc
  assert replacement is not None and replacement.poll() is None   # already importing sympy
  assert symbolic.symbolic_equal(["pow", ["num", "2"], ["num", "3000"]],
                                 ["pow", ["num", "8"], ["num", "1000"]], timeout=30)
  assert symbolic.worker().proc is replacement
