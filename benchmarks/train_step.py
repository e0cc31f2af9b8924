"""Training-step speed: step time, tokens/s, model TFLOP/s per device and MFU.

Runs the real step (`qmath_jax.train.step.make_train_step`, SFT loss, AdamW) on a model
preset over all local devices and prints one JSON object per case, then a JSON list of all
cases last. FLOPs follow `qmath_jax.train.flops` (6 N per token + causal attention).

  python benchmarks/train_step.py --preset demo --batch 8 --length 256 --mesh -1,1,1
  python benchmarks/train_step.py --case gpu   # the H200 cases, in one go
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from qmath_jax import parallel
from qmath_jax.model import presets
from qmath_jax.model.transformer import Transformer
from qmath_jax.train import flops, losses, optimizer as optimizer_lib
from qmath_jax.train import state as state_lib, step as step_lib

# (preset, batch, length, microbatches, dtype, remat, attention)
CASES = {
    "cpu": [("demo", 8, 256, 1, "float32", "none", "xla"),
            ("demo", 8, 256, 2, "float32", "none", "xla")],
    "gpu": [("qwen2.5-math-1.5b", 4, 2048, 1, "bfloat16", "full", "xla"),
            ("qwen2.5-math-1.5b", 8, 2048, 2, "bfloat16", "full", "xla"),
            ("qwen2.5-math-1.5b", 4, 2048, 1, "bfloat16", "full", "pallas")],
}


def synthetic_sft_batch(vocab: int, batch: int, length: int, seed: int = 0) -> dict:
  """Packed rows of two segments each, loss on the second half of every segment."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  half = length // 2
  segment_ids = np.where(np.arange(length) < half, 1, 2).astype(np.int32)
  positions = np.where(np.arange(length) < half, np.arange(length), np.arange(length) - half)
  loss_mask = ((np.arange(length) % half) >= half // 2).astype(np.int32)
  tile = lambda x: np.broadcast_to(x, (batch, length)).astype(np.int32).copy()
  return {"tokens": tokens, "segment_ids": tile(segment_ids), "positions": tile(positions),
          "loss_mask": tile(loss_mask)}


def run_case(preset, batch, length, microbatches, dtype, remat, attention, mesh_shape, steps):
  cfg = presets.get_config(preset, dtype=dtype, remat_policy=remat, attention=attention)
  model = Transformer(cfg)
  mesh = parallel.make_mesh(mesh_shape)
  optimizer, schedule = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      peak_lr=2e-5, warmup_steps=10, total_steps=1000))
  init = lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
  start = time.perf_counter()
  state, shardings = state_lib.create_train_state(init, optimizer, mesh, seed=0)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  train_step = step_lib.make_train_step(losses.get_loss("sft", model), optimizer, mesh=mesh,
                                        state_shardings=shardings, learning_rate_fn=schedule,
                                        num_microbatches=microbatches)
  data = parallel.shard_batch(synthetic_sft_batch(cfg.vocab_size, batch, length), mesh)
  start = time.perf_counter()
  state, metrics = train_step(state, data)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  state, metrics = train_step(state, data)  # one more untimed step
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = train_step(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  device = jax.devices()[0]
  figures = flops.throughput(step_s, batch * length, flops.train_flops_per_token(cfg, length),
                             jax.device_count(), device.device_kind)
  memory = device.memory_stats() or {}
  return {"preset": preset, "params": cfg.num_params, "batch": batch, "length": length,
          "microbatches": microbatches, "dtype": dtype, "remat": remat, "attention": attention,
          "mesh": dict(mesh.shape), "device_kind": device.device_kind,
          "devices": jax.device_count(), "init_s": round(init_s, 3),
          "first_step_s": round(compile_s, 3), "step_s": round(step_s, 4),
          "steps_timed": steps, "loss": float(metrics["loss"]),
          "peak_memory_gib": round(memory.get("peak_bytes_in_use", 0) / 2**30, 2),
          **{k: round(v, 4) for k, v in figures.items()}}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", choices=sorted(CASES), help="run a predefined set of cases")
  parser.add_argument("--preset", default="demo")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--microbatches", type=int, default=1)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--remat", default="none")
  parser.add_argument("--attention", default="xla")
  parser.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor; -1 = the rest")
  parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  args = parser.parse_args()
  mesh_shape = tuple(int(x) for x in args.mesh.split(","))
  cases = CASES[args.case] if args.case else [(args.preset, args.batch, args.length,
                                               args.microbatches, args.dtype, args.remat,
                                               args.attention)]
  results = []
  for case in cases:
    try:
      result = run_case(*case, mesh_shape=mesh_shape, steps=args.steps)
    except Exception as e:  # pylint: disable=broad-except
      result = {"case": list(case), "error": f"{type(e).__name__}: {str(e)[:500]}"}
    print(json.dumps(result), flush=True)
    results.append(result)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
