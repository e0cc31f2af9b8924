"""Rewards for RL and reranking (SPEC §3.3): the rule-based verifier, RM scores, their shaping.

    r_v = verifier_reward(completion.text, problem)            # 1.0 or 0.0
    scorer = RewardModelScorer(cfg, rm_params, tokenizer)
    r_m = scorer.score([messages + [{"role": "assistant", "content": text}], ...])  # fp32 [n]
    r = shaped_reward(r_m, r_v, alpha=0.5)          # sigmoid(alpha r_m) + (r_v - 1)

The scorer interface (`ScorerLike`): anything with `score(conversations) -> np.ndarray`
(float32, one score per conversation) is a scorer. A conversation is a ChatML messages list
(system / user / assistant dicts, `qmath_jax.data.chat`) ending with the assistant response
being scored; the RM reads it chat-formatted, as it was trained (SPEC §3.2). Rejection sampling, RM@N and RL all
take scorers through this one interface, so a test double only needs that method.
"""

import functools
from collections.abc import Sequence
from typing import Protocol

import jax
import numpy as np

from qmath_jax import parallel
from qmath_jax.data import chat
from qmath_jax.data.sources import Problem
from qmath_jax.evaluation import benchmarks
from qmath_jax.model.config import ModelConfig
from qmath_jax.sampling.sampler import bucket
from qmath_jax.train import reward_model


class ScorerLike(Protocol):
  """A reward model behind one call: conversations -> float32 scores `[len(conversations)]`."""

  def score(self, conversations: Sequence[Sequence[dict]]) -> np.ndarray:
    ...


def verifier_reward(response_text: str, problem: Problem, timeout: float = 3.0) -> float:
  """1.0 when the response's final answer equals the problem's gold, else 0.0: evaluation's
  scoring (`benchmarks.grade_texts`), letters A-E where the problem is a choice problem.

  Args:
    response_text: the assistant response.
    problem: the problem; its dataset and gold decide the extraction (`Problem.is_choice`).
    timeout: seconds for the grader's symbolic check (a timeout counts as wrong).
  """
  _, (correct,) = benchmarks.grade_texts([response_text], problem.answer, problem.dataset,
                                         problem.is_choice, timeout)
  return 1.0 if correct else 0.0


