"""Bad config values fail before any compute with a message naming the field."""

import os
import subprocess
import sys

import jax
import ml_collections
import pytest
from conftest import load_config

from qmath_jax import config_validation
from qmath_jax import main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_expecting(config, tmp_path, *messages):
  workdir = tmp_path / "run"
  with pytest.raises(config_validation.ConfigError) as e:
    main.run(config, str(workdir))
  for message in messages:
    assert message in str(e.value)
  assert not workdir.exists()  # Nothing was built or written.
  return str(e.value)


def test_every_shipped_config_validates(tmp_path):
  queries = tmp_path / "queries.jsonl"  # a `sample.py:task=rl` output, the rl stage's input
  queries.write_text("")
  for name, arg in (("demo", None), ("demo", "quick=1"), ("pretrain", None),
                    ("sft", "model=qwen2.5-math-72b"), ("sft_r1", None), ("sft_r2", None),
                    ("rm", None), ("rl", "model=qwen2.5-math-72b"), ("rl", None),
                    ("sample", "task=rm"), ("sample", "task=rl"),
                    ("eval", "mode=maj8,prompt=tir"), ("eval", None)):
    config = load_config(f"{name}.py", arg)
    if config.stage != "pipeline":  # Real rounds need real inputs; give stand-in paths.
      config.tokenizer.path = __file__
      if "data" in config and "source" in config.data:
        config.data.source = __file__
      else:  # sampling stages: params from a directory
        config.init.params_dir = os.path.dirname(__file__)
      if config.stage == "rl":
        config.data.sources = (str(queries),)
    config_validation.validate(config, main.STAGES, jax.device_count(), main.STAGE_CHECKS)


def test_sft_numbers_follow_spec():
  for model, batch, lr in (("qwen2.5-math-1.5b", 128, 2e-5), ("qwen2.5-math-7b", 128, 2e-5),
                           ("qwen2.5-math-72b", 256, 5e-6)):
    config = load_config("sft.py", f"model={model}")
    assert (config.data.batch_size, config.optim.lr, config.optim.end_lr) == (batch, lr, 7e-7)
    assert (config.data.num_epochs, config.data.seq_len, config.model.preset) == (3, 4096, model)
  assert load_config("sft_r2.py", "model=qwen2.5-math-1.5b").round == 2
  with pytest.raises(ValueError, match="model='tiny'"):
    load_config("sft.py", "model=tiny")
  with pytest.raises(ValueError, match="rounds"):
    load_config("sft.py", "rounds=2")


def test_unknown_stage(tmp_path):
  config = load_config("demo.py", "quick=1")
  config.stage = "distill"
  _run_expecting(config, tmp_path, "config.stage: unknown stage 'distill'", "pipeline",
                 "pretrain", "sft")


def test_missing_init_checkpoint_and_wrong_types(tmp_path):
  config = ml_collections.ConfigDict(load_config("demo.py", "quick=1").sft.to_dict())
  config.data.source = "synthetic"
  config.tokenizer.train_vocab_size = 300
  config.init.checkpoint = str(tmp_path / "no_such_run")
  raw = config.to_dict()
  raw["train"]["total_steps"] = "100"    # a string where an integer belongs
  raw["optim"]["lr"] = "fast"
  raw["mesh"]["shape"] = (3, 1, 1)       # 3 does not divide 8 devices
  raw["data"]["mask_tool_outputs"] = "yes"
  message = _run_expecting(ml_collections.ConfigDict(raw), tmp_path,
                           "config.init.checkpoint: no checkpoint in",
                           "config.train.total_steps: expected an integer, got '100'",
                           "config.optim.lr: expected a number, got 'fast'",
                           "config.mesh.shape:",
                           "config.data.mask_tool_outputs: expected true or false, got 'yes'",
                           "config.tokenizer.path: init.checkpoint gives the model")
  assert message.count("\n") == 6  # one line per problem


def test_pipeline_stage_errors_name_the_sub_config(tmp_path):
  config = load_config("demo.py", "quick=1")
  config.sft.data.batch_size = 12  # not divisible over 8 data shards
  config.sft.init.checkpoint = "pretrain"  # an earlier stage: fine
  _run_expecting(config, tmp_path, "config.sft.data.batch_size: 12 rows do not split")


def test_command_line_bad_value_exits_before_compute(tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "qmath_jax.main", "--config=configs/demo.py:quick=1",
       f"--workdir={workdir}", "--config.pretrain.train.total_steps=0"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "config.pretrain.train.total_steps: expected an integer >= 1, got 0" in proc.stderr
  assert not workdir.exists()


def test_a_joining_stage_brings_its_own_check(tmp_path, monkeypatch):
  ran = []
  monkeypatch.setitem(main.STAGES, "toy", lambda config, workdir: ran.append(workdir))
  monkeypatch.setitem(main.STAGE_CHECKS, "toy", lambda config: (
      [] if config.size > 0 else [f"config.size: expected > 0, got {config.size}"]))
  config = ml_collections.ConfigDict({"stage": "toy", "size": 0})
  _run_expecting(config, tmp_path, "config.size: expected > 0, got 0")
  assert not ran
  config.size = 3
  main.run(config, str(tmp_path / "ok"))
  assert ran == [str(tmp_path / "ok")]


def test_pipeline_report_stages_and_synthetic_knobs_are_checked(tmp_path):
  config = load_config("demo.py", "quick=1")
  config.report.stages = ("sft", "distill")
  config.synthetic.max_steps = 0
  config.seed = -1  # the pipeline's seed replaces every stage's, so it is checked itself
  _run_expecting(config, tmp_path, "config.report.stages: expected some of the pipeline's stages",
                 "config.synthetic: need 1 <= min_steps <= max_steps, got 1, 0",
                 "config.seed: expected an integer >= 0, got -1")


@pytest.mark.parametrize("workdir", ["gs://bucket/run", "s3://bucket/run", "file:///tmp/run"])
def test_url_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch, workdir):
  monkeypatch.chdir(tmp_path)  # a URL taken as a path would make ./gs:/bucket/run here
  with pytest.raises(config_validation.ConfigError, match=rf"--workdir={workdir}: a URL"):
    main.run(load_config("demo.py", "quick=1"), workdir)
  assert not list(tmp_path.iterdir())
  main.check_workdir("/mnt/bucket/run")  # mounted paths pass
  main.check_workdir("relative/run:1")


