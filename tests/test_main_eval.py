"""The eval stage end to end: a tiny model over a slice of every benchmark, CoT and TIR."""

import json

import pytest
from conftest import load_config

from qmath_jax import config_validation, main
from qmath_jax.evaluation import benchmarks


def _eval_config(arg=None):
  return load_config("eval.py", arg)


@pytest.fixture(scope="module")
def tiny_run(tiny_decoder):
  """(tokenizer path, params checkpoint dir) of the shared random tiny decoder."""
  return tiny_decoder[:2]


def _config(tiny_run, data_dir, arg=None, **eval_overrides):
  config = _eval_config(arg)
  config.tokenizer.path, config.init.params_dir = tiny_run
  config.model.dtype = "float32"
  config.eval.data_dir = str(data_dir)
  config.eval.limit = 1
  config.eval.max_new_tokens = 8
  for key, value in eval_overrides.items():
    config.eval[key] = value
  return config


def test_eval_stage_over_every_dataset(tiny_run, data_dir, tmp_path):
  names = tuple(benchmarks.available(data_dir))
  assert {"gsm8k", "math", "olympiadbench", "mmlu_stem", "cmath"} <= set(names)
  config = _config(tiny_run, data_dir, datasets=names)
  summary = main.run(config, str(tmp_path))
  results = json.loads((tmp_path / "eval_results.json").read_text())
  assert set(results["datasets"]) == set(names)
  assert all(r["num_problems"] == 1 for r in results["datasets"].values())
  assert summary["metric"] == "acc" and set(summary["datasets"]) == set(names)
  assert (tmp_path / "eval_report.md").read_text().count("|") > 10
  assert (tmp_path / "eval_scores.png").stat().st_size > 0
  for name in names:
    record = json.loads((tmp_path / "samples" / f"{name}.jsonl").read_text().splitlines()[-1])
    assert len(record["responses"]) == 1 and len(record["preds"]) == 1
  # A second run finds every problem cached and reports the same scores.
  assert main.run(config, str(tmp_path)) == summary


def test_eval_stage_tir_runs_the_sandbox_loop(tiny_run, data_dir, tmp_path):
  config = _config(tiny_run, data_dir, "prompt=tir", datasets=("gsm8k", "math"))
  config.sandbox.num_workers = 1
  config.mesh.shape = (2, 1, 4)  # rows over data, weights split 4 ways (tensor parallel)
  summary = main.run(config, str(tmp_path))
  assert set(summary["datasets"]) == {"gsm8k", "math"}
  assert json.loads((tmp_path / "eval_results.json").read_text())["config"]["prompt_type"] == "tir"


def test_eval_config_errors_before_compute(tiny_run, tmp_path):
  config = _eval_config()
  config.tokenizer.path = tiny_run[0]
  config.eval.prompt_type = "pot"
  config.eval.datasets = ("gsm8k", "nope")
  config.mesh.shape = (3, 1, 1)
  with pytest.raises(config_validation.ConfigError) as err:
    main.run(config, str(tmp_path))
  message = str(err.value)
  assert "config.init" in message and "config.eval.prompt_type" in message
  assert "unknown ['nope']" in message
  assert "config.mesh.shape" in message
  assert not list(tmp_path.iterdir())
  run_dir = tmp_path / "not_a_run"  # a directory, but no run's: reading it made checkpoints/
  run_dir.mkdir()
  config = _eval_config()
  config.tokenizer.path = tiny_run[0]
  config.init.checkpoint = str(run_dir)
  with pytest.raises(config_validation.ConfigError, match=r"config\.init\.checkpoint: no "
                     r"checkpoint in .*not_a_run'"):
    main.run(config, str(tmp_path / "eval"))
  assert not list(run_dir.iterdir())


def test_eval_rerun_with_other_params_does_not_reuse_their_samples(tiny_run, data_dir, tmp_path):
  """The cached samples' fingerprint holds the sampling settings, not the model: a rerun in the
  same workdir with other params reported the old model's scores as theirs."""
  import shutil  # pylint: disable=g-import-not-at-top
  config = _config(tiny_run, data_dir, datasets=("gsm8k",))
  first = main.run(config, str(tmp_path / "eval"))
  assert main.run(config, str(tmp_path / "eval")) == first  # same params: the cache serves
  other = tmp_path / "other_params"
  shutil.copytree(tiny_run[1], other)
  config.init.params_dir = str(other)
  with pytest.raises(ValueError, match=r"models\.json: the samples in .* were made "
                     r"by \{'policy': \{'path': '.*params'\}, 'rm': None\}"):
    main.run(config, str(tmp_path / "eval"))


def test_eval_of_a_reward_model_run_is_refused(tiny_run, tmp_path):
  """init.checkpoint names the policy; an rm run's checkpoints hold a RewardModel tree, whose
  restore as a decoder failed with an error naming no field (here a TypeError from JAX)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from qmath_jax.model import get_config  # pylint: disable=g-import-not-at-top
  from qmath_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / "rm_run" / "checkpoints",
                                             async_save=False)
  checkpointer.save(1, {"params": {"score_head": jnp.zeros(2)}}, meta={
      "stage": "rm", "model": dataclasses.asdict(get_config("tiny", vocab_size=384))})
  checkpointer.close()
  config = _eval_config()
  config.tokenizer.path = tiny_run[0]
  config.init.checkpoint = str(tmp_path / "rm_run")
  with pytest.raises(ValueError, match=r"config\.init\.checkpoint .*rm_run' is an rm run"):
    main.run(config, str(tmp_path / "eval"))
