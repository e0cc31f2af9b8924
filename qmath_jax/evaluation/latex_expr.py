"""A small LaTeX math parser: one expression -> a tuple tree the grader can evaluate.

Covers what final answers are made of: numbers, letters (with subscripts), Greek letters,
`+ - * / ^ !`, `\\cdot \\times \\div`, implicit products (`2x`, `3\\sqrt{2}`, `x(y+1)`),
`\\frac`, `\\sqrt[n]{}`, `\\binom`, `| |`, `\\lfloor \\rfloor`, `\\lceil \\rceil`, the
elementary functions (`\\sin^2 x`, `\\log_2 8`, `\\ln x`, `e^{x}`), `\\pi`, `e`, `i`, `\\infty`.
Anything else raises `LatexError`, so callers fall back to other comparisons; so does a word
of four or more letters (`east` is text, not e*a*s*t, which would equal `seat`).

Nodes (plain tuples, JSON-serialisable after `to_json`):
  ("num", Fraction) ("sym", name) ("const", "pi" | "e" | "i" | "inf")
  ("add", (a, b, ...)) ("mul", (a, b, ...)) ("neg", a) ("div", a, b) ("pow", a, b)
  ("fn", name, (args...)) ("fact", a)
"""

import fractions
import functools
import re

FUNCTIONS = frozenset({
    "sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "sinh", "cosh",
    "tanh", "ln", "log", "exp", "lg"})
GREEK = frozenset({
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
    "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon",
    "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma",
    "Phi", "Psi", "Omega"})
_MUL_COMMANDS = frozenset({"\\cdot", "\\times", "\\ast", "*"})
_DIV_COMMANDS = frozenset({"\\div", "/"})
_TOKEN = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|\\[a-zA-Z]+|\\.|[a-zA-Z]|\S)")
_MAX_LENGTH = 400
# A run of 4+ plain letters is a word ("east", "feet"), not a product of variables, unless it
# starts with a function name spelled without a backslash ("sinx", "sqrt2").
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{4,}")
_SPELLED_FUNCTIONS = tuple(sorted(FUNCTIONS | {"sqrt"}, key=len, reverse=True))


def _is_letter(tok: str) -> bool:
  return len(tok) == 1 and tok.isascii() and tok.isalpha()


class LatexError(ValueError):
  """The string is not a single expression this parser understands."""


def _tokenize(text: str) -> list[str]:
  tokens, pos = [], 0
  text = text.rstrip()
  while pos < len(text):
    m = _TOKEN.match(text, pos)
    if not m:
      break
    tokens.append(m.group(1))
    pos = m.end()
  return tokens


