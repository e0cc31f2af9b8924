"""The TIR loop on a scripted model: exact transcripts, token ids, masks and log-probs.

The scripted model is a test double for the sampler: each prompt has a fixed model text; like
a real sampler it generates one character-token at a time from where the context has got to,
stops at the first stop string it completes (text cut before it, ids including it) and ends
with an end-of-turn token. Programs run in a real PythonSandbox.
"""

import re

import pytest

from qmath_jax.sampling import tir
from qmath_jax.sampling import types
from qmath_jax.sandbox import PythonSandbox

EOS_ID = 0x110000           # one past the last code point: the end-of-turn token
EOS_TEXT = "<|im_end|>"
_OUTPUT_BLOCK = re.compile(r"\n?```output\n[\s\S]*?\n```\n")


class CharTokenizer:
  """One token per character; EOS_ID decodes to the end-of-turn text."""

  def encode(self, text):
    return [ord(c) for c in text]

  def decode(self, ids):
    return "".join(EOS_TEXT if i == EOS_ID else chr(i) for i in ids)


def model_logprob(position):
  """The scripted model's log-probability of the token at `position` of its script."""
  return -0.001 * (position + 1)


class ScriptedModel:
  """Sampler double: continues a fixed script per prompt (found by the prompt prefix)."""

  def __init__(self, scripts):
    self.scripts = scripts      # prompt -> full model text (interpreter outputs left out)
    self.calls = []             # (number of prompts, n, stop) per generate call
    self.contexts = []          # the token-id prompts of every call, in order

  def _continue(self, context, max_new_tokens, stop):
    prompt = next(p for p in self.scripts if context.startswith(p))
    script = self.scripts[prompt]
    emitted = _OUTPUT_BLOCK.sub("", context[len(prompt):])
    assert script.startswith(emitted), f"context left the script: {emitted!r}"
    start = len(emitted)
    generated = ""
    for position in range(start, len(script)):
      generated += script[position]
      ids = [ord(c) for c in generated]
      logprobs = [model_logprob(start + i) for i in range(len(ids))]
      for s in stop:
        if generated.endswith(s):
          return types.Completion(generated[:-len(s)], ids, logprobs, types.FINISH_STOP, s)
      if len(generated) == max_new_tokens:
        return types.Completion(generated, ids, logprobs, types.FINISH_LENGTH)
    ids = [ord(c) for c in generated] + [EOS_ID]
    logprobs = [model_logprob(start + i) for i in range(len(ids))]
    return types.Completion(generated, ids, logprobs, types.FINISH_STOP, EOS_TEXT)

  def generate_ids(self, prompt_ids, n=1, *, temperature=0.0, top_p=1.0, top_k=0,
                   max_new_tokens=256, stop=(), seed=0):
    self.calls.append((len(prompt_ids), n, tuple(stop)))
    self.contexts += [list(ids) for ids in prompt_ids]
    prompts = [CharTokenizer().decode(ids) for ids in prompt_ids]
    return [[self._continue(p, max_new_tokens, stop) for _ in range(n)] for p in prompts]


class RecordingExecutor:
  """Wraps the sandbox and records each run_batch call (codes and preludes)."""

  def __init__(self, sandbox):
    self.sandbox = sandbox
    self.batches = []

  def run_batch(self, codes, preludes=None):
    self.batches.append((list(codes), [list(p) for p in preludes]))
    return self.sandbox.run_batch(codes, preludes)


@pytest.fixture(scope="module")
def sandbox():
  box = PythonSandbox(timeout=1.0, num_workers=2)
  yield box
  box.close()