def shaped_reward(rm_score, verified, alpha: float = 0.5) -> np.ndarray:
  """SPEC §3.3: `sigmoid(alpha * r_m) + (r_v - 1)`; correct lands in (0, 1), wrong in (-1, 0).

  Args:
    rm_score: RM scores r_m, any shape.
    verified: verifier rewards r_v in {0, 1}, broadcastable to `rm_score`.
    alpha: RM score scale (SPEC: 0.5).

  Returns:
    float32 array of the broadcast shape.
  """
  rm_score = np.asarray(rm_score, np.float64)
  verified = np.asarray(verified, np.float64)
  return (1.0 / (1.0 + np.exp(-alpha * rm_score)) + (verified - 1.0)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"))
def _scores(params, tokens, positions, segment_ids, *, cfg: ModelConfig, mesh):
  """fp32 `[rows]` RM scores of right-padded rows `[rows, length]`; on a mesh, whole on every
  device (the host reads them)."""
  scores = reward_model.make_reward_model(cfg).apply({"params": params}, tokens, positions,
                                                     segment_ids)
  if mesh is None:
    return scores
  return jax.lax.with_sharding_constraint(scores, parallel.replicated(mesh))


class RewardModelScorer:
  """Scores chat conversations with a `train.reward_model.RewardModel`.

  Conversations are rendered with `chat.render`, tokenized, right-padded to a length bucket
  (`sampling.sampler.bucket`: powers of two and their halfway points, at most `max_length`)
  and scored `batch_size` rows at a time, so a call compiles once per length bucket and never
  per call; the score is read at each row's last token.

  With a mesh, each batch's rows are split over its ('data', 'fsdp') axes and the scores come
  back whole on every device: on a mesh that spans several processes, every process makes the
  same calls and gets every score.
  """

  def __init__(self, model_config: ModelConfig, rm_params, tokenizer, *, batch_size: int = 16,
               max_length: int | None = None, mesh=None):
    """
    Args:
      model_config: the RM backbone's config.
      rm_params: `RewardModel` parameters `{"backbone", "score_head"}` (unboxed).
      tokenizer: encode / pad_id (`qmath_jax.data.tokenizer.Tokenizer` or a table tokenizer).
      batch_size: rows per forward (the last batch is padded to it); on a mesh, rounded up
        to a multiple of data x fsdp.
      max_length: longest conversation in tokens (default: the model's max positions).
      mesh: optional mesh that `rm_params` live on (needed when it spans several processes);
        params off it (e.g. loaded onto one device) are copied onto it whole.
    """
    max_length = max_length or model_config.max_position_embeddings
    if batch_size < 1 or max_length < 1:
      raise ValueError(f"batch_size={batch_size} and max_length={max_length} must be >= 1")
    if max_length > model_config.max_position_embeddings:
      raise ValueError(f"max_length={max_length} exceeds max_position_embeddings="
                       f"{model_config.max_position_embeddings}")
    if mesh is None and any(isinstance(x, jax.Array) and not x.is_fully_addressable
                            for x in jax.tree.leaves(rm_params)):
      raise ValueError("rm_params span several processes: pass their mesh to the scorer")
    if mesh is not None:
      shards = parallel.batch_shards(mesh)
      batch_size = -(-batch_size // shards) * shards
      rm_params = parallel.onto_mesh(rm_params, mesh)
    self.cfg = model_config
    self.params = rm_params
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.batch_size = batch_size
    self.max_length = max_length

  def encode(self, conversations: Sequence[Sequence[dict]]) -> list[list[int]]:
    """Token ids of each chat-formatted conversation; raises ValueError when one is too long
    or holds an id outside the RM's vocabulary."""
    texts = []
    for i, messages in enumerate(conversations):
      if not messages or messages[-1].get("role") != "assistant":
        raise ValueError(f"conversation {i} must end with an assistant message")
      texts.append(chat.render(messages))
    return self._encode_texts(texts, "conversation")

  def _encode_texts(self, texts: Sequence[str], what: str) -> list[list[int]]:
    encoded = []
    for i, text in enumerate(texts):
      ids = self.tokenizer.encode(text)
      if len(ids) > self.max_length:
        raise ValueError(f"{what} {i} has {len(ids)} tokens > max_length={self.max_length}")
      bad = [t for t in ids if not 0 <= int(t) < self.cfg.vocab_size]
      if bad:  # the embedding lookup would clamp them into other tokens' rows
        raise ValueError(f"{what} {i} has token id {bad[0]} outside the reward model's "
                         f"vocabulary of {self.cfg.vocab_size}: is the tokenizer the RM's?")
      encoded.append(ids)
    return encoded

  def score(self, conversations: Sequence[Sequence[dict]]) -> np.ndarray:
    """float32 `[len(conversations)]`: the RM score of each conversation."""
    return self._score_ids(self.encode(conversations))

  def score_completions(self, prompt_texts: Sequence[str],
                        completions: Sequence[Sequence[str]]) -> list[list[float]]:
    """RM scores of rendered prompts' completions (`evaluation.runner.ScoreFn`, for RM@N).

    Each prompt is ChatML ending in an open assistant turn; prompt + completion + the turn's
    end is the conversation the RM reads (the same text `score` renders).
    """
    texts = [prompt + text + chat.IM_END + "\n"
             for prompt, row in zip(prompt_texts, completions) for text in row]
    flat = self._score_ids(self._encode_texts(texts, "completion")).tolist()
    out, start = [], 0
    for row in completions:
      out.append(flat[start:start + len(row)])
      start += len(row)
    return out

  def _score_ids(self, encoded: list[list[int]]) -> np.ndarray:
    out = np.zeros((len(encoded),), np.float32)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths together
    for start in range(0, len(order), self.batch_size):
      rows = order[start:start + self.batch_size]
      length = min(bucket(max(len(encoded[i]) for i in rows)), self.max_length)
      tokens = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
      positions = np.zeros((self.batch_size, length), np.int32)
      segment_ids = np.zeros((self.batch_size, length), np.int32)
      segment_ids[len(rows):, 0] = 1  # filler rows: one token each, scores unused
      for r, i in enumerate(rows):
        ids = encoded[i]
        tokens[r, :len(ids)] = ids
        positions[r, :len(ids)] = np.arange(len(ids))
        segment_ids[r, :len(ids)] = 1
      with parallel.on_mesh(self.mesh):
        put = lambda x: parallel.host_array_on_mesh(x, self.mesh)
        scores = _scores(self.params, put(tokens), put(positions), put(segment_ids),
                         cfg=self.cfg, mesh=self.mesh)
      out[rows] = np.asarray(scores, np.float32)[:len(rows)]
    return out
