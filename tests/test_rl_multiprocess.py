"""Two processes on localhost (jax.distributed, gloo CPU collectives, 4 devices each) run the RL,
eval and sampling-round host steps on one (data, fsdp, tensor) = (2, 2, 2) mesh:
- one GRPO iteration (reward-model-shaped verifier reward on synthetic problems, two minibatch
  steps) gives the same metrics and updated params as one process with 8 devices;
- the eval runner (RM@2 over the mesh, run on 2 problems and then resumed to 4) writes every
  file once, with the records and results of one process;
- a round's output files are written once and readable by every process when it returns;
- the TIR loop runs each round's programs on process 0 only: every process continues with
  process 0's output;
- the eval stage through `main.run` (a tiny sentencepiece model's checkpoint, run and resumed)
  writes its files once, as one process does.

Run as a script, this file is one worker:
`python test_rl_multiprocess.py PORT PROCESS_ID WORKDIR DATA_DIR [TOKENIZER PARAMS_DIR]`
(with the last two it runs the eval stage, else `run_all`).
"""

import json
import pathlib
import string
import sys

import numpy as np
import pytest
from conftest import run_local_workers

MESH_SHAPE = (2, 2, 2)
NUM_PROBLEMS, GROUP_SIZE, MINIBATCH_ROWS, MAX_NEW_TOKENS = 4, 4, 8, 6
MAX_LENGTH = 512  # positions: the CoT prompts of the synthetic problems are about 330 tokens
WORKER_TIMEOUT_S = 420


def _tokenizer():
  """A table tokenizer over the ChatML specials and every printable ASCII character."""
  from qmath_jax.data import chat  # pylint: disable=g-import-not-at-top
  from qmath_jax.sampling.testing import TableTokenizer  # pylint: disable=g-import-not-at-top
  chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
  pairs = [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
  table = [chat.ENDOFTEXT, chat.IM_START, chat.IM_END] + chars
  return TableTokenizer(table + pairs[:128 - len(table)])


def _model_config():
  from qmath_jax.model import get_config  # pylint: disable=g-import-not-at-top
  return get_config("tiny", vocab_size=128, hidden_size=32, head_dim=8, intermediate_size=64,
                    max_position_embeddings=MAX_LENGTH)


def write_eval_data(data_dir: pathlib.Path) -> None:
  """A gsm8k-format test file of NUM_PROBLEMS synthetic problems."""
  from qmath_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  path = data_dir / "gsm8k" / "test.jsonl"
  path.parent.mkdir(parents=True, exist_ok=True)
  rows = [{"question": p.question, "answer": f"steps\n#### {p.answer}", "idx": k}
          for k, p in enumerate(synthetic.generate(NUM_PROBLEMS, seed=1))]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _global(host_tree, boxed_shapes, mesh):
  """Host arrays laid out on the mesh by the training rules (as a checkpoint restores them)."""
  import jax  # pylint: disable=g-import-not-at-top
  from qmath_jax import parallel  # pylint: disable=g-import-not-at-top
  return jax.device_put(host_tree, parallel.tree_shardings(boxed_shapes, mesh))


def _rm_scorer(cfg, tokenizer, mesh):
  """A RewardModelScorer over random RM params, global on the mesh."""
  # pylint: disable=g-import-not-at-top
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from qmath_jax.rl import rewards
  from qmath_jax.train import reward_model
  # pylint: enable=g-import-not-at-top
  rm = reward_model.make_reward_model(cfg)
  boxed = jax.eval_shape(lambda: rm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  rng = np.random.default_rng(3)
  host = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype),
                      nn.unbox(boxed))
  return rewards.RewardModelScorer(cfg, _global(host, boxed, mesh), tokenizer, batch_size=6,
                                   max_length=MAX_LENGTH, mesh=mesh)


def grpo_run(mesh):
  """(metrics, host params before and after, the sampler, the scorer) of one GRPO iteration."""
  # pylint: disable=g-import-not-at-top
  import jax
  from qmath_jax import parallel
  from qmath_jax.data import synthetic
  from qmath_jax.model import init_params
  from qmath_jax.rl import grpo, rollout
  from qmath_jax.sampling.sampler import Sampler
  from qmath_jax.train import optimizer as optimizer_lib, state as state_lib
  # pylint: enable=g-import-not-at-top
  cfg, tokenizer = _model_config(), _tokenizer()
  optimizer, schedule = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      peak_lr=1e-2, end_lr=1e-2, warmup_steps=0, total_steps=10, decay="constant"))
  state, shardings = state_lib.create_train_state(
      lambda rng: init_params(cfg, rng, boxed=True), optimizer, mesh, seed=0)
  ref_params = jax.jit(lambda p: jax.tree.map(lambda x: x + 0, p),
                       out_shardings=shardings.params)(state.params)  # not donated
  config = grpo.GrpoConfig(
      rollout=rollout.RolloutConfig(group_size=GROUP_SIZE, temperature=1.0,
                                    max_new_tokens=MAX_NEW_TOKENS),
      seq_len=MAX_LENGTH, minibatch_rows=MINIBATCH_ROWS, ref_batch_size=6)
  train_step = grpo.make_grpo_step(cfg, optimizer, config, mesh=mesh, state_shardings=shardings,
                                   learning_rate_fn=schedule)
  sampler = Sampler(cfg, ref_params, tokenizer, mesh=mesh)
  scorer = _rm_scorer(cfg, tokenizer, mesh)

  def host(params, prefix):
    whole = jax.jit(lambda p: p, out_shardings=parallel.replicated(mesh))(params)
    return {prefix + jax.tree_util.keystr(path): np.asarray(x)
            for path, x in jax.tree_util.tree_leaves_with_path(whole)}

  before = host(state.params, "before")
  state, metrics = grpo.grpo_iteration(
      state, train_step, sampler, tokenizer, synthetic.generate(NUM_PROBLEMS, seed=0), cfg,
      ref_params, config, seed=7, scorer=scorer)
  return metrics, {**before, **host(state.params, "after")}, sampler, scorer


