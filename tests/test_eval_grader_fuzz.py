"""Seeded fuzzing of extract_answer and math_equal with hostile and degenerate model output.

An RL policy writes anything: unbalanced braces, exponent towers, 100k-character answers,
control characters, lone surrogates. Properties checked on random mixtures of such pieces:
the functions never raise and return a str / a bool; the in-process path (normalisation,
parsing, exact and float evaluation) stays fast and small, so only the killable sympy worker
ever runs up to the timeout; a whole call (sympy included) ends near its timeout;
`math_equal` is symmetric where the SPEC rules are (not for multiple-choice golds); an
extracted answer equals itself; one number written in different forms (0.5, 1/2,
\\frac{1}{2}, 50%, 5e-1, ...) matches itself in every form, and a different number does not.

The default run checks a few hundred cases with the sympy fallback stubbed out (the
in-process path is the part no timeout can stop); `pytest -m slow` runs a few thousand with
the real sympy worker.
"""

import decimal
import fractions
import random
import time
import tracemalloc

import pytest

from qmath_jax.evaluation import extract
from qmath_jax.evaluation import grader
from qmath_jax.evaluation import symbolic

Fraction = fractions.Fraction

SEED = 20261129
IN_PROCESS_BUDGET_S = 0.5    # one call without sympy, on a busy machine
TRACING_SLOWDOWN = 3.0       # tracemalloc's cost, taken off the time of a traced call
TRACE_EVERY = 4              # memory is traced on one case in TRACE_EVERY (tracing is slow)
MAX_TRACED_BYTES = 64 << 20  # no 10^(10^10) integer, no quadratic copies

FRAGMENTS = (
    "\\frac{", "}{", "}", "{", "\\dfrac12", "\\sqrt{", "\\sqrt[", "]", "(", ")", "[", "\\{",
    "\\}", "\\left(", "\\right)", "\\left[", "\\right]", "^", "_", "!", "=", ",", ";", "+", "-",
    "*", "/", "|", "&", "\\\\", "\\cdot", "\\times", "\\div", "\\pm", "\\mp", "\\cup", "\\le",
    "\\infty", "-\\infty", "\\pi", "e", "i", "x", "y", "n", "\\theta", "\\sin", "\\cos",
    "\\log_", "\\ln", "\\binom{", "\\lfloor", "\\rfloor", "\\lceil", "\\rceil", "\\text{",
    "\\mathrm{", "\\boxed{", "\\fbox{", "\\overline{", "\\begin{pmatrix}", "\\end{pmatrix}",
    "\\begin{array}{cc}", "\\end{array}", "%", "\\%", "^\\circ", "°", "$", "\\$", "\\!", "\\,",
    "~", "\\qquad", " ", "  ", "\n", "\t", ".", "0", "1", "2", "3", "7", "9", "12", "0.5",
    ".25", "3.50", "1,000", "10{,}000", "1e5", "2.5E-3", "1e999999999", "1e-999999999",
    "10^{10^{10}}", "9^{9^{9}}", "9**9**9", "2^{2^{2^{2^{2}}}}", "(10^{10})!", "1000000!",
    "\\sqrt[10^{10}]{2}", "\\binom{10^{10}}{5}", "e^{10^{10}}", "10^{-10^{10}}",
    "0.1\\overline{6}", "−", "–", "－", "∞", "π", "√", "×", "÷", "≤", "，", "（", "）",
    "答案是", "个", "元", "the answer is ", "The final answer is ", "answer: ", "units",
    " dollars", "\\text{ cm}", " m", "or", " and ", "或", "A", "B", "C", "(D)", "E",
    "\x00", "\x01", "\x1b[31m", "\x7f", "\u200b", "\ufeff", "\ud800", "\udfff", "😀", "🙂",
    "中文", "∑", "\\u0000", "\\", "\\\\boxed{", "<|im_end|>", "```", "\\mathbb{R}",
    "\\emptyset", "\\varnothing", "\\overline", "p.m.", "x=", "y =", "\\in", "0^0", "0^{-1}",
)


