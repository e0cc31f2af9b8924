"""Answer-string normalisation shared by extraction, gold parsing and grading.

`normalize_answer` turns a final-answer string into a canonical LaTeX-ish form: no `$`, no
`\\left`/`\\right`, no spacing commands, `\\dfrac`/`\\tfrac` -> `\\frac`, `\\frac12` ->
`\\frac{1}{2}`, no degrees, percent signs as one trailing `%`, no trailing units, no `x =`
prefix, number words as digits, no trailing `.0`. It is idempotent, and it never removes a
letter that could be part of the mathematics: units are stripped only when they are whole
words from `UNIT_WORDS`, or single letters wrapped in `\\text{}`/`\\mathrm{}` after a number
(`4\\text{ m}` -> `4`, but `4t` stays `4t`), so that an answer cannot win by dropping a
variable.
"""

import fractions
import functools
import re

# Multi-letter unit words removed after a number (plural 's' optional).
UNIT_WORDS = (
    "square units", "square feet", "square inches", "square meters", "square metres",
    "square centimeters", "square cm", "square miles", "square yards", "sq ft", "sq units",
    "cubic feet", "cubic inches", "cubic meters", "cubic centimeters", "cubic units",
    "units", "unit", "degrees", "degree", "radians", "dollars", "dollar", "cents", "cent",
    "euros", "pounds", "yuan", "points", "point",
    "meters", "meter", "metres", "metre", "centimeters", "centimeter", "millimeters",
    "kilometers", "kilometer", "miles", "mile", "feet", "foot", "inches", "inch",
    "yards", "yard", "mph", "km/h", "kmph", "m/s", "cm", "mm", "km", "ft", "in^2", "cm^2",
    "m^2", "ft^2", "cm^3", "m^3", "ft^3",
    "seconds", "second", "sec", "minutes", "minute", "mins", "min", "hours", "hour", "hrs",
    "hr", "days", "day", "weeks", "week", "months", "month", "years", "year",
    "grams", "gram", "kilograms", "kilogram", "kg", "mg", "pounds", "ounces", "ounce", "lbs",
    "lb", "tons", "ton", "liters", "liter", "litres", "litre", "milliliters", "ml", "gallons",
    "gallon", "quarts", "cups", "cup",
    "people", "persons", "students", "children", "apples", "books", "pages", "times", "ways",
    "items", "pieces", "boxes", "marbles", "cookies", "eggs", "balls", "coins", "tickets",
    "cars", "trees", "hats",
)
# Units allowed as single letters or symbols, only inside \text{}/\mathrm{} after a number.
WRAPPED_UNITS = UNIT_WORDS + ("m", "s", "g", "h", "l", "L", "N", "J", "W", "V", "A", "K", "Pa",
                              "Hz", "eV", "kJ", "kW", "nm", "um", "\\mu m", "\\AA", "pc", "ly",
                              "kpc", "Mpc", "mol", "C", "T", "Omega", "\\Omega", "au", "AU")
CHINESE_UNITS = ("平方厘米", "平方分米", "平方千米", "平方米", "立方厘米", "立方分米", "立方米",
                 "千米", "厘米", "分米", "毫米", "公里", "千克", "公斤", "毫升", "小时", "分钟",
                 "个", "元", "角", "米", "克", "吨", "升", "秒", "天", "岁", "页", "本", "只",
                 "人", "次", "块", "度", "辆", "棵", "名", "条", "张", "台", "箱", "件", "支",
                 "头", "瓶", "盒", "袋", "份", "周", "年", "月", "倍", "种", "场", "篇", "双")

NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40",
    "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000",
}

_MAX_UNIT_PASSES = 4
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(set(UNIT_WORDS), key=len, reverse=True))
_WRAPPED_ALT = "|".join(re.escape(u) for u in sorted(set(WRAPPED_UNITS), key=len, reverse=True))
_CN_UNIT_ALT = "|".join(sorted(CHINESE_UNITS, key=len, reverse=True))
_NUMBERISH_END = r"(?<=[\d\}\)\.])"

