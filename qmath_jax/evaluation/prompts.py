"""Evaluation prompts in ChatML: the CoT or TIR system prompt (``chat.SYSTEM_PROMPTS``), zero- or
few-shot (SPEC), and the question text as Qwen2.5-Math's evaluation harness builds it.

Few-shot applies to multiple-choice problems only: aqua, sat_math and mmlu_stem always (5-shot,
English exemplars); the gaokao sets and cn_middle_school when the gold is one letter A-E (5-shot,
Chinese exemplars; a multi-letter gold such as "ABD" stays zero-shot, as in Qwen's
`construct_prompt`). The exemplars below are written for this project (no benchmark text). As
in Qwen's harness (`qwen25-math-cot`), they go into the one user turn, ahead of the question:
"q1\na1\n\nq2\na2 ... \n\n<question>"; there are no exemplar assistant turns.
"""

import re

from qmath_jax.data import chat
from qmath_jax.data import gold

FEW_SHOT_ENGLISH = frozenset({"aqua", "sat_math", "mmlu_stem"})
FEW_SHOT_CHINESE_IF_CHOICE = frozenset({"gaokao2024_I", "gaokao2024_II", "gaokao2024_mix",
                                        "cn_middle_school", "gaokao_math_qa"})
NUM_SHOTS = 5
SHOT_SEPARATOR = "\n\n"   # between exemplars, and between the last one and the question

# (question, CoT answer, TIR answer)
_ENGLISH_EXEMPLARS = (
    ("A shop sells pencils at 3 for $0.45. How much do 12 pencils cost?\n"
     "Answer Choices: (A) $1.35 (B) $1.80 (C) $2.40 (D) $1.20 (E) $1.50",
     "One pencil costs $0.45 / 3 = $0.15, so 12 pencils cost 12 x $0.15 = $1.80. "
     "The answer is \\boxed{B}.",
     "```python\nprint(12 * 0.45 / 3)\n```\n```output\n1.8\n```\n"
     "Twelve pencils cost $1.80, which is choice (B). The answer is \\boxed{B}."),
    ("If 2x + 7 = 19, what is the value of x?\n"
     "Answer Choices: (A) 4 (B) 5 (C) 6 (D) 7",
     "Subtract 7: 2x = 12. Divide by 2: x = 6. The answer is \\boxed{C}.",
     "```python\nfrom sympy import symbols, solve\nx = symbols('x')\nprint(solve(2*x + 7 - 19, x))"
     "\n```\n```output\n[6]\n```\nSo x = 6, choice (C). The answer is \\boxed{C}."),
    ("Which of the following is a prime number?\n"
     "Answer Choices: (A) 21 (B) 27 (C) 33 (D) 37",
     "21 = 3 x 7, 27 = 3^3 and 33 = 3 x 11 are composite, while 37 has no divisor between 2 and "
     "6. The answer is \\boxed{D}.",
     "```python\nfrom sympy import isprime\nprint([n for n in (21, 27, 33, 37) if isprime(n)])"
     "\n```\n```output\n[37]\n```\nOnly 37 is prime, choice (D). The answer is \\boxed{D}."),
    ("A rectangle has a perimeter of 30 cm and a length of 9 cm. What is its area?\n"
     "Answer Choices: (A) 54 square cm (B) 45 square cm (C) 63 square cm (D) 36 square cm",
     "The width is 30 / 2 - 9 = 6 cm, so the area is 9 x 6 = 54 square cm. "
     "The answer is \\boxed{A}.",
     "```python\nwidth = 30 / 2 - 9\nprint(9 * width)\n```\n```output\n54.0\n```\n"
     "The area is 54 square cm, choice (A). The answer is \\boxed{A}."),
    ("What is the derivative of f(x) = x^3 - 4x with respect to x, evaluated at x = 2?\n"
     "Answer Choices: (A) 4 (B) 6 (C) 8 (D) 12 (E) 0",
     "f'(x) = 3x^2 - 4, so f'(2) = 12 - 4 = 8. The answer is \\boxed{C}.",
     "```python\nfrom sympy import symbols, diff\nx = symbols('x')\n"
     "print(diff(x**3 - 4*x, x).subs(x, 2))\n```\n```output\n8\n```\n"
     "The derivative at 2 is 8, choice (C). The answer is \\boxed{C}."),
)

