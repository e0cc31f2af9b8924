"""Hugging Face interop: golden logits from transformers, save/load round trips, bad input."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax import hf
from qmath_jax.hf import safetensors_io
from qmath_jax.model import Transformer, get_config, init_params

GOLDEN = pathlib.Path(__file__).parent / "golden" / "hf"
CASES = sorted(p.name for p in GOLDEN.iterdir())


def _rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _logits(cfg, params, tokens):
  return Transformer(cfg).apply({"params": params}, jnp.asarray(tokens))


@pytest.mark.parametrize("case", CASES)
def test_golden_logits_match_transformers(case):
  cfg, params = hf.load_hf(GOLDEN / case)
  golden = np.load(GOLDEN / case / "golden.npz")
  assert cfg.num_heads > cfg.num_kv_heads  # grouped KV heads are exercised
  assert _rel_err(_logits(cfg, params, golden["tokens"]), golden["logits"]) <= 1e-5


def test_golden_cases_cover_tied_and_untied():
  tied = {hf.read_config(GOLDEN / c).tie_embeddings for c in CASES}
  assert tied == {True, False}


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip_is_exact(case, tmp_path):
  cfg, params = hf.load_hf(GOLDEN / case)
  out = hf.save_hf(cfg, params, tmp_path / "out", max_shard_bytes=60_000)
  cfg2, params2 = hf.load_hf(out)
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(params) == jax.tree.structure(params2)


def test_bf16_load_casts_tensor_by_tensor():
  cfg, params = hf.load_hf(GOLDEN / "gqa_untied", dtype="bfloat16")
  assert cfg.param_dtype == "bfloat16"
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  golden = np.load(GOLDEN / "gqa_untied" / "golden.npz")
  assert _rel_err(_logits(cfg, params, golden["tokens"]), golden["logits"]) < 5e-2


def test_load_places_shards_on_a_mesh():
  devices = np.array(jax.devices()[:4]).reshape(2, 2)
  mesh = jax.sharding.Mesh(devices, ("fsdp", "tensor"))
  cfg = hf.read_config(GOLDEN / "gqa_untied")
  spec = jax.sharding.PartitionSpec
  shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, spec()),
                           init_params(cfg, jax.random.key(0)))
  shardings["layers"]["mlp"]["gate_proj"]["kernel"] = jax.sharding.NamedSharding(
      mesh, spec(None, "fsdp", "tensor"))
  cfg, params = hf.load_hf(GOLDEN / "gqa_untied", shardings=shardings)
  gate = params["layers"]["mlp"]["gate_proj"]["kernel"]
  assert gate.sharding == shardings["layers"]["mlp"]["gate_proj"]["kernel"]
  assert {s.data.shape for s in gate.addressable_shards} == {(2, 32, 40)}
  golden = np.load(GOLDEN / "gqa_untied" / "golden.npz")
  assert _rel_err(_logits(cfg, params, golden["tokens"]), golden["logits"]) <= 1e-5


def test_transformers4_config_layout(tmp_path):
  ckpt = shutil.copytree(GOLDEN / "gqa_tied_sharded", tmp_path / "v4")
  raw = json.loads((ckpt / "config.json").read_text())
  raw["rope_theta"] = raw.pop("rope_parameters")["rope_theta"]
  (ckpt / "config.json").write_text(json.dumps(raw))
  assert hf.read_config(ckpt).rope_theta == 1e6


def _copy(tmp_path, case="gqa_untied"):
  return shutil.copytree(GOLDEN / case, tmp_path / case)


def test_unknown_architecture_is_named(tmp_path):
  ckpt = _copy(tmp_path)
  raw = json.loads((ckpt / "config.json").read_text())
  raw["architectures"], raw["model_type"] = ["LlamaForCausalLM"], "llama"
  (ckpt / "config.json").write_text(json.dumps(raw))
  with pytest.raises(ValueError, match=r"config\.json.*unknown architecture.*LlamaForCausalLM"):
    hf.load_hf(ckpt)


def test_missing_tensor_is_named(tmp_path):
  ckpt = _copy(tmp_path)
  src = safetensors_io.SafetensorsFile(ckpt / "model.safetensors")
  keep = [n for n in src.names() if n != "model.layers.1.mlp.up_proj.weight"]
  tensors = [(n, src.shape(n), src.get(n).dtype, lambda n=n: np.array(src.get(n))) for n in keep]
  safetensors_io.write(tmp_path / "tmp.safetensors", tensors)
  del src
  (tmp_path / "tmp.safetensors").replace(ckpt / "model.safetensors")
  with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    hf.load_hf(ckpt)


def test_shape_mismatch_is_named(tmp_path):
  ckpt = _copy(tmp_path)
  raw = json.loads((ckpt / "config.json").read_text())
  raw["intermediate_size"] = 96
  (ckpt / "config.json").write_text(json.dumps(raw))
  with pytest.raises(ValueError, match=r"gate_proj\.weight.*shape \(80, 64\), expected \(96, 64\)"):
    hf.load_hf(ckpt)


@pytest.mark.parametrize("payload", [b"\x01", b"\xff" * 8 + b"{}", b"\x04\x00\x00\x00\x00\x00\x00\x00{{{{"])
def test_unreadable_header_is_named(tmp_path, payload):
  ckpt = _copy(tmp_path)
  (ckpt / "model.safetensors").write_bytes(payload)
  with pytest.raises(safetensors_io.SafetensorsError, match=r"model\.safetensors: unreadable"):
    hf.load_hf(ckpt)


def test_failed_save_leaves_nothing(tmp_path):
  cfg = get_config("tiny")
  params = init_params(cfg, jax.random.key(0))
  target = hf.save_hf(cfg, params, tmp_path / "ckpt")
  before = {p.name: p.read_bytes() for p in target.iterdir()}
  broken = jax.tree.map(lambda x: x, params)
  broken["layers"]["mlp"]["down_proj"]["kernel"] = jnp.zeros((2, 3, 3))  # wrong shape
  with pytest.raises(ValueError, match="down_proj"):
    hf.save_hf(cfg, broken, tmp_path / "ckpt")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dir left
  assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # old one intact


@pytest.mark.hf
@pytest.mark.parametrize("tied", [False, True])
def test_save_hf_loads_in_transformers(tmp_path, tied):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = get_config("tiny-tied" if tied else "tiny")
  params = init_params(cfg, jax.random.key(1))
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), params)
  hf.save_hf(cfg, params, tmp_path / "m")
  model = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16)).astype(np.int32)
  with torch.no_grad():
    theirs = model(input_ids=torch.from_numpy(tokens).long()).logits.numpy()
  assert _rel_err(_logits(cfg, params, tokens), theirs) <= 1e-5


@pytest.mark.hf
def test_live_golden_regeneration_matches(tmp_path):
  """When transformers imports, the committed golden logits still match a live forward."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  for case in CASES:
    model = transformers.Qwen2ForCausalLM.from_pretrained(GOLDEN / case, dtype=torch.float32).eval()
    golden = np.load(GOLDEN / case / "golden.npz")
    with torch.no_grad():
      live = model(input_ids=torch.from_numpy(golden["tokens"]).long()).logits.numpy()
    assert _rel_err(live, golden["logits"]) <= 1e-6