def _number_text(rng: random.Random) -> str:
  kind = rng.randrange(6)
  if kind == 0:
    return str(rng.randint(-10**6, 10**6))
  if kind == 1:
    return f"{rng.uniform(-1e3, 1e3):.{rng.randint(0, 6)}f}"
  if kind == 2:
    return f"{rng.uniform(1, 10):.3f}e{rng.randint(-400, 400)}"
  if kind == 3:
    return "9" * rng.choice((20, 400, 5000))
  if kind == 4:
    return f"{rng.randint(1, 99)}/{rng.randint(0, 99)}"
  return rng.choice(("1e999999999", "1e-999999999", "1E99999", "0.0", "-0", "00012"))


def _nested(rng: random.Random) -> str:
  depth = rng.choice((5, 50, 300, 2000))
  kind = rng.randrange(5)
  if kind == 0:
    return "\\frac{" * depth + "1" + "}{2}" * depth
  if kind == 1:
    return "(" * depth + "x" + ")" * depth
  if kind == 2:
    return "^".join(["2"] * min(depth, 400))
  if kind == 3:
    return "\\sqrt{" * depth + "2" + "}" * depth
  return "{" * depth   # never closed


def _matrix(rng: random.Random) -> str:
  rows = [" & ".join(rng.choice(("1", "x", "\\frac{1}{2}", "", "&"))
                     for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(0, 4))]
  return "\\begin{pmatrix}" + " \\\\ ".join(rows) + "\\end{pmatrix}"


def random_answer(rng: random.Random) -> str:
  """A short hostile answer string (before normalisation)."""
  parts = []
  for _ in range(rng.randint(1, 8)):
    roll = rng.random()
    if roll < 0.55:
      parts.append(rng.choice(FRAGMENTS))
    elif roll < 0.75:
      parts.append(_number_text(rng))
    elif roll < 0.85:
      parts.append(_nested(rng))
    elif roll < 0.92:
      parts.append(_matrix(rng))
    else:
      low = rng.choice(("(-\\infty", "[0", "(-1", "(-∞"))
      high = rng.choice(("\\infty)", "1]", "oo)", "+\\infty)"))
      parts.append(f"{low}, {high}")
  return "".join(parts)