def expected(pieces):
  """Transcript, ids, mask and logprobs built from pieces: ("model", text, script offset),
  ("model+eos", text, script offset) for a model piece ended by the end token, or
  ("output", text)."""
  text, ids, mask, logprobs = "", [], [], []
  for kind, body, *offset in pieces:
    text += body
    ids += [ord(c) for c in body]
    if kind == "output":
      mask += [0] * len(body)
      logprobs += [0.0] * len(body)
      continue
    count = len(body) + (kind == "model+eos")
    ids += [EOS_ID] * (kind == "model+eos")
    mask += [1] * count
    logprobs += [model_logprob(offset[0] + i) for i in range(count)]
  return text, ids, mask, logprobs


PROMPT_A = "<|im_start|>user\nA<|im_end|>\n<|im_start|>assistant\n"
PROMPT_B = "<|im_start|>user\nB<|im_end|>\n<|im_start|>assistant\n"
PROMPT_C = "<|im_start|>user\nC<|im_end|>\n<|im_start|>assistant\n"
A1 = "Compute.\n```python\nx = 2 + 2\nprint(x)\n```"
A2 = "So the answer is \\boxed{4}."
B1 = "Set up.\n```python\nimport math\nr = 3\n```"
B2 = "Area:\n```python\nprint(round(math.pi * r**2, 2))\n```"
B3 = "Check.\n```python\nimport fractions\n1 / 0\n```"
B4 = "Again.\n```python\nprint(fractions.Fraction(1, 3) + r)\n```"
C1 = "Plain block:\n```text\nnot code\n```\nThen:\n```python\nwhile True:\n  pass\n```"
C2 = "\\boxed{1}"


def test_transcripts_masks_and_logprobs(sandbox):
  model = ScriptedModel({PROMPT_A: A1 + A2, PROMPT_B: B1 + B2 + B3 + B4 + "unreached",
                         PROMPT_C: C1 + C2})
  executor = RecordingExecutor(sandbox)
  out = tir.generate_tir(model, CharTokenizer(), executor, [PROMPT_A, PROMPT_B, PROMPT_C])
  out_a, out_b, out_c = (group[0] for group in out)

  text, ids, mask, logprobs = expected([
      ("model", A1, 0), ("output", "\n```output\n4\n```\n"), ("model+eos", A2, len(A1))])
  assert out_a.text == text == A1 + "\n```output\n4\n```\n" + A2
  assert (out_a.token_ids, out_a.model_mask, out_a.logprobs) == (ids, mask, logprobs)
  assert out_a.finish_reason == types.FINISH_STOP and len(out_a.calls) == 1

  b_off = [0, len(B1), len(B1 + B2), len(B1 + B2 + B3)]
  text, ids, mask, logprobs = expected([
      ("model", B1, b_off[0]), ("output", "\n```output\nDone\n```\n"),
      ("model", B2, b_off[1]), ("output", "\n```output\n28.27\n```\n"),
      ("model", B3, b_off[2]),
      ("output", "\n```output\nZeroDivisionError: division by zero\n```\n"),
      ("model", B4, b_off[3]), ("output", "\n```output\n10/3\n```\n")])
  assert out_b.text == text
  assert (out_b.token_ids, out_b.model_mask, out_b.logprobs) == (ids, mask, logprobs)
  assert out_b.finish_reason == tir.FINISH_MAX_CALLS and len(out_b.calls) == 4

  text, ids, mask, logprobs = expected([
      ("model", C1, 0), ("output", "\n```output\nTimeout Error\n```\n"),
      ("model+eos", C2, len(C1))])
  assert out_c.text == text and out_c.model_mask == mask and out_c.token_ids == ids
  assert out_c.calls[0].result.timed_out and len(out_c.calls) == 1

  # Each round continues the exact ids of the sample so far (what an RL row holds).
  contexts_a = [ids for ids in model.contexts if CharTokenizer().decode(ids).startswith(PROMPT_A)]
  prompt_a = CharTokenizer().encode(PROMPT_A)
  ends = [0, A1.index("```") + 3, len(A1 + "\n```output\n4\n```\n")]  # opened, ran
  assert contexts_a == [prompt_a + out_a.token_ids[:end] for end in ends]

  # Earlier successful blocks re-run first; a failed block leaves only its imports.
  preludes_b = [call.prelude for call in out_b.calls]
  assert preludes_b == [
      [],
      ["import math\nr = 3\n"],
      ["import math\nr = 3\n", "print(round(math.pi * r**2, 2))\n"],
      ["import fractions", "import math\nr = 3\n", "print(round(math.pi * r**2, 2))\n"]]


