"""Attention speed: our Pallas kernel against cuDNN and XLA, forward and forward+backward.

Prints one JSON object per measurement and a JSON summary last; `--out` also
writes the summary to a file. Every case runs in one go:
  heads 12/2 (1.5B) and 28/4 (7B), head_dim 128, lengths 4096 and 16384,
  unpacked causal and packed (causal within random-length documents), bf16.

FLOP convention: a causal forward counts half of the full 4*b*h*l*l*d
(2*b*h*l*l*d); forward+backward counts 2.5 times that forward. Packed rows are
counted like unpacked causal rows, so their TFLOP/s is "causal-equivalent" and
shows directly whether packing costs more or less than one causal sequence;
`work_fraction` (sum of squared document lengths over l^2) gives the share of
that work the documents actually need.
cuDNN through `jax.nn.dot_product_attention` takes no segment ids, so it has no
packed figures; XLA materialises the [l, l] scores and runs only at length 4096.

`ours_atomic` is ours with `LaunchSettings(dq_atomic=True)`: dq added by atomics inside the
dk/dv pass (not bitwise reproducible; see `kernels.gpu.LaunchSettings`).

  python benchmarks/attention.py --out attention.json [--sweep] [--quick]
  python benchmarks/attention.py --impls ours,ours_atomic,cudnn --lengths 4096 --shapes 7B
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from qmath_jax import kernels

SHAPES = {"1.5B": (12, 2), "7B": (28, 4)}
HEAD_DIM = 128
TOKENS_PER_CASE = 16384  # batch * length

# Candidate GPU tilings tried by --sweep at the 7B 4096 shape: forward first, then backward.
FORWARD_CANDIDATES = [
    dict(block_q=128, block_k=64, forward_warps=8, forward_stages=3),
    dict(block_q=128, block_k=128, forward_warps=8, forward_stages=2),
    dict(block_q=128, block_k=64, forward_warps=4, forward_stages=3),
]
BACKWARD_CANDIDATES = [
    dict(block_q_dkv=64, block_k_dkv=64, block_q_dq=64, block_k_dq=64, backward_warps=4,
         backward_stages=2),
    dict(block_q_dkv=64, block_k_dkv=128, block_q_dq=128, block_k_dq=64, backward_warps=8,
         backward_stages=2),
    dict(block_q_dkv=32, block_k_dkv=128, block_q_dq=128, block_k_dq=32, backward_warps=4,
         backward_stages=3),
]
LAUNCH_FIELDS = ("forward_warps", "forward_stages", "backward_warps", "backward_stages",
                 "dq_atomic")


def causal_flops(batch, length, heads, head_dim, backward):
  forward = 0.5 * 4 * batch * heads * length * length * head_dim
  return forward * (2.5 if backward else 1.0)


def packed_segment_ids(batch, length, seed=0):
  """int32 [batch, length]: documents of random lengths in [length/16, length/2]."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(batch):
    ids, doc = [], 1
    while len(ids) < length:
      ids += [doc] * int(rng.integers(length // 16, length // 2 + 1))
      doc += 1
    rows.append(ids[:length])
  return jnp.asarray(np.array(rows, np.int32))


def causal_work_fraction(segment_ids):
  """Share of an unpacked causal row's score work that packed documents need: sum(n_i^2) / l^2."""
  ids = np.asarray(segment_ids)
  fractions = []
  for row in ids:
    _, counts = np.unique(row, return_counts=True)
    fractions.append(float(np.sum(counts.astype(np.float64) ** 2) / len(row) ** 2))
  return float(np.mean(fractions))


def time_call(fn, args, min_seconds=0.05, reps=5):
  """Median seconds per call; calls are queued back to back and synced once per rep."""
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  single = max(time.perf_counter() - start, 1e-6)
  per_rep = max(1, int(min_seconds / single))
  samples = []
  for _ in range(reps):
    start = time.perf_counter()
    for _ in range(per_rep):
      out = fn(*args)
    jax.block_until_ready(out)
    samples.append((time.perf_counter() - start) / per_rep)
  return statistics.median(samples)


def make_attention(impl, segment_ids, tiling, interpret):
  """fn(q, k, v) -> out for one implementation."""
  if impl == "ours":
    launch = kernels.LaunchSettings(**{key: tiling[key] for key in LAUNCH_FIELDS if key in tiling})
    sizes = {key: value for key, value in tiling.items() if key not in LAUNCH_FIELDS}
    block_sizes = kernels.BlockSizes(**sizes) if sizes else None
    return lambda q, k, v: kernels.flash_attention(
        q, k, v, segment_ids=segment_ids, causal=True, backend="gpu", interpret=interpret,
        block_sizes=block_sizes, gpu_launch=launch)
  if impl == "cudnn":
    if segment_ids is not None:
      raise NotImplementedError("cuDNN path of jax.nn.dot_product_attention takes no segment ids")
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                        implementation="cudnn")
  if impl == "xla":
    mask = None
    if segment_ids is not None:
      mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                                        implementation="xla")
  raise ValueError(f"unknown impl {impl!r}")


