"""The rl stage: GRPO episodes through the entry point, metrics per episode, checkpoints, resume."""

import os
import signal

import jax
import numpy as np
import pytest
from conftest import load_config

from qmath_jax import config_validation, convert, hf, main
from qmath_jax.train import checkpoint as checkpoint_lib
from qmath_jax.train import metrics_writer


def _config(decoder, episodes):
  config = load_config("rl.py")
  config.tokenizer.path, config.init.params_dir, _ = decoder
  config.model.dtype = "float32"
  config.data.sources = ("synthetic",)
  config.data.num_examples = 3
  config.rl.episodes = episodes
  config.rl.group_size = 4
  config.rl.problems_per_episode = 2
  config.rl.minibatch_rows = 8
  config.rl.max_new_tokens = 8
  config.rl.seq_len = 256
  config.checkpoint.every = 2
  config.checkpoint.async_save = False
  return config


def test_rl_stage_runs_episodes_checkpoints_and_resumes(tiny_decoder, tmp_path):
  first = main.run(_config(tiny_decoder, episodes=2), str(tmp_path))
  assert first["episodes_run"] == 2 and first["steps"] == 1.0
  rows = metrics_writer.read_metrics(tmp_path)
  assert [row["step"] for row in rows] == [1, 2]
  for row in rows:
    assert -1.0 <= row["reward"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
    assert row["ratio"] == pytest.approx(1.0, abs=1e-4)  # one on-policy step per episode
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / "checkpoints")
  assert checkpointer.latest_step() == 2
  meta = checkpointer.read_meta()
  checkpointer.close()
  assert meta["stage"] == "rl" and meta["episode"] == 2

  # A longer run in the same workdir resumes after episode 2; its policy is the trained one.
  again = main.run(_config(tiny_decoder, episodes=3), str(tmp_path))
  assert again["episodes_run"] == 1
  assert [row["step"] for row in metrics_writer.read_metrics(tmp_path)] == [1, 2, 3]
  model_cfg, params, step = main.latest_run_params(str(tmp_path))
  assert step == 3 and model_cfg.vocab_size == 384

  # The trained policy exports to a Hugging Face directory that loads back to the same weights.
  exported = convert.run(run_dir=str(tmp_path), hf_out=str(tmp_path / "hf"))
  hf_cfg, hf_params = hf.load_hf(exported)
  assert hf_cfg.num_layers == model_cfg.num_layers and hf.is_reward_model(exported) is False
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(hf_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="asked for a reward model"):
    convert.run(run_dir=str(tmp_path), hf_out=str(tmp_path / "rm"), reward_model=True)


def test_tir_rl_runs_the_sandbox_loop(tiny_decoder, tmp_path):
  config = _config(tiny_decoder, episodes=1)
  config.sample.prompt_type = "tir"
  config.sandbox.num_workers = 1
  result = main.run(config, str(tmp_path))
  assert result["episodes_run"] == 1 and result["steps"] == 1.0
  assert result["ratio"] == pytest.approx(1.0, abs=1e-3)


def test_rl_episodes_cycle_through_shuffled_problems():
  problems = list(range(5))
  seen = [main._episode_problems(problems, e, 2, seed=0) for e in range(5)]  # pylint: disable=protected-access
  assert all(len(batch) == 2 for batch in seen)
  flat = sum(seen, [])
  assert sorted(flat[:5]) == problems and sorted(flat[5:10]) == problems  # each epoch whole
  assert seen == [main._episode_problems(problems, e, 2, seed=0) for e in range(5)]  # pylint: disable=protected-access