def test_rounds_are_batched_and_executions_parallel(sandbox):
  model = ScriptedModel({PROMPT_A: A1 + A2, PROMPT_B: B1 + B2 + B3 + B4, PROMPT_C: C1 + C2})
  executor = RecordingExecutor(sandbox)
  tir.generate_tir(model, CharTokenizer(), executor, [PROMPT_A, PROMPT_B, PROMPT_C], n=2)
  # Round 0 asks for n per prompt; later rounds send every unfinished sample at once.
  assert model.calls[0][:2] == (3, 2)
  assert all(n == 1 for _, n, _ in model.calls[1:])
  assert all("```" in stop and EOS_TEXT in stop for _, _, stop in model.calls)
  # A and B open their first blocks in round 0 and close them in round 1: both samples of
  # each run in one batch of 4; C's text block needs extra rounds before its code.
  assert [len(codes) for codes, _ in executor.batches][0] == 4
  assert sum(len(codes) for codes, _ in executor.batches) == 2 * (1 + 4 + 1)


def test_samples_of_one_prompt_and_the_max_calls_limit(sandbox):
  model = ScriptedModel({PROMPT_B: B1 + B2 + B3 + B4})
  out = tir.generate_tir(model, CharTokenizer(), RecordingExecutor(sandbox), [PROMPT_B],
                         n=2, max_calls=2)
  first, second = out[0]
  assert first.text == second.text
  assert first.text.endswith("\n```output\n28.27\n```\n")
  assert first.finish_reason == tir.FINISH_MAX_CALLS and len(first.calls) == 2


def test_length_limit_ends_a_sample(sandbox):
  model = ScriptedModel({PROMPT_A: A1 + A2})
  (sample,), = tir.generate_tir(model, CharTokenizer(), RecordingExecutor(sandbox),
                                [PROMPT_A], max_new_tokens=5)
  assert sample.text == A1[:5] and sample.finish_reason == types.FINISH_LENGTH
  assert sample.model_mask == [1] * 5 and sample.calls == []


def test_closed_python_block():
  assert tir.closed_python_block("a\n```python\nx = 1\n```") == "x = 1\n"
  assert tir.closed_python_block("a\n```python\nx = 1\n```\n") == "x = 1\n"   # "```\n" token
  assert tir.closed_python_block("a\n```") is None                       # just opened
  assert tir.closed_python_block("a\n```python\n") is None               # "```python\n" token
  assert tir.closed_python_block("```text\nx\n```") is None              # not python
  assert tir.closed_python_block("```python\nx\n```\n```output\n1\n```\n```python\ny\n```") \
      == "y\n"


def test_inconsistent_sampler_is_named(sandbox):
  class Broken:
    def generate_ids(self, prompts, n=1, **unused):
      return [[types.Completion("x", [ord("y"), 96, 96, 96], [0.0] * 4, types.FINISH_STOP,
                                "```")] for _ in prompts]
  with pytest.raises(ValueError, match="prompt 0 sample 0 round 0: decode"):
    tir.generate_tir(Broken(), CharTokenizer(), RecordingExecutor(sandbox), [PROMPT_A])


def test_round_limit_ends_a_sample(sandbox):
  model = ScriptedModel({PROMPT_C: C1 + C2})
  (sample,), = tir.generate_tir(model, CharTokenizer(), RecordingExecutor(sandbox),
                                [PROMPT_C], max_rounds=2)
  # Round 0 opens the text block, round 1 closes it; no code ran.
  assert sample.text == "Plain block:\n```text\nnot code\n```"
  assert sample.finish_reason == types.FINISH_LENGTH and sample.calls == []
  assert len(model.calls) == 2