_CHINESE_EXEMPLARS = (
    ("下列各数中，最大的数是（　）\nA. -3  B. 0  C. 2  D. -1/2",
     "负数小于 0，0 小于正数，所以最大的数是 2。答案是 \\boxed{C}。",
     "```python\nprint(max([-3, 0, 2, -0.5]))\n```\n```output\n2\n```\n最大的数是 2。答案是 \\boxed{C}。"),
    ("已知 3x - 5 = 10，则 x 的值为（　）\nA. 3  B. 5  C. 15  D. 1",
     "移项得 3x = 15，所以 x = 5。答案是 \\boxed{B}。",
     "```python\nprint((10 + 5) / 3)\n```\n```output\n5.0\n```\n所以 x = 5。答案是 \\boxed{B}。"),
    ("一个正方形的边长为 4 cm，它的面积是（　）\nA. 8 cm²  B. 12 cm²  C. 16 cm²  D. 20 cm²",
     "正方形面积等于边长的平方，4 × 4 = 16 cm²。答案是 \\boxed{C}。",
     "```python\nprint(4 ** 2)\n```\n```output\n16\n```\n面积是 16 cm²。答案是 \\boxed{C}。"),
    ("下列运算正确的是（　）\nA. a^2 · a^3 = a^6  B. (a^2)^3 = a^6  C. a^6 ÷ a^2 = a^3  "
     "D. 2a + 3b = 5ab",
     "同底数幂相乘指数相加，A 应为 a^5；幂的乘方指数相乘，B 正确；C 应为 a^4；D 不是同类项。"
     "答案是 \\boxed{B}。",
     "```python\nfrom sympy import symbols, simplify\na = symbols('a')\n"
     "print(simplify((a**2)**3 - a**6))\n```\n```output\n0\n```\n(a^2)^3 = a^6 成立。答案是 \\boxed{B}。"),
    ("下列函数中，在 (0, +∞) 上单调递增的是（　）\nA. y = -x  B. y = 1/x  C. y = x^2  D. y = -x^2",
     "y = -x 与 y = -x^2 在 (0, +∞) 上递减，y = 1/x 也递减，y = x^2 的导数 2x > 0，递增。"
     "答案是 \\boxed{C}。",
     "```python\nfrom sympy import symbols, diff\nx = symbols('x')\nprint(diff(x**2, x))\n```\n"
     "```output\n2*x\n```\n当 x > 0 时导数为正，y = x^2 递增。答案是 \\boxed{C}。"),
)


def _options_line(row: dict, name: str) -> str | None:
  """The options line of a raw multiple-choice row, spaced as Qwen's `parse_question` writes it.

  mmlu_stem: "Answer Choices: (A) x (B) y ..."; sat_math: its `options` text behind "(" with
  " B) " made " (B) "; aqua: its options joined, every "(" made " (" and ")" made ") " (double
  spaces and all); gaokao_math_qa: "选项: (A) x (B) y" in the file's key order. None otherwise.
  """
  if name == "mmlu_stem":
    return "Answer Choices: " + " ".join(
        f"({letter}) {str(option).strip()}" for letter, option in zip("ABCD", row["choices"]))
  if name == "sat_math":
    text = "(" + row["options"].strip()
    for letter in "BCD":
      text = text.replace(f" {letter}) ", f" ({letter}) ")
    return "Answer Choices: " + text
  if name == "aqua":
    text = "(" + "(".join(row["options"])
    return "Answer Choices: " + text.replace("(", " (").replace(")", ") ").strip()
  if name == "gaokao_math_qa":
    return "选项: " + " ".join(f"({key}) {value}" for key, value in row["options"].items())
  return None