def test_rl_config_errors_name_the_field(tiny_decoder, tmp_path):
  config = _config(tiny_decoder, episodes=1)
  config.rl.group_size = 1
  config.sample.prompt_type = "pot"
  with pytest.raises(config_validation.ConfigError) as err:
    main.run(config, str(tmp_path))
  assert "config.rl.group_size" in str(err.value)
  assert "config.sample.prompt_type" in str(err.value)
  config.rl.group_size = 4
  config.sample.prompt_type = "cot"
  config.rl.minibatch_rows = -8  # made -1 optimizer steps per episode
  config.rl.clip_eps = 0.0
  config.sample.top_p = 1.5
  with pytest.raises(config_validation.ConfigError) as err:
    main.run(config, str(tmp_path))
  for problem in ("config.rl.minibatch_rows: expected an integer >= 0", "config.rl.clip_eps: "
                  "expected a number > 0, got 0.0", "config.sample.top_p: expected a number in "
                  "(0, 1], got 1.5"):
    assert problem in str(err.value)
  config.rl.minibatch_rows, config.rl.clip_eps, config.sample.top_p = 8, 0.2, 1.0
  config.rl.group_size = 3
  with pytest.raises(config_validation.ConfigError, match="config.rl.minibatch_rows"):
    main.run(config, str(tmp_path))
  config.rl.group_size = 4
  config.optim.num_microbatches = 3  # 8 rows per step over 8 devices: 1 microbatch at most
  with pytest.raises(config_validation.ConfigError,
                     match=r"config\.optim\.num_microbatches: 8 rows per optimizer step"):
    main.run(config, str(tmp_path))
  config.optim.num_microbatches = 1
  config.data.num_examples = 0  # 'synthetic' with no problems
  with pytest.raises(config_validation.ConfigError, match=r"config\.data\.num_examples"):
    main.run(config, str(tmp_path))
  config.data.sources = ()  # the shipped rl.py leaves the queries file to the command line
  with pytest.raises(config_validation.ConfigError, match=r"config\.data\.sources: empty"):
    main.run(config, str(tmp_path))
  config.data.num_examples = 3
  config.data.sources = ("synthetic",)
  config.checkpoint.every = 0  # was a ZeroDivisionError after the first episode's compute
  config.optim.lr = 0.0
  with pytest.raises(config_validation.ConfigError) as err:
    main.run(config, str(tmp_path))
  assert "config.checkpoint.every: expected an integer >= 1, got 0" in str(err.value)
  assert "config.optim.lr: expected a number > 0, got 0.0" in str(err.value)
  assert not (tmp_path / "checkpoints").exists()


def test_bad_grpo_variant_values_are_rejected_naming_the_field(tiny_decoder, tmp_path):
  config = _config(tiny_decoder, episodes=1)
  config.rl.normalisation = "token_mean"
  with pytest.raises(config_validation.ConfigError,
                     match=r"config\.rl\.normalisation: expected one of \['token', 'sequence'\], "
                     r"got 'token_mean'"):
    main.run(config, str(tmp_path))
  with pytest.raises(TypeError, match="scale_advantages_by_std"):  # the ConfigDict's own check
    config.rl.scale_advantages_by_std = "no"


def test_grpo_variants_and_microbatches_reach_the_iteration(tiny_decoder, tmp_path,
                                                            monkeypatch):
  from qmath_jax.rl import grpo  # pylint: disable=g-import-not-at-top
  iteration, seen = grpo.grpo_iteration, []

  def recording_iteration(*args, **kwargs):
    seen.append((args[1], args[7]))  # the TrainStep, the GrpoConfig
    return iteration(*args, **kwargs)

  monkeypatch.setattr(grpo, "grpo_iteration", recording_iteration)
  config = _config(tiny_decoder, episodes=1)
  config.rl.normalisation = "token"
  config.rl.scale_advantages_by_std = False
  config.mesh.shape = (1, 4, 2)  # 8 rows per step: 2 microbatches of 4 over 4 device groups
  config.optim.num_microbatches = 2
  assert main.run(config, str(tmp_path))["episodes_run"] == 1
  train_step, grpo_cfg = seen[0]
  assert grpo_cfg.normalisation == "token" and not grpo_cfg.rollout.scale_advantages_by_std
  assert train_step.num_microbatches == 2
  defaults = load_config("rl.py").rl
  assert defaults.normalisation == "sequence" and defaults.scale_advantages_by_std is True


