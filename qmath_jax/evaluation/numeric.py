"""Fast numeric evaluation of `latex_expr` trees: exact rationals where possible, else complex.

Two trees are compared by evaluating them at the same few pseudo-random points (fixed seed, so
the same inputs always give the same verdict). A tree whose evaluation is too big or
unsupported raises `Undecided`, and the grader then asks sympy.
"""

import cmath
import fractions
import math
import random

Fraction = fractions.Fraction

_MAX_EXACT_BITS = 20000     # larger exact intermediate results are left to sympy
_MAX_FACTORIAL = 300
_FLOAT_MAX = Fraction(10) ** 300
NUM_POINTS = 3
NUM_INTEGER_POINTS = 6
_POINT_SEED = 20261128


class Undecided(Exception):
  """Evaluation cannot settle the question quickly (overflow, domain, unsupported)."""


class Undefined(Exception):
  """The value does not exist (division by zero, 0 to a negative power): equal to nothing."""


def _as_complex(v) -> complex:
  if isinstance(v, complex):
    return v
  try:
    return complex(v)
  except OverflowError as err:
    raise Undecided("too large for a float") from err


def _bits(v: Fraction) -> int:
  return v.numerator.bit_length() + v.denominator.bit_length()


def _pow(base, exp):
  if isinstance(base, Fraction) and isinstance(exp, Fraction):
    if exp.denominator == 1:
      e = exp.numerator
      if base == 0 and e < 0:
        raise Undefined("0 to a negative power")
      if _bits(base) * abs(e) > _MAX_EXACT_BITS:
        raise Undecided("exact power too large")
      return base ** e
    if base >= 0:   # exact root when it is one: 8^(1/3), (4/9)^(1/2)
      num = _int_root(base.numerator, exp.denominator)
      den = _int_root(base.denominator, exp.denominator)
      if num is not None and den is not None:
        return _pow(Fraction(num, den), Fraction(exp.numerator))
  b, e = _as_complex(base), _as_complex(exp)
  if b == 0:
    if e.real > 0:
      return Fraction(0)
    raise Undecided("0 to a non-positive power")
  try:
    out = cmath.exp(e * cmath.log(b))
  except OverflowError as err:
    raise Undecided("overflow") from err
  if not (math.isfinite(out.real) and math.isfinite(out.imag)):
    raise Undecided("overflow")
  return out


def _int_root(n: int, k: int) -> int | None:
  if n < 0 or n.bit_length() > 4000:
    return None
  r = round(n ** (1.0 / k)) if n.bit_length() < 1000 else None
  if r is None:
    return None
  for c in (r - 1, r, r + 1):
    if c > 1 and k >= n.bit_length():
      continue   # c**k > n; computing it would build a k-bit integer (k can be 10**10)
    if c >= 0 and c ** k == n:
      return c
  return None


_CMATH = {
    "sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan, "arcsin": cmath.asin,
    "arccos": cmath.acos, "arctan": cmath.atan, "sinh": cmath.sinh, "cosh": cmath.cosh,
    "tanh": cmath.tanh, "exp": cmath.exp, "ln": cmath.log,
    "sec": lambda x: 1 / cmath.cos(x), "csc": lambda x: 1 / cmath.sin(x),
    "cot": lambda x: 1 / cmath.tan(x),
}


def _real(v) -> float:
  v = _as_complex(v)
  if abs(v.imag) > 1e-12 * max(1.0, abs(v.real)):
    raise Undecided("complex argument to a real function")
  return v.real


def _fn(name: str, args):
  if name == "abs":
    (x,) = args
    return abs(x) if isinstance(x, Fraction) else complex(abs(x))
  if name in ("floor", "ceil"):
    x = args[0] if isinstance(args[0], Fraction) else _real(args[0])
    return Fraction(math.floor(x) if name == "floor" else math.ceil(x))
  if name == "binom":
    n, k = args
    if all(isinstance(a, Fraction) and a.denominator == 1 for a in (n, k)) and 0 <= n <= 2000:
      return Fraction(math.comb(int(n), int(k))) if k >= 0 else Fraction(0)
    raise Undecided("binomial of non-integers")
  (x,) = args
  if name == "ln" and isinstance(x, Fraction) and x == 1:
    return Fraction(0)
  if name in ("sin", "tan", "arcsin", "arctan", "sinh", "tanh") and isinstance(x, Fraction) \
      and x == 0:
    return Fraction(0)
  if name in ("cos", "exp", "cosh") and isinstance(x, Fraction) and x == 0:
    return Fraction(1)
  try:
    return complex(_CMATH[name](_as_complex(x)))
  except (ValueError, ZeroDivisionError, OverflowError) as err:
    raise Undecided(f"{name} domain") from err


