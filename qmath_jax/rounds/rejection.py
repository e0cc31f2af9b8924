"""RM-guided rejection sampling: the current model's best responses become SFT data (SPEC §3.1).

    summary = rejection_round(sampler, problems, out_dir, SampleConfig(n=8), RejectionConfig(),
                              scorer=rm)

Per problem, from its n graded samples (``graded.sample_and_grade``):
  1. Responses cut at ``max_new_tokens`` (finish reason "length") are dropped
     (``RejectionConfig.drop_truncated``).
  2. The target answer. With a gold answer: the responses graded correct. Without one: the
     answer of the weighted majority vote (``weighted_vote``; weight sigmoid(RM score), or 1
     without a scorer) over the remaining responses, then the responses with that exact answer.
  3. Duplicates (the same text once whitespace runs are collapsed) are removed; the earliest
     sample stays.
  4. Ranked by RM score, highest first (sample order on ties; sample order without a scorer);
     the first ``top_k`` are kept.

TIR (online rejection fine-tuning): sample with ``sampling.tir.TirSampler`` and
``SampleConfig(prompt_type="tir")``, without a scorer. The same rule then keeps the distinct
responses whose final answer matches the gold answer (or, for synthetic problems without one,
the plain majority answer), in sample order. A TIR transcript is stored as one assistant
message: the model's text with every interpreter result spliced in as "```output\\n...\\n```"
(exactly what ``TirSampler`` returns and what the TIR prompt continues at inference time), under
the TIR system prompt. ``sft_pipeline`` leaves the output blocks out of the loss
(``chat.tool_output_spans``, as RL leaves them out with the sampler's ``model_mask``), so SFT
trains on the model's text and code only; ``data.mask_tool_outputs=False`` trains on them too.

Files under ``out_dir`` (``graded.write_outputs``): ``sft.jsonl`` rows
``{"id", "messages": [system, user, assistant], "source": {...}}`` as
``pipelines.load_conversations`` / ``sft_pipeline`` read them, ``problems.jsonl`` (per problem:
sampled, correct, kept, voted answer) and ``summary.json``.
"""

import collections
import dataclasses
import math
from collections.abc import Sequence

from qmath_jax.data import sources
from qmath_jax.rounds import graded as graded_lib
from qmath_jax.sampling import types

SFT_FILE = "sft.jsonl"


@dataclasses.dataclass(frozen=True)
class RejectionConfig:
  """What one problem keeps.

  Attributes:
    top_k: responses kept per problem at most (the report gives no number; 4 here).
    drop_truncated: drop responses that reached max_new_tokens without finishing.
  """
  top_k: int = 4
  drop_truncated: bool = True

  def __post_init__(self):
    if self.top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {self.top_k}")


def weighted_vote(preds: Sequence[str], weights: Sequence[float]) -> str:
  """The non-empty answer with the largest total weight; "" when every answer is empty.

  Answers vote by exact string (they are normalised by extraction), as Maj@N does. Exact ties
  go to the answer that appears first, so uniform weights pick what
  ``evaluation.metrics.majority_index`` picks.
  """
  totals = {}
  for pred, weight in zip(preds, weights, strict=True):
    if pred:
      totals[pred] = totals.get(pred, 0.0) + float(weight)
  if not totals:
    return ""
  best = max(totals.values())
  return next(pred for pred, total in totals.items() if total == best)


def _sigmoid(x: float) -> float:
  return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _normalised(text: str) -> str:
  return " ".join(text.split())


