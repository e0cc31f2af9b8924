"""The one jitted training step: `(state, batch) -> (state, metrics)` for every stage.

    step = make_train_step(loss_fn, optimizer, mesh=mesh, state_shardings=shardings,
                           learning_rate_fn=schedule, num_microbatches=4)
    state, metrics = step(state, batch)

What the step does, in order: split the batch into `num_microbatches` along its leading
dimension (row i goes to microbatch i % k, so each device splits only its own rows); run the
loss and its gradient on each under `lax.scan`, summing `loss * weight` and its gradient (see
`losses`: `aux["weight"]`); divide by the summed weight, so k microbatches equal one batch k
times as large; apply the optimizer (global-norm clipping and AdamW live in it); report
metrics, each aux value combined over microbatches with its own weight (`aux["metric_weights"]`,
default the loss's), so they too equal the one-batch values.

Non-finite loss or gradient: the returned state is the input state unchanged (the update is
discarded inside the jit, so donation is safe) and `metrics["finite"]` is False. The caller
stops the run; `raise_if_not_finite` does that with a clear message.
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from qmath_jax.parallel import batch as batch_lib
from qmath_jax.parallel import mesh as mesh_lib
from qmath_jax.parallel import rules as rules_lib
from qmath_jax.train.losses import LossFn
from qmath_jax.train.state import TrainState


class NonFiniteStepError(FloatingPointError):
  """A step's loss or gradient norm was NaN or infinite; the state was left unchanged."""


def raise_if_not_finite(metrics: Mapping[str, Any], step: int | None = None) -> None:
  """Raises NonFiniteStepError when `metrics["finite"]` is False (reads it to the host)."""
  if not bool(jax.device_get(metrics["finite"])):
    at = "" if step is None else f" at step {step}"
    loss, grad_norm = jax.device_get((metrics["loss"], metrics["grad_norm"]))
    raise NonFiniteStepError(
        f"non-finite training step{at}: loss={float(loss)}, grad_norm={float(grad_norm)}; the "
        "update was discarded and the state is the last good one")


def _split_microbatches(batch: Any, k: int, mesh: Mesh) -> Any:
  """`[batch, ...]` -> `[k, batch // k, ...]` with row r in microbatch r % k."""
  sharding = NamedSharding(mesh, PartitionSpec(None, mesh_lib.BATCH_AXES))

  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jax.lax.with_sharding_constraint(jnp.swapaxes(x, 0, 1), sharding)

  return jax.tree.map(split, batch)


class TrainStep:
  """A jitted `(state, batch) -> (state, metrics)` with a batch-size check in front.

  Attributes:
    jitted: the `jax.jit` function itself (in/out shardings, state donated); `lower` works
      on it.
    mesh, num_microbatches, constrain_activations: as given to `make_train_step`.
  """

  def __init__(self, jitted, mesh: Mesh, num_microbatches: int, constrain_activations: bool):
    self.jitted = jitted
    self.mesh = mesh
    self.num_microbatches = num_microbatches
    self.constrain_activations = constrain_activations

  def check_batch(self, batch: Any) -> None:
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(batch)}
    if len(sizes) != 1 or None in sizes:
      shapes = jax.tree.map(jnp.shape, batch)
      raise ValueError(f"every batch field needs the same leading batch dimension: {shapes}")
    batch_lib.check_batch_size(sizes.pop(), self.mesh, self.num_microbatches)

  def __call__(self, state: TrainState, batch: Any):
    self.check_batch(batch)
    if self.constrain_activations:
      with jax.set_mesh(self.mesh):
        return self.jitted(state, batch)
    return self.jitted(state, batch)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, mesh: Mesh,
                    state_shardings: TrainState,
                    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
                    num_microbatches: int = 1,
                    rules: rules_lib.LogicalRules = rules_lib.LOGICAL_AXIS_RULES,
                    donate: bool = True, constrain_activations: bool = True) -> TrainStep:
  """Builds the jitted training step.

  Args:
    loss_fn: `(params, batch, rng) -> (loss, aux)` from `losses.get_loss`; aux values are
      scalars, `aux["weight"]` (default 1) the count its loss averages over, and the optional
      `aux["metric_weights"]` a dict of the counts other aux values average over (default
      `aux["weight"]`).
    optimizer: optax transformation (e.g. `optimizer.make_optimizer`).
    mesh: device mesh.
    state_shardings: from `state.create_train_state`.
    learning_rate_fn: the schedule, reported as `metrics["learning_rate"]`.
    num_microbatches: gradient-accumulation steps per batch.
    rules: logical-axis rules for the model's activation constraints.
    donate: donate the input state's buffers.
    constrain_activations: trace under `jax.set_mesh(mesh)` so the model's
      `nn.with_logical_constraint` calls shard activations by `rules` and the Pallas
      attention kernel runs per shard under `shard_map`. Off, activations follow XLA's
      sharding propagation from the parameter and batch shardings (same results).
  Returns:
    A `TrainStep`. Metrics (scalars, on device): loss, grad_norm (before clipping),
    learning_rate, finite, weight (summed loss weight, e.g. target tokens), tokens (batch
    size x length for token batches), and each aux value averaged with its weights.
  """
  if num_microbatches < 1:
    raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
  batch_sharding = rules_lib.batch_sharding(mesh)
  param_shardings = state_shardings.params

  def weighted_loss(params, batch, rng):
    loss, aux = loss_fn(params, batch, rng)
    aux = dict(aux)
    weight = jax.lax.stop_gradient(jnp.asarray(aux.pop("weight", 1.0), jnp.float32))
    metric_weights = aux.pop("metric_weights", {})
    weights = {k: jnp.asarray(metric_weights.get(k, weight), jnp.float32) for k in aux}
    return loss * weight, (weight, aux, weights)

  grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)

  def microbatch_sums(params, batch, rng):
    (loss_sum, (weight, aux, weights)), grads = grad_fn(params, batch, rng)
    aux_sums = {k: (v * weights[k], weights[k]) for k, v in aux.items()}
    return loss_sum, weight, aux_sums, grads

  def step_fn(state: TrainState, batch):
    with nn.logical_axis_rules(rules):
      rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      if num_microbatches == 1:
        loss_sum, weight, aux_sums, grads = microbatch_sums(state.params, batch, rng)
      else:
        micro = _split_microbatches(batch, num_microbatches, mesh)
        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(microbatch_sums, state.params, first, rng)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def body(carry, xs):
          index, mb = xs
          sums = microbatch_sums(state.params, mb, jax.random.fold_in(rng, index))
          carry = jax.tree.map(jnp.add, carry, sums)
          carry = carry[:3] + (jax.lax.with_sharding_constraint(carry[3], param_shardings),)
          return carry, None

        (loss_sum, weight, aux_sums, grads), _ = jax.lax.scan(
            body, zeros, (jnp.arange(num_microbatches), micro))
      denom = jnp.maximum(weight, 1e-12)
      loss = loss_sum / denom
      grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
      grad_norm = optax.global_norm(grads)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      updated = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           rng=state.rng)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
      metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, "weight": weight}
      metrics.update({k: s / jnp.maximum(w, 1e-12) for k, (s, w) in aux_sums.items()})
      if learning_rate_fn is not None:
        metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
      if "tokens" in batch:
        metrics["tokens"] = jnp.asarray(batch["tokens"].size, jnp.float32)
      return new_state, metrics

  jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, rules_lib.replicated(mesh)),
                   donate_argnums=(0,) if donate else ())
  return TrainStep(jitted, mesh, num_microbatches, constrain_activations)