def test_pipeline_checks_its_rl_stage_before_any_compute(tmp_path):
  """A bad rl field of the demo pipeline fails at once, not after pretrain, SFT and the RM;
  the rl stage's inputs from earlier stages (the sft run, the trained tokenizer) are not
  reported missing."""
  config = load_config("demo.py", "quick=1")
  config.rl.rl.normalisation = "token_mean"
  config.rl.rl.group_size = 1
  message = _run_expecting(config, tmp_path, "config.rl.rl.normalisation: expected one of",
                           "config.rl.rl.group_size: expected an integer >= 2")
  assert "init.checkpoint" not in message and "tokenizer.path" not in message
  config = load_config("demo.py", "quick=1")
  config.rl.scorer.rm_checkpoint = str(tmp_path / "no_rm_run")  # not an earlier stage: checked
  _run_expecting(config, tmp_path, "config.rl.scorer.rm_checkpoint: no checkpoints in")


def test_pipeline_report_names_only_stages_with_a_decoder(tmp_path):
  """The report samples each named stage's latest params after every stage ran: an rm run's
  are a reward model, and a sample or eval run has none, so naming one fails up front."""
  config = load_config("demo.py", "quick=1")
  config.report.stages = ("sft", "rm")
  _run_expecting(config, tmp_path, "config.report.stages: 'rm' is a 'rm' stage, whose run has no "
                 "decoder to sample")
  config.report.stages = ("pretrain", "rl")
  config_validation.validate(config, main.STAGES, jax.device_count(), main.STAGE_CHECKS)
  config.stages, config.report.stages = (), ()  # both wrong: both named, no TypeError
  _run_expecting(config, tmp_path, "config.stages: expected a non-empty list",
                 "config.report.stages: expected some of the pipeline's stages [], got ()")


def test_command_line_empty_workdir_is_a_usage_error(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "qmath_jax.main", "--config=configs/demo.py:quick=1", "--workdir="],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "--workdir=: expected a directory" in proc.stderr
  assert "Traceback" not in proc.stderr
  with pytest.raises(config_validation.ConfigError, match="--workdir=: expected a directory"):
    main.check_workdir("")


def test_command_line_override_of_a_missing_field_names_it(tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "qmath_jax.main", "--config=configs/demo.py:quick=1",
       f"--workdir={workdir}", "--config.rl.rl.episode=5"],  # the field is `episodes`
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert ("flag --config.rl.rl.episode=5: config.rl.rl has no field 'episode' (it has: alpha, "
          "clip_eps, episodes,") in proc.stderr
  assert "Traceback" not in proc.stderr and not workdir.exists()
  config = load_config("demo.py", "quick=1")
  assert main._unknown_override(["prog", "--config.seed.x=1"], config) == (  # pylint: disable=protected-access
      "flag --config.seed.x=1: config.seed is 0, not a config with fields")
  assert main._unknown_override(["prog", "--config.seed=1"], config) is None  # pylint: disable=protected-access


def test_a_stage_from_init_params_needs_their_tokenizer(tiny_decoder, tmp_path):
  """With init.* and no tokenizer.path, a train stage trained a new sentencepiece model on its
  own texts: its ids name other pieces than the ones the loaded embedding learned."""
  config = ml_collections.ConfigDict(load_config("demo.py", "quick=1").sft.to_dict())
  config.init.checkpoint = ""
  config.init.params_dir = tiny_decoder[1]
  config.tokenizer.train_vocab_size = 384
  message = _run_expecting(config, tmp_path, "config.tokenizer.path: init.params_dir gives the "
                           "model, so give the tokenizer it was trained with")
  assert message.count("config.tokenizer.path") == 1
  config.tokenizer.path = tiny_decoder[0]
  config_validation.validate(config, main.STAGES, jax.device_count(), main.STAGE_CHECKS)


def test_pipeline_tokenizer_fits_its_stages_models(tmp_path):
  """The pipeline's tokenizer is every stage's: one larger than the first stage's model failed
  only after it was trained, with a ValueError naming no field."""
  config = load_config("demo.py", "quick=1")
  config.tokenizer.train_vocab_size = 1024
  _run_expecting(config, tmp_path, "config.tokenizer.train_vocab_size: 1024 exceeds the "
                 "vocab_size 384 of the 'pretrain' stage's model")
  config.tokenizer.train_vocab_size = 0  # and no tokenizer.path
  config.tokenizer.num_documents = 0
  _run_expecting(config, tmp_path, "config.tokenizer.train_vocab_size: expected > 0 to train",
                 "config.tokenizer.num_documents: expected an integer >= 1, got 0")
