"""`math_equal(pred, gold)`: is a predicted final answer equivalent to the gold answer?

Checks, cheapest first (SPEC, "Inference and evaluation"):
  1. normalised strings equal, case-insensitive;
  2. multiple choice: gold letters A-E against predicted letters (as a set, for "BC");
  3. plain numbers: relative tolerance 1e-4 when either side is written as a decimal (an
     approximation), exact otherwise (1e-4 would accept 100001 for 100000, or 1 for
     4036082/4036081); gold x100 and /100 are accepted only when either side carries a `%`
     (SPEC's percent rule, applied to every number, would accept any answer 100 times off);
  4. structure: matrices cell by cell; unions, sets and bare lists as multisets; answers to
     several blanks (`5;10`, against `5;10` or `5, 10`) in order; tuples and intervals
     element-wise with the same brackets; `\\pm` expands to both signs; equations as
     `lhs - rhs` up to a non-zero factor (without variables: side by side, since any two
     numeric statements are equal up to some factor);
  5. one expression each: exact/complex evaluation at a few fixed points (`numeric`; also at
     integers when a floor or ceiling is involved; points where both sides are within the
     absolute tolerance of zero prove nothing); only when that is inconclusive (overflow,
     huge powers, domain errors, no informative point), sympy in a worker
     process (`symbolic`). `timeout` bounds the whole comparison (all elements of a tuple
     together), so a long list of hard elements cannot stall the caller; running out of
     time counts as not equal.
"""

import fractions
import re
import time

from qmath_jax.evaluation import latex_expr
from qmath_jax.evaluation import normalize
from qmath_jax.evaluation import numeric
from qmath_jax.evaluation import symbolic

Fraction = fractions.Fraction

NUMBER_REL_TOL = 1e-4     # SPEC: numbers within relative 1e-4
EXPRESSION_REL_TOL = 1e-6  # point-wise agreement of expressions with variables
EXACT_REL_TOL = 1e-9       # two exact irrational constants (float evaluation error only)
_MAX_DEPTH = 4
MAX_ITEMS = 64             # longer lists/matrices compare as strings only

_PLAIN_NUMBER = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:e([+-]?\d+))?$", re.IGNORECASE)
# Two plain numbers are compared scaled by the smaller power of ten, so `1e999999999` never
# becomes an integer of a billion digits; a gap of more than this many powers of ten (with
# mantissas of at most 4300 digits, Python's int-parsing limit) means "far apart".
_MAX_EXPONENT_GAP = 10000
_PLAIN_FRACTION = re.compile(r"^([+-]?)\\frac\{(\d+(?:\.\d+)?)\}\{(\d+(?:\.\d+)?)\}$")
_LETTERS = re.compile(r"^[A-E]+$")
_MATRIX = re.compile(r"\\begin\{(?:pmatrix|bmatrix|Bmatrix|vmatrix|matrix|array)\}(?:\{[^}]*\})?"
                     r"(.*?)\\end\{(?:pmatrix|bmatrix|Bmatrix|vmatrix|matrix|array)\}", re.DOTALL)
_RELATIONS = re.compile(r"<|>|\\le(?![a-z])|\\ge(?![a-z])|\\ne(?![a-z])|\\approx")
_ALIASES = {"\\varnothing": "\\emptyset", "{}": "\\emptyset", "\\{\\}": "\\emptyset",
            "infinity": "\\infty", "+\\infty": "\\infty", "oo": "\\infty"}


def _plain_parts(s: str) -> tuple[Fraction, int] | None:
  """`"1.5e-3"` -> (3/2, -3): a plain number as mantissa * 10**exponent; else None."""
  s = s.replace(" ", "").removesuffix("%")
  m = _PLAIN_NUMBER.match(s)
  if m:
    try:
      return Fraction(m.group(1)), int(m.group(2) or 0)
    except (ValueError, ZeroDivisionError):   # ValueError: more than 4300 digits
      return None
  m = _PLAIN_FRACTION.match(s)
  if m and Fraction(m.group(3)) != 0:
    value = Fraction(m.group(2)) / Fraction(m.group(3))
    return (-value if m.group(1) == "-" else value), 0
  return None