def measure(impl, shape_name, length, packed, tiling=None, interpret=False, head_dim=HEAD_DIM,
            tokens=TOKENS_PER_CASE, dtype=jnp.bfloat16, stream=None):
  """One record: forward and forward+backward milliseconds and TFLOP/s."""
  heads, kv_heads = SHAPES[shape_name]
  batch = max(1, tokens // length)
  if impl == "ours_atomic":
    tiling = dict(tiling or {}, dq_atomic=True)
  keys = jax.random.split(jax.random.key(length + heads), 4)
  q = jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim), dtype)
  v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim), dtype)
  d_out = jax.random.normal(keys[3], q.shape, dtype)
  segment_ids = packed_segment_ids(batch, length) if packed else None
  record = dict(impl=impl, shape=shape_name, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                batch=batch, length=length, packed=packed, dtype=jnp.dtype(dtype).name,
                tiling=tiling or None)
  if packed:
    # Needed work relative to an unpacked causal row; TFLOP/s stay causal-equivalent.
    record["work_fraction"] = causal_work_fraction(segment_ids)
  try:
    attend = make_attention("ours" if impl == "ours_atomic" else impl, segment_ids, tiling or {},
                            interpret)
    forward = jax.jit(attend)
    forward_backward = jax.jit(lambda q, k, v, d: jax.vjp(attend, q, k, v)[1](d))
    reps = 1 if interpret else 5  # interpret mode only checks that the case runs
    fwd_s = time_call(forward, (q, k, v), reps=reps)
    record.update(fwd_ms=fwd_s * 1e3,
                  fwd_tflops=causal_flops(batch, length, heads, head_dim, False) / fwd_s / 1e12)
    fwdbwd_s = time_call(forward_backward, (q, k, v, d_out), reps=reps)
    record.update(fwdbwd_ms=fwdbwd_s * 1e3,
                  fwdbwd_tflops=causal_flops(batch, length, heads, head_dim, True) / fwdbwd_s
                  / 1e12)
  except Exception as error:  # One failing case must not stop the others; it is recorded.
    record["error"] = f"{type(error).__name__}: {str(error)[:300]}"
  print(json.dumps(record), flush=True)
  if stream is not None:
    stream.write(json.dumps(record) + "\n")
    stream.flush()
  return record