def test_sigterm_saves_the_finished_episode(tiny_decoder, tmp_path, monkeypatch):
  from qmath_jax.rl import grpo  # pylint: disable=g-import-not-at-top
  iteration = grpo.grpo_iteration

  def preempted_iteration(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice arrives mid-episode
    return iteration(*args, **kwargs)

  monkeypatch.setattr(grpo, "grpo_iteration", preempted_iteration)
  result = main.run(_config(tiny_decoder, episodes=3), str(tmp_path))
  assert result["preempted"] and result["step"] == 1
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / "checkpoints")
  assert checkpointer.latest_step() == 1
  checkpointer.close()


def test_scorer_must_be_a_reward_model_run(tiny_decoder, tmp_path):
  """An SFT run's workdir as scorer.rm_checkpoint passed the check (it has checkpoints) and
  failed only when the first rollout was scored with decoder params."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / "sft_run" / "checkpoints",
                                             async_save=False)
  checkpointer.save(1, {"w": jnp.zeros(2)}, meta={"stage": "sft"})
  checkpointer.close()
  config = _config(tiny_decoder, episodes=1)
  config.scorer.rm_checkpoint = str(tmp_path / "sft_run")
  with pytest.raises(config_validation.ConfigError,
                     match=r"config\.scorer\.rm_checkpoint: .*sft_run' is a 'sft' run, whose "
                     "checkpoints hold a decoder"):
    main.run(config, str(tmp_path / "rl"))
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  config.scorer.rm_checkpoint = str(tmp_path / "empty")
  with pytest.raises(config_validation.ConfigError,
                     match=r"config\.scorer\.rm_checkpoint: no checkpoints in"):
    main.run(config, str(tmp_path / "rl"))


def test_pipeline_references_name_stages_of_the_right_kind(tmp_path):
  config = load_config("demo.py", "quick=1")
  config.rl.scorer.rm_checkpoint = "sft"  # a decoder, not a reward model
  config.rl.init.checkpoint = "rm"        # a reward model, not a decoder
  with pytest.raises(config_validation.ConfigError) as err:
    main.run(config, str(tmp_path / "demo"))
  assert ("config.rl.scorer.rm_checkpoint: names the 'sft' stage, a 'sft' run, whose "
          "checkpoints hold no reward model") in str(err.value)
  assert ("config.rl.init.checkpoint: names the 'rm' stage, a 'rm' run, whose checkpoints "
          "hold no decoder") in str(err.value)
  assert not (tmp_path / "demo").exists()


def test_scorer_vocab_must_cover_the_tokenizer(tiny_decoder, tmp_path):
  """A reward model with fewer embedding rows than the tokenizer has ids is refused before any
  rollout; it failed at the first scoring call that met such an id, after the episode's
  sampling."""
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from qmath_jax import hf  # pylint: disable=g-import-not-at-top
  from qmath_jax.model import get_config  # pylint: disable=g-import-not-at-top
  small = get_config("tiny", vocab_size=320)
  _, init, _ = main._stage_model("rm", small)  # pylint: disable=protected-access
  hf.save_hf_rm(small, nn.unbox(init(jax.random.key(0))), tmp_path / "rm")
  config = _config(tiny_decoder, episodes=1)  # its tokenizer: 384 ids
  config.scorer.rm_checkpoint = str(tmp_path / "rm")
  config.scorer.max_length = 256
  with pytest.raises(ValueError, match=r"config\.scorer\.rm_checkpoint .*: its vocab_size is 320, "
                     "but the tokenizer has 384 ids"):
    main.run(config, str(tmp_path / "rl"))
  assert not (tmp_path / "rl" / "metrics.jsonl").exists()
