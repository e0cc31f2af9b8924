"""Sampler speed: new tokens/s against transformers on CPU, decode step time against the HBM roofline.

Two modes; each prints one JSON object per measurement and writes all of them to `--out`.

  python benchmarks/sampler.py --mode cpu [--out cpu.json]
      A random Qwen2 checkpoint built and saved by transformers (in a child process, so that
      torch's and JAX's worker threads never compete), loaded with
      `qmath_jax.hf.load_hf`; greedy decoding of the same prompts (no end-of-sequence stop, every
      row runs `--new` tokens) by `Sampler.generate_ids` and by `Qwen2ForCausalLM.generate`;
      new tokens per second of each (best of `--repeats` timed runs after one warm-up run), and
      the fraction of generated tokens on which the two agree. With `--n` > 1 each of the
      `--batch` prompts gets n rows, as in GRPO and RM@N: the sampler prefills a prompt once for
      its n rows; transformers gets every prompt repeated n times (what `generate` does itself
      for `num_return_sequences`), and both decode the same rows.

  python benchmarks/sampler.py --mode device [--preset qwen2.5-math-1.5b] [--out device.json]
      Random bf16 parameters of the preset; `--batch` prompts of `--prompt` random tokens, `--new`
      new tokens each, greedy and then sampled (temperature 0.7, top-p 0.8), then the same rows as
      groups of 8 samples sharing a prompt; `--attention pallas` decodes with the Pallas
      decode-attention kernels (`qmath_jax.kernels.decode`) instead of XLA's einsums; with
      `--profile` the greedy call runs once more under the profiler, which reports the kernels
      per decode step, their summed time and the 25 costliest (`profile_decode`). Decode step
      time = decode seconds / decode steps of the second (compiled) run. Roofline per step =
      (decode weight bytes + prompt and own KV bytes in use at that step, averaged over the
      steps) / `--hbm_tbps`.
"""

import argparse
import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from qmath_jax.model import get_config, init_params
from qmath_jax.sampling import sampler as sampler_lib
from qmath_jax.sampling.sampler import Sampler


class IdsOnlyTokenizer:
  """The tokenizer surface the sampler needs when prompts are ids and nothing stops early."""
  pad_id = 0
  eos_ids = ()

  def decode(self, ids):
    return " ".join(map(str, ids))


def _emit(record, records):
  records.append(record)
  print(json.dumps(record), flush=True)


def _write(records, out):
  if out:
    tmp = out + ".tmp"
    with open(tmp, "w") as handle:
      json.dump(records, handle, indent=1)
    os.replace(tmp, out)


def _random_prompts(batch, length, vocab, seed=0):
  return np.random.default_rng(seed).integers(3, vocab, size=(batch, length)).tolist()


def _timed(fn, repeats):
  """(first call's result, first call's seconds, best of `repeats` further calls)."""
  clock = time.perf_counter()
  result = fn()
  first = time.perf_counter() - clock
  times = []
  for _ in range(repeats):
    clock = time.perf_counter()
    fn()
    times.append(time.perf_counter() - clock)
  return result, first, min(times)


