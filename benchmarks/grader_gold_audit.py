"""Per-dataset audit of answer extraction and grading against each benchmark's references.

For each benchmark (default: every registered evaluation set whose file exists), prints the
percentage of problems whose perfect boxed-gold response is graded correct, whose own
reference solution (where the file has one) is graded correct, and of wrong responses (another
problem's gold, the gold with a digit changed) graded correct. See
`qmath_jax.evaluation.gold_audit`.

    python benchmarks/grader_gold_audit.py [--data_dir DIR] [--datasets a,b] [--stride N]
        [--failures K]
Prints one JSON object: {dataset: {rows, checked, perfect_correct_pct, ...}}.
"""

import argparse
import json
import sys
import time

from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import gold_audit


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--datasets", default="", help="comma-separated; default all")
  parser.add_argument("--stride", type=int, default=1, help="audit every N-th row")
  parser.add_argument("--failures", type=int, default=0, help="examples kept per failure kind")
  parser.add_argument("--timeout", type=float, default=3.0)
  args = parser.parse_args(argv)
  names = ([n for n in args.datasets.split(",") if n] or
           benchmarks.available(args.data_dir, groups=("en", "zh", "competition", "extra")))
  table = {}
  for name in names:
    start = time.monotonic()
    table[name] = gold_audit.audit_dataset(name, args.data_dir, args.stride, args.timeout,
                                           args.failures)
    table[name]["seconds"] = round(time.monotonic() - start, 1)
    print(name, json.dumps({k: v for k, v in table[name].items() if k != "failures"}),
          file=sys.stderr, flush=True)
  print(json.dumps(table, indent=1, ensure_ascii=False))
  return 0


if __name__ == "__main__":
  sys.exit(main())
