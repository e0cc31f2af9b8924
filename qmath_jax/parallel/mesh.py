"""Device meshes over the axes ('data', 'fsdp', 'tensor').

`data` replicates parameters and splits the batch; `fsdp` splits the batch and shards
parameters and optimizer state (ZeRO-3 style, gathered per layer by XLA); `tensor` splits heads,
MLP width and vocabulary inside each layer (Megatron style).
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXIS_NAMES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # mesh axes the batch dimension is split over


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces one -1 in `shape` by the rest of the devices; checks the product.

  Args:
    shape: mesh dimensions, e.g. (-1, 1, 1) or (2, 2, 2); at most one -1.
    num_devices: devices the mesh must cover exactly.

  Returns:
    The concrete shape, whose product equals `num_devices`.

  Raises:
    ValueError: more than one -1, a dimension < 1, or a shape that does not use exactly
      `num_devices` devices.
  """
  shape = tuple(int(d) for d in shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one dimension may be -1")
  if any(d < 1 and d != -1 for d in shape):
    raise ValueError(f"mesh shape {shape}: dimensions must be positive or -1")
  known = int(np.prod([d for d in shape if d != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
          f"mesh shape {shape}: the fixed dimensions (product {known}) do not divide the "
          f"{num_devices} devices")
    shape = tuple(num_devices // known if d == -1 else d for d in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(
        f"mesh shape {shape} has {int(np.prod(shape))} devices but {num_devices} are "
        "available; the mesh must use all of them (use -1 for 'the rest')")
  return shape


def make_mesh(shape: Sequence[int] = (-1, 1, 1),
              axis_names: Sequence[str] = AXIS_NAMES,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh with Auto axis types over all (or the given) devices.

  Args:
    shape: one size per axis name; -1 means the rest of the devices.
    axis_names: mesh axis names, by default ('data', 'fsdp', 'tensor').
    devices: devices to use; default `jax.devices()` (every process's devices).

  Returns:
    A `jax.sharding.Mesh` whose axes are all `AxisType.Auto`, so sharding follows the
    in/out shardings and constraints given to `jax.jit` (not explicit-sharding types).
  """
  if len(shape) != len(axis_names):
    raise ValueError(f"mesh shape {tuple(shape)} has {len(shape)} dimensions but axis names "
                     f"{tuple(axis_names)} has {len(axis_names)}")
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(shape, len(devices))
  return jax.make_mesh(shape, tuple(axis_names),
                       axis_types=(AxisType.Auto,) * len(axis_names), devices=devices)


def batch_shards(mesh: Mesh) -> int:
  """Number of ways the batch dimension is split: data x fsdp."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))
