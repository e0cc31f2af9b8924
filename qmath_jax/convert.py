r"""Converts between Hugging Face checkpoints and params-only orbax checkpoints.

    python -m qmath_jax.convert --hf_dir=/ckpt/Qwen2.5-Math-1.5B --out=/ckpt/qmath-1.5b
    python -m qmath_jax.convert --params_dir=/ckpt/qmath-1.5b --hf_out=/ckpt/hf-export
    python -m qmath_jax.convert --hf_dir=/ckpt/Qwen2.5-Math-RM-72B --out=/ckpt/qmath-rm-72b
    python -m qmath_jax.convert --params_dir=/ckpt/qmath-rm-72b --hf_out=/ckpt/rm-export
    python -m qmath_jax.convert --run_dir=/runs/sft_r2 --hf_out=/ckpt/sft-r2-hf --dtype=bfloat16

A params checkpoint is a directory with `params/` (orbax, every array saved from its shards,
restorable onto any mesh) and `model_config.json` (the ModelConfig fields). Training stages
start from one with `config.init.params_dir` (or from an HF directory with `config.init.hf_dir`).

A reward model converts the same way: a Qwen2ForRewardModel directory (config.json's
`architectures`, as Qwen2.5-Math-RM-72B's) <-> a params checkpoint holding
`train.reward_model.RewardModel`'s tree (`{"backbone", "score_head"}`; `model_config.json` is
the backbone's). Which one a directory holds is read from it; `--reward_model` / `--noreward_model`
insist, and a directory that holds the other kind is an error.

A run's workdir (`--run_dir`: a pretrain, sft, rm or rl run) exports its latest checkpoint's
params to a Hugging Face directory: the decoder, or the reward model for an rm run.
"""

import dataclasses
import json
import pathlib
import shutil

from absl import app
from absl import flags
import jax
import orbax.checkpoint as ocp

from qmath_jax import hf
from qmath_jax.data import records
from qmath_jax.model.config import ModelConfig

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
RM_KEYS = frozenset({"backbone", "score_head"})  # the top level of RewardModel's params