def plain_number(s: str) -> Fraction | None:
  """`"-12"`, `"3.50"`, `"1e3"`, `"\\frac{1}{2}"`, `"50%"` -> Fraction; else None.

  None also for exponents beyond 10**10000 (`1e999999999`), which are not built.
  """
  parts = _plain_parts(s)
  if parts is None or abs(parts[1]) > _MAX_EXPONENT_GAP:
    return None
  return parts[0] * Fraction(10) ** parts[1]


def _plain_numbers_equal(pred: tuple[Fraction, int], gold: tuple[Fraction, int],
                         approximate: bool, percent: bool) -> bool:
  """`numbers_equal` of two `_plain_parts`, both divided by the smaller power of ten.

  Equality, relative closeness and the x100 / 100 percent targets are all unchanged by a
  common scale.
  """
  (pm, pe), (gm, ge) = pred, gold
  low = min(pe, ge)
  if max(pe, ge) - low > _MAX_EXPONENT_GAP:
    return pm == gm == 0
  return numbers_equal(pm * Fraction(10) ** (pe - low), gm * Fraction(10) ** (ge - low),
                       approximate, percent)


def numbers_equal(pred: Fraction, gold: Fraction, approximate: bool = True,
                  percent: bool = False) -> bool:
  """Relative 1e-4 when `approximate` (a decimal is involved), else exact; percent forms."""
  targets = (gold, gold * 100, gold / 100) if percent else (gold,)
  for target in targets:
    if pred == target or (approximate and numeric.close(pred, target, NUMBER_REL_TOL)):
      return True
  return False


def _approximate(*texts: str) -> bool:
  return any(re.search(r"\d\.\d", t) for t in texts)


def split_top_level(s: str, sep: str) -> list[str]:
  """Splits on `sep` outside (), [], {} and \\{ \\}."""
  if sep not in s:
    return [s.strip()]
  parts, depth, start = [], 0, 0
  # One regex scan over the brackets and separators (a Python loop per character took 0.2 s
  # for a 100k-character answer).
  for m in re.finditer(r"\\[{}]|[(\[{)\]}]|" + re.escape(sep), s):
    tok = m.group()
    if tok in ("\\{", "(", "[", "{"):
      depth += 1
    elif tok in ("\\}", ")", "]", "}"):
      depth -= 1
    elif depth == 0:
      parts.append(s[start:m.start()])
      start = m.end()
  parts.append(s[start:])
  return [p.strip() for p in parts]


def _outer_brackets(s: str) -> tuple[str, str, str] | None:
  """(open, inner, close) when one bracket pair encloses the whole string."""
  for open_tok in ("\\{", "(", "["):
    if s.startswith(open_tok):
      break
  else:
    return None
  close_tok = s[-2:] if s.endswith("\\}") else s[-1:]
  if close_tok not in (")", "]", "\\}"):
    return None
  inner = s[len(open_tok):len(s) - len(close_tok)]
  depth = 0
  for ch in inner.replace("\\{", "(").replace("\\}", ")"):
    depth += (ch in "([{") - (ch in ")]}")
    if depth < 0:
      return None
  return (open_tok, inner, close_tok) if depth == 0 else None


def _expand_pm(items: list[str]) -> list[str]:
  out = []
  for item in items:
    if item.count("\\pm") == 1:
      out += [item.replace("\\pm", "+"), item.replace("\\pm", "-")]
    elif item.count("\\mp") == 1:
      out += [item.replace("\\mp", "-"), item.replace("\\mp", "+")]
    else:
      out.append(item)
  return out


def _matrix_cells(s: str) -> list[list[str]] | None:
  m = _MATRIX.fullmatch(s.strip())   # a matrix times anything else is not just a matrix
  if not m:
    return None
  rows = [r for r in (row.strip() for row in m.group(1).split("\\\\")) if r]
  return [[c.strip() for c in row.split("&")] for row in rows]


def _match_unordered(preds: list[str], golds: list[str], deadline: float, depth: int) -> bool:
  if len(preds) != len(golds) or len(golds) > MAX_ITEMS:
    return False
  unused = list(preds)
  for g in golds:
    for k, p in enumerate(unused):
      if _equal(p, g, deadline, depth + 1):
        del unused[k]
        break
    else:
      return False
  return True


