"""Isolated execution of untrusted Python programs for tool-integrated reasoning."""

from qmath_jax.sandbox.sandbox import PythonSandbox, Result, SandboxError

__all__ = ["PythonSandbox", "Result", "SandboxError"]
