"""Hugging Face reward models (Qwen2ForRewardModel, as Qwen2.5-Math-RM-72B): golden scores from
torch, save/load round trips, bad input, sharded loading, and `scorer.rm_checkpoint` wiring."""

import importlib.util
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from qmath_jax import config_validation, hf, main
from qmath_jax.hf import safetensors_io
from qmath_jax.parallel import mesh as mesh_lib
from qmath_jax.train import reward_model

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
RM = GOLDEN_DIR / "hf_rm" / "gqa_untied_rm"
LM = GOLDEN_DIR / "hf" / "gqa_untied"


def _golden():
  return np.load(RM / "golden.npz")


def _scores(cfg, params, tokens, lengths):
  """Our RewardModel's scores of right-padded rows (`lengths` real tokens each)."""
  tokens = np.asarray(tokens)
  segment_ids = (np.arange(tokens.shape[1])[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  positions = np.arange(tokens.shape[1])[None] * segment_ids
  return np.asarray(reward_model.make_reward_model(cfg).apply(
      {"params": params}, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids)))


def _rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _abstract_rm(cfg):
  rm = reward_model.make_reward_model(cfg)
  return jax.eval_shape(lambda: nn.unbox(rm.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
                                         ["params"]))


def test_golden_scores_match_transformers():
  cfg, params = hf.load_hf_rm(RM)
  golden = _golden()
  assert cfg.num_heads > cfg.num_kv_heads and not cfg.tie_embeddings  # as the 72B
  assert len(set(golden["lengths"].tolist())) == len(golden["lengths"])  # padding exercised
  assert _rel_err(_scores(cfg, params, golden["tokens"], golden["lengths"]),
                  golden["scores"]) <= 1e-5


def test_params_are_the_reward_models_tree_with_a_zero_lm_head():
  cfg, params = hf.load_hf_rm(RM)
  abstract = _abstract_rm(cfg)
  assert jax.tree.structure(params) == jax.tree.structure(abstract)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(abstract)):
    assert (a.shape, a.dtype) == (b.shape, b.dtype)
  assert not np.any(np.asarray(params["backbone"]["lm_head"]))  # no such tensor in the RM


def test_tied_config_has_no_lm_head(tmp_path):
  ckpt = shutil.copytree(RM, tmp_path / "tied")
  raw = json.loads((ckpt / "config.json").read_text())
  raw["tie_word_embeddings"] = True
  (ckpt / "config.json").write_text(json.dumps(raw))
  cfg, params = hf.load_hf_rm(ckpt)
  assert "lm_head" not in params["backbone"]
  golden = _golden()
  assert _rel_err(_scores(cfg, params, golden["tokens"], golden["lengths"]),
                  golden["scores"]) <= 1e-5


def test_bf16_load_keeps_the_score_head_fp32():
  cfg, params = hf.load_hf_rm(RM, dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(params["backbone"])} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(params["score_head"])} == {jnp.dtype(jnp.float32)}
  golden = _golden()
  assert _rel_err(_scores(cfg, params, golden["tokens"], golden["lengths"]),
                  golden["scores"]) < 5e-2


@pytest.mark.parametrize("max_shard_bytes", [5 << 30, 60_000])
def test_save_load_round_trip_is_exact(tmp_path, max_shard_bytes):
  cfg, params = hf.load_hf_rm(RM)
  out = hf.save_hf_rm(cfg, params, tmp_path / "out", max_shard_bytes=max_shard_bytes)
  raw = json.loads((out / "config.json").read_text())
  assert raw["architectures"] == ["Qwen2ForRewardModel"] and raw["num_labels"] == 1
  cfg2, params2 = hf.load_hf_rm(out)
  assert cfg2 == cfg
  assert jax.tree.structure(params) == jax.tree.structure(params2)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  names = set()
  for f in out.glob("*.safetensors"):
    names |= set(safetensors_io.SafetensorsFile(f).names())
  assert names == set(safetensors_io.SafetensorsFile(RM / "model.safetensors").names())
  assert "lm_head.weight" not in names  # the RM's layout: dropped on save


def _rewrite(ckpt, change):
  """Rewrites ckpt's model.safetensors with `change(dict name -> array)` applied."""
  src = safetensors_io.SafetensorsFile(ckpt / "model.safetensors")
  arrays = change({n: np.array(src.get(n)) for n in src.names()})
  del src
  safetensors_io.write(ckpt / "tmp.safetensors",
                       [(n, a.shape, a.dtype, lambda a=a: a) for n, a in arrays.items()])
  (ckpt / "tmp.safetensors").replace(ckpt / "model.safetensors")
  return ckpt


def test_missing_score_tensor_is_named(tmp_path):
  ckpt = _rewrite(shutil.copytree(RM, tmp_path / "rm"),
                  lambda a: {n: x for n, x in a.items() if n != "score.2.bias"})
  with pytest.raises(KeyError, match=r"missing tensor 'score\.2\.bias' in .*model\.safetensors"):
    hf.load_hf_rm(ckpt)


def test_misshapen_score_tensor_is_named(tmp_path):
  ckpt = _rewrite(shutil.copytree(RM, tmp_path / "rm"),
                  lambda a: {**a, "score.2.weight": np.zeros((2, 64), np.float32)})
  with pytest.raises(ValueError, match=r"'score\.2\.weight' in .*model\.safetensors has shape "
                     r"\(2, 64\), expected \(1, 64\)"):
    hf.load_hf_rm(ckpt)


