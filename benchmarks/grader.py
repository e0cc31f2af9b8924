"""Grader speed: responses extracted and graded per second on one core, and latency.

Two workloads, both from the benchmark files (no text is stored here):
  gold_solutions  MATH test solutions and GSM8K test answers graded against their own gold
                  (nearly all correct: the cheap case).
  wrong_mix       the same responses graded against the gold of another problem of the same
                  set, plus each gold with one digit changed (nearly all wrong: the expensive
                  case, where no string match short-cuts the comparison).
One process, one thread; the sympy worker is started before timing (its start-up is reported
separately) and the normalisation/parse caches are cleared before each workload. Latency is
wall-clock per response (`p50_ms`, `p99_ms`, `max_ms`, including waits for the sympy worker)
and this thread's CPU time (`cpu_p99_ms`: what the grader itself costs on a busy machine, where
wall-clock tails are mostly time slices given to other processes). `graded_per_cpu_s` counts
the CPU time of this process and of its sympy worker (a worker killed on a timeout takes its
CPU time with it, so that figure is a slight overestimate when `sympy_calls` time out).

    python benchmarks/grader.py [--data_dir DIR] [--limit N]
Prints one JSON object.
"""

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import time

from qmath_jax.data import paths
from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import extract_answer
from qmath_jax.data import gold
from qmath_jax.evaluation import latex_expr
from qmath_jax.evaluation import math_equal
from qmath_jax.evaluation import normalize
from qmath_jax.evaluation import symbolic


def _responses(data_dir, limit):
  """(response text, dataset, gold) from MATH and GSM8K test files."""
  items = []
  for row in benchmarks.read_rows(data_dir / "math/test.jsonl")[:limit]:
    items.append((row["solution"], "math", gold.gold_answer(row, "math")))
  for row in benchmarks.read_rows(data_dir / "gsm8k/test.jsonl")[:limit]:
    text = row["answer"].replace("####", "The answer is")
    items.append((text, "gsm8k", gold.gold_answer(row, "gsm8k")))
  return items


def _change_a_digit(answer: str, rng: random.Random) -> str | None:
  digits = [m.start() for m in re.finditer(r"\d", answer)]
  if not digits:
    return None
  k = rng.choice(digits)
  return answer[:k] + str((int(answer[k]) + rng.randint(1, 9)) % 10) + answer[k + 1:]


def _wrong_mix(items, rng):
  mix = []
  by_set = {}
  for text, name, g in items:
    by_set.setdefault(name, []).append((text, g))
  for name, rows in by_set.items():
    golds = [g for _, g in rows]
    shifted = golds[1:] + golds[:1]
    mix += [(text, name, other) for (text, _), other in zip(rows, shifted)]
    for text, g in rows:
      changed = _change_a_digit(g, rng)
      if changed is not None:
        mix.append((f"The final answer is $\\boxed{{{changed}}}$.", name, g))
  rng.shuffle(mix)
  return mix


def _worker_cpu_s() -> float:
  """CPU seconds used so far by this thread's sympy worker process (Linux /proc; else 0)."""
  proc = symbolic.worker().proc
  try:
    with open(f"/proc/{proc.pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
  except (AttributeError, OSError, ValueError, IndexError):
    return 0.0


def _run(items):
  normalize.normalize_answer.cache_clear()
  latex_expr.parse_latex.cache_clear()
  calls = [0]
  real_symbolic = symbolic.symbolic_equal

  def counting(*args, **kwargs):
    calls[0] += 1
    return real_symbolic(*args, **kwargs)

  symbolic.symbolic_equal = counting
  latencies, cpu_latencies, correct = [], [], 0
  start, cpu_start = time.perf_counter(), time.process_time() + _worker_cpu_s()
  try:
    for text, name, g in items:
      t0, c0 = time.perf_counter(), time.thread_time()
      correct += math_equal(extract_answer(text, name), g)
      latencies.append(time.perf_counter() - t0)
      cpu_latencies.append(time.thread_time() - c0)
  finally:
    symbolic.symbolic_equal = real_symbolic
  total = time.perf_counter() - start
  cpu_total = time.process_time() + _worker_cpu_s() - cpu_start
  latencies.sort()
  cpu_latencies.sort()
  return {
      "graded": len(items),
      "graded_per_s": round(len(items) / total, 1),
      "graded_per_cpu_s": round(len(items) / cpu_total, 1),
      "p50_ms": round(1e3 * statistics.median(latencies), 4),
      "p99_ms": round(1e3 * latencies[int(0.99 * (len(latencies) - 1))], 3),
      "max_ms": round(1e3 * latencies[-1], 2),
      "cpu_p99_ms": round(1e3 * cpu_latencies[int(0.99 * (len(cpu_latencies) - 1))], 3),
      "correct_rate": round(correct / len(items), 4),
      "sympy_calls": calls[0],
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--limit", type=int, default=None, help="rows per file")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  data_dir = paths.require_data_dir(args.data_dir)
  items = _responses(data_dir, args.limit)
  t0 = time.perf_counter()
  symbolic.worker().equal(["num", "1"], ["num", "1"], timeout=60)
  startup_s = time.perf_counter() - t0
  out = {
      "benchmark": "grader",
      "python": platform.python_version(),
      "sympy_worker_startup_s": round(startup_s, 3),
      "gold_solutions": _run(items),
      "wrong_mix": _run(_wrong_mix(items, random.Random(args.seed))),
  }
  json.dump(out, sys.stdout, indent=2)
  print()


if __name__ == "__main__":
  main()
