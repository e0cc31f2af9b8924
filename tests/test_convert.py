"""The convert CLI: HF -> params checkpoint -> HF is lossless, for causal LMs and reward models."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax import convert, hf
from qmath_jax.hf import safetensors_io
from qmath_jax.model import get_config

GOLDEN = pathlib.Path(__file__).parent / "golden" / "hf" / "gqa_untied"


def test_cli_round_trip(tmp_path):
  run = lambda *args: subprocess.run([sys.executable, "-m", "qmath_jax.convert", *args],
                                     check=True, capture_output=True, text=True, timeout=300)
  run(f"--hf_dir={GOLDEN}", f"--out={tmp_path / 'ckpt'}")
  run(f"--params_dir={tmp_path / 'ckpt'}", f"--hf_out={tmp_path / 'back'}")
  _, before = hf.load_hf(GOLDEN)
  _, after = hf.load_hf(tmp_path / "back")
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_params_checkpoint_restores_sharded(tmp_path):
  cfg, params = hf.load_hf(GOLDEN)
  convert.save_params(tmp_path / "ckpt", cfg, params)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("fsdp",))
  spec = jax.sharding.PartitionSpec
  shardings = jax.tree.map(lambda x: jax.sharding.NamedSharding(
      mesh, spec(*([None] * (x.ndim - 1) + ["fsdp"])) if x.shape[-1] % 2 == 0 else spec()), params)
  cfg2, restored = convert.load_params(tmp_path / "ckpt", shardings=shardings)
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert restored["embedding"].sharding == shardings["embedding"]
  with pytest.raises(FileExistsError):
    convert.save_params(tmp_path / "ckpt", cfg, params)
  with pytest.raises(FileNotFoundError, match="not a params checkpoint"):
    convert.load_params(tmp_path)


# ----------------------------------------------------------------------------- reward models

RM_GOLDEN = pathlib.Path(__file__).parent / "golden" / "hf_rm" / "gqa_untied_rm"


def _rm_scores(cfg, params, tokens, lengths):
  """RewardModel scores of right-padded rows (`lengths` real tokens each)."""
  from qmath_jax.train import reward_model  # pylint: disable=g-import-not-at-top
  segment_ids = (np.arange(tokens.shape[1])[None] < lengths[:, None]).astype(np.int32)
  positions = np.arange(tokens.shape[1])[None] * segment_ids
  apply = jax.jit(reward_model.make_reward_model(cfg).apply)
  return np.asarray(apply({"params": params}, tokens, positions, segment_ids))


def _random_rm(cfg):
  """RewardModel params with every leaf random (no zero biases or unit norms to hide behind),
  drawn with numpy at the shapes of the model's init (nothing to compile)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from qmath_jax.train import reward_model  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(lambda: nn.unbox(reward_model.make_reward_model(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype), abstract)


def _tensors(hf_dir):
  out = {}
  for path in sorted(pathlib.Path(hf_dir).glob("*.safetensors")):
    f = safetensors_io.SafetensorsFile(path)
    out.update({name: np.array(f.get(name)) for name in f.names()})
  return out


def test_cli_reward_model_round_trip(tmp_path):
  """The released RM's layout -> params checkpoint (detected from config.json) -> HF again:
  the same tensors, bit for bit, and the same scores as the torch model's."""
  subprocess.run([sys.executable, "-m", "qmath_jax.convert", f"--hf_dir={RM_GOLDEN}",
                  f"--out={tmp_path / 'ckpt'}"], check=True, capture_output=True, text=True,
                 timeout=300)
  assert convert.is_reward_model_params(tmp_path / "ckpt")
  convert.run(params_dir=tmp_path / "ckpt", hf_out=tmp_path / "back")
  assert hf.is_reward_model(tmp_path / "back")
  before, after = _tensors(RM_GOLDEN), _tensors(tmp_path / "back")
  assert sorted(before) == sorted(after) and "score.0.weight" in after
  for name, value in before.items():
    np.testing.assert_array_equal(after[name], value, err_msg=name)
  golden = np.load(RM_GOLDEN / "golden.npz")
  cfg, ours = convert.load_rm_params(tmp_path / "ckpt")
  scores = _rm_scores(cfg, ours, golden["tokens"], golden["lengths"])
  np.testing.assert_allclose(scores, golden["scores"], rtol=1e-5, atol=1e-5)
  cfg_back, back = hf.load_hf_rm(tmp_path / "back")
  assert cfg_back == cfg
  np.testing.assert_array_equal(_rm_scores(cfg, back, golden["tokens"], golden["lengths"]),
                                scores)


