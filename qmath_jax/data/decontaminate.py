"""Removing benchmark problems and solutions from training data (SPEC "Decontamination").

Two tests, on text normalised by ``words`` (lower case; punctuation and symbols removed; each
CJK character its own word):

1. **13-gram overlap**: a training row is removed when any 13 consecutive words of its question
   or solution also occur in a benchmark problem or solution. Benchmark texts shorter than 13
   words (but at least ``min_short_words``) count whole: a training row containing them is
   removed.
2. **LCS ratio**: a training question is removed when the longest common subsequence of its
   words with a benchmark problem's words, as ``2 * lcs / (len(a) + len(b))``, exceeds 0.6.
   The ratio is computed against the ``max_candidates`` benchmark problems sharing the most word
   trigrams with the question (an exhaustive all-pairs LCS is out of reach at corpus scale);
   a near-duplicate shares many trigrams, so it is always among them.

``Decontaminator(benchmark_problems).filter(rows)`` returns the clean rows and a ``Report``
listing every removed row with its reason and the benchmark item it matched.

  python -m qmath_jax.data.decontaminate --train=train.jsonl --out=clean.jsonl \
      [--report=removed.jsonl] [--data_dir=...]
"""

import argparse
import collections
import dataclasses
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence

from qmath_jax.data import records
from qmath_jax.data import sources

NGRAM = 13
LCS_THRESHOLD = 0.6
_WORD = re.compile(r"[^\W_]+")
_ASY = re.compile(r"\[asy\].*?(\[/asy\]|$)", re.DOTALL)
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")


