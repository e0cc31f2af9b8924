r"""Speed of the training loop and its checkpoints; prints one JSON object.

    python benchmarks/train_loop.py [--preset=demo] [--steps=40] [--seq_len=256] [--batch=16]

Measures, on whatever devices JAX sees:
  * the loop running the demo's pretrain stage (real tokenizer, grain pipeline, sharded step):
    median step time, tokens/s/device and TFLOP/s/device of the logged windows after the
    first (which holds the compile);
  * an async checkpoint save of that run's state: how long `save` blocks the loop, and how
    long until the write is on disk; a restore of it (params, optimizer state, data position).
"""

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time

import jax

from qmath_jax import main
from qmath_jax.model import config as model_config
from qmath_jax.model import transformer
from qmath_jax.parallel import mesh as mesh_lib
from qmath_jax.train import checkpoint as checkpoint_lib
from qmath_jax.train import loop
from qmath_jax.train import metrics_writer
from qmath_jax.train import optimizer as optimizer_lib
from qmath_jax.train import state as state_lib


def _config(args):
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py")
  spec = importlib.util.spec_from_file_location("demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(None).pretrain
  config.model.preset = args.preset
  config.data.seq_len = args.seq_len
  config.data.batch_size = args.batch
  config.data.num_examples = 2000
  config.train.total_steps = args.steps
  config.train.log_every = 5
  config.checkpoint.every = 10 * args.steps  # only the final save
  config.tokenizer.train_vocab_size = 512
  return config


def run(args) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    config = _config(args)
    started = time.perf_counter()
    main.run(config, workdir)
    wall = time.perf_counter() - started
    rows = [r for r in metrics_writer.read_metrics(workdir) if "step_time_s" in r][1:]
    result = {
        "preset": args.preset, "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind, "seq_len": args.seq_len,
        "global_batch": args.batch, "steps": args.steps, "run_wall_s": round(wall, 2),
        "step_time_s_median": statistics.median(r["step_time_s"] for r in rows),
        "tokens_per_sec_per_device_median": statistics.median(
            r["tokens_per_sec_per_device"] for r in rows),
        "tflops_per_device_median": statistics.median(r["tflops_per_device"] for r in rows),
    }

    source = checkpoint_lib.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR))
    step = source.latest_step()
    meta = source.read_meta(step)
    source.close()
    # The run's state shapes, rebuilt from the model config its checkpoint records.
    model_cfg = model_config.ModelConfig(**meta[main.MODEL_META])
    optimizer, _ = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
        warmup_steps=0, total_steps=args.steps))  # only the state's structure matters here
    mesh = mesh_lib.make_mesh((-1, 1, 1))
    init_state, shardings = state_lib.sharded_init(
        lambda rng: transformer.init_params(model_cfg, rng, boxed=True), optimizer, mesh)
    abstract = checkpoint_lib.abstract_with_shardings(jax.eval_shape(init_state), shardings)
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR))
    started = time.perf_counter()
    state, _, _ = checkpointer.restore(step, abstract)
    jax.block_until_ready(state)
    result["restore_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    checkpointer.save(step + 1, state)
    result["async_save_blocking_s"] = round(time.perf_counter() - started, 3)
    checkpointer.wait()
    result["async_save_total_s"] = round(time.perf_counter() - started, 3)
    result["state_mb"] = round(sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20, 2)
    checkpointer.close()
  return result


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="demo")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch", type=int, default=16)
  print(json.dumps(run(parser.parse_args())))
