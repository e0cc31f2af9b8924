"""Hugging Face Qwen2 checkpoints (config.json + safetensors) <-> our config and parameters.

    cfg, params = load_hf("/ckpt/Qwen2.5-Math-7B", dtype="bfloat16", shardings=shardings)
    save_hf(cfg, params, "/out/my-model")   # Qwen2ForCausalLM.from_pretrained loads it
    cfg, rm_params = load_hf_rm("/ckpt/Qwen2.5-Math-RM-72B", dtype="bfloat16")  # RewardModel's
    save_hf_rm(cfg, rm_params, "/out/my-rm")  # Qwen2ForRewardModel (modeling_qwen2_rm.py) layout

Loading reads one tensor at a time from memory-mapped files and builds each device's shard
directly from the mapped bytes (`jax.make_array_from_callback`), casting as it goes: no torch,
and never a whole second copy of the model in host memory.
"""

import json
import os
import pathlib
import shutil

import jax
import numpy as np

from qmath_jax.data import records
from qmath_jax.hf import config_io, mapping
from qmath_jax.hf.safetensors_io import SafetensorsError, SafetensorsFile, write
from qmath_jax.model.config import ModelConfig

__all__ = ["load_hf", "save_hf", "load_hf_rm", "save_hf_rm", "read_config", "is_reward_model",
           "SafetensorsError"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_config(hf_dir, dtype: str | None = "float32") -> ModelConfig:
  """The ModelConfig of a causal LM's checkpoint, or of a reward model's backbone; its dtypes
  `dtype`, or with None the checkpoint's own (config.json's `dtype` / `torch_dtype`)."""
  return config_io.read_config(pathlib.Path(hf_dir), dtype)


def is_reward_model(hf_dir) -> bool:
  """Whether `hf_dir` holds a config.json naming `Qwen2ForRewardModel` (for `load_hf_rm`)."""
  return config_io.is_reward_model(pathlib.Path(hf_dir))


class _Checkpoint:
  """Tensor name -> memory-mapped file, over a single or sharded safetensors checkpoint."""

  def __init__(self, hf_dir: pathlib.Path):
    index = hf_dir / INDEX_FILE
    if index.exists():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{index}: not a safetensors index ({e!r})") from None
      files = {name: SafetensorsFile(hf_dir / name) for name in sorted(set(weight_map.values()))}
      self._where = {tensor: files[name] for tensor, name in weight_map.items()}
      self._listing = index
    elif (hf_dir / SINGLE_FILE).exists():
      single = SafetensorsFile(hf_dir / SINGLE_FILE)
      self._where = {tensor: single for tensor in single.names()}
      self._listing = single.path
    else:
      raise FileNotFoundError(f"{hf_dir}: neither {SINGLE_FILE} nor {INDEX_FILE} found")

  def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    source = self._where.get(name)
    if source is None or name not in source:
      where = source.path if source else self._listing
      raise KeyError(f"missing tensor {name!r} in {where}")
    if source.shape(name) != shape:
      raise ValueError(f"tensor {name!r} in {source.path} has shape {source.shape(name)}, "
                       f"expected {shape} from config.json")
    return source.get(name)


def load_hf(hf_dir, dtype: str = "float32", shardings=None, config: ModelConfig | None = None):
  """Loads a Qwen2 checkpoint directory.

  Args:
    hf_dir: directory with config.json and model.safetensors (or an index and its shards).
    dtype: parameter dtype of the returned params ("float32", "bfloat16").
    shardings: optional pytree of `jax.sharding.Sharding` matching the params (e.g. from
      `qmath_jax.parallel`); each device then receives only its shard. Default: one device.
    config: use this ModelConfig instead of reading config.json (its shapes must match).
  Returns:
    (ModelConfig, params) with params in the layout of `qmath_jax.model.Transformer`.
  """
  hf_dir = pathlib.Path(hf_dir)
  if is_reward_model(hf_dir):
    raise ValueError(f"{hf_dir / 'config.json'}: a {config_io.REWARD_MODEL} checkpoint; "
                     "load it with load_hf_rm")
  return _load(hf_dir, dtype, shardings, config, reward_model=False)


def load_hf_rm(hf_dir, dtype: str | None = "float32", shardings=None,
               config: ModelConfig | None = None):
  """Loads a Qwen2ForRewardModel checkpoint (e.g. Qwen2.5-Math-RM-72B) as our reward model.

  Args and reading as `load_hf`; config.json must name `Qwen2ForRewardModel` (one label).
  `dtype` None keeps the checkpoint's own (config.json's `dtype` / `torch_dtype`).
  The score head loads in fp32 whatever `dtype` (our `ScoreHead`'s parameter dtype). The
  checkpoint has no `lm_head.weight`; with untied embeddings our backbone's `lm_head` leaf,
  which the RM never reads, is zeros (placed as `shardings` says, no host copy).
  Returns:
    (ModelConfig, params) in the layout of `train.reward_model.RewardModel`:
    `{"backbone": <Transformer params>, "score_head": {"dense", "out"}}`.
  """
  hf_dir = pathlib.Path(hf_dir)
  if config is None and not is_reward_model(hf_dir):
    raise ValueError(f"{hf_dir / 'config.json'}: architectures do not name "
                     f"{config_io.REWARD_MODEL}; load a causal LM with load_hf")
  return _load(hf_dir, dtype, shardings, config, reward_model=True)


def _ours_shape(cfg: ModelConfig, entry: mapping.Entry) -> tuple[int, ...]:
  """Our leaf's shape, with the leading layers axis when stacked."""
  # Shape only: no host buffer (a 72B embedding would otherwise allocate gigabytes here).
  per_layer = jax.eval_shape(entry.to_ours, jax.ShapeDtypeStruct(entry.hf_shape, np.int8)).shape
  return ((cfg.num_layers,) if entry.stacked else ()) + tuple(per_layer)


def _leaf_name(path) -> str:
  return "params" + "".join(f"[{key!r}]" for key in path)


def _check_params(cfg: ModelConfig, params, table: list[mapping.Entry]) -> None:
  """Raises naming the leaf when `params` do not have `cfg`'s tree and shapes (a stacked leaf
  with too few layers would otherwise be read past its end, which JAX clamps)."""
  known = {entry.path for entry in table}
  for keypath, _ in jax.tree_util.tree_leaves_with_path(params):
    path = tuple(getattr(key, "key", key) for key in keypath)
    if path not in known:
      raise ValueError(f"{_leaf_name(path)}: not a parameter of the config's model "
                       f"(tie_embeddings={cfg.tie_embeddings}); params and config disagree")
  for entry in table:
    try:
      leaf = mapping.get_path(params, entry.path)
    except KeyError:
      if not entry.stored:
        continue
      raise KeyError(f"{_leaf_name(entry.path)} ({entry.hf_name}): missing from the "
                     "params") from None
    if tuple(leaf.shape) != _ours_shape(cfg, entry):
      raise ValueError(f"{_leaf_name(entry.path)} ({entry.hf_name}): shape {tuple(leaf.shape)}, "
                       f"expected {_ours_shape(cfg, entry)} from the config")


def _load(hf_dir: pathlib.Path, dtype: str, shardings, config: ModelConfig | None,
          reward_model: bool):
  cfg = config or read_config(hf_dir, dtype)
  dtype = dtype or cfg.param_dtype
  checkpoint = _Checkpoint(hf_dir)
  params = {}
  for entry in mapping.entries(cfg, reward_model):
    sharding = (mapping.get_path(shardings, entry.path) if shardings is not None
                else jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    out_dtype = np.dtype(jax.numpy.dtype(entry.dtype or dtype))
    names = ([entry.hf_name.format(i=i) for i in range(cfg.num_layers)] if entry.stacked
             else [entry.hf_name])
    for name in names if entry.stored else []:  # fail on a missing or misshapen tensor
      checkpoint.get(name, entry.hf_shape)      # before any device work
    shape = _ours_shape(cfg, entry)
    if not entry.stored:
      zeros = jax.jit(lambda s=shape, d=out_dtype: jax.numpy.zeros(s, d), out_shardings=sharding)
      mapping.set_path(params, entry.path, zeros())
      continue

    def read(index, entry=entry, names=names, out_dtype=out_dtype):
      if entry.stacked:
        layers = range(cfg.num_layers)[index[0]]
        return np.stack([entry.to_ours(checkpoint.get(names[i], entry.hf_shape))[index[1:]]
                         .astype(out_dtype) for i in layers])
      return entry.to_ours(checkpoint.get(names[0], entry.hf_shape))[index].astype(out_dtype)

    mapping.set_path(params, entry.path, jax.make_array_from_callback(shape, sharding, read))
  return cfg, params


def save_hf(cfg: ModelConfig, params, hf_dir, dtype: str | None = None,
            max_shard_bytes: int = 5 << 30) -> pathlib.Path:
  """Writes a checkpoint that transformers' `Qwen2ForCausalLM.from_pretrained` loads.

  Tensors are fetched and written one at a time. Everything goes to a temporary directory
  beside `hf_dir` that is renamed into place only when complete; an existing `hf_dir` is
  replaced only then. Returns the directory.
  """
  return _save(cfg, params, hf_dir, dtype, max_shard_bytes, reward_model=False)


def save_hf_rm(cfg: ModelConfig, rm_params, hf_dir, dtype: str | None = None,
               max_shard_bytes: int = 5 << 30) -> pathlib.Path:
  """Writes `RewardModel` params as a Qwen2ForRewardModel checkpoint (Qwen2.5-Math-RM's layout:
  `model.*` and `score.{0,2}.{weight,bias}`, config.json naming the architecture with
  `num_labels: 1`), as `save_hf` writes. Every tensor, the score head's too, is written in
  `dtype` (default `cfg.param_dtype`); the backbone's unused `lm_head` is not written.
  """
  return _save(cfg, rm_params, hf_dir, dtype, max_shard_bytes, reward_model=True)


def _save(cfg: ModelConfig, params, hf_dir, dtype: str | None, max_shard_bytes: int,
          reward_model: bool) -> pathlib.Path:
  hf_dir = pathlib.Path(hf_dir)
  out_dtype = np.dtype(jax.numpy.dtype(dtype or cfg.param_dtype))
  table = mapping.entries(cfg, reward_model)
  _check_params(cfg, params, table)
  tensors = []
  for entry in table:
    if not entry.stored:
      continue
    leaf = mapping.get_path(params, entry.path)
    layers = range(cfg.num_layers) if entry.stacked else [None]
    for i in layers:
      name = entry.hf_name.format(i=i) if entry.stacked else entry.hf_name

      def produce(leaf=leaf, i=i, entry=entry):
        value = np.asarray(jax.device_get(leaf[i] if i is not None else leaf))
        return entry.to_hf(value).astype(out_dtype)

      tensors.append((name, entry.hf_shape, out_dtype, produce))

  shards, size = [[]], 0
  for tensor in tensors:
    nbytes = out_dtype.itemsize * int(np.prod(tensor[1]))
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(tensor)
    size += nbytes

  tmp = records.temp_dir_beside(hf_dir)
  try:
    if len(shards) == 1:
      write(tmp / SINGLE_FILE, shards[0], metadata={"format": "pt"})
    else:
      weight_map = {}
      for n, shard in enumerate(shards, start=1):
        file_name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        write(tmp / file_name, shard, metadata={"format": "pt"})
        weight_map.update({t[0]: file_name for t in shard})
      total = sum(out_dtype.itemsize * int(np.prod(t[1])) for t in tensors)
      (tmp / INDEX_FILE).write_text(json.dumps(
          {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = config_io.config_dict(cfg, reward_model)
    config["torch_dtype"] = config["dtype"] = out_dtype.name
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if hf_dir.exists():
      old = hf_dir.with_name(f".{hf_dir.name}.old-{os.getpid()}")
      hf_dir.rename(old)
      tmp.rename(hf_dir)
      shutil.rmtree(old)
    else:
      tmp.rename(hf_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return hf_dir
