"""Reward-model training lists from the current SFT model's samples (SPEC §3.2).

    summary = rm_data_round(sampler, problems, out_dir, SampleConfig(n=6), RmDataConfig())

Each query (a problem with a gold answer) with its ``list_size`` = 6 sampled responses becomes
one list; label = the response's final answer is correct (``graded.grade``). Queries whose
responses are all right or all wrong are dropped (no pair to rank). CoT and TIR lists mix by
concatenating the ``Graded`` records of a CoT and a TIR ``sample_and_grade`` call before
``write_rm_data``; ids carry the prompt type ("<problem id>#cot", "<problem id>#tir").

Balancing. The report says difficulty (correct responses per query, k in 1..5) and the
positive/negative ratio are balanced but gives no numbers; this rule and its defaults are ours:
  1. Difficulty: every bucket k holds at most ceil(``difficulty_cap`` x the median size of the
     non-empty buckets) lists (default 2.0; None: no cap). Rare buckets stay as they are.
  2. Positive share: while the share of positive labels over all kept lists lies above
     ``positive_fraction[1]``, one list leaves the largest bucket with k > 6/2 (ties: the larger
     k); while below ``positive_fraction[0]``, one leaves the largest with k < 6/2 (ties: the
     smaller k). Default (0.45, 0.55); None: no constraint.
  Which lists of a bucket leave is seeded: each bucket is shuffled with
  ``random.Random(f"{seed}/{k}")`` and its first target-many lists stay. Rows keep input order.

Files under ``out_dir`` (``graded.write_outputs``): ``rm.jsonl`` rows
``{"id", "messages": [system, user], "responses": [6], "labels": [6], "source": {...}}`` as
``pipelines.load_rm_lists`` / ``rm_pipeline`` read them, ``problems.jsonl`` (per query: correct
count and whether it was kept, or why not) and ``summary.json``.
"""

import dataclasses
import math
import random
import statistics
from collections.abc import Sequence

from qmath_jax.data import sources
from qmath_jax.rounds import graded as graded_lib

RM_FILE = "rm.jsonl"


@dataclasses.dataclass(frozen=True)
class RmDataConfig:
  """The list size and the balancing knobs (see the module docstring)."""
  list_size: int = 6
  difficulty_cap: float | None = 2.0
  positive_fraction: tuple[float, float] | None = (0.45, 0.55)
  seed: int = 0

  def __post_init__(self):
    if self.list_size < 2:
      raise ValueError(f"list_size must be >= 2, got {self.list_size}")
    if self.difficulty_cap is not None and self.difficulty_cap <= 0:
      raise ValueError(f"difficulty_cap must be > 0 or None, got {self.difficulty_cap}")
    if self.positive_fraction is not None:
      low, high = self.positive_fraction
      if not 0.0 <= low <= 0.5 <= high <= 1.0:
        raise ValueError(f"positive_fraction {self.positive_fraction}: need "
                         "0 <= low <= 0.5 <= high <= 1")


def balance_targets(counts: dict[int, int], cfg: RmDataConfig) -> dict[int, int]:
  """Lists to keep per difficulty bucket: {k correct: count} -> {k: kept count}."""
  target = dict(counts)
  sizes = [c for c in target.values() if c]
  if cfg.difficulty_cap is not None and sizes:
    cap = math.ceil(cfg.difficulty_cap * statistics.median(sizes))
    target = {k: min(c, cap) for k, c in target.items()}
  if cfg.positive_fraction is None:
    return target
  low, high = cfg.positive_fraction
  size = cfg.list_size
  while lists := sum(target.values()):
    share = sum(k * c for k, c in target.items()) / (size * lists)
    if share > high:
      side = [k for k, c in target.items() if c and 2 * k > size]
    elif share < low:
      side = [k for k, c in target.items() if c and 2 * k < size]
    else:
      break
    target[max(side, key=lambda k: (target[k], abs(2 * k - size)))] -= 1
  return target


def _status(g: graded_lib.Graded, list_size: int) -> str:
  if not g.has_gold:
    return "no gold"
  if len(g.responses) != list_size:
    raise ValueError(f"problem {g.problem.id!r}: {len(g.responses)} responses, "
                     f"RmDataConfig.list_size is {list_size}")
  return {0: "all wrong", list_size: "all correct"}.get(g.num_correct, "candidate")


def rm_row(g: graded_lib.Graded) -> dict:
  """One RM list: the prompt turns, the responses and their 0/1 labels."""
  return {"id": f"{g.problem.id}#{g.prompt_type}", "messages": g.messages,
          "responses": g.responses, "labels": [int(c) for c in g.correct],
          "source": {"problem_id": g.problem.id, "dataset": g.problem.dataset,
                     "prompt_type": g.prompt_type, "num_correct": g.num_correct}}


def _positive_share(graded: Sequence[graded_lib.Graded]) -> float | None:
  labels = sum(len(g.correct) for g in graded)
  return sum(g.num_correct for g in graded) / labels if labels else None


def write_rm_data(graded: Sequence[graded_lib.Graded], out_dir, cfg: RmDataConfig = RmDataConfig(),
                  settings: dict | None = None) -> dict:
  """Labels, filters and balances the lists of ``graded``; writes the files; returns the summary."""
  status = [_status(g, cfg.list_size) for g in graded]
  buckets = {k: [] for k in range(1, cfg.list_size)}
  for i, (g, s) in enumerate(zip(graded, status)):
    if s == "candidate":
      buckets[g.num_correct].append(i)
  target = balance_targets({k: len(v) for k, v in buckets.items()}, cfg)
  kept = set()
  for k, members in buckets.items():
    random.Random(f"{cfg.seed}/{k}").shuffle(members)
    kept.update(members[:target[k]])
  per_problem = []
  for i, (g, s) in enumerate(zip(graded, status)):
    s = ("kept" if i in kept else "balanced out") if s == "candidate" else s
    per_problem.append({"id": g.problem.id, "dataset": g.problem.dataset,
                        "prompt_type": g.prompt_type,
                        "num_correct": g.num_correct if g.has_gold else None, "status": s})
  kept_graded = [graded[i] for i in sorted(kept)]
  candidates = [graded[i] for members in buckets.values() for i in members]
  summary = {
      "num_queries": len(graded), "num_kept": len(kept),
      **{f"num_{s.replace(' ', '_')}": status.count(s)
         for s in ("no gold", "all wrong", "all correct")},
      "num_balanced_out": len(candidates) - len(kept),
      "lists_per_num_correct_before": {str(k): len(v) for k, v in buckets.items()},
      "lists_per_num_correct": {str(k): v for k, v in target.items()},
      "positive_fraction_before": _positive_share(candidates),
      "positive_fraction": _positive_share(kept_graded),
      "config": {"rm_data": dataclasses.asdict(cfg), **(settings or {})}}
  return graded_lib.write_outputs(out_dir, RM_FILE, [rm_row(g) for g in kept_graded],
                                  per_problem, summary)


def rm_data_round(sampler, problems: Sequence[sources.Problem], out_dir,
                  sample_cfg: graded_lib.SampleConfig, cfg: RmDataConfig = RmDataConfig()) -> dict:
  """Samples ``cfg.list_size`` responses per problem and writes the balanced RM lists."""
  if sample_cfg.n != cfg.list_size:
    raise ValueError(f"SampleConfig.n {sample_cfg.n} != RmDataConfig.list_size {cfg.list_size}")
  graded = graded_lib.sample_and_grade(sampler, problems, sample_cfg)
  return write_rm_data(graded, out_dir, cfg, {"sample": dataclasses.asdict(sample_cfg)})