def save_params(out_dir, cfg: ModelConfig, params) -> pathlib.Path:
  """Writes a params checkpoint (a decoder's params, or a RewardModel's with `cfg` its
  backbone's) to a temp directory, then renames it to `out_dir`."""
  out_dir = pathlib.Path(out_dir).absolute()
  if out_dir.exists():
    raise FileExistsError(f"{out_dir} exists; choose a new output directory")
  tmp = records.temp_dir_beside(out_dir)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(tmp / PARAMS_DIR, params)
      checkpointer.wait_until_finished()
    (tmp / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    tmp.rename(out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def read_params_config(params_dir) -> ModelConfig:
  path = pathlib.Path(params_dir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path}: not a params checkpoint (no {CONFIG_FILE})")
  try:
    return ModelConfig(**json.loads(path.read_text()))
  except (json.JSONDecodeError, TypeError) as e:
    raise ValueError(f"{path}: bad model config: {e}") from None


def is_reward_model_params(params_dir) -> bool:
  """Whether the params checkpoint in `params_dir` holds a RewardModel's tree (from the saved
  tree's metadata, no array read)."""
  path = pathlib.Path(params_dir).absolute() / PARAMS_DIR
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: not a params checkpoint (no {PARAMS_DIR}/)")
  with ocp.StandardCheckpointer() as checkpointer:
    return set(checkpointer.metadata(path).item_metadata.keys()) == RM_KEYS


def load_params(params_dir, shardings=None, dtype: str | None = None):
  """Restores (ModelConfig, params) of a decoder; with `shardings`, each array lands in its
  sharding. `dtype` replaces the checkpoint's parameter dtype."""
  params_dir = pathlib.Path(params_dir).absolute()
  cfg = read_params_config(params_dir)
  if is_reward_model_params(params_dir):
    raise ValueError(f"{params_dir}: holds a reward model's params; load it with load_rm_params")
  if dtype is not None:
    cfg = cfg.replace(param_dtype=dtype)
  from qmath_jax.model import transformer  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
  return cfg, _restore(params_dir, abstract, shardings)


def load_rm_params(params_dir, shardings=None, dtype: str | None = None):
  """Restores (ModelConfig, params) of a reward model, `{"backbone", "score_head"}` as
  `train.reward_model.RewardModel` lays them out; `dtype` sets the backbone's parameter dtype
  (the score head stays fp32, as RewardModel keeps it)."""
  params_dir = pathlib.Path(params_dir).absolute()
  cfg = read_params_config(params_dir)
  if not is_reward_model_params(params_dir):
    raise ValueError(f"{params_dir}: holds a decoder's params, not a reward model's "
                     f"({sorted(RM_KEYS)}); load it with load_params")
  if dtype is not None:
    cfg = cfg.replace(param_dtype=dtype)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from qmath_jax.train import reward_model  # pylint: disable=g-import-not-at-top
  rm = reward_model.make_reward_model(cfg)
  abstract = jax.eval_shape(lambda: nn.unbox(rm.init(
      jax.random.key(0), jax.numpy.zeros((1, 8), jax.numpy.int32))["params"]))
  return cfg, _restore(params_dir, abstract, shardings)


def _restore(params_dir: pathlib.Path, abstract, shardings):
  """The params saved in `params_dir`, read as `abstract` (the model of its model_config.json)
  says, after checking that tree and shapes agree (naming the first leaf that does not)."""
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
      shardings if shardings is not None else jax.tree.map(lambda _: default, abstract))
  with ocp.StandardCheckpointer() as checkpointer:
    stored = dict(jax.tree_util.tree_leaves_with_path(
        checkpointer.metadata(params_dir / PARAMS_DIR).item_metadata.tree))
    wanted = dict(jax.tree_util.tree_leaves_with_path(abstract))
    for key in sorted(stored.keys() ^ wanted.keys(), key=jax.tree_util.keystr):
      where = "missing from the checkpoint but in" if key in wanted else (
          "in the checkpoint but not in")
      raise ValueError(f"{params_dir}: params{jax.tree_util.keystr(key)} is {where} the model "
                       f"that {CONFIG_FILE} describes")
    for key, a in wanted.items():
      if tuple(stored[key].shape) != a.shape:
        raise ValueError(f"{params_dir}: params{jax.tree_util.keystr(key)} has shape "
                         f"{tuple(stored[key].shape)}, expected {a.shape} from {CONFIG_FILE}")
    return checkpointer.restore(params_dir / PARAMS_DIR, abstract)


def _hf_kind(hf_dir, want: bool | None) -> bool:
  """Whether to read `hf_dir` as a reward model: what its config.json says, checked against
  `want`."""
  found = hf.is_reward_model(hf_dir)
  if want is None or want == found:
    return found
  path = pathlib.Path(hf_dir) / "config.json"
  archs = json.loads(path.read_text()).get("architectures") or []
  if want and not archs:  # nothing to contradict the caller: it decides
    return True
  raise ValueError(f"asked for a {'reward model' if want else 'causal LM'}, but {path} names "
                   f"architectures {archs}")


def _check_kind(source, found: bool, want: bool | None) -> None:
  """Raises ValueError when `source` holds a reward model (`found`) and `want` says otherwise."""
  if want is not None and want != found:
    raise ValueError(f"asked for a {'reward model' if want else 'causal LM'}, but {source} "
                     f"holds {'a reward model' if found else 'a decoder'}'s params")


def run(*, hf_dir=None, out=None, params_dir=None, run_dir=None, hf_out=None,
        dtype: str = "float32", reward_model: bool | None = None) -> pathlib.Path:
  """Converts `hf_dir` to a params checkpoint `out`, or `params_dir` or a run's workdir
  `run_dir` (its latest checkpoint) to an HF directory `hf_out`; returns the directory written.

  `reward_model` None converts what the input holds (a Qwen2ForRewardModel config.json, or a
  RewardModel params tree, is a reward model); True or False insists, raising ValueError on an
  input of the other kind (an HF config.json naming no architecture is read as told).
  """
  if hf_dir and out and not (params_dir or hf_out):
    if _hf_kind(hf_dir, reward_model):
      config = None if hf.is_reward_model(hf_dir) else hf.read_config(hf_dir, dtype)
      cfg, params = hf.load_hf_rm(hf_dir, dtype=dtype, config=config)
    else:
      cfg, params = hf.load_hf(hf_dir, dtype=dtype)
    return save_params(out, cfg, params)
  if params_dir and hf_out and not (hf_dir or out or run_dir):
    found = is_reward_model_params(params_dir)
    _check_kind(params_dir, found, reward_model)
    if found:
      cfg, params = load_rm_params(params_dir, dtype=dtype)
      return hf.save_hf_rm(cfg, params, hf_out, dtype=dtype)
    cfg, params = load_params(params_dir, dtype=dtype)
    return hf.save_hf(cfg, params, hf_out, dtype=dtype)
  if run_dir and hf_out and not (hf_dir or out or params_dir):
    from qmath_jax import main  # pylint: disable=g-import-not-at-top
    cfg, params, _ = main.latest_run_params(run_dir)
    found = set(params) == RM_KEYS
    _check_kind(run_dir, found, reward_model)
    return (hf.save_hf_rm if found else hf.save_hf)(cfg, params, hf_out, dtype=dtype)
  raise ValueError("give hf_dir and out, or params_dir or run_dir and hf_out")


FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "Hugging Face checkpoint directory to read.")
flags.DEFINE_string("out", None, "Params checkpoint directory to write (with --hf_dir).")
flags.DEFINE_string("params_dir", None, "Params checkpoint directory to read.")
flags.DEFINE_string("run_dir", None,
                    "A training run's workdir whose latest checkpoint to export (with --hf_out).")
flags.DEFINE_string("hf_out", None,
                    "Hugging Face directory to write (with --params_dir or --run_dir).")
flags.DEFINE_string("dtype", "float32", "Parameter dtype: float32 or bfloat16.")
flags.DEFINE_bool("reward_model", None,
                  "Convert a reward model (Qwen2ForRewardModel <-> RewardModel params). Default: "
                  "read from the input (config.json's architectures, or the params tree); given, "
                  "an input of the other kind is an error.")


def main(argv):
  del argv
  if not (FLAGS.hf_dir and FLAGS.out) and not ((FLAGS.params_dir or FLAGS.run_dir) and
                                                FLAGS.hf_out):
    raise app.UsageError("give --hf_dir and --out, or --params_dir or --run_dir and --hf_out")
  written = run(hf_dir=FLAGS.hf_dir, out=FLAGS.out, params_dir=FLAGS.params_dir,
                run_dir=FLAGS.run_dir, hf_out=FLAGS.hf_out, dtype=FLAGS.dtype,
                reward_model=FLAGS.reward_model)
  print(f"wrote {written}")


if __name__ == "__main__":
  app.run(main)