_TRAILING_WORD_UNIT = re.compile(
    _NUMBERISH_END + r"\s*(?:" + _UNIT_ALT + r")s?(?:\^\{?[23]\}?)?\.?\s*$", re.IGNORECASE)
_TRAILING_WRAPPED_UNIT = re.compile(
    _NUMBERISH_END + r"\s*\\(?:text|mathrm|mbox|textrm|rm)\s*\{\s*~?\s*(?:" + _WRAPPED_ALT +
    r")s?\s*(?:\^\{?[23]\}?)?\s*\}(?:\s*\^\{?[23]\}?)?\.?\s*$")
_TRAILING_CN_UNIT = re.compile(r"(?<=\d)\s*(?:" + _CN_UNIT_ALT + r")\s*$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|mathit|rm|bf|"
                           r"operatorname|boldsymbol|mathbb|mathsf)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad(?![a-zA-Z])|\\displaystyle|"
                      r"\\(?:big|Big|bigg|Bigg)[lr]?(?![a-zA-Z])")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![a-zA-Z])\s*(\\\{|\\\}|\\\||[\(\)\[\]\|\.]|"
                         r"\\langle|\\rangle)?")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\^\s*\{\s*\\circ\s*\}|°|\\circ(?![a-zA-Z])|"
                      r"\\degree(?![a-zA-Z])")
# Starts where a whitespace run starts: retried from inside one it was quadratic in its length.
_PERCENT = re.compile(r"(?<!\s)\s*(?:\\%|%|\\text\{\s*percent\s*\}|\bpercent\b)")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_TRAILING_ZEROS = re.compile(r"(\d)\.0+(?![\d])")
_SIMPLE_FRACTION = re.compile(r"^(-?\d+)\s*/\s*(\d+)$")
_EQ_PREFIX = re.compile(r"^\s*([a-zA-Z](?:_\{?\w+\}?)?|\\[a-zA-Z]+|[a-zA-Z]\([a-zA-Z]\))\s*=\s*"
                        r"(?!=)")
_IN_PREFIX = re.compile(r"^\s*[a-zA-Z]\s*\\in\s*")
_FULL_WIDTH = str.maketrans({"，": ",", "（": "(", "）": ")", "：": ":", "；": ";", "！": "!",
                             "－": "-", "＋": "+", "＝": "=", "．": ".", "　": " ", "−": "-",
                             "–": "-", "×": "\\times ", "÷": "\\div ", "≤": "\\le ",
                             "≥": "\\ge ", "≠": "\\ne ", "π": "\\pi ", "√": "\\sqrt",
                             "∞": "\\infty ", "∪": "\\cup ", "∩": "\\cap "})


_BOXED_OPEN = re.compile(r"\\boxed\s*\{")
_TIME_OF_DAY = re.compile(r"(\d\s*)([aApP])\.?\s*[mM]\.?(?![a-zA-Z])")
# The whole part starts where a digit run starts: retrying from every digit of a long run
# made the search quadratic (seconds for 30k digits).
_MAX_REPEATING_DIGITS = 1000
_REPEATING = re.compile(r"(-?)(?<!\d)(\d*)\.(\d*)\\overline\{(\d+)\}")