class _Parser:
  """Recursive descent over tokens; each method returns one node."""

  def __init__(self, tokens: list[str]):
    self.tokens = tokens
    self.pos = 0
    self.abs_depth = 0

  def peek(self) -> str | None:
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def take(self, expected: str | None = None) -> str:
    tok = self.peek()
    if tok is None or (expected is not None and tok != expected):
      raise LatexError(f"expected {expected!r}, found {tok!r}")
    self.pos += 1
    return tok

  def parse(self):
    node = self.add()
    if self.peek() is not None:
      raise LatexError(f"unexpected {self.peek()!r}")
    return node

  def add(self):
    terms = [self.mul()]
    while self.peek() in ("+", "-", "\\pm"):
      op = self.take()
      if op == "\\pm":
        raise LatexError("\\pm is not a single value")
      rhs = self.mul()
      terms.append(("neg", rhs) if op == "-" else rhs)
    return terms[0] if len(terms) == 1 else ("add", tuple(terms))

  def _starts_atom(self, tok: str | None) -> bool:
    if tok is None:
      return False
    if tok == "|":
      return self.abs_depth == 0
    if tok[0].isdigit() or tok[0] == "." or _is_letter(tok) or tok in ("(", "[", "{"):
      return True
    if tok.startswith("\\"):
      return tok[1:] in FUNCTIONS or tok[1:] in GREEK or tok in (
          "\\frac", "\\sqrt", "\\pi", "\\infty", "\\binom", "\\lfloor", "\\lceil", "\\exp")
    return False

  def mul(self):
    node = self.unary()
    while True:
      tok = self.peek()
      if tok in _MUL_COMMANDS:
        self.take()
        node = ("mul", (node, self.unary()))
      elif tok in _DIV_COMMANDS:
        self.take()
        node = ("div", node, self.unary())
      elif self._starts_atom(tok):
        node = ("mul", (node, self.power()))
      else:
        return node

  def unary(self):
    if self.peek() == "-":
      self.take()
      return ("neg", self.unary())
    if self.peek() == "+":
      self.take()
      return self.unary()
    return self.power()

  def power(self):
    base = self.postfix()
    if self.peek() == "^":
      self.take()
      return ("pow", base, self.exponent())
    return base

  def exponent(self):
    tok = self.peek()
    if tok == "{":
      return self.group("{", "}")
    if tok == "-":
      self.take()
      return ("neg", self.exponent())
    if tok is not None and tok[0].isdigit() and len(tok) > 1 and "." not in tok:
      self.take()   # x^23 in LaTeX means x^2 * 3
      self.tokens.insert(self.pos, tok[1:])
      return ("num", fractions.Fraction(int(tok[0])))
    return self.postfix()

  def postfix(self):
    node = self.atom()
    while self.peek() == "!":
      self.take()
      node = ("fact", node)
    return node

  def group(self, open_tok: str, close_tok: str):
    self.take(open_tok)
    saved, self.abs_depth = self.abs_depth, 0
    node = self.add()
    self.abs_depth = saved
    self.take(close_tok)
    return node

  def subscript(self) -> str:
    self.take("_")
    if self.peek() == "{":
      start = self.pos
      depth = 0
      while True:
        tok = self.take()
        depth += (tok == "{") - (tok == "}")
        if depth == 0:
          break
      return "".join(self.tokens[start + 1:self.pos - 1])
    return self.take()

  def function(self, name: str):
    base = None
    if name == "log" and self.peek() == "_":
      base = self.subscript()
    power = None
    if self.peek() == "^":
      self.take()
      power = self.exponent()
    if self.peek() in ("(", "[", "{"):
      close = {"(": ")", "[": "]", "{": "}"}[self.peek()]
      arg = self.group(self.peek(), close)
    else:
      arg = self.power()
      while (self.peek() is not None and self._starts_atom(self.peek())
             and not self.peek().lstrip("\\") in FUNCTIONS):
        arg = ("mul", (arg, self.power()))
    if name == "lg":
      name, base = "log", "10"
    node = ("fn", name, (arg,))
    if base is not None:
      base_node = _Parser(_tokenize(base)).parse()
      node = ("div", ("fn", "ln", (arg,)), ("fn", "ln", (base_node,)))
    elif name == "log":
      node = ("fn", "ln", (arg,))
    return ("pow", node, power) if power is not None else node

  def atom(self):
    tok = self.peek()
    if tok is None:
      raise LatexError("expression ends early")
    if tok[0].isdigit() or tok[0] == ".":
      self.take()
      return ("num", fractions.Fraction(tok))
    if tok in ("(", "["):
      return self.group(tok, ")" if tok == "(" else "]")
    if tok == "{":
      return self.group("{", "}")
    if tok == "|":
      self.take()
      self.abs_depth += 1
      node = self.add()
      self.abs_depth -= 1
      self.take("|")
      return ("fn", "abs", (node,))
    if _is_letter(tok):
      return self.letters()
    if tok.startswith("\\"):
      return self.command()
    raise LatexError(f"unexpected {tok!r}")

  def letters(self):
    # Spelled-out function names without a backslash ("sin x", "sqrt(2)").
    for name in sorted(FUNCTIONS | {"sqrt"}, key=len, reverse=True):
      if "".join(self.tokens[self.pos:self.pos + len(name)]) == name:
        self.pos += len(name)
        return self.sqrt_body() if name == "sqrt" else self.function(name)
    tok = self.take()
    if self.peek() == "_":
      return ("sym", tok + "_" + self.subscript())
    if tok == "e":
      return ("const", "e")
    if tok == "i":
      return ("const", "i")
    return ("sym", tok)

  def sqrt_body(self):
    index = None
    if self.peek() == "[":
      index = self.group("[", "]")
    if self.peek() in ("{", "("):
      arg = self.group(self.peek(), "}" if self.peek() == "{" else ")")
    else:
      arg = self.atom()
    exponent = ("div", ("num", fractions.Fraction(1)), index or ("num", fractions.Fraction(2)))
    return ("pow", arg, exponent)

  def command(self):
    tok = self.take()
    name = tok[1:]
    if name == "frac":
      num = self.group("{", "}") if self.peek() == "{" else self.atom()
      den = self.group("{", "}") if self.peek() == "{" else self.atom()
      return ("div", num, den)
    if name == "binom":
      return ("fn", "binom", (self.group("{", "}"), self.group("{", "}")))
    if name == "sqrt":
      return self.sqrt_body()
    if name in ("lfloor", "lceil"):
      node = self.add()
      self.take("\\rfloor" if name == "lfloor" else "\\rceil")
      return ("fn", "floor" if name == "lfloor" else "ceil", (node,))
    if name in FUNCTIONS:
      return self.function(name)
    if name == "pi":
      return ("const", "pi")
    if name == "infty":
      return ("const", "inf")
    if name in GREEK:
      if self.peek() == "_":
        return ("sym", name + "_" + self.subscript())
      return ("sym", name)
    raise LatexError(f"unsupported command {tok}")


@functools.lru_cache(maxsize=65536)
def parse_latex(text: str):
  """Parses one expression; raises LatexError when it is not one (or is too long)."""
  if len(text) > _MAX_LENGTH:
    raise LatexError(f"expression longer than {_MAX_LENGTH} characters")
  for word in _WORD.findall(text):
    if not word.startswith(_SPELLED_FUNCTIONS):
      raise LatexError(f"the word {word!r} is text, not a product of variables")
  tokens = _tokenize(text)
  if not tokens:
    raise LatexError("empty expression")
  try:
    return _Parser(tokens).parse()
  except (IndexError, ZeroDivisionError, ValueError) as e:
    raise LatexError(str(e)) from e


def to_json(node):
  """Nested lists with Fractions as "p/q" strings (for the sympy worker)."""
  kind = node[0]
  if kind == "num":
    return ["num", str(node[1])]
  if kind in ("sym", "const"):
    return list(node)
  if kind in ("add", "mul"):
    return [kind, [to_json(c) for c in node[1]]]
  if kind == "fn":
    return ["fn", node[1], [to_json(c) for c in node[2]]]
  return [kind] + [to_json(c) for c in node[1:]]


def free_symbols(node) -> frozenset:
  """Names of the variables in a tree."""
  kind = node[0]
  if kind == "sym":
    return frozenset({node[1]})
  if kind in ("num", "const"):
    return frozenset()
  children = node[1] if kind in ("add", "mul") else node[2] if kind == "fn" else node[1:]
  out = frozenset()
  for child in children:
    out |= free_symbols(child)
  return out