@pytest.mark.parametrize("labels", [{"num_labels": 2}, {"id2label": {"0": "A", "1": "B"}}])
def test_num_labels_other_than_one_is_named(tmp_path, labels):
  ckpt = shutil.copytree(RM, tmp_path / "rm")
  raw = json.loads((ckpt / "config.json").read_text())
  raw.pop("id2label")
  raw.update(labels)
  (ckpt / "config.json").write_text(json.dumps(raw))
  with pytest.raises(ValueError, match=r"config\.json: num_labels=2"):
    hf.load_hf_rm(ckpt)


def test_wrong_loader_is_named():
  with pytest.raises(ValueError, match=r"config\.json: a Qwen2ForRewardModel.*load_hf_rm"):
    hf.load_hf(RM)
  with pytest.raises(ValueError, match=r"config\.json: architectures do not name "
                     r"Qwen2ForRewardModel"):
    hf.load_hf_rm(LM)
  assert hf.is_reward_model(RM) and not hf.is_reward_model(LM)


def test_load_places_shards_on_a_mesh():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("fsdp", "tensor"))
  spec = jax.sharding.PartitionSpec
  cfg = hf.read_config(RM)
  shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, spec()), _abstract_rm(cfg))
  shardings["score_head"]["dense"]["kernel"] = jax.sharding.NamedSharding(
      mesh, spec("fsdp", "tensor"))
  shardings["backbone"]["lm_head"] = jax.sharding.NamedSharding(mesh, spec(None, "tensor"))
  cfg, params = hf.load_hf_rm(RM, shardings=shardings)
  dense = params["score_head"]["dense"]["kernel"]
  assert dense.sharding == shardings["score_head"]["dense"]["kernel"]
  assert {s.data.shape for s in dense.addressable_shards} == {(32, 32)}
  assert params["backbone"]["lm_head"].sharding == shardings["backbone"]["lm_head"]
  golden = _golden()
  assert _rel_err(_scores(cfg, params, golden["tokens"], golden["lengths"]),
                  golden["scores"]) <= 1e-5


# ----------------------------------------------------------------------------- scorer wiring


@pytest.mark.parametrize("name, arg", [("eval.py", "mode=maj8"), ("rl.py", None)])
def test_config_with_an_hf_rm_dir_passes_validation(name, arg, tmp_path):
  config = load_config(name, arg)
  config.tokenizer.path = str(RM / "config.json")  # only its existence is checked
  config.init.checkpoint, config.init.hf_dir = "", str(LM)
  if config.get("data") is not None and "sources" in config.data:
    config.data.sources = ("synthetic",)
    config.data.num_examples = 8  # 'synthetic' with none is refused
  config.scorer.rm_checkpoint = str(RM)
  config_validation.validate(config, main.STAGES, jax.device_count(), main.STAGE_CHECKS)
  config.scorer.rm_checkpoint = str(LM)  # a causal LM is no reward model
  with pytest.raises(config_validation.ConfigError,
                     match=r"config\.scorer\.rm_checkpoint: no checkpoints in .*Hugging Face "
                           r"reward-model directory whose config\.json names Qwen2ForRewardModel"):
    config_validation.validate(config, main.STAGES, jax.device_count(), main.STAGE_CHECKS)


class _GoldenRowsTokenizer:
  """Encodes a text holding marker `row-<i>` as the golden RM's token row i (real tokens)."""
  pad_id = 0

  @property
  def vocab_size(self):
    return int(_golden()["tokens"].max()) + 1

  def encode(self, text):
    golden = _golden()
    i = int(text.split("row-")[1].split()[0])
    return golden["tokens"][i, :golden["lengths"][i]].tolist()


def test_rm_scorer_scores_with_an_hf_rm_dir_on_the_mesh():
  mesh = mesh_lib.make_mesh((2, 2, 2))
  rm_scorer = main._rm_scorer  # pylint: disable=protected-access
  scorer = rm_scorer(str(RM), _GoldenRowsTokenizer(), 3, 64, mesh)
  assert scorer.params["score_head"]["dense"]["kernel"].sharding.mesh == mesh
  rows = len(_golden()["lengths"])
  prompts = ["<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"] * 2
  completions = [[f"row-{i} " for i in range(0, rows, 2)], [f"row-{i} " for i in range(1, rows, 2)]]
  scores = scorer.score_completions(prompts, completions)
  flat = np.zeros(rows, np.float32)
  flat[0::2], flat[1::2] = scores[0], scores[1]
  assert _rel_err(flat, _golden()["scores"]) <= 1e-5


# ----------------------------------------------------------------------------- live (torch)


def _generator():
  spec = importlib.util.spec_from_file_location("make_hf_golden",
                                                GOLDEN_DIR / "make_hf_golden.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.hf
def test_live_golden_and_saved_rm_match_torch(tmp_path):
  """With torch: the committed golden scores still match a live forward, and `save_hf_rm`'s
  output loads in the released RM's module tree and scores the same."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  generator = _generator()
  golden = _golden()
  tokens = torch.from_numpy(golden["tokens"]).long()
  mask = (torch.arange(tokens.shape[1])[None] < torch.from_numpy(golden["lengths"])[:, None])
  cfg, params = hf.load_hf_rm(RM)
  params = jax.tree.map(lambda x: x * 1.1, params)  # not the golden weights
  hf.save_hf_rm(cfg, params, tmp_path / "rm")
  for ckpt, expected in [(RM, golden["scores"]),
                         (tmp_path / "rm", _scores(cfg, params, golden["tokens"],
                                                   golden["lengths"]))]:
    model = generator.Qwen2ForRewardModel.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
      live = model(tokens, mask.long()).numpy()
    assert _rel_err(live, expected) <= 1e-5
