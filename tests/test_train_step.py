"""The jitted step on 8 simulated CPU devices: mesh independence, real sharding, gradient
accumulation, mixed precision, and the errors a caller can hit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qmath_jax import parallel
from qmath_jax.model import presets
from qmath_jax.model.transformer import Transformer
from qmath_jax.train import losses, optimizer as optimizer_lib, state as state_lib
from qmath_jax.train import step as step_lib

CFG = presets.get_config("tiny", vocab_size=64, hidden_size=32, head_dim=8, intermediate_size=64)
BATCH, LENGTH, STEPS = 16, 16, 3


def sft_batches(num_batches=STEPS, batch=BATCH, length=LENGTH, seed=0):
  """Packed SFT rows: 1-3 segments per row, padding at the end, a prompt/answer loss mask."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num_batches):
    tokens = rng.integers(0, CFG.vocab_size, (batch, length)).astype(np.int32)
    segment_ids = np.zeros((batch, length), np.int32)
    positions = np.zeros((batch, length), np.int32)
    loss_mask = np.zeros((batch, length), np.int32)
    for row in range(batch):
      start = 0
      for seg in range(1, rng.integers(1, 4) + 1):
        size = int(rng.integers(3, 8))
        end = min(start + size, length - int(rng.integers(0, 3)))
        if end - start < 2:
          break
        segment_ids[row, start:end] = seg
        positions[row, start:end] = np.arange(end - start)
        prompt = int(rng.integers(1, end - start))
        loss_mask[row, start + prompt:end] = 1
        start = end
    out.append({"tokens": tokens, "positions": positions, "segment_ids": segment_ids,
                "loss_mask": loss_mask})
  return out


def make_optimizer():
  return optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      peak_lr=1e-2, end_lr=1e-3, warmup_steps=0, total_steps=10, weight_decay=0.1))


def build(mesh, cfg=CFG, num_microbatches=1, loss_fn=None):
  model = Transformer(cfg)
  optimizer, schedule = make_optimizer()
  init = lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
  state, shardings = state_lib.create_train_state(init, optimizer, mesh, seed=0)
  loss_fn = loss_fn or losses.get_loss("sft", model)
  train_step = step_lib.make_train_step(loss_fn, optimizer, mesh=mesh, state_shardings=shardings,
                                        learning_rate_fn=schedule,
                                        num_microbatches=num_microbatches)
  return state, train_step


def mesh_for(shape):
  if shape is None:
    return parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  return parallel.make_mesh(shape)


@functools.lru_cache(maxsize=None)
def run(shape, num_microbatches=1, dtype="float32"):
  """Trains STEPS steps; returns (losses, grad norms, final params as numpy, final state)."""
  mesh = mesh_for(shape)
  state, train_step = build(mesh, CFG.replace(dtype=dtype), num_microbatches)
  got_losses, norms = [], []
  for batch in sft_batches(1) * STEPS:  # the same batch: the loss must fall
    state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
    got_losses.append(float(metrics["loss"]))
    norms.append(float(metrics["grad_norm"]))
  params = jax.tree.map(np.asarray, state.params)
  return np.array(got_losses), np.array(norms), params, state


def _assert_same_training(shape):
  ref_losses, ref_norms, ref_params, *_ = run(None)
  losses_, norms, params, *_ = run(shape)
  assert ref_losses[-1] < ref_losses[0] - 0.05  # it trains
  np.testing.assert_allclose(losses_, ref_losses, rtol=1e-5)
  np.testing.assert_allclose(norms, ref_norms, rtol=1e-5)
  # Adam's first steps move each weight by about lr * sign(gradient): a gradient element near
  # zero turns summation-order noise into a visible weight difference, so the weights compare
  # to a tenth of one step (lr 1e-2); the losses and gradient norms above are the tight check.
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)


def test_mesh_2x2x2_gives_the_single_device_losses():
  _assert_same_training((2, 2, 2))


@pytest.mark.slow  # one compile per mesh: ~10-20 s each on two shared cores
@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (1, 2, 4)])
def test_meshes_give_the_single_device_losses_slow(shape):
  _assert_same_training(shape)


