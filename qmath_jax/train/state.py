"""TrainState and its creation directly in its shardings.

    state, shardings = create_train_state(init_params, optimizer, mesh, seed=0)
    init_state, shardings = sharded_init(...)   # the same, as a jitted () -> state

`init_params(rng)` returns the (boxed) parameter tree, e.g.
`lambda rng: Transformer(cfg).init(rng, tokens)["params"]`. The parameters are created inside a
`jax.jit` whose out_shardings follow the logical-axis rules, so no device ever holds a full copy
of a sharded tensor.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from qmath_jax.parallel import rules as rules_lib


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, optimizer updates applied so far.
    params: parameter tree (fp32 master weights, or the model's param_dtype).
    opt_state: optax state for `params`.
    rng: uint32 `[2]` raw key data (a plain array so checkpoints need no typed-key support);
      step `s` draws from `fold_in(rng, s)`.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def state_shardings(abstract_boxed_params: Any, optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules: rules_lib.LogicalRules = rules_lib.LOGICAL_AXIS_RULES
                    ) -> TrainState:
  """NamedShardings of a TrainState, from `jax.eval_shape` of the boxed parameters.

  Optimizer moments take their parameter's sharding; optimizer scalars (counts) are
  replicated.
  """
  param_shardings = rules_lib.tree_shardings(abstract_boxed_params, mesh, rules)
  abstract_params = nn.unbox(abstract_boxed_params)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  replicated = rules_lib.replicated(mesh)
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, abstract_opt, param_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  # Leaves optax does not recognise as parameter copies (e.g. MaskedNode) carry no arrays.
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                    rng=replicated)


def sharded_init(init_params: Callable[[jax.Array], Any],
                 optimizer: optax.GradientTransformation, mesh: Mesh, seed: int = 0,
                 rules: rules_lib.LogicalRules = rules_lib.LOGICAL_AXIS_RULES
                 ) -> tuple[Callable[[], TrainState], TrainState]:
  """A jitted `() -> TrainState` that creates the state in its shardings, and those shardings.

  Args:
    init_params: `rng -> params`; leaves boxed with `nn.with_logical_partitioning` are
      sharded by `rules`, plain leaves replicated.
    optimizer: the optax transformation whose state is created.
    mesh: target mesh.
    seed: seeds parameter init (`fold_in(key(seed), 0)`) and the state's rng
      (`fold_in(key(seed), 1)`).
    rules: logical-axis rules.

  Returns:
    (init_state, shardings): `init_state()` runs under `jax.jit(out_shardings=shardings)`,
    so no device holds more than its shard; `shardings` is also the jit in/out sharding of
    the step and the checkpoint restore target.
  """
  init_fn = make_init_fn(init_params, optimizer, seed)
  abstract_boxed = jax.eval_shape(init_params, jax.random.key(seed))
  shardings = state_shardings(abstract_boxed, optimizer, mesh, rules)
  # No rules/mesh context here: out_shardings place the parameters (flax's DenseGeneral
  # would otherwise constrain its kernels' flat initial shapes with their n-d names).
  return jax.jit(init_fn, out_shardings=shardings), shardings


def create_train_state(init_params: Callable[[jax.Array], Any],
                       optimizer: optax.GradientTransformation, mesh: Mesh, seed: int = 0,
                       rules: rules_lib.LogicalRules = rules_lib.LOGICAL_AXIS_RULES
                       ) -> tuple[TrainState, TrainState]:
  """`sharded_init` run once: returns (state, shardings)."""
  init_state, shardings = sharded_init(init_params, optimizer, mesh, seed, rules)
  return init_state(), shardings


def make_init_fn(init_params: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
                 seed: int = 0) -> Callable[[], TrainState]:
  """`() -> TrainState` (unjitted): what `create_train_state` jits with out_shardings."""

  def init_fn() -> TrainState:
    root = jax.random.key(seed)
    params = nn.unbox(init_params(jax.random.fold_in(root, 0)))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      rng=jax.random.key_data(jax.random.fold_in(root, 1)))

  return init_fn
