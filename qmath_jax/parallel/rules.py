"""The one table of logical-axis rules, and shardings derived from it.

Model parameters and activations name their dimensions with logical axes (`embed`, `heads`,
...). This table maps each logical axis to mesh axes. A logical axis missing from the table is
replicated. Flax applies the rules in order and never uses one mesh axis twice in a spec, so an
activation `[batch, length, embed]` keeps `fsdp` for the batch and leaves `embed` whole.
"""

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from qmath_jax.parallel import mesh as mesh_lib

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Logical axis -> mesh axes. Parameters: `embed` rows over fsdp, the per-layer widths over
# tensor. Activations: `batch` over data and fsdp; sequence and head_dim whole.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", mesh_lib.BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)


def replicated(mesh: Mesh) -> NamedSharding:
  """A sharding that keeps a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def onto_mesh(tree: Any, mesh: Mesh) -> Any:
  """`tree` with every array that is not laid out over exactly `mesh`'s devices (e.g. the
  one-device params of `hf.load_hf`, or numpy arrays) copied whole onto each of them.

  Arrays already on the mesh's devices keep their sharding. jit takes no mix of arrays
  committed to different device sets, so a function jitted for `mesh` needs this for inputs
  made elsewhere. On a mesh spanning several processes each process copies its own host value.
  """
  devices = set(mesh.devices.flat)

  def one(x):
    if isinstance(x, jax.Array) and (x.sharding.device_set == devices
                                     or not x.is_fully_addressable):
      return x  # on the mesh, or another process's data: left for jit to place or reject
    return jax.device_put(np.asarray(x), replicated(mesh))

  return jax.tree.map(one, tree)


def _axis_size(mesh: Mesh, entry) -> int:
  if entry is None:
    return 1
  names = entry if isinstance(entry, tuple) else (entry,)
  return int(np.prod([mesh.shape[n] for n in names]))


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops the mesh axes of every dimension that they do not divide evenly.

  Qwen2.5-Math-1.5B has 2 kv heads: on a tensor axis of 4 its k/v kernels stay whole along
  `kv_heads` (replicated over tensor) instead of failing. Other dimensions keep their split.

  Args:
    spec: mesh partition spec, at most one entry per dimension of `shape`.
    shape: the array shape.
    mesh: the mesh whose axis sizes apply.

  Returns:
    A spec whose every entry divides its dimension.
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fitted = [e if dim % _axis_size(mesh, e) == 0 else None for e, dim in zip(entries, shape)]
  while fitted and fitted[-1] is None:
    fitted.pop()
  return PartitionSpec(*fitted)


def logical_sharding(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                     rules: LogicalRules = LOGICAL_AXIS_RULES) -> NamedSharding:
  """NamedSharding for one array whose dimensions carry `logical_axes`.

  Args:
    logical_axes: one logical name (or None) per dimension, e.g. ('embed', 'kv_heads',
      'head_dim') for a k kernel `[embed, kv_heads, head_dim]`.
    shape: the array's shape; dimensions a mesh axis does not divide are replicated.
    mesh: target mesh.
    rules: logical-axis rules.
  """
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
  return NamedSharding(mesh, fit_spec_to_shape(spec, shape, mesh))


def tree_shardings(abstract_tree: Any, mesh: Mesh,
                   rules: LogicalRules = LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for a tree of (possibly `nn.LogicallyPartitioned`-boxed) arrays.

  Args:
    abstract_tree: e.g. `jax.eval_shape(model.init, rng, tokens)['params']`: boxed leaves
      get their logical names mapped through `rules`; plain leaves are replicated.
    mesh: target mesh.
    rules: logical-axis rules.

  Returns:
    A tree with the structure of `nn.unbox(abstract_tree)` holding one NamedSharding per
    leaf, each fitted to the leaf's shape (see `fit_spec_to_shape`).
  """
  logical_specs = nn.get_partition_spec(abstract_tree)
  shapes = nn.unbox(abstract_tree)

  def one(spec, leaf):
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if len(spec) else PartitionSpec()
    return NamedSharding(mesh, fit_spec_to_shape(mesh_spec, np.shape(leaf), mesh))

  return jax.tree.map(one, logical_specs, shapes,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of batch arrays: leading dimension over ('data', 'fsdp'), the rest whole."""
  return NamedSharding(mesh, PartitionSpec(mesh_lib.BATCH_AXES))


@contextlib.contextmanager
def on_mesh(mesh: Mesh | None, rules: LogicalRules = LOGICAL_AXIS_RULES) -> Iterator[None]:
  """Runs (and traces) model code on `mesh` as the train step does: under `jax.set_mesh`, so
  Pallas attention runs per shard, and with `rules`, so the model's activation constraints
  shard by them instead of leaving XLA to reshard whole tensors. No-op without a mesh."""
  if mesh is None:
    yield
    return
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
