"""The eval stage: sample, extract, grade and score every benchmark; write the report.

    results = run_eval(sampler, workdir, EvalConfig(datasets=("gsm8k", "math"), n=8,
                       temperature=0.7, top_p=0.8), score_fn=rm_scores)

`sampler` is anything with the `qmath_jax.sampling.types.SamplerLike` interface (the plain
sampler for "cot"; the TIR sampler for "tir", which runs the code itself). Completed problems
are appended to `workdir/samples/<dataset>.jsonl` batch by batch, so a stopped run resumes
where it stopped. Each batch uses seed `config.seed + index of its first problem`.

In a multi-process run every process samples and returns the same results; the writer process
(`parallel.is_writer`) alone grades (sharing the grades) and writes files: every process reads
the cached samples before the writer appends to them, and all wait for the report.
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Sequence

from qmath_jax import parallel
from qmath_jax.data import records
from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import metrics
from qmath_jax.evaluation import prompts
from qmath_jax.evaluation import report

ScoreFn = Callable[[list[str], list[list[str]]], list[list[float]]]
STOP_STRINGS = ("<|im_end|>", "<|endoftext|>")


@dataclasses.dataclass
class EvalConfig:
  """What to evaluate and how to sample (SPEC defaults: greedy, 2048 new tokens).

  For maj@N / RM@N use n=8 (64 for aime24/amc23 in the report), temperature=0.7, top_p=0.8.
  """
  datasets: Sequence[str] = ("gsm8k", "math")
  prompt_type: str = "cot"          # "cot" or "tir"
  n: int = 1                        # samples per problem
  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0
  max_new_tokens: int = 2048
  stop: Sequence[str] = STOP_STRINGS
  seed: int = 0
  batch_size: int = 64              # problems per sampler call
  limit: int | None = None          # first `limit` problems of each dataset
  pass_k: Sequence[int] = (1, 8)
  grade_timeout: float = 3.0
  data_dir: str | None = None

  @classmethod
  def from_mapping(cls, values) -> "EvalConfig":
    """From a dict or ConfigDict (e.g. `config.eval`); unknown keys are an error."""
    values = dict(values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown eval settings {unknown}; known: {sorted(known)}")
    for key in ("datasets", "stop", "pass_k"):
      if key in values:
        values[key] = tuple(values[key])
    return cls(**values)

  def fingerprint(self) -> dict:
    """The settings a cached sample depends on (resuming with others is an error)."""
    return {"prompt_type": self.prompt_type, "n": self.n, "temperature": self.temperature,
            "top_p": self.top_p, "top_k": self.top_k, "max_new_tokens": self.max_new_tokens,
            "seed": self.seed}


def _load_samples(path: pathlib.Path, fingerprint: dict) -> dict[int, dict]:
  """Cached records by problem index; a torn last line (crash mid-append) is dropped."""
  if not path.exists():
    return {}
  lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
  cached, kept = {}, []
  for line_no, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if line_no == len(lines):
        break   # torn final append: drop it and rewrite the file without it
      raise ValueError(f"{path}:{line_no}: corrupt sample record ({e.msg})") from e
    if record.get("config") != fingerprint:
      raise ValueError(f"{path}:{line_no}: made with eval settings {record.get('config')}, "
                       f"not {fingerprint}; use another workdir or delete the file")
    cached[record["index"]] = record
    kept.append(line if line.endswith("\n") else line + "\n")
  if parallel.is_writer() and (len(kept) != len(lines) or
                               (lines and not lines[-1].endswith("\n"))):
    records.write_atomic(path, "".join(kept))
  return cached


def _append(path: pathlib.Path, new: list[dict]) -> None:
  """Appends whole lines in one write, flushed to disk."""
  text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new)
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def _rm_prompts(batch: list[benchmarks.Problem], kind: str, config: EvalConfig) -> list[str]:
  """The RM reads [system, question, response] (SPEC), as it was trained: no exemplars."""
  return [prompts.build_prompt(p.question, kind, config.prompt_type, few_shot=False)
          for p in batch]


def _score_cached(done: dict[int, dict], problems: list[benchmarks.Problem], kind: str,
                  config: EvalConfig, samples_path: pathlib.Path, score_fn: ScoreFn) -> None:
  """Adds RM scores to cached records made without a reward model; rewrites the file."""
  unscored = [p for p in problems if p.index in done and done[p.index].get("scores") is None]
  if not unscored:
    return
  for start in range(0, len(unscored), config.batch_size):
    batch = unscored[start:start + config.batch_size]
    scores = score_fn(_rm_prompts(batch, kind, config),
                      [done[p.index]["responses"] for p in batch])
    for problem, per_prompt in zip(batch, scores):
      done[problem.index] = {**done[problem.index],
                             "scores": [float(s) for s in per_prompt]}
  if parallel.is_writer():
    records.write_atomic(samples_path, "".join(
        json.dumps(done[i], ensure_ascii=False) + "\n" for i in sorted(done)))


def sample_dataset(sampler, problems: list[benchmarks.Problem], kind: str, config: EvalConfig,
                   samples_path: pathlib.Path, score_fn: ScoreFn | None = None) -> list[dict]:
  """Samples, grades and caches every problem not yet in `samples_path`; returns all records.

  With `score_fn`, cached records made without one get their RM scores now.
  """
  fingerprint = config.fingerprint()
  done = _load_samples(samples_path, fingerprint)
  parallel.barrier(f"read {samples_path.name}")  # before the writer appends to it
  if score_fn is not None:
    _score_cached(done, problems, kind, config, samples_path, score_fn)
  todo = [p for p in problems if p.index not in done]
  for start in range(0, len(todo), config.batch_size):
    batch = todo[start:start + config.batch_size]
    # The gold decides only whether a Chinese choice set is few-shot (one letter), as in
    # Qwen's harness; it never enters the prompt text.
    prompt_texts = [prompts.build_prompt(p.question, kind, config.prompt_type, p.choice,
                                         answer=p.gold) for p in batch]
    completions = sampler.generate(
        prompt_texts, config.n, temperature=config.temperature, top_p=config.top_p,
        top_k=config.top_k, max_new_tokens=config.max_new_tokens, stop=tuple(config.stop),
        seed=config.seed + batch[0].index)
    if len(completions) != len(batch) or any(len(c) != config.n for c in completions):
      raise ValueError(f"sampler returned {[len(c) for c in completions]} completions for "
                       f"{len(batch)} prompts x n={config.n}")
    texts = [[c.text for c in per_prompt] for per_prompt in completions]
    scores = None
    if score_fn is not None:
      scores = score_fn(_rm_prompts(batch, kind, config), texts)
    graded = parallel.on_writer(lambda: [  # graded once, the same on every process
        benchmarks.grade(problem, texts[k], kind, config.grade_timeout)
        for k, problem in enumerate(batch)])
    new = []
    for k, (problem, per_prompt) in enumerate(zip(batch, completions)):
      preds, correct = graded[k]
      new.append({
          "index": problem.index, "id": problem.id, "gold": problem.gold,
          "choice": problem.choice, "responses": texts[k], "preds": preds, "correct": correct,
          "finish_reasons": [c.finish_reason for c in per_prompt],
          "scores": [float(s) for s in scores[k]] if scores is not None else None,
          "config": fingerprint})
    if parallel.is_writer():
      _append(samples_path, new)
    done.update((r["index"], r) for r in new)
  wanted = {p.index for p in problems}
  return [done[i] for i in sorted(done) if i in wanted]


def dataset_scores(samples: list[dict], ks: Sequence[int]) -> dict:
  """Mean of each per-problem score over a dataset, in percent, plus the problem count.

  A score only some problems have (RM@N where only part of a resumed file was scored) is left
  out.
  """
  if not samples:
    return {"num_problems": 0}
  per_problem = [metrics.problem_scores(r["preds"], r["correct"], r.get("scores"), ks)
                 for r in samples]
  keys = [k for k in per_problem[0] if all(k in p for p in per_problem)]
  out = {k: 100.0 * sum(p[k] for p in per_problem) / len(per_problem) for k in keys}
  out["num_problems"] = len(samples)
  return out


def headline_metric(config: EvalConfig, has_scores: bool) -> str:
  """The score the report leads with: greedy accuracy, RM@N, or maj@N."""
  if config.n == 1:
    return "acc"
  return "rm" if has_scores else "maj"


def run_eval(sampler, workdir, config: EvalConfig, score_fn: ScoreFn | None = None) -> dict:
  """Evaluates every dataset in `config.datasets`; writes samples, JSON, markdown and PNG."""
  workdir = pathlib.Path(workdir)
  if parallel.is_writer():
    (workdir / "samples").mkdir(parents=True, exist_ok=True)
  per_dataset = {}
  for name in config.datasets:
    bench = benchmarks.get(name)
    problems = benchmarks.load(name, config.data_dir, config.limit)
    done = sample_dataset(sampler, problems, bench.kind, config,
                          workdir / "samples" / f"{name}.jsonl", score_fn)
    per_dataset[name] = dataset_scores(done, config.pass_k)
  metric = headline_metric(config, score_fn is not None)
  results = {
      "config": {**config.fingerprint(), "datasets": list(config.datasets),
                 "limit": config.limit},
      "metric": metric,
      "metric_label": report.metric_label(metric, config.n),
      "datasets": per_dataset,
      "averages": report.group_averages(per_dataset, metric),
  }
  parallel.write_once(lambda: report.write_all(workdir, results), "eval report written")
  return results
