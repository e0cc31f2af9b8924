"""Sample n responses per problem with the current model, extract, grade and (optionally) score.

The one step every self-improvement round starts with (SPEC §3.1-§3.3): rejection sampling
for SFT data, reward-model lists and RL query selection all read the ``Graded`` records that
``sample_and_grade`` returns.

    graded = sample_and_grade(sampler, problems, SampleConfig(n=6), scorer=rm)

``sampler`` is any ``qmath_jax.sampling.types.SamplerLike``: the plain sampler for CoT, or
``qmath_jax.sampling.tir.TirSampler`` for TIR, whose completion text is the whole transcript
(model text with the "```output" blocks of the interpreter spliced in). ``scorer`` is any
object with ``score(conversations) -> np.ndarray`` float32 ``[len(conversations)]``, each
conversation a ChatML messages list [system, user, assistant] ending with the response.

In a multi-process run every process makes the same sampler and scorer calls; the writer
process alone grades (every process gets its grades) and writes a round's files.
"""

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import numpy as np

from qmath_jax import parallel
from qmath_jax.data import chat
from qmath_jax.data import pipelines
from qmath_jax.data import records
from qmath_jax.data import sources
from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import runner
from qmath_jax.rl.rewards import ScorerLike

PROBLEMS_FILE = "problems.jsonl"
SUMMARY_FILE = "summary.json"


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """How the current model samples (SPEC: temperature 0.7, top_p 0.8, 2048 new tokens).

  Attributes:
    n: responses per problem (rejection sampling: not reported; RM data: 6; RL queries: 8).
    prompt_type: "cot" or "tir"; picks the system prompt (``chat.SYSTEM_PROMPTS``).
    seed: the sampler call of problems [i, i + batch_size) uses seed + i.
    batch_size: problems per sampler call (and per scorer call).
    grade_timeout: seconds per ``grader.math_equal`` check.
  """
  n: int = 8
  temperature: float = 0.7
  top_p: float = 0.8
  top_k: int = 0
  max_new_tokens: int = 2048
  stop: tuple[str, ...] = runner.STOP_STRINGS
  prompt_type: str = "cot"
  seed: int = 0
  batch_size: int = 64
  grade_timeout: float = 3.0

  def __post_init__(self):
    if self.prompt_type not in chat.SYSTEM_PROMPTS:
      raise ValueError(f"prompt_type {self.prompt_type!r}; expected one of "
                       f"{sorted(chat.SYSTEM_PROMPTS)}")
    if self.n < 1 or self.batch_size < 1:
      raise ValueError(f"n {self.n} and batch_size {self.batch_size} must be >= 1")


@dataclasses.dataclass
class Graded:
  """One problem's n sampled responses, graded.

  Attributes:
    problem: the problem (``answer`` "" means no gold answer).
    prompt_type: "cot" or "tir".
    messages: the [system, user] prompt turns.
    responses: [n] response texts (TIR: the whole transcript).
    finish_reasons: [n] ``types.FINISH_*`` (or ``tir.FINISH_MAX_CALLS``).
    preds: [n] extracted, normalised final answers ("" when none).
    correct: [n] ``math_equal(pred, gold)``; None when the problem has no gold answer.
    scores: float32 [n] reward-model scores; None without a scorer.
  """
  problem: sources.Problem
  prompt_type: str
  messages: list[dict]
  responses: list[str]
  finish_reasons: list[str]
  preds: list[str]
  correct: list[bool] | None
  scores: np.ndarray | None = None

  @property
  def has_gold(self) -> bool:
    return self.correct is not None

  @property
  def num_correct(self) -> int:
    return sum(self.correct) if self.correct is not None else 0

  def conversation(self, i: int) -> list[dict]:
    """[system, user, assistant] with response i."""
    return self.messages + [{"role": "assistant", "content": self.responses[i]}]


def grade(problem: sources.Problem, prompt_type: str, responses: Sequence[str],
          finish_reasons: Sequence[str], timeout: float = 3.0) -> Graded:
  """Extracts and grades the responses of one problem (no sampling, no scores)."""
  gold = problem.answer.strip()
  preds, correct = benchmarks.grade_texts(responses, gold, problem.dataset, problem.is_choice,
                                          timeout)
  return Graded(problem=problem, prompt_type=prompt_type,
                messages=pipelines.prompt_messages(problem, chat.SYSTEM_PROMPTS[prompt_type]),
                responses=list(responses), finish_reasons=list(finish_reasons), preds=preds,
                correct=correct if gold else None)


def score_all(scorer: ScorerLike, graded: Sequence[Graded]) -> None:
  """Fills ``scores`` of every record with one ``scorer.score`` call over all their responses."""
  conversations = [g.conversation(i) for g in graded for i in range(len(g.responses))]
  scores = np.asarray(scorer.score(conversations), np.float32)
  if scores.shape != (len(conversations),):
    raise ValueError(f"scorer returned shape {scores.shape} for {len(conversations)} "
                     "conversations; expected one score each")
  start = 0
  for g in graded:
    g.scores = scores[start:start + len(g.responses)]
    start += len(g.responses)


def sample_and_grade(sampler, problems: Sequence[sources.Problem], cfg: SampleConfig,
                     scorer: ScorerLike | None = None) -> list[Graded]:
  """Samples ``cfg.n`` responses per problem, grades them, scores them when given a scorer.

  Returns:
    one ``Graded`` per problem, in the order of ``problems``.
  """
  system = chat.SYSTEM_PROMPTS[cfg.prompt_type]
  out = []
  for start in range(0, len(problems), cfg.batch_size):
    batch = problems[start:start + cfg.batch_size]
    prompts = [chat.render(pipelines.prompt_messages(p, system), add_generation_prompt=True)
               for p in batch]
    completions = sampler.generate(prompts, cfg.n, temperature=cfg.temperature,
                                   top_p=cfg.top_p, top_k=cfg.top_k,
                                   max_new_tokens=cfg.max_new_tokens, stop=tuple(cfg.stop),
                                   seed=cfg.seed + start)
    if len(completions) != len(batch) or any(len(c) != cfg.n for c in completions):
      raise ValueError(f"sampler returned {[len(c) for c in completions]} completions for "
                       f"{len(batch)} prompts x n={cfg.n}")
    graded = parallel.on_writer(lambda: [  # graded once, the same on every process
        grade(p, cfg.prompt_type, [c.text for c in row], [c.finish_reason for c in row],
              cfg.grade_timeout) for p, row in zip(batch, completions)])
    if scorer is not None:
      score_all(scorer, graded)
    out.extend(graded)
  return out


def write_outputs(out_dir, data_file: str, rows: Sequence[dict], per_problem: Sequence[dict],
                  summary: dict) -> dict:
  """Writes a round's files under ``out_dir``, each through a temp name and a rename.

  ``<data_file>`` (training rows, jsonl), ``problems.jsonl`` (one stats row per problem) and,
  last, ``summary.json`` (sorted keys), whose presence marks the round complete. In a
  multi-process run only the writer process writes them, and every process returns once they
  are written. Returns the summary as written (tuples read back as lists).
  """
  out_dir = pathlib.Path(out_dir)
  text = json.dumps(summary, indent=2, sort_keys=True) + "\n"

  def write():
    records.write_jsonl(rows, out_dir / data_file)
    records.write_jsonl(per_problem, out_dir / PROBLEMS_FILE)
    records.write_atomic(out_dir / SUMMARY_FILE, text)

  parallel.write_once(write, f"round files written in {out_dir}")
  return json.loads(text)
