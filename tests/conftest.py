"""Test set-up: 8 simulated CPU devices (set before JAX starts) and the data directory."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

from qmath_jax.data import paths  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
  """The benchmark/training data directory; skips the test cleanly when it is absent."""
  found = paths.find_data_dir()
  if found is None:
    pytest.skip("benchmark data directory not found (set QMATH_DATA_DIR)")
  return found
