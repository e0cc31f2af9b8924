"""Host helpers of multi-process runs, in one process: the writer rule, barriers, broadcasts.

With one process they are plain calls. The multi-process paths run here with the process index
and count and the two collectives replaced by recording doubles: process 0's side records what
it sends, process 1's side replays it (tests/test_rl_multiprocess.py runs real processes).
"""

import json

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from qmath_jax import parallel
from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import runner
from qmath_jax.parallel import hosts
from qmath_jax.sampling import tir, types
from qmath_jax.sampling.testing import CodeThenAnswerSampler, TableTokenizer, default_table


def test_one_process_writes_and_gets_its_own_values():
  assert jax.process_count() == 1 and parallel.is_writer()
  calls = []
  parallel.write_once(lambda: calls.append("wrote"), "nothing waits")
  parallel.barrier("no-op")
  assert calls == ["wrote"]
  value = {"results": [1, 2], "text": "x" * 5000}
  assert parallel.broadcast_object(value) is value
  assert parallel.on_writer(lambda: calls.append("ran") or value) is value
  assert calls == ["wrote", "ran"]


class FakeProcesses:
  """Pretends to be process `index` of two; the collectives record or replay what process 0
  broadcast, and barriers are recorded by name."""

  def __init__(self, monkeypatch):
    self.monkeypatch = monkeypatch
    self.sent = []     # arrays process 0 broadcast, in order
    self.barriers = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", self.barriers.append)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", self._broadcast)
    self.be(0)

  def be(self, index: int) -> None:
    self.index = index
    self.replay = iter(list(self.sent))
    self.monkeypatch.setattr(jax, "process_index", lambda: index)

  def _broadcast(self, x):
    if self.index == 0:
      self.sent.append(np.array(x))
      return np.asarray(x)
    sent = next(self.replay)
    assert np.shape(x) == sent.shape  # every process broadcasts arrays of one shape
    return sent


def test_broadcast_object_gives_every_process_the_writers_value(monkeypatch):
  fake = FakeProcesses(monkeypatch)
  value = {"output": "x" * 3000, "error": None, "rows": [1.5, 2]}
  assert hosts.broadcast_object(value) is value
  size, payload = fake.sent
  assert payload.dtype == np.uint8 and payload.shape == (4096,)  # padded to a power of two
  assert int(size) < 4096
  fake.be(1)
  got = hosts.broadcast_object({"output": "process 1's own"})
  assert got == value
  fake.be(0)  # a small payload still fills the smallest buffer
  hosts.broadcast_object(None)
  assert fake.sent[-1].shape == (hosts.MIN_PAYLOAD_BYTES,)


def test_only_the_writer_writes_and_runs_and_every_process_waits(monkeypatch, tmp_path):
  fake = FakeProcesses(monkeypatch)
  wrote = []
  parallel.write_once(lambda: wrote.append(0), "files written")
  assert parallel.on_writer(lambda: "writer's") == "writer's"
  fake.be(1)
  assert not parallel.is_writer()
  parallel.write_once(lambda: wrote.append(1), "files written")
  assert parallel.on_writer(lambda: pytest.fail("ran on process 1")) == "writer's"
  assert wrote == [0] and fake.barriers == ["files written", "files written"]


class OneAnswerSampler:
  def generate(self, prompts, n=1, **kwargs):
    del kwargs
    return [[types.Completion(text="\\boxed{3}", token_ids=[1], logprobs=[0.0],
                              finish_reason=types.FINISH_STOP, stop="<|im_end|>")] * n
            for _ in prompts]


def test_eval_on_another_process_writes_nothing_and_returns_the_results(monkeypatch, tmp_path):
  data = tmp_path / "data" / "gsm8k" / "test.jsonl"
  data.parent.mkdir(parents=True)
  data.write_text("".join(json.dumps({"question": f"q{k}?", "answer": f"s\n#### {k}", "idx": k})
                          + "\n" for k in range(4)))
  config = runner.EvalConfig(datasets=("gsm8k",), data_dir=str(tmp_path / "data"))
  alone = runner.run_eval(OneAnswerSampler(), tmp_path / "alone", config)
  graders = []
  grade = benchmarks.grade
  monkeypatch.setattr(benchmarks, "grade",
                      lambda *a: graders.append(jax.process_index()) or grade(*a))
  fake = FakeProcesses(monkeypatch)
  writer = runner.run_eval(OneAnswerSampler(), tmp_path / "work", config)
  fake.be(1)
  other = runner.run_eval(OneAnswerSampler(), tmp_path / "other", config)
  assert writer == other == alone and other["datasets"]["gsm8k"]["acc"] == 25.0
  assert graders == [0] * 4  # process 0 graded every problem; process 1 got its grades
  assert not (tmp_path / "other").exists()
  assert (tmp_path / "work" / "samples" / "gsm8k.jsonl").read_text() == (
      tmp_path / "alone" / "samples" / "gsm8k.jsonl").read_text()
  assert fake.barriers == ["read gsm8k.jsonl", "eval report written"] * 2


class Executor:
  def __init__(self, output: str):
    self.output, self.codes = output, []

  def run_batch(self, codes, preludes=None):
    from qmath_jax.sandbox import Result  # pylint: disable=g-import-not-at-top
    del preludes
    self.codes += list(codes)
    return [Result(output=self.output, error=None, timed_out=False) for _ in codes]


def test_tir_programs_run_on_the_writer_and_every_process_sees_its_output(monkeypatch):
  tokenizer = TableTokenizer(default_table(128))
  run = lambda executor: [[s.text for s in row] for row in tir.generate_tir(
      CodeThenAnswerSampler(tokenizer, "ok"), tokenizer, executor, ["q "], n=2)]
  alone_executor = Executor("1")
  alone = run(alone_executor)
  assert alone == [["```python\nprint(1)\n```\n```output\n1\n```\nok"] * 2]
  fake = FakeProcesses(monkeypatch)
  writer = Executor("1")
  assert run(writer) == alone and writer.codes == alone_executor.codes == ["print(1)\n"] * 2
  fake.be(1)
  other = Executor("2")  # the same program prints something else on process 1
  assert run(other) == alone and other.codes == []