# Per-device shard shapes, written out by hand from the rules table.
# embedding [vocab 64, embed 32]; q kernel [layers 2, embed 32, heads 4, head_dim 8];
# k kernel [2, 32, kv_heads 2, 8]; gate kernel [2, embed 32, mlp 64]; input_norm scale [2, 32].
EXPECTED_SHARDS = {
    (1, 2, 4): {"embedding": (16, 16), "q": (2, 16, 1, 8), "k": (2, 16, 2, 8),  # 2 kv heads
                "gate": (2, 16, 16), "norm": (2, 16)},                          # stay whole
    (2, 2, 2): {"embedding": (32, 16), "q": (2, 16, 2, 8), "k": (2, 16, 1, 8),
                "gate": (2, 16, 32), "norm": (2, 16)},
}


def _shard_shapes(tree):
  return jax.tree.map(lambda x: x.addressable_shards[0].data.shape, tree)


@pytest.mark.parametrize("shape", sorted(EXPECTED_SHARDS))
def test_params_and_optimizer_state_are_sharded(shape):
  if shape == (2, 2, 2):  # after training steps
    *_, state = run(shape)
  else:  # straight after the sharded init
    mesh = mesh_for(shape)
    state, _ = build(mesh)
  shard_shapes = _shard_shapes(state.params)
  mu_shapes = _shard_shapes(state.opt_state[1][0].mu)
  expected = EXPECTED_SHARDS[shape]
  layers = shard_shapes["layers"]
  got = {"embedding": shard_shapes["embedding"], "q": layers["attn"]["q_proj"]["kernel"],
         "k": layers["attn"]["k_proj"]["kernel"], "gate": layers["mlp"]["gate_proj"]["kernel"],
         "norm": layers["input_norm"]["scale"]}
  assert got == expected
  assert mu_shapes == shard_shapes  # Adam moments sharded like their parameters
  assert len(state.params["embedding"].addressable_shards) == 8
  assert state.params["embedding"].dtype == jnp.float32


def _recording_optimizer():
  """An optax transformation whose state is the last gradient it saw (parameters unchanged)."""
  init = lambda params: jax.tree.map(jnp.zeros_like, params)
  update = lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads)
  return optax.GradientTransformation(init, update)


def test_microbatch_gradients_equal_one_large_batch():
  mesh = parallel.make_mesh((2, 2, 2))
  model = Transformer(CFG)
  init = lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
  record = _recording_optimizer()
  grads, got_losses = [], []
  for k in (1, 4):
    state, shardings = state_lib.create_train_state(init, record, mesh, seed=0)
    train_step = step_lib.make_train_step(losses.get_loss("sft", model), record, mesh=mesh,
                                          state_shardings=shardings, num_microbatches=k)
    state, metrics = train_step(state, parallel.shard_batch(sft_batches(1)[0], mesh))
    grads.append(jax.tree.map(np.asarray, state.opt_state))
    got_losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(got_losses[1], got_losses[0], rtol=1e-6)
  for g1, g4 in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    assert np.abs(g1).max() > 0
    np.testing.assert_allclose(g4, g1, rtol=1e-6, atol=1e-6 * np.abs(g1).max())


def test_microbatch_metrics_equal_one_large_batch():
  """GRPO's kl/ratio/clip_fraction are token means while its loss (sequence normalisation)
  is a mean over completions: each must combine over microbatches with its own count."""
  mesh = parallel.make_mesh((2, 2, 2))
  model = Transformer(CFG)
  init = lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
  record = _recording_optimizer()
  rng = np.random.default_rng(1)
  batch = dict(sft_batches(1)[0], advantages=rng.normal(size=(BATCH,)).astype(np.float32),
               old_logprobs=(-4 + 0.3 * rng.normal(size=(BATCH, LENGTH))).astype(np.float32),
               ref_logprobs=(-4 + 0.3 * rng.normal(size=(BATCH, LENGTH))).astype(np.float32))
  got = []
  for k in (1, 4):
    state, shardings = state_lib.create_train_state(init, record, mesh, seed=0)
    train_step = step_lib.make_train_step(losses.get_loss("grpo", model), record, mesh=mesh,
                                          state_shardings=shardings, num_microbatches=k)
    _, metrics = train_step(state, parallel.shard_batch(batch, mesh))
    got.append({name: float(value) for name, value in metrics.items()})
  assert got[0]["clip_fraction"] > 0  # the old log-probs are far enough off to clip
  for name in ("loss", "weight", "kl", "ratio", "clip_fraction"):
    np.testing.assert_allclose(got[1][name], got[0][name], rtol=1e-5, err_msg=name)


