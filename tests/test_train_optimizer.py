"""Learning-rate schedules, the weight-decay mask, clipping, and FLOP/MFU accounting."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax.model import presets
from qmath_jax.train import flops, optimizer as optimizer_lib


def _cfg(**kw):
  base = dict(peak_lr=2e-5, end_lr=7e-7, warmup_steps=10, total_steps=110, decay="cosine")
  return optimizer_lib.OptimizerConfig(**{**base, **kw})


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
  schedule = optimizer_lib.make_schedule(_cfg())
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 1e-5, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 2e-5, rtol=1e-6)
  # Halfway through the decay: floor + (peak - floor) * (1 + cos(pi/2)) / 2.
  np.testing.assert_allclose(float(schedule(60)), 7e-7 + (2e-5 - 7e-7) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(110)), 7e-7, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(500)), 7e-7, rtol=1e-5)


def test_linear_and_constant_schedules():
  linear = optimizer_lib.make_schedule(_cfg(decay="linear"))
  np.testing.assert_allclose(float(linear(35)), 2e-5 + (7e-7 - 2e-5) * 25 / 100, rtol=1e-5)
  np.testing.assert_allclose(float(linear(110)), 7e-7, rtol=1e-5)
  constant = optimizer_lib.make_schedule(_cfg(decay="constant"))
  np.testing.assert_allclose(float(constant(100)), 2e-5, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown decay 'step'"):
    optimizer_lib.make_schedule(_cfg(decay="step"))
  with pytest.raises(ValueError, match="warmup_steps"):
    optimizer_lib.make_schedule(_cfg(warmup_steps=200))


def test_no_weight_decay_on_norm_scales_and_biases():
  params = {"embedding": jnp.ones((4, 2)),
            "layers": {"input_norm": {"scale": jnp.ones((3, 2))},  # scanned: rank 2
                       "q_proj": {"kernel": jnp.ones((3, 2, 2)), "bias": jnp.ones((3, 2))}}}
  mask = optimizer_lib.weight_decay_mask(params)
  assert mask == {"embedding": True, "layers": {"input_norm": {"scale": False},
                                                "q_proj": {"kernel": True, "bias": False}}}
  # With zero gradients, only decayed leaves move: by -lr * wd * value.
  optimizer, _ = optimizer_lib.make_optimizer(_cfg(warmup_steps=0, decay="constant",
                                                   peak_lr=0.1, weight_decay=0.5))
  state = optimizer.init(params)
  updates, _ = optimizer.update(jax.tree.map(jnp.zeros_like, params), state, params)
  np.testing.assert_allclose(updates["embedding"], -0.05 * np.ones((4, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["layers"]["input_norm"]["scale"], 0.0)
  np.testing.assert_array_equal(updates["layers"]["q_proj"]["bias"], 0.0)


def test_gradients_are_clipped_by_global_norm_before_adam():
  optimizer, _ = optimizer_lib.make_optimizer(_cfg(clip_norm=1.0))
  grads = {"a": jnp.array([3.0, 4.0])}  # global norm 5
  params = {"a": jnp.zeros(2)}
  _, state = optimizer.update(grads, optimizer.init(params), params)
  # Adam's first moment after one step is (1 - b1) * the gradient it received: the clipped
  # one, [0.6, 0.8].
  np.testing.assert_allclose(state[1][0].mu["a"], 0.1 * np.array([0.6, 0.8]), rtol=1e-6)
  unclipped, _ = optimizer_lib.make_optimizer(_cfg(clip_norm=None))
  _, state = unclipped.update(grads, unclipped.init(params), params)
  np.testing.assert_allclose(state[0].mu["a"], 0.1 * np.array([3.0, 4.0]), rtol=1e-6)


def test_flops_per_token_for_the_7b_shape():
  cfg = presets.get_config("qwen2.5-math-7b")
  e, h, k, d, m, layers, v = 3584, 28, 4, 128, 18944, 28, 152064
  matmul = layers * (e * h * d + 2 * e * k * d + h * d * e + 3 * e * m) + v * e
  assert flops.matmul_params(cfg) == matmul
  assert flops.train_flops_per_token(cfg, 4096) == 6 * matmul + 6 * layers * h * d * 4096
  assert flops.train_flops_per_token(cfg, 4096, include_lm_head=False) == (
      6 * (matmul - v * e) + 6 * layers * h * d * 4096)
  # About 6 x 7.1e9 dense FLOPs per token: the 7B model really has ~7B matmul weights.
  assert 6.5e9 < matmul < 7.7e9


def test_peak_table_and_mfu():
  assert flops.peak_tflops("NVIDIA H200") == 989.0
  assert flops.peak_tflops("TPU v5 lite") == 197.0
  assert flops.peak_tflops("TPU v5p") == 459.0
  assert flops.peak_tflops("TPU v4") == 275.0
  assert flops.peak_tflops("TPU v6 lite") == 918.0
  assert flops.peak_tflops("cpu") is None
  figures = flops.throughput(step_time_s=2.0, tokens_per_step=1e6, flops_per_token=4e10,
                             num_devices=8, device_kind="NVIDIA H200")
  assert figures["tokens_per_s"] == 5e5
  assert figures["tokens_per_s_per_device"] == 62500
  assert math.isclose(figures["tflops_per_device"], 2500.0)
  assert math.isclose(figures["mfu"], 2500.0 / 989.0)
  assert "mfu" not in flops.throughput(1.0, 10, 10, 1, "cpu")
  with pytest.raises(ValueError, match="step_time_s"):
    flops.throughput(0.0, 10, 10, 1, "cpu")
