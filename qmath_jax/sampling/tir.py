"""Tool-integrated reasoning (TIR): generation interleaved with sandboxed Python execution.

The protocol of the Qwen2.5-Math evaluation (SPEC, "Inference and evaluation"): the model
writes ```python blocks; generation stops at the fence; when a python block has just been
closed its code runs and "```output\\n<result>\\n```\\n" is appended, then generation resumes.
At most `max_calls` code calls per sample; after the last one the sample ends. The code of
earlier calls is re-run first, as the Qwen executor does: blocks that ran without error in
full, output discarded, and only the import lines of blocks that failed. The shown result is
the error line when the program failed, else its output, else "Done" (Qwen's report text).

Every round is one batched `sampler.generate_ids` call over all unfinished samples, and every
round's programs run in parallel with one `sandbox.run_batch` call. Each sample comes back
with its response text, token ids, a mask that is 1 on model tokens and 0 on interpreter
output tokens (RL masks the latter out of the loss) and the sampler's log-probabilities.

In a multi-process run every process runs this loop alike, but a round's programs run on the
writer process only and every process continues with its results (`parallel.on_writer`): a
program whose output differs from run to run (time, randomness) still gives every process the
same next-round prompts, as the sampler on a mesh that spans several processes requires.

Contract with the sampler (`qmath_jax.sampling.types`): a completion's `text` is cut before
the stop string; `token_ids` include the token that completed it. When a completion stopped
at the fence, its text in the transcript is `tokenizer.decode(token_ids)`, so the transcript
holds the fence and whatever else that last token carried. When it stopped at an end-of-
sequence token or another stop string, the transcript takes `text` (the stop text is left
out, as in Qwen's transcripts) while `token_ids` keep the end token.
Each round sends the sampler the prompt's ids followed by the sample's `token_ids` so far
(model pieces as sampled, output pieces as encoded): exactly the ids of the training row that
RL builds from the sample, so the returned log-probs are those the training forward computes
on that row (an on-policy GRPO ratio of 1 for TIR samples too). Re-sending the transcript as
text instead would let a BPE tokenizer split the context differently at piece boundaries.
"""

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from qmath_jax import parallel
from qmath_jax.data import chat
from qmath_jax.sampling import types

FENCE = chat.FENCE
PYTHON_LANGUAGE = chat.TOOL_CODE_LANGUAGE
FINISH_MAX_CALLS = "max_calls"   # the sample ended after its last allowed code call
DEFAULT_STOP = ("<|im_end|>", "<|endoftext|>")
NO_OUTPUT_TEXT = "Done"


class TokenizerLike(Protocol):
  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...


class IdsSamplerLike(Protocol):
  """A sampler that continues token-id prompts (`qmath_jax.sampling.sampler.Sampler`)."""

  def generate_ids(self, prompt_ids: Sequence[Sequence[int]], n: int = 1, *,
                   temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                   max_new_tokens: int = 256, stop: Sequence[str] = (),
                   seed: int = 0) -> list[list[types.Completion]]:
    ...


class ExecutorLike(Protocol):
  """`qmath_jax.sandbox.PythonSandbox` or anything with its `run_batch`."""

  def run_batch(self, codes: Sequence[str], preludes: Sequence[Sequence[str]] | None = None):
    ...


@dataclasses.dataclass
class ToolCall:
  """One executed block: its code, what ran before it and the sandbox Result."""
  code: str
  prelude: list[str]
  result: object


@dataclasses.dataclass
class TirSample:
  """One finished TIR response.

  Attributes:
    text: the response: model text with the interpreter outputs spliced in.
    token_ids: [length] response token ids: the sampler's ids for model pieces and
      `tokenizer.encode` of each output piece.
    model_mask: [length] 1 for model-generated tokens, 0 for interpreter output tokens.
    logprobs: [length] sampler log-probability of each model token; 0.0 on output tokens.
    finish_reason: types.FINISH_STOP, types.FINISH_LENGTH or FINISH_MAX_CALLS.
    calls: the code calls, in order.
  """
  text: str = ""
  token_ids: list[int] = dataclasses.field(default_factory=list)
  model_mask: list[int] = dataclasses.field(default_factory=list)
  logprobs: list[float] = dataclasses.field(default_factory=list)
  finish_reason: str | None = None
  calls: list[ToolCall] = dataclasses.field(default_factory=list)