def test_tir_sampler_carries_the_masks_and_passes_weights_on(sandbox):
  model = ScriptedModel({PROMPT_A: A1 + A2})
  updates = []
  model.update_params = updates.append
  sampler = tir.TirSampler(model, CharTokenizer(), RecordingExecutor(sandbox))
  (completion,), = sampler.generate([PROMPT_A])
  _, ids, mask, logprobs = expected([
      ("model", A1, 0), ("output", "\n```output\n4\n```\n"), ("model+eos", A2, len(A1))])
  assert (completion.token_ids, completion.model_mask, completion.logprobs) == (ids, mask,
                                                                                logprobs)
  assert 0 in completion.model_mask  # the interpreter output stays out of RL losses
  sampler.update_params("new weights")
  assert updates == ["new weights"]


FENCE_NL_ID = EOS_ID + 1     # one token for "```\n", as BPE vocabularies have it
PYTHON_OPEN_ID = EOS_ID + 2  # one token for "```python\n"


class MergedFenceTokenizer(CharTokenizer):
  """Characters, plus whole-fence tokens that carry the newline after the fence."""

  def decode(self, ids):
    pieces = {FENCE_NL_ID: "```\n", PYTHON_OPEN_ID: "```python\n", EOS_ID: EOS_TEXT}
    return "".join(pieces[i] if i in pieces else chr(i) for i in ids)


def test_a_closing_fence_token_that_carries_a_newline_still_runs_the_code(sandbox):
  """The token that completes the fence stop string may carry more ("```\\n" is one token in
  BPE vocabularies): the block it closes runs all the same."""
  rounds = [("Compute.\n", [PYTHON_OPEN_ID]), ("print(2 + 2)\n", [FENCE_NL_ID]),
            ("\\boxed{4}", [EOS_ID])]

  class RoundModel:
    def __init__(self):
      self.round = 0

    def generate_ids(self, prompt_ids, n=1, **unused):
      text, end = rounds[self.round]
      self.round += 1
      ids = [ord(c) for c in text] + end
      stop = EOS_TEXT if end == [EOS_ID] else "```"
      return [[types.Completion(text, ids, [0.0] * len(ids), types.FINISH_STOP, stop)]
              for _ in prompt_ids]

  (sample,), = tir.generate_tir(RoundModel(), MergedFenceTokenizer(),
                                RecordingExecutor(sandbox), [PROMPT_A])
  assert [call.code for call in sample.calls] == ["print(2 + 2)\n"]
  assert sample.text == ("Compute.\n```python\nprint(2 + 2)\n```\n```output\n4\n```\n"
                         "\\boxed{4}")
  assert sample.finish_reason == types.FINISH_STOP
  assert sample.model_mask.count(0) == len("```output\n4\n```\n")


def test_no_round_reuses_the_random_keys_of_another_call(sandbox):
  seeds = []

  class SeedRecorder(ScriptedModel):
    def generate_ids(self, prompt_ids, n=1, **kwargs):
      seeds.append(kwargs["seed"])
      return super().generate_ids(prompt_ids, n, **kwargs)

  for seed in (5, 6):  # e.g. RL's consecutive episodes
    model = SeedRecorder({PROMPT_B: B1 + B2 + B3 + B4 + "unreached"})
    tir.generate_tir(model, CharTokenizer(), sandbox, [PROMPT_B], seed=seed)
  first, second = seeds[:len(seeds) // 2], seeds[len(seeds) // 2:]
  assert len(first) == len(second) > 2 and first[0] == 5 and second[0] == 6
  assert len(set(first + second)) == len(seeds)  # with seed + round, round 1 of 5 was seed 6
  assert first[1:] == [tir.round_seed(5, r) for r in range(1, len(first))]
