"""The rm stage: the reward model trains through the entry point from a decoder checkpoint."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import load_config

from qmath_jax import config_validation, convert, hf, main
from qmath_jax.data import pipelines, synthetic
from qmath_jax.model import get_config
from qmath_jax.train import checkpoint as checkpoint_lib
from qmath_jax.train import metrics_writer

def _config(decoder, **data):
  config = load_config("rm.py")
  config.tokenizer.path, config.init.params_dir, _ = decoder
  config.model.dtype = "float32"
  config.data.source = "synthetic"
  config.data.num_examples = 8
  config.data.batch_size = 8
  config.data.seq_len = 512
  config.data.num_epochs = 0
  config.data.update(data)
  config.optim.lr = 1e-2
  config.optim.end_lr = 1e-3
  config.optim.warmup_steps = 0
  config.train.total_steps = 14
  config.train.log_every = 1
  config.train.eval_every = 0
  config.checkpoint.best_metric = ""
  config.checkpoint.async_save = False
  return config


def test_rm_stage_starts_from_the_decoder(tiny_decoder):
  config = _config(tiny_decoder)
  model_cfg = get_config("tiny", vocab_size=384)
  _, init, _ = main._stage_model("rm", model_cfg)  # pylint: disable=protected-access
  abstract = jax.eval_shape(lambda: nn.unbox(init(jax.random.key(0))))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  start = main._init_stage_params(  # pylint: disable=protected-access
      config, init, abstract, jax.tree.map(lambda _: device, abstract))
  for a, b in zip(jax.tree.leaves(start["backbone"]), jax.tree.leaves(tiny_decoder[2])):
    np.testing.assert_array_equal(a, b)  # the decoder checkpoint, as loaded
  assert set(start["score_head"]) == {"dense", "out"}  # drawn fresh


@pytest.fixture(scope="module")
def rm_run(tiny_decoder, tmp_path_factory):
  """An rm run's workdir: 14 steps on planted-error lists from the tiny decoder."""
  workdir = tmp_path_factory.mktemp("rm_run")
  summary = main.run(_config(tiny_decoder), str(workdir))
  assert summary["step"] == 14
  return workdir


def test_rm_stage_learns_the_lists(rm_run):
  losses = [row["loss"] for row in metrics_writer.read_metrics(rm_run) if "loss" in row]
  assert len(losses) == 14
  assert np.mean(losses[:4]) > 0.68  # ln 2: no preference between the responses yet
  assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
  meta = checkpoint_lib.Checkpointer(rm_run / "checkpoints").read_meta()
  assert meta["stage"] == "rm"


def test_rm_run_exports_to_a_hugging_face_reward_model(rm_run, tmp_path):
  exported = convert.run(run_dir=str(rm_run), hf_out=str(tmp_path / "rm"))
  assert hf.is_reward_model(exported)
  _, params, _ = main.latest_run_params(str(rm_run))
  _, hf_params = hf.load_hf_rm(exported, dtype="float32")
  exported_leaves = dict(jax.tree_util.tree_leaves_with_path(hf_params))
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if "lm_head" in jax.tree_util.keystr(path):
      continue  # the RM never reads its backbone's LM head; the HF layout has no such tensor
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(exported_leaves[path]))
  with pytest.raises(ValueError, match="asked for a causal LM"):
    convert.run(run_dir=str(rm_run), hf_out=str(tmp_path / "lm"), reward_model=False)


def test_rejection_sampling_ranks_with_the_trained_rm(tiny_decoder, rm_run, tmp_path):
  sample = load_config("sample.py", "task=sft")
  sample.tokenizer.path, sample.init.params_dir, _ = tiny_decoder
  sample.model.dtype = "float32"
  sample.data.sources = ("synthetic",)
  sample.data.num_examples = 2
  sample.sample.n = 4
  sample.sample.max_new_tokens = 12
  sample.scorer.rm_checkpoint = str(rm_run)
  result = main.run(sample, str(tmp_path))
  assert result["summary"]["config"]["scored"]
  assert result["summary"]["num_sampled"] == 8


def test_eval_reports_rm_at_n_with_the_trained_rm(tiny_decoder, rm_run, data_dir, tmp_path):
  config = load_config("eval.py", "mode=maj8")
  config.tokenizer.path, config.init.params_dir, _ = tiny_decoder
  config.model.dtype = "float32"
  config.eval.data_dir = str(data_dir)
  config.eval.datasets = ("gsm8k",)
  config.eval.limit = 2
  config.eval.n = 4
  config.eval.pass_k = (1, 4)
  config.eval.max_new_tokens = 8
  config.scorer.rm_checkpoint = str(rm_run)
  summary = main.run(config, str(tmp_path))
  records = [json.loads(line) for line in
             (tmp_path / "samples" / "gsm8k.jsonl").read_text().splitlines()]
  assert len(records) == 2
  for record in records:
    assert len(record["scores"]) == 4 and len(set(record["scores"])) > 1
  assert summary["metric"] == "rm"


def test_rm_lists_plant_one_wrong_answer_per_negative():
  problems = synthetic.generate(20, seed=1)
  lists = pipelines.planted_rm_lists(problems, list_size=6, seed=2)
  assert len(lists) == 20
  for row, problem in zip(lists, problems):
    assert len(row["responses"]) == len(row["labels"]) == 6
    assert 1 <= sum(row["labels"]) <= 5
    for response, label in zip(row["responses"], row["labels"]):
      assert (f"\\boxed{{{problem.answer}}}" in response) == bool(label)
  assert lists == pipelines.planted_rm_lists(problems, list_size=6, seed=2)


def test_rm_config_errors_name_the_field(tiny_decoder, tmp_path):
  config = _config(tiny_decoder, list_size=1)
  with pytest.raises(config_validation.ConfigError, match="config.data.list_size"):
    main.run(config, str(tmp_path))