def closed_python_block(text: str) -> str | None:
  """The code of the python block that `text` has just closed, else None.

  `text` ends with a fence, or with a fence and the whitespace its token carried ("```\n" is
  one token in BPE vocabularies; Qwen's loop strips it too). When the fences in `text` pair
  up, the last pair is the block just closed; its opening line gives the language. An odd
  count means a block was just opened.
  """
  text = text.rstrip()
  if not text.endswith(FENCE) or text.count(FENCE) % 2:
    return None
  close = len(text) - len(FENCE)
  start = text.rfind(FENCE, 0, close)
  header, newline, body = text[start + len(FENCE):close].partition("\n")
  if header.strip() != PYTHON_LANGUAGE or not newline:
    return None
  return body


def _import_lines(code: str) -> str:
  return "\n".join(line for line in code.splitlines()
                   if line.startswith("import ") or line.startswith("from "))


def prelude_for(calls: Sequence[ToolCall]) -> list[str]:
  """Earlier code re-run before a new block: imports of failed blocks, then the good blocks."""
  failed_imports = [_import_lines(c.code) for c in calls if c.result.error is not None]
  succeeded = [c.code for c in calls if c.result.error is None]
  imports = "\n".join(line for line in failed_imports if line)
  return ([imports] if imports else []) + succeeded


def observation(result) -> str:
  """What the model is shown for one Result: the error line, else the output, else "Done"."""
  return result.error or result.output or NO_OUTPUT_TEXT


def output_piece(text_so_far: str, result) -> str:
  """The "```output" block appended after a code call, on a line of its own."""
  lead = "" if text_so_far.endswith("\n") else "\n"
  return f"{lead}{chat.TOOL_OUTPUT_OPEN}{observation(result)}\n{FENCE}\n"


def _model_piece(completion: types.Completion, tokenizer: TokenizerLike, where: str) -> str:
  if len(completion.logprobs) != len(completion.token_ids):
    raise ValueError(f"{where}: {len(completion.token_ids)} token_ids but "
                     f"{len(completion.logprobs)} logprobs")
  if completion.finish_reason == types.FINISH_STOP and completion.stop == FENCE:
    decoded = tokenizer.decode(completion.token_ids)
    if not decoded.startswith(completion.text + FENCE):
      raise ValueError(f"{where}: decode(token_ids) {decoded[-80:]!r} does not continue "
                       f"text + fence {(completion.text + FENCE)[-80:]!r}")
    return decoded
  return completion.text


def round_seed(seed: int, round_index: int) -> int:
  """The sampler seed of a TIR call's round `round_index` >= 1: a hash of (seed, round), in
  [0, 2^31). Not `seed + round`, under which round 1 of the call with seed s drew the random
  keys of round 0 of the call with seed s + 1 (RL's consecutive episodes)."""
  return int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0] >> 1)