def eval_run(sampler, scorer, workdir: pathlib.Path, data_dir: str) -> dict:
  """RM@2 on the first 2 problems, then resumed to all; returns the second run's results."""
  from qmath_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
  config = dict(datasets=("gsm8k",), n=2, temperature=0.7, top_p=0.8,
                max_new_tokens=MAX_NEW_TOKENS, pass_k=(1, 2), batch_size=2, data_dir=data_dir)
  runner.run_eval(sampler, workdir, runner.EvalConfig(**config, limit=2),
                  score_fn=scorer.score_completions)
  return runner.run_eval(sampler, workdir, runner.EvalConfig(**config),
                         score_fn=scorer.score_completions)


def round_files(out_dir: pathlib.Path) -> dict:
  """`graded.write_outputs` of a small round; what this process then reads back."""
  from qmath_jax.rounds import graded  # pylint: disable=g-import-not-at-top
  summary = graded.write_outputs(out_dir, "rows.jsonl", [{"a": 1}, {"a": 2}],
                                 [{"problem": "p0"}], {"rows": 2, "kept": (1, 2)})
  return {"summary": summary, "rows": (out_dir / "rows.jsonl").read_text(),
          "summary_file": json.loads((out_dir / graded.SUMMARY_FILE).read_text())}


class _ProcessExecutor:
  """A sandbox whose output names the process that ran it, and counts its runs."""

  def __init__(self):
    self.runs = 0

  def run_batch(self, codes, preludes=None):
    import jax  # pylint: disable=g-import-not-at-top
    from qmath_jax.sandbox import Result  # pylint: disable=g-import-not-at-top
    del preludes
    self.runs += len(codes)
    return [Result(output=f"ran on process {jax.process_index()}", error=None, timed_out=False)
            for _ in codes]


def tir_run() -> dict:
  """The TIR loop over 2 prompts x 2 samples: transcripts and this process's sandbox runs."""
  from qmath_jax.sampling import testing, tir  # pylint: disable=g-import-not-at-top
  tokenizer = _tokenizer()
  executor = _ProcessExecutor()
  samples = tir.generate_tir(testing.CodeThenAnswerSampler(tokenizer), tokenizer, executor,
                             ["q1 ", "q2 "], n=2, max_calls=2)
  return {"texts": [[s.text for s in row] for row in samples], "runs": executor.runs}


def run_all(workdir: pathlib.Path, data_dir: str) -> dict:
  """Every check's results on MESH_SHAPE (over every process's devices); params to an npz."""
  import jax  # pylint: disable=g-import-not-at-top
  from qmath_jax import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(MESH_SHAPE)
  metrics, params, sampler, scorer = grpo_run(mesh)
  np.savez(workdir / f"params_{jax.process_index()}.npz", **params)
  eval_results = eval_run(sampler, scorer, workdir / "eval", data_dir)
  return {"metrics": metrics, "eval": eval_results, "round": round_files(workdir / "round"),
          "tir": tir_run(), "process_count": jax.process_count(),
          "device_count": jax.device_count(), "local_device_count": jax.local_device_count()}


def eval_stage(workdir: pathlib.Path, data_dir: str, tokenizer_path: str,
               params_dir: str) -> dict:
  """The eval stage (greedy CoT on the mesh) on 2 problems, then resumed to all of them."""
  # pylint: disable=g-import-not-at-top
  import jax
  from conftest import load_config
  from qmath_jax import main
  # pylint: enable=g-import-not-at-top
  config = load_config("eval.py")
  config.tokenizer.path, config.init.params_dir = tokenizer_path, params_dir
  config.model.dtype = "float32"
  config.mesh.shape = MESH_SHAPE
  config.eval.update(datasets=("gsm8k",), data_dir=data_dir, max_new_tokens=8, limit=2)
  first = main.run(config, str(workdir))
  config.eval.limit = NUM_PROBLEMS
  return {"first": first, "second": main.run(config, str(workdir)),
          "process_count": jax.process_count()}


