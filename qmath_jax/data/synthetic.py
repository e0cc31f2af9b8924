"""Seeded grade-school arithmetic word problems for the CPU demo, and a pretraining corpus.

A problem follows one quantity of one person through ``steps`` operations (buy, give away,
multiply, share equally), always staying a positive integer, so every answer is exact:

  question   "Mia has 12 apples. She buys 7 more apples. ... How many apples does Mia have now?"
  solution   one line per step ("After buying 7 more, Mia has 12 + 7 = 19 apples.") ending in
             "The answer is $\\boxed{23}$."
  meta["tir_solution"]  a ```python block computing it, its ```output block, and the boxed answer

Difficulty knobs: ``SyntheticConfig.min_steps / max_steps``, ``max_operand`` and ``max_value``.
Held-out split: a problem belongs to "test" when the hash of its structure (start value,
operations, operands) falls in the held-out bucket, else to "train", so the splits are
disjoint for every seed and every knob setting.
"""

import dataclasses
import hashlib
import random

from qmath_jax.data import sources

NAMES = ("Mia", "Liam", "Ava", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Sara", "Tom", "Nina",
         "Ivan", "Maya", "Leo", "Emma", "Kai")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps",
         "shells", "cards", "balloons", "oranges")
PRONOUNS = {"Mia": "She", "Ava": "She", "Zoe": "She", "Lena": "She", "Sara": "She",
            "Nina": "She", "Maya": "She", "Emma": "She"}
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Difficulty knobs and the held-out share.

  Attributes:
    min_steps, max_steps: operations per problem (inclusive range).
    max_operand: largest start value and operand of + and -; factors and divisors stay in 2..9.
    max_value: largest value the quantity may reach (None: unbounded); a + or * step that
      would pass it is not drawn, so every number in a problem stays <= max_value.
    test_fraction: share of problem structures held out for the "test" split.
  """
  min_steps: int = 2
  max_steps: int = 4
  max_operand: int = 50
  max_value: int | None = None
  test_fraction: float = 0.1

  def __post_init__(self):
    if not 1 <= self.min_steps <= self.max_steps:
      raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, "
                       f"{self.max_steps}")
    if self.max_operand < 2:
      raise ValueError(f"max_operand must be >= 2, got {self.max_operand}")
    if self.max_value is not None and self.max_value < self.max_operand:
      raise ValueError(f"max_value must be None or >= max_operand ({self.max_operand}), got "
                       f"{self.max_value}")
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


def _split_of(signature: str, test_fraction: float) -> str:
  bucket = int.from_bytes(hashlib.sha256(signature.encode()).digest()[:8], "big") / 2.0**64
  return "test" if bucket < test_fraction else "train"


def _steps(rng: random.Random, cfg: SyntheticConfig) -> tuple[int, list[tuple[str, int]]]:
  """A start value and (op, operand) steps keeping the value a positive integer <= max_value."""
  limit = float("inf") if cfg.max_value is None else cfg.max_value
  value = rng.randint(2, cfg.max_operand)
  start, steps = value, []
  for _ in range(rng.randint(cfg.min_steps, cfg.max_steps)):
    choices = ((["+"] if value < limit else []) + (["*"] if 2 * value <= limit else []) +
               (["-"] if value > 1 else []))
    divisors = [d for d in range(2, 10) if value % d == 0]
    if divisors:
      choices.append("/")
    op = rng.choice(choices)
    if op == "+":
      operand = rng.randint(1, min(cfg.max_operand, limit - value))
      value += operand
    elif op == "-":
      operand = rng.randint(1, min(value - 1, cfg.max_operand))
      value -= operand
    elif op == "*":
      operand = rng.randint(2, min(9, limit // value))
      value *= operand
    else:
      operand = rng.choice(divisors)
      value //= operand
    steps.append((op, operand))
  return start, steps


def _render(name: str, item: str, start: int, steps: list[tuple[str, int]]) -> dict:
  """Question, CoT solution, TIR solution and answer of one problem."""
  he = PRONOUNS.get(name, "He")
  sentences = [f"{name} has {start} {item}."]
  lines = [f"{name} starts with {start} {item}."]
  code = [f"{item} = {start}"]
  value = start
  for i, (op, operand) in enumerate(steps):
    then = "" if i == 0 else "Then "
    subject = he if i == 0 else he.lower()
    if op == "+":
      new = value + operand
      sentences.append(f"{then}{subject} gets {operand} more {item}.")
      lines.append(f"After getting {operand} more, {name} has {value} + {operand} = {new} {item}.")
      code.append(f"{item} = {item} + {operand}")
    elif op == "-":
      new = value - operand
      sentences.append(f"{then}{subject} gives {operand} {item} to a friend.")
      lines.append(f"After giving away {operand}, {name} has {value} - {operand} = {new} {item}.")
      code.append(f"{item} = {item} - {operand}")
    elif op == "*":
      new = value * operand
      the = "the" if then else "The"
      sentences.append(f"{then}{the} number of {item} {name} has becomes {operand} times as large.")
      lines.append(f"{operand} times as many is {value} * {operand} = {new} {item}.")
      code.append(f"{item} = {item} * {operand}")
    else:
      new = value // operand
      friends = "1 friend" if operand == 2 else f"{operand - 1} friends"
      sentences.append(f"{then}{subject} shares the {item} equally with {friends} "
                       f"and keeps one share.")
      lines.append(f"Sharing among {operand} people leaves {name} {value} / {operand} = {new} "
                   f"{item}.")
      code.append(f"{item} = {item} // {operand}")
    value = new
  sentences.append(f"How many {item} does {name} have now?")
  answer = str(value)
  lines.append(f"The answer is $\\boxed{{{answer}}}$.")
  code.append(f"print({item})")
  tir = ("Let me compute the number step by step with Python.\n```python\n" + "\n".join(code) +
         f"\n```\n```output\n{answer}\n```\n{name} has {answer} {item} now. "
         f"The answer is $\\boxed{{{answer}}}$.")
  return {"question": " ".join(sentences), "solution": "\n".join(lines), "tir": tir,
          "answer": answer}


def generate(n: int, *, seed: int = 0, split: str = "train",
             cfg: SyntheticConfig = SyntheticConfig()) -> list[sources.Problem]:
  """``n`` distinct problems of ``split`` ("train" or "test"); same seed, same problems."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  rng = random.Random(f"{seed}/{split}")
  problems, seen = [], set()
  attempts = 0
  while len(problems) < n:
    attempts += 1
    if attempts > 1000 * n + 10_000:
      raise ValueError(f"cannot find {n} distinct {split} problems with {cfg}; widen the knobs")
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start, steps = _steps(rng, cfg)
    signature = f"{start}|" + "|".join(f"{op}{x}" for op, x in steps)
    if signature in seen or _split_of(signature, cfg.test_fraction) != split:
      continue
    seen.add(signature)
    text = _render(name, item, start, steps)
    problems.append(sources.Problem(
        id=f"synthetic/{split}/{len(problems)}", dataset=f"synthetic/{split}",
        question=text["question"], answer=text["answer"], solution=text["solution"],
        meta={"tir_solution": text["tir"], "steps": len(steps), "signature": signature}))
  return problems


def corpus(n_documents: int, *, seed: int = 0,
           cfg: SyntheticConfig = SyntheticConfig()) -> list[str]:
  """Plain-text pretraining documents built only from the train split.

  Three kinds, mixed: a worked problem (question, then its CoT solution), a TIR-style worked
  problem, and a drill of arithmetic facts ("17 + 25 = 42." lines).
  """
  rng = random.Random(f"{seed}/corpus")
  problems = generate(n_documents, seed=seed, split="train", cfg=cfg)
  documents = []
  for problem in problems:
    kind = rng.random()
    if kind < 0.5:
      documents.append(f"Question: {problem.question}\nAnswer: {problem.solution}")
    elif kind < 0.75:
      documents.append(f"Question: {problem.question}\nAnswer: {problem.meta['tir_solution']}")
    else:
      facts = []
      for _ in range(rng.randint(4, 12)):
        a, b = rng.randint(1, cfg.max_operand), rng.randint(1, cfg.max_operand)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        facts.append(f"{a} {op} {b} = {value}.")
      documents.append("\n".join(facts))
  return documents