def _match_ordered(preds: list[str], golds: list[str], deadline: float, depth: int) -> bool:
  return len(preds) == len(golds) <= MAX_ITEMS and all(
      _equal(p, g, deadline, depth + 1) for p, g in zip(preds, golds))


def _symbolic(a, b, deadline: float, up_to_sign: bool = False) -> bool:
  left = deadline - time.monotonic()
  if left <= 0:
    return False   # the time for this whole comparison is spent
  return symbolic.symbolic_equal(latex_expr.to_json(a), latex_expr.to_json(b), left,
                                 up_to_sign=up_to_sign)


def _constants_equal(a, b, approximate: bool, deadline: float) -> bool:
  """Two trees without variables: exact rationals, else floats, else sympy."""
  try:
    va, vb = numeric.evaluate(a, {}), numeric.evaluate(b, {})
  except numeric.Undefined:
    return False
  except (numeric.Undecided, OverflowError):
    return _symbolic(a, b, deadline)
  if isinstance(va, Fraction) and isinstance(vb, Fraction):
    return numbers_equal(va, vb, approximate)
  return numeric.close(va, vb, NUMBER_REL_TOL if approximate else EXACT_REL_TOL)


def _informative(pairs) -> bool:
  """Whether some point tells the two sides apart from zero (or both are exactly zero).

  `numeric.close` calls any two values within 1e-12 of zero equal (float error); a comparison
  in which every point is like that (x^{-101}, e^{-40t} at the sample points) proves nothing.
  """
  return any(x == y or max(abs(x), abs(y)) > 1e-12 for x, y in pairs)


def _parse(text: str):
  """`latex_expr.parse_latex`, except that a plain number is read as one: in the LaTeX parser
  `2e3` is 2*e*3 = 6e and `-40.699e0` is zero, while `plain_number` reads 2000 and -40.699."""
  parts = _plain_parts(text)
  if parts is None:
    return latex_expr.parse_latex(text)
  mantissa, exponent = parts
  if not exponent:
    return ("num", mantissa)
  return ("mul", (("num", mantissa), ("pow", ("num", Fraction(10)), ("num", Fraction(exponent)))))


def _expressions_equal(pred: str, gold: str, deadline: float, equation: bool = False) -> bool:
  """One expression each (or `lhs - rhs` of equations, up to a non-zero factor).

  Equations without variables are statements about numbers: their sides are compared in
  order (or both swapped), since any two such `lhs - rhs` are equal up to some factor.
  """
  approximate = _approximate(pred, gold)
  try:
    if equation:
      sides = [_parse(t) for t in (*pred.split("="), *gold.split("="))]
      pl, pr, gl, gr = sides
      a = ("add", (pl, ("neg", pr)))
      b = ("add", (gl, ("neg", gr)))
    else:
      a = _parse(pred.removesuffix("%"))
      b = _parse(gold.removesuffix("%"))
  except latex_expr.LatexError:
    return False
  names = latex_expr.free_symbols(a) | latex_expr.free_symbols(b)
  if not names:
    if not equation:
      return _constants_equal(a, b, approximate, deadline)
    return ((_constants_equal(pl, gl, approximate, deadline) and
             _constants_equal(pr, gr, approximate, deadline)) or
            (_constants_equal(pl, gr, approximate, deadline) and
             _constants_equal(pr, gl, approximate, deadline)))
  try:
    points = numeric.sample_points(names, integers=numeric.has_steps(a) or numeric.has_steps(b))
    pairs = [(numeric.evaluate(a, env), numeric.evaluate(b, env)) for env in points]
    pairs = [(complex(x), complex(y)) for x, y in pairs]
    if not _informative(pairs):
      raise numeric.Undecided("every point is within the absolute tolerance of zero")
  except numeric.Undefined:
    return False
  except (numeric.Undecided, OverflowError):
    return _symbolic(a, b, deadline, up_to_sign=equation)
  if not equation:
    return all(numeric.close(x, y, EXPRESSION_REL_TOL) for x, y in pairs)
  ratio = None
  for x, y in pairs:
    if abs(y) < 1e-12 or abs(x) < 1e-12:
      if not (abs(y) < 1e-12 and abs(x) < 1e-12):
        return False
      continue
    if ratio is None:
      ratio = x / y
    elif not numeric.close(x / y, ratio, EXPRESSION_REL_TOL):
      return False
  return True


