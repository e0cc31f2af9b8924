"""RL query selection (SPEC §3.3): keep the RM queries the SFT model solves sometimes.

    summary = rl_queries_round(sampler, rm_problems, out_dir, SampleConfig(n=8))

The SFT model samples 8 responses per query; a query with gold answer stays when 2 to 5 of
them are correct (``RlQueryConfig``), i.e. neither too easy nor too hard for GRPO groups to
carry a signal. Queries without a gold answer are left out (the verifier reward needs one).

Files under ``out_dir`` (``graded.write_outputs``): ``queries.jsonl``, the kept problems in the
common schema (``sources.Problem.to_dict``; read them back with
``sources.load_jsonl_problems`` and feed ``pipelines.rl_pipeline``), ``problems.jsonl`` (per
query: correct count, kept or not) and ``summary.json``.
"""

import collections
import dataclasses
from collections.abc import Sequence

from qmath_jax.data import sources
from qmath_jax.rounds import graded as graded_lib

QUERIES_FILE = "queries.jsonl"


@dataclasses.dataclass(frozen=True)
class RlQueryConfig:
  """Correct responses (of ``SampleConfig.n`` = 8) a kept query has: min_correct..max_correct."""
  min_correct: int = 2
  max_correct: int = 5

  def __post_init__(self):
    if not 0 <= self.min_correct <= self.max_correct:
      raise ValueError(f"need 0 <= min_correct <= max_correct, got {self.min_correct}, "
                       f"{self.max_correct}")


def is_rl_query(g: graded_lib.Graded, cfg: RlQueryConfig) -> bool:
  """True for a query with gold answer and between min and max correct responses."""
  return g.has_gold and cfg.min_correct <= g.num_correct <= cfg.max_correct


def write_rl_queries(graded: Sequence[graded_lib.Graded], out_dir,
                     cfg: RlQueryConfig = RlQueryConfig(), settings: dict | None = None) -> dict:
  """Writes the kept queries and their stats; returns the summary."""
  keep = [is_rl_query(g, cfg) for g in graded]
  per_problem = [{"id": g.problem.id, "dataset": g.problem.dataset,
                  "num_sampled": len(g.responses),
                  "num_correct": g.num_correct if g.has_gold else None, "kept": k}
                 for g, k in zip(graded, keep)]
  histogram = collections.Counter(g.num_correct for g in graded if g.has_gold)
  summary = {"num_queries": len(graded), "num_kept": sum(keep),
             "num_no_gold": sum(1 for g in graded if not g.has_gold),
             "queries_per_num_correct": {str(k): histogram[k] for k in sorted(histogram)},
             "config": {"rl_queries": dataclasses.asdict(cfg), **(settings or {})}}
  rows = [g.problem.to_dict() for g, k in zip(graded, keep) if k]
  return graded_lib.write_outputs(out_dir, QUERIES_FILE, rows, per_problem, summary)


def rl_queries_round(sampler, problems: Sequence[sources.Problem], out_dir,
                     sample_cfg: graded_lib.SampleConfig,
                     cfg: RlQueryConfig = RlQueryConfig()) -> dict:
  """Samples ``sample_cfg.n`` responses per problem and writes the queries GRPO trains on."""
  if cfg.max_correct > sample_cfg.n:
    raise ValueError(f"RlQueryConfig.max_correct {cfg.max_correct} > SampleConfig.n "
                     f"{sample_cfg.n}")
  graded = graded_lib.sample_and_grade(sampler, problems, sample_cfg)
  return write_rl_queries(graded, out_dir, cfg, {"sample": dataclasses.asdict(sample_cfg)})