def generate_tir(sampler: IdsSamplerLike, tokenizer: TokenizerLike, executor: ExecutorLike,
                 prompts: Sequence[str], n: int = 1, *, max_calls: int = 4,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                 max_new_tokens: int = 2048, stop: Sequence[str] = DEFAULT_STOP,
                 seed: int = 0, max_rounds: int | None = None) -> list[list[TirSample]]:
  """Runs the TIR loop for every prompt, `n` samples each.

  Args:
    sampler: any `IdsSamplerLike`; called once per round with all unfinished samples.
    tokenizer: encodes the prompts and the interpreter output pieces; decodes fence-stopped
      completions.
    executor: runs each round's programs in parallel (`PythonSandbox`); in a multi-process
      run, only the writer process's executor runs them.
    prompts: full prompt strings (chat template applied).
    n: samples per prompt; the first round asks the sampler for `n` per prompt.
    max_calls: code calls per sample (Qwen: 4).
    max_new_tokens: per sampler call (Qwen: 2048).
    stop: stop strings besides the fence (end-of-turn texts).
    seed: round 0 samples with `seed`, round r with `round_seed(seed, r)`: the same seed gives
      the same samples, and no round of one call reuses another call's random keys.
    max_rounds: sampler rounds per sample (a fence-stopped round that only opens a block
      counts too); default 4 * (max_calls + 1).

  Returns:
    [len(prompts)][n] TirSamples.
  """
  if max_calls < 0:
    raise ValueError(f"max_calls must be >= 0, got {max_calls}")
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  max_rounds = max_rounds if max_rounds is not None else 4 * (max_calls + 1)
  stop_strings = list(dict.fromkeys(list(stop) + [FENCE]))
  prompt_ids = [list(tokenizer.encode(p)) for p in prompts]
  samples = [[TirSample() for _ in range(n)] for _ in prompts]
  # (prompt index, sample index) of every unfinished sample.
  active = [(p, s) for p in range(len(prompts)) for s in range(n)]
  options = dict(temperature=temperature, top_p=top_p, top_k=top_k,
                 max_new_tokens=max_new_tokens, stop=stop_strings)
  for round_index in range(max_rounds):
    if not active:
      break
    if round_index == 0:
      grouped = sampler.generate_ids(prompt_ids, n=n, seed=seed, **options)
      completions = [grouped[p][s] for p, s in active]
    else:
      contexts = [prompt_ids[p] + samples[p][s].token_ids for p, s in active]
      completions = [c[0] for c in sampler.generate_ids(contexts, n=1,
                                                        seed=round_seed(seed, round_index),
                                                        **options)]
    if len(completions) != len(active):
      raise ValueError(f"sampler returned {len(completions)} completions for "
                       f"{len(active)} prompts in round {round_index}")
    to_run = []   # (prompt index, sample index, code)
    still_active = []
    for (p, s), completion in zip(active, completions):
      sample = samples[p][s]
      piece = _model_piece(completion, tokenizer, f"prompt {p} sample {s} round {round_index}")
      sample.text += piece
      sample.token_ids += list(completion.token_ids)
      sample.model_mask += [1] * len(completion.token_ids)
      sample.logprobs += [float(x) for x in completion.logprobs]
      if completion.finish_reason != types.FINISH_STOP:
        sample.finish_reason = types.FINISH_LENGTH
      elif completion.stop != FENCE:
        sample.finish_reason = types.FINISH_STOP
      else:
        code = closed_python_block(sample.text)
        if code is not None and len(sample.calls) < max_calls:
          to_run.append((p, s, code))
        else:
          still_active.append((p, s))
    if to_run:
      preludes = [prelude_for(samples[p][s].calls) for p, s, _ in to_run]
      codes = [code for _, _, code in to_run]
      results = parallel.on_writer(lambda: list(executor.run_batch(codes, preludes)))
      for (p, s, code), prelude, result in zip(to_run, preludes, results):
        sample = samples[p][s]
        sample.calls.append(ToolCall(code=code, prelude=prelude, result=result))
        piece = output_piece(sample.text, result)
        piece_ids = tokenizer.encode(piece)
        sample.text += piece
        sample.token_ids += piece_ids
        sample.model_mask += [0] * len(piece_ids)
        sample.logprobs += [0.0] * len(piece_ids)
        if len(sample.calls) >= max_calls:
          sample.finish_reason = FINISH_MAX_CALLS
        else:
          still_active.append((p, s))
    active = sorted(still_active)
  for p, s in active:
    samples[p][s].finish_reason = types.FINISH_LENGTH
  return samples


class TirSampler:
  """The TIR loop behind the plain sampler interface (`types.SamplerLike`).

  `generate` runs `generate_tir` and returns each TirSample as a Completion whose text is the
  whole transcript (model text with interpreter outputs spliced in) and whose `model_mask`
  marks the interpreter output tokens with 0 (SPEC §3.3: masked out of the RL loss).
  """

  def __init__(self, sampler: IdsSamplerLike, tokenizer: TokenizerLike,
               executor: ExecutorLike, max_calls: int = 4):
    self.sampler, self.tokenizer, self.executor = sampler, tokenizer, executor
    self.max_calls = max_calls

  def update_params(self, params) -> None:
    """Gives the wrapped sampler new weights (an RL step's), as `Sampler.update_params`."""
    self.sampler.update_params(params)

  def generate(self, prompts: Sequence[str], n: int = 1, *, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 2048,
               stop: Sequence[str] = DEFAULT_STOP, seed: int = 0) -> list[list[types.Completion]]:
    samples = generate_tir(self.sampler, self.tokenizer, self.executor, prompts, n,
                           max_calls=self.max_calls, temperature=temperature, top_p=top_p,
                           top_k=top_k, max_new_tokens=max_new_tokens, stop=stop, seed=seed)
    return [[types.Completion(text=s.text, token_ids=s.token_ids, logprobs=s.logprobs,
                              finish_reason=s.finish_reason, model_mask=s.model_mask)
             for s in row] for row in samples]