def evaluate(node, env: dict):
  """Value of a tree: a Fraction when exact, else a complex. Raises Undecided."""
  kind = node[0]
  if kind == "num":
    return node[1]
  if kind == "sym":
    return env[node[1]]
  if kind == "const":
    name = node[1]
    if name == "inf":
      raise Undecided("infinity")
    return {"pi": complex(math.pi), "e": complex(math.e), "i": 1j}[name]
  if kind == "neg":
    return -evaluate(node[1], env)
  if kind == "add":
    values = [evaluate(c, env) for c in node[1]]
    if all(isinstance(v, Fraction) for v in values):
      return sum(values, Fraction(0))
    return sum(_as_complex(v) for v in values)
  if kind == "mul":
    out = Fraction(1)
    for child in node[1]:
      v = evaluate(child, env)
      if isinstance(out, Fraction) and isinstance(v, Fraction):
        if _bits(out) + _bits(v) > _MAX_EXACT_BITS:
          raise Undecided("exact product too large")
        out = out * v
      else:
        out = _as_complex(out) * _as_complex(v)
    return out
  if kind == "div":
    num, den = evaluate(node[1], env), evaluate(node[2], env)
    if den == 0:
      raise Undefined("division by zero")
    if isinstance(num, Fraction) and isinstance(den, Fraction):
      return num / den
    return _as_complex(num) / _as_complex(den)
  if kind == "pow":
    return _pow(evaluate(node[1], env), evaluate(node[2], env))
  if kind == "fact":
    v = evaluate(node[1], env)
    if isinstance(v, Fraction) and v.denominator == 1 and 0 <= v <= _MAX_FACTORIAL:
      return Fraction(math.factorial(int(v)))
    raise Undecided("factorial of a large or non-integer value")
  if kind == "fn":
    return _fn(node[1], [evaluate(a, env) for a in node[2]])
  raise Undecided(f"unknown node {kind}")


def close(a, b, rel_tol: float) -> bool:
  """|a - b| <= rel_tol * max(|a|, |b|), or both within 1e-12 of zero."""
  if isinstance(a, Fraction) and isinstance(b, Fraction):
    if a == b:
      return True
    return abs(a - b) <= Fraction(rel_tol) * max(abs(a), abs(b))
  huge = [isinstance(v, Fraction) and abs(v) > _FLOAT_MAX for v in (a, b)]
  if any(huge):
    if all(huge):
      raise Undecided("both beyond float range")
    return False   # an exact value beyond float range cannot equal a finite float
  a, b = _as_complex(a), _as_complex(b)
  scale = max(abs(a), abs(b))
  return abs(a - b) <= max(rel_tol * scale, 1e-12)


def has_steps(node) -> bool:
  """Whether a tree contains a floor or ceiling (constant between integers)."""
  if not isinstance(node, (tuple, list)):
    return False
  if len(node) > 1 and node[0] == "fn" and node[1] in ("floor", "ceil"):
    return True
  return any(has_steps(child) for child in node)


def sample_points(names, integers: bool = False) -> list[dict]:
  """NUM_POINTS environments assigning each name a value in [0.5, 2.5] (deterministic).

  With `integers`, also NUM_INTEGER_POINTS environments of exact integers in [3, 60]: a step
  function (floor, ceiling) is constant on [0.5, 2.5], so `\\lfloor (2n-1)/5 \\rfloor` and
  `\\lfloor (2n-1)/6 \\rfloor` agree there.
  """
  names = sorted(names)
  rng = random.Random(_POINT_SEED)
  points = [{n: complex(0.5 + 2 * rng.random()) for n in names} for _ in range(NUM_POINTS)]
  if integers:
    points += [{n: Fraction(rng.randint(3, 60)) for n in names}
               for _ in range(NUM_INTEGER_POINTS)]
  return points
