"""Evaluation: answer extraction, the math grader, benchmarks, and the eval runner.

`extract_answer` and `math_equal` are pure Python (no JAX), so RL reward workers and data tools
import them cheaply.
"""

from qmath_jax.evaluation.extract import extract_answer
from qmath_jax.evaluation.grader import math_equal
from qmath_jax.evaluation.normalize import normalize_answer

__all__ = ["extract_answer", "math_equal", "normalize_answer"]
