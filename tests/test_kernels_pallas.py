"""Both Pallas kernels (GPU/Triton and TPU/Mosaic), in interpret mode, against the reference.

Fresh random inputs each run (the seed is in the failure message); forward and each gradient
have their own tolerance (`testing.TOLERANCES`).
"""

import itertools

import numpy as np
import pytest

from qmath_jax.kernels import BlockSizes, LaunchSettings
from qmath_jax.kernels import testing

SMALL_BLOCKS = {
    "gpu": BlockSizes(block_q=64, block_k=32, block_q_dkv=32, block_k_dkv=64,
                      block_q_dq=64, block_k_dq=32),
    # The smallest tiles Mosaic takes for these layouts: 128 along the sequence.
    "tpu": BlockSizes(block_q=128, block_k=128, block_q_dkv=128, block_k_dkv=128,
                      block_q_dq=128, block_k_dq=128),
}
BACKENDS = tuple(SMALL_BLOCKS)


def _check(backend, length, ratio, segments, dtype, head_dim, causal=True, small_blocks=True,
           batch=2, dq_atomic=False):
  seed = int(np.random.SeedSequence().entropy % (2**31))
  kv_heads = 1 if ratio == 7 else 2
  inputs = testing.random_inputs(seed, batch, length, ratio * kv_heads, kv_heads, head_dim,
                                 dtype, segments)
  extra = {"gpu_launch": LaunchSettings(dq_atomic=True)} if dq_atomic else {}
  errors = testing.kernel_errors(*inputs, causal=causal, backend=backend, interpret=True,
                                 block_sizes=SMALL_BLOCKS[backend] if small_blocks else None,
                                 **extra)
  for name, limit in testing.TOLERANCES[dtype].items():
    assert errors[name] <= limit, f"{backend} {name} error {errors[name]:.3g} > {limit} (seed {seed})"


# A representative subset by default (interpret mode is slow): padding, grouped heads (7:1
# too), packed segments, both dtypes, several blocks per row. The grid below is slow.
@pytest.mark.parametrize("backend,length,ratio,segments,dtype,head_dim", [
    ("gpu", 200, 7, True, "float32", 64),
    ("gpu", 256, 2, False, "bfloat16", 128),
    ("tpu", 200, 2, True, "float32", 64),
])
def test_matches_reference(backend, length, ratio, segments, dtype, head_dim):
  _check(backend, length, ratio, segments, dtype, head_dim, batch=1)


# The GPU backward with dq added by atomics in the dk/dv pass (`LaunchSettings.dq_atomic`).
@pytest.mark.parametrize("length,ratio,segments,dtype,head_dim,causal", [
    (200, 7, True, "float32", 64, True),
    (256, 2, False, "bfloat16", 128, False),
])
def test_atomic_dq_matches_reference(length, ratio, segments, dtype, head_dim, causal):
  _check("gpu", length, ratio, segments, dtype, head_dim, causal, batch=1, dq_atomic=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length,ratio,segments,dtype,head_dim,causal", [
    (200, 1, True, "bfloat16", 128, False),
    (256, 1, False, "bfloat16", 128, False),
    (200, 7, True, "bfloat16", 128, False),
    (384, 4, True, "bfloat16", 64, True),
    (384, 2, False, "float32", 64, True),
    (128, 2, False, "float32", 64, False),
])
def test_matches_reference_more(backend, length, ratio, segments, dtype, head_dim, causal):
  _check(backend, length, ratio, segments, dtype, head_dim, causal)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_default_blocks_odd_length(backend):
  _check(backend, 200, 2, True, "float32", 128, small_blocks=False, batch=1)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length,ratio,segments,dtype", list(itertools.product(
    (128, 200, 384, 1024), (1, 2, 4, 7), (False, True), ("float32", "bfloat16"))))
def test_full_grid(backend, length, ratio, segments, dtype):
  _check(backend, length, ratio, segments, dtype, head_dim=128 if length % 256 else 64)


@pytest.mark.slow
@pytest.mark.parametrize("length,ratio,segments,dtype,causal", list(itertools.product(
    (128, 200, 384), (1, 2, 4, 7), (False, True), ("float32", "bfloat16"), (True, False))))
def test_atomic_dq_grid(length, ratio, segments, dtype, causal):
  _check("gpu", length, ratio, segments, dtype, head_dim=128 if length % 256 else 64,
         causal=causal, dq_atomic=True)


def test_tpu_kernels_have_no_data_races_on_two_cores(tpu_race_states):
  """Forward, dq and dk/dv in interpret mode with race detection, the parallel grid axes split
  over two cores (a megacore chip), several key blocks per row and packed segments."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  inputs = testing.random_inputs(0, 2, 256, 4, 2, 64, "float32", True)
  params = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2)
  errors = testing.kernel_errors(*inputs, backend="tpu", interpret=params,
                                 block_sizes=SMALL_BLOCKS["tpu"])
  assert len(tpu_race_states) == 3  # forward, dq, dk/dv
  assert not any(state.races_found for state in tpu_race_states)
  for name, limit in testing.TOLERANCES["float32"].items():
    assert errors[name] <= limit, (name, errors[name])


def test_race_detector_finds_a_planted_race(tpu_race_states):
  """The check above can fail: two grid steps split over two cores write one output block."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.experimental import pallas as pl  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top

  def racy(x_ref, o_ref):
    o_ref[...] = x_ref[...] + pl.program_id(0)

  spec = pl.BlockSpec((8, 128), lambda i: (0, 0))
  pl.pallas_call(
      racy, grid=(4,), in_specs=[spec], out_specs=spec,
      out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
      interpret=pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2),
  )(jnp.ones((8, 128), jnp.float32)).block_until_ready()
  assert len(tpu_race_states) == 1 and tpu_race_states[0].races_found