def test_save_checks_params_against_the_config(tmp_path):
  """Params that do not fit `cfg` are refused before anything is written, naming the leaf: a
  layer too few would otherwise be filled by a clamped index (a duplicated layer), a tied
  config would silently drop a trained lm_head."""
  cfg = get_config("tiny")
  params = init_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match=r"\['layers'\]\['input_norm'\]\['scale'\] "
                     r"\(model\.layers\.\{i\}\.input_layernorm\.weight\): shape \(2, 64\), "
                     r"expected \(3, 64\)"):
    hf.save_hf(cfg.replace(num_layers=3), params, tmp_path / "a")
  with pytest.raises(ValueError, match=r"\['k_proj'\]\['kernel'\] .*: shape \(2, 64, 2, 16\), "
                     r"expected \(2, 64, 4, 16\)"):
    hf.save_hf(cfg.replace(num_kv_heads=4), params, tmp_path / "b")
  with pytest.raises(ValueError, match=r"\['lm_head'\]: not a parameter of the config"):
    hf.save_hf(cfg.replace(tie_embeddings=True), params, tmp_path / "c")
  del params["lm_head"]
  with pytest.raises(KeyError, match=r"\['lm_head'\] \(lm_head\.weight\): missing"):
    hf.save_hf(cfg, params, tmp_path / "d")
  assert not list(tmp_path.iterdir())


def _with_config(tmp_path, name, **changes):
  ckpt = shutil.copytree(GOLDEN / "gqa_tied_sharded", tmp_path / name)
  raw = json.loads((ckpt / "config.json").read_text())
  raw.update(changes)
  (ckpt / "config.json").write_text(json.dumps(raw))
  return ckpt


def test_rope_settings(tmp_path):
  """transformers 5 reads rope_parameters before a top-level rope_theta, 4.x only the latter:
  two different thetas are refused, not silently read as one version would. A rope_scaling
  that names the default rope is the default rope."""
  assert hf.read_config(_with_config(tmp_path, "null", rope_theta=None)).rope_theta == 1e6
  assert hf.read_config(_with_config(tmp_path, "same", rope_theta=1e6)).rope_theta == 1e6
  with pytest.raises(ValueError, match=r"config\.json: rope_theta=10000\.0 but "
                     r"rope_parameters\.rope_theta=1000000\.0"):
    hf.read_config(_with_config(tmp_path, "both", rope_theta=10000.0))
  for i, scaling in enumerate([{"type": "default"}, {"rope_type": "default"}]):
    assert hf.read_config(_with_config(tmp_path, f"d{i}", rope_scaling=scaling)).rope_theta == 1e6
  with pytest.raises(ValueError, match=r"config\.json: rope scaling .*yarn.* is not supported"):
    hf.read_config(_with_config(tmp_path, "yarn", rope_scaling={"type": "yarn", "factor": 4.0}))
  with pytest.raises(ValueError, match=r"config\.json: rope scaling .*linear.* is not supported"):
    hf.read_config(_with_config(tmp_path, "linear", rope_parameters={
        "rope_type": "linear", "rope_theta": 1e6, "factor": 2.0}))


def test_unsupported_activation_is_named(tmp_path):
  """Our MLP is SwiGLU: another activation would load into a silently different model."""
  assert hf.read_config(_with_config(tmp_path, "silu", hidden_act="silu")).hidden_size == 96
  with pytest.raises(ValueError, match=r"config\.json: hidden_act='gelu' is not supported"):
    hf.read_config(_with_config(tmp_path, "gelu", hidden_act="gelu"))