def random_response(rng: random.Random, long_rate: float = 0.1) -> str:
  """A model response: answers mixed into prose; a piece is 100k characters at `long_rate`."""
  pieces = []
  for _ in range(rng.randint(1, 6)):
    if rng.random() < long_rate:
      unit = rng.choice(("the answer is ", "\\boxed{", "1", "9" * 10, "{", "\\frac{", " ",
                         "a" * 7 + " ", "(A) ", "x" * 3, "\\left(", "\\text{ cm}", "\\,"))
      pieces.append(unit * (100_000 // len(unit)))
      continue
    roll = rng.random()
    if roll < 0.35:
      pieces.append("\\boxed{" + random_answer(rng) + rng.choice(("}", "", "}}")))
    elif roll < 0.5:
      pieces.append(rng.choice(("the answer is ", "final answer is ", "答案是", "Answer is: "))
                    + random_answer(rng) + rng.choice((".", "。", "\n", "")))
    else:
      pieces.append(random_answer(rng))
  return rng.choice((" ", "\n", "")).join(pieces)


def _decimal(value: Fraction) -> str:
  """A terminating fraction written out in full: 7/8 -> "0.875", -3 -> "-3"."""
  digits = decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator)
  text = f"{digits:f}"
  return text.rstrip("0").rstrip(".") if "." in text else text


def number_forms(value: Fraction) -> list[str]:
  """The ways a model may write `value` (a fraction with a terminating decimal or not)."""
  num, den = value.numerator, value.denominator
  sign = "-" if num < 0 else ""
  a = abs(num)
  forms = [f"{sign}\\frac{{{a}}}{{{den}}}", f"{sign}\\dfrac{{{a}}}{{{den}}}",
           f"{num}/{den}", f"\\frac{{{num}}}{{{den}}}", f"${sign}\\tfrac{{{a}}}{{{den}}}$",
           f"\\boxed{{{sign}\\frac{{{a}}}{{{den}}}}}", f"−\\frac{{{a}}}{{{den}}}" if sign else
           f"\\frac{{{a}}}{{{den}}}"]
  if den == 1:
    forms += [str(num), f"{num}.0", f"{num}.00", f"{num}\\text{{ cm}}", f"{num} dollars",
              f"{sign}{a:,}", f"{sign}{a:,}".replace(",", "{,}")]
  d = den
  for p in (2, 5):
    while d % p == 0:
      d //= p
  if d == 1:   # a terminating decimal
    text = _decimal(abs(value))
    decimal = sign + text
    forms += [decimal, f"{decimal}0" if "." in decimal else f"{decimal}.0", f"{decimal}e0", f"{sign}{text}".replace("0.", ".", 1)
              if text.startswith("0.") else decimal, f"x = {decimal}"]
    mantissa = _decimal(abs(value) * 100)
    forms.append(f"{sign}{mantissa}e-2")
    forms.append(f"{sign}{mantissa}\\times 10^{{-2}}")
  return forms


def percent_forms(value: Fraction) -> list[tuple[str, str]]:
  """(percent, plain) pairs the SPEC's percent rule accepts (gold x100 and /100)."""
  percent, plain = _decimal(value * 100), _decimal(value)
  return [(f"{percent}\\%", plain), (f"{percent}%", plain), (plain, f"{percent}\\%"),
          (f"\\boxed{{{percent}\\%}}", plain)]


def _answer_of(form: str) -> str:
  """A boxed form through extraction; the others as a final answer (a bare `\\frac{1}{7}`
  in a response extracts as its last number, 7)."""
  return extract.extract_answer(form) if form.startswith("\\boxed") else form


def _is_letter_answer(s: str) -> bool:
  return bool(s) and all(ch in "ABCDEabcde ,()." for ch in s)


class _Checker:
  """Runs the grader under a per-call time budget and a traced-memory bound."""

  def __init__(self, budget_s: float, timeout: float):
    self.budget_s = budget_s
    self.timeout = timeout
    self.sympy_calls = 0

  def _timed(self, fn, *args, **kwargs):
    tracing = tracemalloc.is_tracing()
    if tracing:
      tracemalloc.reset_peak()
    start = time.monotonic()
    out = fn(*args, **kwargs)
    elapsed = time.monotonic() - start
    if tracing:
      peak = tracemalloc.get_traced_memory()[1]
      assert peak < MAX_TRACED_BYTES, (fn.__name__, str(args)[:300], peak)
      elapsed /= TRACING_SLOWDOWN
    return out, elapsed

  def extract(self, text: str, data_name: str = "math", choice=None) -> str:
    out, elapsed = self._timed(extract.extract_answer, text, data_name, choice=choice)
    assert isinstance(out, str), (text[:200], out)
    assert elapsed < self.budget_s, ("extract_answer", text[:200], len(text), elapsed)
    return out

  def equal(self, pred: str, gold: str) -> tuple[bool, float]:
    out, elapsed = self._timed(grader.math_equal, pred, gold, timeout=self.timeout)
    assert isinstance(out, bool), (pred[:200], gold[:200], out)
    assert elapsed < self.budget_s, ("math_equal", pred[:200], gold[:200], elapsed)
    return out, elapsed


def run_fuzz(num_cases: int, checker: _Checker, seed: int = SEED,
             long_rate: float = 0.1) -> None:
  rng = random.Random(seed)
  for case in range(num_cases):
    if case % TRACE_EVERY == 0:
      tracemalloc.start()
    try:
      _check_case(case, rng, checker, long_rate)
    finally:
      tracemalloc.stop()


def _check_case(case: int, rng: random.Random, checker: _Checker, long_rate: float) -> None:
  """One fuzz case: a response, its extraction, a random pair, and a number in two forms."""
  text = random_response(rng, long_rate)
  answer = checker.extract(text)
  for data_name, choice in (("aqua", None), ("gaokao2024_I", True)):
    checker.extract(text[-2000:] if case % 2 else text, data_name, choice)
  if answer:
    same, _ = checker.equal(answer, answer)
    assert same, ("an extracted answer must equal itself", text[:300], answer[:300])
  pred, gold = random_answer(rng), rng.choice((random_answer(rng), answer, text[:500]))
  forward, t1 = checker.equal(pred, gold)
  backward, t2 = checker.equal(gold, pred)
  symmetric_rules = not (_is_letter_answer(grader.normalize.normalize_answer(pred)) or
                         _is_letter_answer(grader.normalize.normalize_answer(gold)))
  settled = max(t1, t2) < checker.timeout / 2   # neither direction ran out of time
  if symmetric_rules and settled:
    assert forward == backward, ("math_equal is not symmetric", pred, gold, forward)
  # One number in its different forms.
  value = Fraction(rng.randint(-10**5, 10**5), rng.choice((1, 2, 3, 4, 7, 8, 20, 125, 1000)))
  forms = number_forms(value)
  first, other = rng.sample(forms, 2)
  for a, b in ((first, other), (other, first)):
    got, _ = checker.equal(_answer_of(a), b)
    assert got, ("one number in two forms", value, a, b)
  wrong = value + rng.choice((1, -1, Fraction(1, 2))) * max(1, abs(value))
  got, _ = checker.equal(first, rng.choice(number_forms(wrong)))
  assert not got, ("different numbers", value, wrong, first)
  share = Fraction(rng.randint(1, 10**5), rng.choice((8, 100, 1000, 10**4)))
  percent, plain = rng.choice(percent_forms(share))
  got, _ = checker.equal(_answer_of(percent), plain)
  assert got, ("percent", share, percent, plain)


def test_fuzz_in_process_path(monkeypatch):
  """A few hundred cases; the sympy fallback answers "not equal" at once."""
  checker = _Checker(IN_PROCESS_BUDGET_S, timeout=3.0)

  def no_sympy(*args, **kwargs):
    del args, kwargs
    checker.sympy_calls += 1
    return False

  monkeypatch.setattr(symbolic, "symbolic_equal", no_sympy)
  start = time.monotonic()
  run_fuzz(250, checker, long_rate=0.01)
  assert time.monotonic() - start < 30.0


@pytest.mark.slow
def test_fuzz_with_sympy():
  """Thousands of cases with the real worker: every call ends near its timeout."""
  symbolic.worker().equal(["num", "1"], ["num", "1"], timeout=60)   # start-up is not a check
  timeout = 1.0
  checker = _Checker(timeout + 1.5, timeout=timeout)
  run_fuzz(3000, checker, seed=SEED + 1)


@pytest.mark.slow
def test_repeated_fragments_stay_linear(monkeypatch):
  """Every fragment repeated to 20k characters, bare and inside a number, box or phrase.

  Random mixtures rarely repeat one piece long enough to show a regex that retries from every
  position (quadratic): whitespace runs, unclosed boxes and repeated units each did.
  """
  monkeypatch.setattr(symbolic, "symbolic_equal", lambda *args, **kwargs: False)
  checker = _Checker(1.0, timeout=3.0)
  for fragment in sorted(set(FRAGMENTS)):
    for wrap in ("{}", "1{}1", "\\boxed{{{}", "the answer is {}"):
      text = wrap.format(fragment * max(1, 20_000 // len(fragment)))
      grader.normalize.normalize_answer.cache_clear()
      checker.extract(text)
      checker.extract(text, "aqua")
      checker.equal(text, text + "1")
