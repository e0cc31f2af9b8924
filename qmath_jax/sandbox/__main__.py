"""Prints which sandbox isolation layers this host allows: `python -m qmath_jax.sandbox`."""

import json

from qmath_jax.sandbox import PythonSandbox


def main() -> None:
  with PythonSandbox(num_workers=1) as sandbox:
    report = sandbox.isolation_report()
    report["smoke_test"] = sandbox.run("import numpy, sympy\nsympy.Rational(1, 3) + 1").output
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