def _eval_records(workdir: pathlib.Path) -> list[dict]:
  lines = (workdir / "eval" / "samples" / "gsm8k.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def _two_workers(*args: str) -> list[dict]:
  """Runs this file as process 0 and 1 of a localhost run; their last stdout lines as JSON."""
  return run_local_workers(__file__, *args, timeout_s=WORKER_TIMEOUT_S)


@pytest.mark.slow  # three JAX start-ups and compiles: about 90 s on two shared cores
def test_two_processes_match_one_process(tmp_path):
  data_dir = tmp_path / "data"
  write_eval_data(data_dir)
  two, one = tmp_path / "two", tmp_path / "one"
  two.mkdir()
  one.mkdir()
  results = _two_workers(str(two), str(data_dir))
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.process_count() == 1 and jax.device_count() == 8
  for result in results:
    assert (result["process_count"], result["device_count"]) == (2, 8)
    assert result["local_device_count"] == 4
  single = run_all(one, str(data_dir))

  # GRPO: the same metrics and params on both processes and in one process.
  metrics = single["metrics"]
  assert metrics["steps"] == NUM_PROBLEMS * GROUP_SIZE / MINIBATCH_ROWS
  assert metrics["grad_norm"] > 0 and metrics["clip_fraction"] >= 0
  want_params = dict(np.load(one / "params_0.npz"))
  for pid, result in enumerate(results):
    assert result["metrics"].keys() == metrics.keys()
    for key, value in metrics.items():
      np.testing.assert_allclose(result["metrics"][key], value, rtol=1e-5, atol=1e-6,
                                 err_msg=key)
    got_params = dict(np.load(two / f"params_{pid}.npz"))
    assert got_params.keys() == want_params.keys()
    for key, value in want_params.items():
      np.testing.assert_allclose(got_params[key], value, rtol=0, atol=1e-6, err_msg=key)
  moved = max(np.abs(want_params["after" + k[len("before"):]] - v).max()
              for k, v in want_params.items() if k.startswith("before"))
  assert moved > 1e-3  # the steps changed the params

  # Eval: each record once, in order, the same as one process; the same results everywhere.
  got, want = _eval_records(two), _eval_records(one)
  assert [r["index"] for r in got] == list(range(NUM_PROBLEMS))
  for g, w in zip(got, want, strict=True):
    assert {k: v for k, v in g.items() if k != "scores"} == {
        k: v for k, v in w.items() if k != "scores"}
    np.testing.assert_allclose(g["scores"], w["scores"], rtol=0, atol=1e-5)
  assert results[0]["eval"] == results[1]["eval"]
  assert results[0]["eval"]["datasets"] == single["eval"]["datasets"]
  from qmath_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  for name in (report.RESULTS_JSON, report.REPORT_MD):
    assert (two / "eval" / name).read_text() == (one / "eval" / name).read_text()

  # Round files: written once, readable by every process when write_outputs returns.
  for result in results:
    assert result["round"] == single["round"]
    assert result["round"]["summary"] == {"kept": [1, 2], "rows": 2}
  assert not [p.name for p in (two / "round").iterdir() if p.name.startswith(".")]  # no temps

  # TIR: process 0 ran every program; both processes continued with its output.
  assert results[0]["tir"]["runs"] == 4 and results[1]["tir"]["runs"] == 0
  for result in results:
    assert result["tir"]["texts"] == single["tir"]["texts"]
    assert all("ran on process 0" in text for row in result["tir"]["texts"] for text in row)


@pytest.mark.slow  # three JAX start-ups and compiles: about 30 s on two shared cores
def test_eval_stage_on_two_processes_writes_once(tiny_decoder, tmp_path):
  data_dir = tmp_path / "data"
  write_eval_data(data_dir)
  tokenizer_path, params_dir, _ = tiny_decoder
  two, one = tmp_path / "two", tmp_path / "one"
  results = _two_workers(str(two), str(data_dir), tokenizer_path, params_dir)
  single = eval_stage(one, str(data_dir), tokenizer_path, params_dir)
  for result in results:
    assert result["process_count"] == 2
    assert (result["first"], result["second"]) == (single["first"], single["second"])
  lines = (two / "samples" / "gsm8k.jsonl").read_text().splitlines()
  assert [json.loads(line)["index"] for line in lines] == list(range(NUM_PROBLEMS))
  for name in ("samples/gsm8k.jsonl", "eval_results.json", "eval_report.md"):
    assert (two / name).read_text() == (one / name).read_text(), name
  assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def _worker(port: int, process_id: int, workdir: str, data_dir: str, *stage_inputs) -> None:
  from qmath_jax import parallel  # pylint: disable=g-import-not-at-top
  assert parallel.initialize_distributed(f"localhost:{port}", 2, process_id, timeout_s=120)
  import jax  # pylint: disable=g-import-not-at-top
  if stage_inputs:
    result = eval_stage(pathlib.Path(workdir), data_dir, *stage_inputs)
  else:
    result = run_all(pathlib.Path(workdir), data_dir)
  print(json.dumps(result))
  jax.distributed.shutdown()


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:])
