"""Per-problem scores from N graded samples: greedy, maj@N, RM@N, pass@k (unbiased)."""

import collections
import math
from collections.abc import Sequence


def majority_index(preds: Sequence[str]) -> int:
  """Index of the first member of the most common non-empty answer (exact string vote).

  Ties go to the answer seen first; all-empty predictions vote for sample 0.
  """
  counts = collections.Counter(p for p in preds if p)
  if not counts:
    return 0
  best = max(counts.values())
  for i, p in enumerate(preds):
    if p and counts[p] == best:
      return i
  return 0


def best_score_index(scores: Sequence[float]) -> int:
  """argmax of the reward-model scores, the first one on ties."""
  if not scores:
    raise ValueError("best_score_index: no scores")
  best = 0
  for i, s in enumerate(scores):
    if s > scores[best]:
      best = i
  return best


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def problem_scores(preds: Sequence[str], correct: Sequence[bool],
                   scores: Sequence[float] | None, ks: Sequence[int]) -> dict:
  """Scores of one problem from its N samples (the first sample is the greedy one if N=1)."""
  n = len(correct)
  out = {"acc": float(correct[0]), "mean": sum(correct) / n,
         "maj": float(correct[majority_index(preds)])}
  if scores is not None:
    out["rm"] = float(correct[best_score_index(scores)])
  for k in ks:
    if k <= n:
      out[f"pass@{k}"] = pass_at_k(n, sum(bool(c) for c in correct), k)
  return out
