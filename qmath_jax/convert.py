r"""Converts between Hugging Face checkpoints and params-only orbax checkpoints.

    python -m qmath_jax.convert --hf_dir=/ckpt/Qwen2.5-Math-1.5B --out=/ckpt/qmath-1.5b
    python -m qmath_jax.convert --params_dir=/ckpt/qmath-1.5b --hf_out=/ckpt/hf-export

A params checkpoint is a directory with `params/` (orbax, every array saved from its shards,
restorable onto any mesh) and `model_config.json` (the ModelConfig fields). Training stages
start from one with `config.init.params_dir` (or from an HF directory with `config.init.hf_dir`).
"""

import dataclasses
import json
import pathlib
import shutil
import tempfile

from absl import app
from absl import flags
import jax
import orbax.checkpoint as ocp

from qmath_jax import hf
from qmath_jax.model.config import ModelConfig

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def save_params(out_dir, cfg: ModelConfig, params) -> pathlib.Path:
  """Writes a params checkpoint to a temp directory, then renames it to `out_dir`."""
  out_dir = pathlib.Path(out_dir).absolute()
  if out_dir.exists():
    raise FileExistsError(f"{out_dir} exists; choose a new output directory")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
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


def load_params(params_dir, shardings=None, dtype: str | None = None):
  """Restores (ModelConfig, params); with `shardings`, each array lands in its sharding."""
  params_dir = pathlib.Path(params_dir).absolute()
  cfg = read_params_config(params_dir)
  if dtype is not None:
    cfg = cfg.replace(param_dtype=dtype)
  from qmath_jax.model import transformer  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
      shardings if shardings is not None else jax.tree.map(lambda _: default, abstract))
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(params_dir / PARAMS_DIR, abstract)
  return cfg, params


FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "Hugging Face checkpoint directory to read.")
flags.DEFINE_string("out", None, "Params checkpoint directory to write (with --hf_dir).")
flags.DEFINE_string("params_dir", None, "Params checkpoint directory to read.")
flags.DEFINE_string("hf_out", None, "Hugging Face directory to write (with --params_dir).")
flags.DEFINE_string("dtype", "float32", "Parameter dtype: float32 or bfloat16.")


def main(argv):
  del argv
  if FLAGS.hf_dir and FLAGS.out:
    cfg, params = hf.load_hf(FLAGS.hf_dir, dtype=FLAGS.dtype)
    print(f"wrote {save_params(FLAGS.out, cfg, params)}")
  elif FLAGS.params_dir and FLAGS.hf_out:
    cfg, params = load_params(FLAGS.params_dir, dtype=FLAGS.dtype)
    print(f"wrote {hf.save_hf(cfg, params, FLAGS.hf_out, dtype=FLAGS.dtype)}")
  else:
    raise app.UsageError("give --hf_dir and --out, or --params_dir and --hf_out")


if __name__ == "__main__":
  app.run(main)