def _repeating_to_fraction(m: re.Match) -> str:
  """`0.1\\overline{6}` -> `\\frac{1}{6}`."""
  sign, whole, fixed, period = m.groups()
  if len(whole) + len(fixed) + len(period) > _MAX_REPEATING_DIGITS:
    return m.group(0)   # int() refuses more than 4300 digits; no answer has this many
  scale = 10 ** len(fixed)
  value = (int(whole or "0") * scale + int(fixed or "0")
           + fractions.Fraction(int(period), 10 ** len(period) - 1)) / scale
  return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _fix_fracs(s: str) -> str:
  """`\\frac12` -> `\\frac{1}{2}`, `\\frac1b` -> `\\frac{1}{b}`, `\\frac{a}2` -> `\\frac{a}{2}`."""
  s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\frac\s*([^\s{\\])\s*([^\s{\\])", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])", r"\\frac\1{\2}", s)
  s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*(\{)", r"\\frac{\1}\2", s)
  s = re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)
  return s


def _unbox(s: str) -> str:
  """`x = \\boxed{5}` -> `x = 5`: the first `\\boxed{` to the final `}` dropped.

  What `re.sub(r"\\\\boxed\\s*\\{(.*)\\}$", r"\\1", s)` did for a string without newlines, in
  linear time: the regex retried `.*` from every `\\boxed{` (seconds for 10k unclosed boxes).
  """
  if not s.endswith("}"):
    return s
  m = _BOXED_OPEN.search(s)
  if m is None or m.end() > len(s) - 1:
    return s
  return s[:m.start()] + s[m.end():-1]


def _unwrap_text(s: str) -> str:
  prev = None
  while prev != s:
    prev = s
    s = _TEXT_WRAPPER.sub(r"\1", s)
  return s


def _strip_units(s: str) -> str:
  """Trailing units removed, a few at most (`5 \\text{m}^2`, `3 square units.`).

  Each pass scans the whole string: a pass per unit of `1\\text{ cm}\\text{ cm}...` was
  quadratic (seconds for 2000 units).
  """
  prev = None
  for _ in range(_MAX_UNIT_PASSES):
    if prev == s:
      break
    prev = s
    s = _TRAILING_WRAPPED_UNIT.sub("", s).strip()
    s = _TRAILING_WORD_UNIT.sub("", s).strip()
    s = _TRAILING_CN_UNIT.sub("", s).strip()
  return s


@functools.lru_cache(maxsize=65536)
def normalize_answer(answer: str) -> str:
  """Canonical form of one final answer (see the module docstring). Idempotent."""
  s = str(answer).translate(_FULL_WIDTH).replace("\n", " ").replace("\t", " ")
  s = s.replace("\\$", "").replace("$", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  s = s.replace("{,}", "").replace("\\{,\\}", "")
  s = _SPACING.sub(" ", s).replace("~", " ")
  s = _LEFT_RIGHT.sub(lambda m: m.group(1) or "", s)
  s = s.replace("\\leqslant", "\\le").replace("\\geqslant", "\\ge").replace("\\leq", "\\le")
  s = s.replace("\\geq", "\\ge").replace("\\neq", "\\ne").replace("\\lt", "<").replace("\\gt", ">")
  s = _unbox(s.strip())
  s = _DEGREES.sub("", s)
  s = _PERCENT.sub("%", s)
  s = _strip_units(s.strip())
  s = _unwrap_text(s)
  s = re.sub(r"\s+", " ", s).strip()
  s = re.sub(r"([\(\[])\s+", r"\1", s)
  s = re.sub(r"\s+([\)\]])", r"\1", s)
  s = re.sub(r"^(?:the answer is|answer:|answer is|ans:)\s*", "", s, flags=re.IGNORECASE)
  s = _strip_units(s)
  s = s.rstrip(".。 ").strip()
  s = re.sub(r"\s+(?:or|and)\s+|或|和|、", ", ", s)
  if s.lower() in NUMBER_WORDS:
    s = NUMBER_WORDS[s.lower()]
  s = _IN_PREFIX.sub("", s)
  if s.count("=") == 1:
    s = _EQ_PREFIX.sub("", s)
  s = _TIME_OF_DAY.sub(lambda m: m.group(1) + m.group(2).lower() + "m", s)
  s = _REPEATING.sub(_repeating_to_fraction, s)
  s = _fix_fracs(s)
  if _THOUSANDS.match(s):
    s = s.replace(",", "")
  if s.startswith("."):
    s = "0" + s
  s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)
  s = _TRAILING_ZEROS.sub(r"\1", s)
  m = _SIMPLE_FRACTION.match(s)
  if m:
    num, den = m.groups()
    s = f"-\\frac{{{num[1:]}}}{{{den}}}" if num.startswith("-") else f"\\frac{{{num}}}{{{den}}}"
  s = s.strip()
  return s


def compact(s: str) -> str:
  """The string used for exact comparison: no whitespace, lower case."""
  return re.sub(r"\s+", "", s).lower()