def words(text: str) -> list[str]:
  """Normalised words: NFKC, lower case, letters and digits only, CJK characters one by one.

  Asymptote figure code (``[asy] ... [/asy]``) is dropped first: drawing commands are shared by
  many unrelated MATH problems and are not problem text.
  """
  text = _ASY.sub(" ", text or "")
  text = unicodedata.normalize("NFKC", text).lower()
  text = _CJK.sub(r" \1 ", text)
  return _WORD.findall(text)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence of two word lists (bit-parallel, O(|a||b|/w))."""
  if len(a) < len(b):
    a, b = b, a
  if not b:
    return 0
  masks: dict[str, int] = {}
  for i, word in enumerate(a):
    masks[word] = masks.get(word, 0) | (1 << i)
  full = (1 << len(a)) - 1
  v = full
  for word in b:
    u = v & masks.get(word, 0)
    v = ((v + u) | (v - u)) & full
  return len(a) - bin(v).count("1")


def lcs_ratio(a: Sequence[str], b: Sequence[str]) -> float:
  """2 * lcs / (|a| + |b|), in [0, 1]; 0 for two empty lists."""
  if not a and not b:
    return 0.0
  return 2.0 * lcs_length(a, b) / (len(a) + len(b))


@dataclasses.dataclass
class Removal:
  """Why one training row was removed."""
  row_id: str
  reason: str            # "13-gram in question", "13-gram in solution" or "lcs"
  benchmark_id: str      # the benchmark item it matched
  benchmark: str         # that item's dataset, e.g. "math/test"
  detail: str            # the shared n-gram, or the ratio

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class Report:
  """What the filter removed and why; ``kept`` counts the clean rows."""
  kept: int = 0
  removed: list = dataclasses.field(default_factory=list)

  def counts(self) -> dict:
    """reason -> removed rows; benchmark dataset -> removed rows."""
    by_reason = collections.Counter(r.reason for r in self.removed)
    by_benchmark = collections.Counter(r.benchmark for r in self.removed)
    return {"kept": self.kept, "removed": len(self.removed), "by_reason": dict(by_reason),
            "by_benchmark": dict(by_benchmark)}

  def write_jsonl(self, path) -> None:
    """One removal per line, via a temp name and a rename."""
    records.write_jsonl((removal.to_dict() for removal in self.removed), path)


class Decontaminator:
  """Index of benchmark problems and solutions; ``filter`` checks training rows against it."""

  def __init__(self, benchmark: Iterable[sources.Problem], *, n: int = NGRAM,
               lcs_threshold: float = LCS_THRESHOLD, min_short_words: int = 8,
               max_candidates: int = 5, max_trigram_df: int = 200,
               check_solutions: bool = True, lcs_min_words: int = 0):
    """Indexes ``benchmark``.

    Args:
      benchmark: problems (with solutions) nothing may be trained on.
      n: n-gram length of the overlap test (SPEC: 13).
      lcs_threshold: LCS ratio above which a question is removed (SPEC: 0.6).
      min_short_words: benchmark texts with fewer than ``n`` but at least this many words
        count whole in the overlap test.
      max_candidates: benchmark problems (most shared trigrams) the LCS ratio is computed for.
      max_trigram_df: trigrams in more benchmark problems than this pick no candidates.
      check_solutions: also test training solutions for n-gram overlap (SPEC: yes).
      lcs_min_words: skip the LCS test for questions shorter than this (default: none skipped;
        short templated questions reach 0.6 easily, see BENCHMARKS.md).
    """
    self.n = n
    self.check_solutions = check_solutions
    self.lcs_min_words = lcs_min_words
    self.lcs_threshold = lcs_threshold
    self.min_short_words = min_short_words
    self.max_candidates = max_candidates
    self._ngrams: dict[int, int] = {}        # hash of an n-gram -> benchmark item index
    self._short: dict[int, dict[int, int]] = collections.defaultdict(dict)  # length -> ditto
    self._problem_words: list[list[str]] = []
    self._ids: list[str] = []
    self._datasets: list[str] = []
    trigram_items: dict[int, list[int]] = collections.defaultdict(list)
    for index, problem in enumerate(benchmark):
      self._ids.append(problem.id)
      self._datasets.append(problem.dataset)
      question = words(problem.question)
      self._problem_words.append(question)
      for text in (question, words(problem.solution)):
        self._add_ngrams(text, index)
      for key in dict.fromkeys(_ngram_hashes(question, 3)):
        trigram_items[key].append(index)
    # Trigrams common to many benchmark problems ("what is the") do not pick candidates.
    self._trigrams = {k: v for k, v in trigram_items.items() if len(v) <= max_trigram_df}

  def __len__(self) -> int:
    return len(self._ids)

  def _add_ngrams(self, text: list[str], index: int) -> None:
    if len(text) >= self.n:
      for key in _ngram_hashes(text, self.n):
        self._ngrams.setdefault(key, index)
    elif len(text) >= self.min_short_words:
      self._short[len(text)].setdefault(hash(" ".join(text)), index)

  def match(self, question: str, solution: str = "") -> Removal | None:
    """The first reason to remove a row with this question and solution, or None."""
    question_words = words(question)
    parts = [("question", question_words)]
    if self.check_solutions:
      parts.append(("solution", words(solution)))
    for part, text in parts:
      hit = self._ngram_hit(text)
      if hit is not None:
        index, gram = hit
        return Removal("", f"{self.n}-gram in {part}", self._ids[index], self._datasets[index],
                       gram)
    if len(question_words) < self.lcs_min_words:
      return None
    best_ratio, best_index = 0.0, -1
    for index in self._candidates(question_words):
      ratio = lcs_ratio(question_words, self._problem_words[index])
      if ratio > best_ratio:
        best_ratio, best_index = ratio, index
    if best_ratio > self.lcs_threshold:
      return Removal("", "lcs", self._ids[best_index], self._datasets[best_index],
                     f"ratio {best_ratio:.3f}")
    return None

  def _ngram_hit(self, text: list[str]) -> tuple[int, str] | None:
    if len(text) >= self.n:
      for start, key in enumerate(_ngram_hashes(text, self.n)):
        if key in self._ngrams:
          return self._ngrams[key], " ".join(text[start:start + self.n])
    for length, table in self._short.items():
      for start, key in enumerate(_ngram_hashes(text, length)):
        if key in table:
          return table[key], " ".join(text[start:start + length])
    return None

  def _candidates(self, question_words: list[str]) -> list[int]:
    shared = collections.Counter()
    for key in dict.fromkeys(_ngram_hashes(question_words, 3)):  # first-seen order
      for index in self._trigrams.get(key, ()):
        shared[index] += 1
    return [index for index, _ in shared.most_common(self.max_candidates)]

  def filter(self, rows: Iterable[sources.Problem]) -> tuple[list[sources.Problem], Report]:
    """Clean rows (in order) and the report of the removed ones."""
    clean, report = [], Report()
    for row in rows:
      removal = self.match(row.question, row.solution)
      if removal is None:
        clean.append(row)
      else:
        removal.row_id = row.id
        report.removed.append(removal)
    report.kept = len(clean)
    return clean, report


def _ngram_hashes(text: list[str], n: int) -> list[int]:
  return [hash(" ".join(text[i:i + n])) for i in range(len(text) - n + 1)]


def benchmark_problems(data_dir=None, names: Sequence[str] = sources.BENCHMARK_SOURCES,
                       bad_rows: records.BadRows | None = None) -> list[sources.Problem]:
  """Every problem (with its solution) of the benchmark sources.

  Rows without a gold answer are kept (gaokao2023en has two): they cannot be graded, but their
  text is benchmark text all the same.
  """
  bad_rows = bad_rows if bad_rows is not None else records.BadRows()
  problems = []
  for name in names:
    problems.extend(sources.load(name, data_dir, bad_rows=bad_rows, keep_empty_answers=True))
  return problems


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--train", required=True,
                      help="training jsonl in the Problem schema, or a source name (gsm8k/train)")
  parser.add_argument("--out", required=True, help="clean rows, jsonl")
  parser.add_argument("--report", help="removed rows with reasons, jsonl")
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args(argv)
  bad_rows = records.BadRows()
  if args.train in sources.SOURCES:
    train = sources.load(args.train, args.data_dir, bad_rows=bad_rows)
  else:
    train = sources.load_jsonl_problems(args.train, bad_rows=bad_rows)
  decontaminator = Decontaminator(benchmark_problems(args.data_dir, bad_rows=bad_rows))
  clean, report = decontaminator.filter(train)
  sources.write_jsonl(clean, args.out)
  if args.report:
    report.write_jsonl(args.report)
  print(json.dumps(report.counts(), indent=1))
  print(bad_rows.summary())


if __name__ == "__main__":
  main()