def sweep(interpret, length, shape_name, tokens, stream):
  """Best forward tiling, then the best backward tiling beside it, by measured time."""
  best_fwd, best_time = FORWARD_CANDIDATES[0], float("inf")
  for tiling in FORWARD_CANDIDATES:
    record = measure("ours", shape_name, length, False, tiling=dict(tiling, **BACKWARD_CANDIDATES[0]),
                     interpret=interpret, tokens=tokens, stream=stream)
    if record.get("fwd_ms", float("inf")) < best_time:
      best_fwd, best_time = tiling, record["fwd_ms"]
  best_bwd, best_time = BACKWARD_CANDIDATES[0], float("inf")
  for tiling in BACKWARD_CANDIDATES:
    record = measure("ours", shape_name, length, False, tiling=dict(best_fwd, **tiling),
                     interpret=interpret, tokens=tokens, stream=stream)
    if record.get("fwdbwd_ms", float("inf")) < best_time:
      best_bwd, best_time = tiling, record["fwdbwd_ms"]
  return dict(best_fwd, **best_bwd)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="also write the JSON summary here")
  parser.add_argument("--sweep", action="store_true", help="try GPU tilings first")
  parser.add_argument("--quick", action="store_true",
                      help="tiny sizes in interpret mode: checks the script runs on CPU")
  parser.add_argument("--impls", default="ours,cudnn,xla",
                      help="of ours, ours_atomic (dq by atomics in the dk/dv pass), cudnn, xla")
  parser.add_argument("--lengths", default="", help="e.g. 4096 (default: 4096,16384)")
  parser.add_argument("--shapes", default="7B,1.5B")
  parser.add_argument("--tiling", default="{}",
                      help='our tiles and launch settings as JSON, e.g. \'{"backward_warps": 8}\' '
                           "(BlockSizes and LaunchSettings fields; --sweep replaces it)")
  args = parser.parse_args(argv)
  interpret = args.quick
  lengths = (128, 256) if args.quick else (4096, 16384)
  if args.lengths:
    lengths = tuple(int(length) for length in args.lengths.split(","))
  tokens = 256 if args.quick else TOKENS_PER_CASE
  xla_max_length = 128 if args.quick else 4096
  started = time.time()
  stream = open(args.out + "l", "w") if args.out else None  # JSON lines as they come.
  tiling = json.loads(args.tiling)
  if args.sweep:
    tiling = sweep(interpret, lengths[0], "7B", tokens, stream)
  records = []
  # Most telling cases first, so a run cut short still holds them.
  for length in lengths:
    for shape_name in args.shapes.split(","):
      for packed in (False, True):
        for impl in args.impls.split(","):
          if impl == "cudnn" and packed:
            continue
          if impl == "xla" and length > xla_max_length:
            continue
          records.append(measure(impl, shape_name, length, packed,
                                 tiling=tiling if impl.startswith("ours") else None,
                                 interpret=interpret, tokens=tokens, stream=stream))
  summary = dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__,
                 flops_convention="causal: 0.5 * 4*b*h*l*l*d forward; fwd+bwd = 2.5x forward",
                 tiling=tiling, seconds=time.time() - started, records=records)
  text = json.dumps(summary, indent=1)
  if args.out:
    stream.close()
    with open(args.out + ".tmp", "w") as handle:
      handle.write(text)
    os.replace(args.out + ".tmp", args.out)
  print(json.dumps(dict(summary, records=len(records))))
  print_table(records)
  return 0


def print_table(records):
  """Short fixed-width table of the records (last in the output)."""
  print(f"{'impl':11} {'shape':5} {'len':>6} {'packed':6} {'fwd ms':>8} {'fwd TF/s':>9} "
        f"{'f+b ms':>8} {'f+b TF/s':>9}")
  for r in records:
    cells = []
    for key, width, digits in (("fwd_ms", 8, 3), ("fwd_tflops", 9, 1), ("fwdbwd_ms", 8, 3),
                               ("fwdbwd_tflops", 9, 1)):
      cells.append(f"{r[key]:{width}.{digits}f}" if key in r else f"{'err':>{width}}")
    print(f"{r['impl']:11} {r['shape']:5} {r['length']:6d} {str(r['packed']):6} " + " ".join(cells))


if __name__ == "__main__":
  sys.exit(main())