def test_metric_weights_combine_each_aux_value_with_its_own_count():
  """A made-up loss whose aux `share` is a mean over a count other than the loss weight."""
  mesh = parallel.make_mesh((2, 2, 2))
  record = _recording_optimizer()

  def loss_fn(params, batch, rng):
    del rng
    x, n = batch["x"], batch["n"]
    loss = (params["w"] * x).sum() / x.size
    share = (n > 0).sum() / jnp.maximum(n.sum(), 1)
    return loss, {"weight": x.size, "share": share, "plain": x.mean(),
                  "metric_weights": {"share": n.sum()}}

  init = lambda rng: {"w": jnp.ones(())}
  x = np.arange(8, dtype=np.float32)
  n = np.array([1, 0, 0, 0, 5, 0, 0, 0], np.int32)  # all in microbatch 0 (rows 0, 2, 4, 6)
  for k in (1, 2):
    state, shardings = state_lib.create_train_state(init, record, mesh, seed=0)
    train_step = step_lib.make_train_step(loss_fn, record, mesh=mesh,
                                          state_shardings=shardings, num_microbatches=k)
    _, metrics = train_step(state, parallel.shard_batch({"x": x, "n": n}, mesh))
    np.testing.assert_allclose(float(metrics["share"]), 2 / 6, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["plain"]), x.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), x.mean(), rtol=1e-6)


def test_non_finite_loss_keeps_the_last_good_state():
  mesh = parallel.make_mesh((2, 2, 2))
  sft = losses.get_loss("sft", Transformer(CFG))

  def scaled(params, batch, rng):  # the batch can poison the loss
    loss, aux = sft(params, batch, rng)
    return loss * batch["scale"][0], aux

  state, train_step = build(mesh, loss_fn=scaled)
  batch = sft_batches(1)[0]
  before = jax.tree.map(np.asarray, state.params)
  for bad in (np.nan, np.inf):
    poisoned = dict(batch, scale=np.full((BATCH,), bad, np.float32))
    state, metrics = train_step(state, parallel.shard_batch(poisoned, mesh))
    assert not bool(metrics["finite"])
    with pytest.raises(step_lib.NonFiniteStepError, match="non-finite training step at step 1"):
      step_lib.raise_if_not_finite(metrics, step=1)
    assert int(state.step) == 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
      np.testing.assert_array_equal(a, np.asarray(b))
  state, metrics = train_step(state, parallel.shard_batch(
      dict(batch, scale=np.ones((BATCH,), np.float32)), mesh))
  assert bool(metrics["finite"]) and int(state.step) == 1
  step_lib.raise_if_not_finite(metrics)


def test_batch_not_divisible_by_data_times_fsdp_is_a_clear_error():
  mesh = parallel.make_mesh((2, 2, 2))
  model = Transformer(CFG)
  optimizer, _ = make_optimizer()
  init = lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
  _, shardings = state_lib.sharded_init(init, optimizer, mesh)
  train_step = step_lib.make_train_step(losses.get_loss("sft", model), optimizer, mesh=mesh,
                                        state_shardings=shardings, num_microbatches=2)
  batch = sft_batches(1, batch=6)[0]
  with pytest.raises(ValueError, match=r"batch size 6 is not divisible by data x fsdp = 4"):
    train_step(None, batch)
  with pytest.raises(ValueError, match="num_microbatches = 2"):
    train_step(None, sft_batches(1, batch=4)[0])
  with pytest.raises(ValueError, match="same leading batch dimension"):
    train_step(None, dict(batch, loss_mask=np.zeros((8, LENGTH), np.int32)))


@pytest.mark.slow
def test_bf16_compute_keeps_fp32_master_weights():
  losses32, *_ = run(None)
  losses16, _, params16, state = run(None, dtype="bfloat16")
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params16))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state[1][0].mu))
  np.testing.assert_allclose(losses16, losses32, rtol=2e-2)