@pytest.mark.parametrize("preset", ["tiny", "tiny-tied"])
def test_random_reward_model_round_trip(tmp_path, preset):
  """RewardModel params -> HF (Qwen2ForRewardModel) -> params: identical weights and scores.
  An untied backbone's `lm_head`, which the RM never reads and the HF layout has no tensor
  for, comes back as zeros."""
  cfg = get_config(preset)
  params = _random_rm(cfg)
  convert.save_params(tmp_path / "ours", cfg, params)
  convert.run(params_dir=tmp_path / "ours", hf_out=tmp_path / "hf", reward_model=True)
  convert.run(hf_dir=tmp_path / "hf", out=tmp_path / "back")
  cfg2, back = convert.load_rm_params(tmp_path / "back")
  assert cfg2 == cfg
  assert jax.tree.structure(back) == jax.tree.structure(params)
  flat, flat_back = (dict(jax.tree_util.tree_leaves_with_path(p)) for p in (params, back))
  for path, value in flat.items():
    key = jax.tree_util.keystr(path)
    expected = np.zeros_like(value) if key == "['backbone']['lm_head']" else value
    np.testing.assert_array_equal(np.asarray(flat_back[path]), np.asarray(expected), err_msg=key)
  assert ("lm_head" in params["backbone"]) == (preset == "tiny")
  tokens = np.asarray(jax.random.randint(jax.random.key(2), (3, 12), 0, cfg.vocab_size))
  lengths = np.array([12, 7, 1])
  np.testing.assert_array_equal(_rm_scores(cfg, back, tokens, lengths),
                                _rm_scores(cfg, params, tokens, lengths))


def test_reward_model_kind_mismatches_are_named(tmp_path):
  with pytest.raises(ValueError, match=r"asked for a causal LM, but .*config\.json names "
                     r"architectures \['Qwen2ForRewardModel'\]"):
    convert.run(hf_dir=RM_GOLDEN, out=tmp_path / "a", reward_model=False)
  with pytest.raises(ValueError, match=r"asked for a reward model, but .*config\.json names "
                     r"architectures \['Qwen2ForCausalLM'\]"):
    convert.run(hf_dir=GOLDEN, out=tmp_path / "b", reward_model=True)
  assert not list(tmp_path.iterdir())  # nothing written
  cfg, lm = hf.load_hf(GOLDEN)
  convert.save_params(tmp_path / "lm", cfg, lm)
  rm_cfg, rm = hf.load_hf_rm(RM_GOLDEN)
  convert.save_params(tmp_path / "rm", rm_cfg, rm)
  with pytest.raises(ValueError, match=r"rm: holds a reward model's params; load it with "
                     r"load_rm_params"):
    convert.load_params(tmp_path / "rm")
  with pytest.raises(ValueError, match=r"lm: holds a decoder's params, not a reward model's"):
    convert.load_rm_params(tmp_path / "lm")
  with pytest.raises(ValueError, match=r"asked for a causal LM, but .*rm holds a reward model"):
    convert.run(params_dir=tmp_path / "rm", hf_out=tmp_path / "c", reward_model=False)
  with pytest.raises(ValueError, match=r"asked for a reward model, but .*lm holds a decoder"):
    convert.run(params_dir=tmp_path / "lm", hf_out=tmp_path / "d", reward_model=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["lm", "rm"]


def test_reward_model_flag_decides_without_architectures(tmp_path):
  """A config.json naming no architecture: --reward_model reads it as an RM."""
  ckpt = shutil.copytree(RM_GOLDEN, tmp_path / "rm")
  raw = json.loads((ckpt / "config.json").read_text())
  del raw["architectures"]
  (ckpt / "config.json").write_text(json.dumps(raw))
  convert.run(hf_dir=ckpt, out=tmp_path / "ckpt", reward_model=True)
  _, params = convert.load_rm_params(tmp_path / "ckpt")
  _, golden = hf.load_hf_rm(RM_GOLDEN)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(golden)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_params_that_disagree_with_model_config_are_named(tmp_path):
  cfg, params = hf.load_hf(GOLDEN)
  convert.save_params(tmp_path / "ckpt", cfg, params)
  path = tmp_path / "ckpt" / convert.CONFIG_FILE
  raw = json.loads(path.read_text())
  path.write_text(json.dumps({**raw, "intermediate_size": 96}))
  with pytest.raises(ValueError, match=r"ckpt: params\['layers'\]\['mlp'\]\['down_proj'\]"
                     r"\['kernel'\] has shape \(2, 80, 64\), expected \(2, 96, 64\)"):
    convert.load_params(tmp_path / "ckpt")
  path.write_text(json.dumps({**raw, "tie_embeddings": True}))
  with pytest.raises(ValueError, match=r"ckpt: params\['lm_head'\] is in the checkpoint but not "
                     r"in the model that model_config\.json describes"):
    convert.load_params(tmp_path / "ckpt")
  cfg, params = hf.load_hf(GOLDEN.parent / "gqa_tied_sharded")
  convert.save_params(tmp_path / "tied", cfg, params)
  path = tmp_path / "tied" / convert.CONFIG_FILE
  path.write_text(json.dumps({**json.loads(path.read_text()), "tie_embeddings": False}))
  with pytest.raises(ValueError, match=r"tied: params\['lm_head'\] is missing from the checkpoint"):
    convert.load_params(tmp_path / "tied")
