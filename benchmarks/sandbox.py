"""Throughput of PythonSandbox on small programs: one worker, then pools; prints JSON.

  python benchmarks/sandbox.py [--programs 200] [--workers 1,2,4]

Per pool size: worker start-up time (namespaces, private root, numpy + sympy preload) and
small programs per second through `run_batch` once the workers are warm. The programs are a
fixed mix of the kind TIR produces: arithmetic, a sympy solve, a numpy reduction, an error.
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qmath_jax.sandbox import PythonSandbox  # noqa: E402

PROGRAMS = (
    "print(sum(i * i for i in range(1000)))",
    "import sympy as sp\nx = sp.symbols('x')\nsp.solve(x**2 - 7*x + 10, x)",
    "import numpy as np\nnp.linalg.det(np.arange(9.0).reshape(3, 3) + np.eye(3))",
    "from fractions import Fraction\nFraction(1, 3) + Fraction(1, 6)",
    "1 / 0",
)


def measure(num_workers: int, num_programs: int) -> dict:
  codes = [PROGRAMS[i % len(PROGRAMS)] for i in range(num_programs)]
  start = time.perf_counter()
  sandbox = PythonSandbox(timeout=5.0, num_workers=num_workers)
  try:
    sandbox.run_batch(["0"] * num_workers)  # start every worker
    startup_s = time.perf_counter() - start
    start = time.perf_counter()
    results = sandbox.run_batch(codes)
    elapsed = time.perf_counter() - start
    errors = sum(r.error is not None for r in results)
    layers = sandbox.isolation_report()
  finally:
    sandbox.close()
  expected_errors = sum(1 for c in codes if c == "1 / 0")
  if errors != expected_errors:
    raise RuntimeError(f"{errors} programs failed, expected {expected_errors}")
  return {
      "workers": num_workers,
      "programs": num_programs,
      "startup_s": round(startup_s, 3),
      "programs_per_s": round(num_programs / elapsed, 1),
      "ms_per_program": round(1000 * elapsed / num_programs, 2),
      "pid_namespace": layers["pid_namespace"],
      "private_root": layers["private_root"],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--programs", type=int, default=200)
  parser.add_argument("--workers", default="1,2,4")
  args = parser.parse_args()
  rows = [measure(int(w), args.programs) for w in args.workers.split(",")]
  print(json.dumps({
      "benchmark": "sandbox",
      "cpus": os.cpu_count(),
      "python": platform.python_version(),
      "results": rows,
  }, indent=1))


if __name__ == "__main__":
  main()