def _judgement_hint(answer: str) -> str:
  """The hint Qwen appends to a question whose gold is yes/no or true/false, else ""."""
  plain = re.sub(r"\\text\{(.*?)\}", r"\1", answer).replace("$", "").strip().rstrip(".").strip()
  if plain.lower() in ("true", "false"):
    return " (True or False)"
  if plain.lower() in ("yes", "no"):
    return " (Yes or No)"
  return ""


def question_text(problem, row: dict | None = None) -> str:
  """The user turn's text for a ``qmath_jax.data.sources.Problem``, as Qwen's harness builds it.

  The statement, then the options: from the raw `row` when given (``_options_line``, exactly
  Qwen's spacing), else from ``problem.choices`` as "(A) ... (B) ..." after "Answer Choices: "
  (or "选项: " for gaokao_math_qa). A gold that is a yes/no or true/false word adds the hint
  Qwen adds (asdiv and college_math have such rows).
  """
  name = gold.base_name(problem.dataset)
  options = _options_line(row, name) if row is not None else None
  if options is None and problem.choices:
    parts = []
    for option in problem.choices:
      letter, _, text = option.partition(". ")
      parts.append(f"({letter}) {text.strip()}")
    label = "选项: " if name == "gaokao_math_qa" else "Answer Choices: "
    options = label + " ".join(parts)
  text = f"{problem.question}\n{options}" if options else problem.question
  return (text + _judgement_hint(problem.answer)).strip()


def _single_letter(answer: str | None) -> bool:
  return answer is not None and answer.strip() in tuple(gold.CHOICE_LETTERS)


def uses_few_shot(data_name: str, choice: bool, answer: str | None = None) -> bool:
  """SPEC: aqua/sat_math/mmlu_stem always; the Chinese sets only when the gold is a letter.

  With the gold `answer` given, "a letter" is one letter A-E, as in Qwen's harness (a
  multi-select gold like "ABD" is zero-shot); without it, `choice` decides.
  """
  name = gold.base_name(data_name)
  if name in FEW_SHOT_ENGLISH:
    return True
  if name not in FEW_SHOT_CHINESE_IF_CHOICE:
    return False
  return _single_letter(answer) if answer is not None else choice


def build_messages(question: str, data_name: str, prompt_type: str = "cot",
                   choice: bool = False, answer: str | None = None,
                   few_shot: bool = True) -> list[dict]:
  """The conversation for one problem: the system turn, then one user turn holding the
  exemplars (when the dataset is few-shot and `few_shot`) and the question."""
  if prompt_type not in chat.SYSTEM_PROMPTS:
    raise ValueError(f"prompt_type {prompt_type!r} is not one of {sorted(chat.SYSTEM_PROMPTS)}")
  messages = [{"role": "system", "content": chat.SYSTEM_PROMPTS[prompt_type]}]
  content = question
  if few_shot and uses_few_shot(data_name, choice, answer):
    name = gold.base_name(data_name)
    exemplars = _ENGLISH_EXEMPLARS if name in FEW_SHOT_ENGLISH else _CHINESE_EXEMPLARS
    shots = [f"{q}\n{cot if prompt_type == 'cot' else tir}"
             for q, cot, tir in exemplars[:NUM_SHOTS]]
    content = SHOT_SEPARATOR.join(shots + [question])
  messages.append({"role": "user", "content": content})
  return messages


def build_prompt(question: str, data_name: str, prompt_type: str = "cot",
                 choice: bool = False, answer: str | None = None, few_shot: bool = True) -> str:
  """ChatML text ending in an open assistant turn (`few_shot=False`: never exemplars)."""
  return chat.render(build_messages(question, data_name, prompt_type, choice, answer, few_shot),
                     add_generation_prompt=True)