def run_transformers(args):
  """Child process: builds the random checkpoint in `args.ckpt`, times `generate` on it.

  Runs apart from JAX so that neither library's idle worker threads take the other's CPU.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
  config = transformers.Qwen2Config(
      vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=2,
      head_dim=64, max_position_embeddings=2048, rms_norm_eps=1e-6, use_sliding_window=False,
      tie_word_embeddings=False, rope_theta=10000.0)
  model = transformers.Qwen2ForCausalLM(config).eval().to(torch.float32)
  model.save_pretrained(args.ckpt, safe_serialization=True)
  prompts = _random_prompts(args.batch, args.prompt, args.vocab)
  input_ids = torch.tensor([p for p in prompts for _ in range(args.n)])
  generation = transformers.GenerationConfig(
      max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, eos_token_id=None,
      pad_token_id=0)

  def generate():
    with torch.no_grad():
      out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                           generation_config=generation)
    return out[:, args.prompt:].tolist()

  tokens, first, best = _timed(generate, args.repeats)
  print(json.dumps({"tokens": tokens, "first_call_s": first, "best_s": best,
                    "torch_threads": torch.get_num_threads(),
                    "transformers": transformers.__version__, "torch": torch.__version__}))


def run_cpu(args, records):
  from qmath_jax.hf import load_hf  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    child = [sys.executable, __file__, "--mode", "transformers", "--ckpt", tmp]
    for flag in ("batch", "n", "prompt", "new", "hidden", "layers", "vocab", "repeats",
                 "torch_threads"):
      child += [f"--{flag}", str(getattr(args, flag))]
    done = subprocess.run(child, check=True, capture_output=True, text=True)
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    cfg, params = load_hf(pathlib.Path(tmp))
  prompts = _random_prompts(args.batch, args.prompt, args.vocab)
  rows = args.batch * args.n
  mesh = None
  if args.mesh:
    from qmath_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    mesh = mesh_lib.make_mesh([int(size) for size in args.mesh.split(",")])
  sampler = Sampler(cfg, params, IdsOnlyTokenizer(), mesh=mesh, max_rows=rows,
                    initial_cache_len=args.initial_cache)
  tokens, first, best = _timed(
      lambda: [c.token_ids for group in sampler.generate_ids(prompts, n=args.n,
                                                             max_new_tokens=args.new)
               for c in group],
      args.repeats)
  new_tokens = rows * args.new
  result = {"mode": "cpu", "batch": args.batch, "n": args.n, "prompt": args.prompt,
            "new": args.new, "initial_cache": args.initial_cache,
            "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
            "params": cfg.num_params, "cpus": os.cpu_count(), "mesh": args.mesh,
            "torch_threads": theirs["torch_threads"], "transformers": theirs["transformers"],
            "qmath_jax_first_call_s": first, "qmath_jax_tokens_per_s": new_tokens / best,
            "transformers_first_call_s": theirs["first_call_s"],
            "transformers_tokens_per_s": new_tokens / theirs["best_s"],
            "greedy_agreement": float(np.mean(np.array(tokens) == np.array(theirs["tokens"])))}
  result["speedup"] = result["qmath_jax_tokens_per_s"] / result["transformers_tokens_per_s"]
  _emit(result, records)


def _kv_bytes_per_step(cfg, groups, rows, prompt, new, itemsize):
  """Mean K+V bytes in use per decode step: every prompt slot and the own slots written."""
  per_slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
  own_slots = np.arange(1, new)  # the step that samples token i attends to i own slots
  return per_slot * (groups * prompt + rows * float(np.mean(own_slots)))


def _kernel_lines(profile):
  """The trace lines whose events are device work: the GPU streams (else, TPU, the device
  planes' lines other than XLA's module and op summaries), else (CPU) the XLA client's thread
  lines."""
  device = [line for plane in profile.planes if plane.name.startswith("/device:")
            for line in plane.lines]
  streams = [line for line in device if line.name.startswith("Stream")]
  device = streams or [line for line in device if not line.name.startswith("XLA")]
  if device:
    return device
  return [line for plane in profile.planes if plane.name == "/host:CPU"
          for line in plane.lines if line.name != "python"]


def profile_decode(run, steps):
  """Per decode step: the device kernels `run()` launches, their busy time, the top kernels.

  Runs `run` once under `jax.profiler.trace` (into a temporary directory, removed after) and
  reads the trace with `jax.profiler.ProfileData`. Kernel time is summed over every stream, so
  busy_ms_per_step below the step time means the device waits between kernels (launch cost).
  """
  directory = tempfile.mkdtemp(prefix="qmath_profile_")
  try:
    with jax.profiler.trace(directory):
      run()
    path = next(pathlib.Path(directory).rglob("*.xplane.pb"))
    profile = jax.profiler.ProfileData.from_file(str(path))
    count, busy_ns = collections.Counter(), collections.Counter()
    for line in _kernel_lines(profile):
      for event in line.events:
        if not event.name.startswith("end: "):
          count[event.name] += 1
          busy_ns[event.name] += event.duration_ns
  finally:
    shutil.rmtree(directory, ignore_errors=True)
  top = [{"kernel": name[:120], "per_step": count[name] / steps,
          "ms_per_step": busy_ns[name] / steps / 1e6} for name, _ in busy_ns.most_common(25)]
  return {"kernels_per_step": sum(count.values()) / steps,
          "busy_ms_per_step": sum(busy_ns.values()) / steps / 1e6, "top_kernels": top}


def run_device(args, records):
  cfg = get_config(args.preset, dtype="bfloat16", param_dtype="bfloat16",
                   attention=args.attention)
  clock = time.perf_counter()
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  jax.block_until_ready(params)
  sampler = Sampler(cfg, params, IdsOnlyTokenizer(), max_rows=args.batch,
                    initial_cache_len=args.initial_cache)
  del params
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(sampler._weights))  # pylint: disable=protected-access
  _emit({"mode": "device", "device": jax.devices()[0].device_kind, "jax": jax.__version__,
         "preset": args.preset, "attention": args.attention, "weight_bytes": weight_bytes,
         "setup_s": time.perf_counter() - clock}, records)
  settings = [
      ("greedy", 1, dict(temperature=0.0)),
      ("sampled_t0.7_p0.8", 1, dict(temperature=0.7, top_p=0.8)),
      ("greedy_groups_of_8", 8, dict(temperature=0.0)),
      ("sampled_groups_of_8", 8, dict(temperature=0.7, top_p=0.8)),
  ][:args.settings]
  for name, n, knobs in settings:
    prompts = _random_prompts(args.batch // n, args.prompt, cfg.vocab_size)
    runs = []
    for _ in range(2):  # the first run compiles (once per shape: knobs are traced values)
      clock = time.perf_counter()
      sampler.generate_ids(prompts, n=n, max_new_tokens=args.new, seed=1, **knobs)
      runs.append(dict(sampler.last_stats, wall_s=time.perf_counter() - clock))
    stats = runs[-1]
    step_s = stats["decode_s"] / max(stats["decode_steps"], 1)
    kv = _kv_bytes_per_step(cfg, args.batch // n, args.batch, args.prompt, args.new, 2)
    roofline_s = (weight_bytes + kv) / (args.hbm_tbps * 1e12)
    _emit({"setting": name, "attention": args.attention, "rows": args.batch, "n": n,
           "prompt": args.prompt, "new": args.new,
           "initial_cache": args.initial_cache, "cache_len": stats["cache_len"],
           "decode_step_ms": 1e3 * step_s, "roofline_step_ms": 1e3 * roofline_s,
           "fraction_of_roofline": roofline_s / step_s, "kv_bytes_per_step": kv,
           "prefill_s": stats["prefill_s"], "first_run_wall_s": runs[0]["wall_s"],
           "wall_s": stats["wall_s"], "new_tokens_per_s": args.batch * (args.new - 1) /
           stats["decode_s"], "traces": dict(sampler_lib.TRACES)}, records)
    if args.profile and name == "greedy":
      run = lambda: sampler.generate_ids(prompts, n=n, max_new_tokens=args.new, seed=1, **knobs)
      _emit({"setting": name, "attention": args.attention, "decode_step_ms": 1e3 * step_s,
             "profile": profile_decode(run, stats["decode_steps"])}, records)
    _write(records, args.out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mode", choices=("cpu", "device", "transformers"), required=True,
                      help="transformers: the child process of cpu mode")
  parser.add_argument("--ckpt", help="transformers mode: where to save the checkpoint")
  parser.add_argument("--out")
  parser.add_argument("--preset", default="qwen2.5-math-1.5b")
  parser.add_argument("--batch", type=int)
  parser.add_argument("--prompt", type=int)
  parser.add_argument("--new", type=int)
  parser.add_argument("--n", type=int, default=1, help="cpu mode: rows per prompt")
  parser.add_argument("--initial_cache", type=int, default=64,
                      help="the sampler's initial_cache_len (>= --new: one fixed-size cache)")
  parser.add_argument("--settings", type=int, default=4, help="device mode: how many settings")
  parser.add_argument("--attention", choices=("xla", "pallas"), default="xla",
                      help="device mode: the model's attention (pallas: the flash kernel "
                           "prefills, the decode-attention kernels decode)")
  parser.add_argument("--hbm_tbps", type=float, default=4.3)
  parser.add_argument("--profile", action="store_true",
                      help="device mode: profile one greedy call (kernels per decode step)")
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--mesh", default="",
                      help="cpu mode: sampler mesh 'data,fsdp,tensor' (e.g. 2,1,1 with "
                           "XLA_FLAGS=--xla_force_host_platform_device_count=2); default none")
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="cpu mode: torch intra-op threads (0: one per CPU)")
  args = parser.parse_args(argv)
  defaults = {"cpu": (8, 64, 64), "transformers": (8, 64, 64),
              "device": (64, 512, 256)}[args.mode]
  args.batch = args.batch or defaults[0]
  args.prompt = args.prompt or defaults[1]
  args.new = args.new or defaults[2]
  if args.mode == "transformers":
    run_transformers(args)
    return 0
  records = []
  (run_cpu if args.mode == "cpu" else run_device)(args, records)
  _write(records, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