def _equal(pred: str, gold: str, deadline: float, depth: int = 0) -> bool:
  pred, gold = pred.strip(), gold.strip()
  if depth:
    pred, gold = normalize.normalize_answer(pred), normalize.normalize_answer(gold)
  cp, cg = normalize.compact(pred), normalize.compact(gold)
  cp, cg = _ALIASES.get(cp, cp), _ALIASES.get(cg, cg)
  if not cp or not cg:
    return False
  if cp == cg:
    return True
  if depth > _MAX_DEPTH:
    return False
  # Multiple choice.
  if _LETTERS.match(gold.replace(" ", "")):
    letters = re.sub(r"[\s,().:]", "", pred)
    return bool(_LETTERS.match(letters)) and set(letters) == set(gold.replace(" ", ""))
  # Plain numbers.
  pn, gn = _plain_parts(pred), _plain_parts(gold)
  if pn is not None and gn is not None:
    return _plain_numbers_equal(pn, gn, _approximate(pred, gold), "%" in pred + gold)
  # Matrices.
  pm, gm = _matrix_cells(pred), _matrix_cells(gold)
  if pm is not None or gm is not None:
    if pm is None or gm is None or [len(r) for r in pm] != [len(r) for r in gm]:
      return False
    return _match_ordered([c for r in pm for c in r], [c for r in gm for c in r], deadline, depth)
  # Unions of intervals or sets.
  pu, gu = split_top_level(pred, "\\cup"), split_top_level(gold, "\\cup")
  if len(pu) > 1 or len(gu) > 1:
    return _match_unordered(pu, gu, deadline, depth)
  # Answers to several blanks, separated by ';' on either side: compared in order.
  ps, gs = split_top_level(pred, ";"), split_top_level(gold, ";")
  if len(ps) > 1 or len(gs) > 1:
    ps = ps if len(ps) > 1 else split_top_level(pred, ",")
    gs = gs if len(gs) > 1 else split_top_level(gold, ",")
    return _match_ordered(ps, gs, deadline, depth)
  # Sequences: sets, tuples, intervals, bare lists.
  pb, gb = _outer_brackets(pred), _outer_brackets(gold)
  p_items = split_top_level(pb[1] if pb else pred, ",")
  g_items = split_top_level(gb[1] if gb else gold, ",")
  if len(p_items) > 1 or len(g_items) > 1 or "\\pm" in pred + gold or "\\mp" in pred + gold:
    p_items, g_items = _expand_pm(p_items), _expand_pm(g_items)
    if len(p_items) == 1 and len(g_items) == 1:
      return _equal(p_items[0], g_items[0], deadline, depth + 1)
    p_set = pb is None or pb[0] == "\\{"
    g_set = gb is None or gb[0] == "\\{"
    if p_set or g_set:
      return _match_unordered(p_items, g_items, deadline, depth)
    if (pb[0], pb[2]) != (gb[0], gb[2]):
      return False
    return _match_ordered(p_items, g_items, deadline, depth)
  if pb and gb and (pb[0], pb[2]) == (gb[0], gb[2]):
    return _equal(pb[1], gb[1], deadline, depth + 1)
  # Relations other than '=' compare as strings only (done above).
  if _RELATIONS.search(pred) or _RELATIONS.search(gold):
    return False
  if pred.count("=") == 1 and gold.count("=") == 1:
    return _expressions_equal(pred, gold, deadline, equation=True)
  if "=" in pred or "=" in gold:
    return False
  return _expressions_equal(pred, gold, deadline)


def math_equal(pred, gold, timeout: float = 3.0) -> bool:
  """True when `pred` is mathematically equivalent to `gold` (both raw or normalised strings).

  Pure Python and thread-safe; the sympy fallback runs in a per-thread worker process, and a
  comparison that takes longer than `timeout` seconds in sympy returns False.
  """
  if pred is None or gold is None:
    return False
  pred = normalize.normalize_answer(str(pred))
  gold = normalize.normalize_answer(str(gold))
  try:
    return _equal(pred, gold, time.monotonic() + timeout)
  except (ArithmeticError, ValueError, RecursionError, numeric.Undecided, numeric.Undefined):
    return False   # an answer the grader cannot read is not a correct answer