def select(g: graded_lib.Graded, cfg: RejectionConfig) -> tuple[list[int], dict]:
  """Indices of the kept responses of one problem, best first, and its stats row."""
  usable = [i for i, reason in enumerate(g.finish_reasons)
            if not (cfg.drop_truncated and reason == types.FINISH_LENGTH)]
  voted = None
  if g.has_gold:
    matching = [i for i in usable if g.correct[i]]
  else:
    weights = [1.0 if g.scores is None else _sigmoid(float(g.scores[i])) for i in usable]
    voted = weighted_vote([g.preds[i] for i in usable], weights)
    matching = [i for i in usable if voted and g.preds[i] == voted]
  seen, distinct = set(), []
  for i in matching:
    key = _normalised(g.responses[i])
    if key not in seen:
      seen.add(key)
      distinct.append(i)
  if g.scores is not None:
    distinct.sort(key=lambda i: (-float(g.scores[i]), i))
  kept = distinct[:cfg.top_k]
  stats = {"id": g.problem.id, "dataset": g.problem.dataset, "prompt_type": g.prompt_type,
           "gold": g.problem.answer.strip() or None, "voted": voted,
           "num_sampled": len(g.responses), "num_truncated": len(g.responses) - len(usable),
           "num_correct": g.num_correct if g.has_gold else None,
           "num_matching": len(matching), "num_distinct": len(distinct),
           "num_kept": len(kept), "kept": kept}
  return kept, stats


def sft_rows(g: graded_lib.Graded, kept: Sequence[int]) -> list[dict]:
  """SFT rows of the kept responses: ``{"id", "messages", "source"}``."""
  rows = []
  for rank, i in enumerate(kept):
    rows.append({
        "id": f"{g.problem.id}#{g.prompt_type}{i}", "messages": g.conversation(i),
        "source": {"problem_id": g.problem.id, "dataset": g.problem.dataset,
                   "prompt_type": g.prompt_type, "sample": i, "rank": rank,
                   "answer": g.preds[i], "gold": g.problem.answer.strip() or None,
                   "score": None if g.scores is None else float(g.scores[i])}})
  return rows


def summarize(per_problem: Sequence[dict]) -> dict:
  """Counts over a round: problems, samples, pass rate on gold problems, kept per problem."""
  gold = [s for s in per_problem if s["gold"] is not None]
  sampled_gold = sum(s["num_sampled"] for s in gold)
  correct = sum(s["num_correct"] for s in gold)
  kept_hist = collections.Counter(s["num_kept"] for s in per_problem)
  return {
      "num_problems": len(per_problem), "num_with_gold": len(gold),
      "num_voted": len(per_problem) - len(gold),
      "num_sampled": sum(s["num_sampled"] for s in per_problem),
      "num_truncated": sum(s["num_truncated"] for s in per_problem),
      "num_correct": correct, "pass_rate": correct / sampled_gold if sampled_gold else None,
      "num_solved": sum(1 for s in gold if s["num_correct"]),
      "num_kept": sum(s["num_kept"] for s in per_problem),
      "num_problems_kept": sum(1 for s in per_problem if s["num_kept"]),
      "kept_per_problem": {str(k): kept_hist[k] for k in sorted(kept_hist)},
  }


def write_round(graded: Sequence[graded_lib.Graded], out_dir, cfg: RejectionConfig,
                settings: dict | None = None) -> dict:
  """Selects from every graded problem and writes the round's files; returns the summary."""
  rows, per_problem = [], []
  for g in graded:
    kept, stats = select(g, cfg)
    rows.extend(sft_rows(g, kept))
    per_problem.append(stats)
  summary = summarize(per_problem)
  summary["config"] = {"rejection": dataclasses.asdict(cfg), **(settings or {})}
  return graded_lib.write_outputs(out_dir, SFT_FILE, rows, per_problem, summary)


def rejection_round(sampler, problems: Sequence[sources.Problem], out_dir,
                    sample_cfg: graded_lib.SampleConfig, cfg: RejectionConfig = RejectionConfig(),
                    scorer: graded_lib.ScorerLike | None = None) -> dict:
  """Samples, grades and scores ``problems``, then writes the SFT data of the next round."""
  graded = graded_lib.sample_and_grade(sampler, problems, sample_cfg, scorer)
  return write_round(graded, out_dir, cfg, {"sample": dataclasses.asdict(sample_cfg),
                                            "scored": scorer is not None})
