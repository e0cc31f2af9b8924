"""Global batches from per-host data: each process loads only the rows its devices hold.

A global batch `[global_batch, ...]` is split over ('data', 'fsdp'). `local_rows` says which
rows of the global batch this process must load; `shard_batch` assembles the global jax.Array
from those local rows without any host ever holding the whole batch. `host_array_on_mesh` is
the other case: an array every process holds whole and alike (the prompts every process samples).
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from qmath_jax.parallel import mesh as mesh_lib
from qmath_jax.parallel import rules


def check_batch_size(global_batch: int, mesh: Mesh, num_microbatches: int = 1,
                     name: str = "batch") -> None:
  """Raises ValueError unless `global_batch` splits evenly into microbatches and shards.

  Each of the `num_microbatches` microbatches must itself divide over data x fsdp.
  """
  shards = mesh_lib.batch_shards(mesh)
  if num_microbatches < 1:
    raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
  if global_batch % (shards * num_microbatches):
    raise ValueError(
        f"{name} size {global_batch} is not divisible by data x fsdp = {shards} (mesh "
        f"{dict(mesh.shape)}) times num_microbatches = {num_microbatches}")


def local_rows(global_batch: int, mesh: Mesh) -> np.ndarray:
  """Sorted indices of the global-batch rows held by this process's devices.

  Args:
    global_batch: rows in the global batch.
    mesh: the mesh the batch is sharded over.

  Returns:
    int64 `[global_batch // process_count]` row indices (one contiguous block per device).
  """
  check_batch_size(global_batch, mesh)
  index_map = rules.batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  rows = set()
  for (index,) in index_map.values():
    rows.update(range(*index.indices(global_batch)))
  return np.array(sorted(rows), dtype=np.int64)


def shard_batch(local_batch: Any, mesh: Mesh, global_batch: int | None = None) -> Any:
  """Turns this process's rows into global arrays sharded over ('data', 'fsdp').

  Args:
    local_batch: tree of host arrays `[local_rows, ...]`: the rows `local_rows(...)` names, in
      that order. In a single-process run, the whole batch.
    mesh: target mesh.
    global_batch: rows of the global batch; default local rows x process count.

  Returns:
    The same tree of `jax.Array`s with leading dimension `global_batch`.
  """
  leaves = jax.tree.leaves(local_batch)
  if not leaves:
    raise ValueError("shard_batch got an empty batch")
  local = {np.shape(x)[0] for x in leaves}
  if len(local) != 1:
    shapes = jax.tree.map(np.shape, local_batch)
    raise ValueError(f"batch arrays disagree on the leading (batch) dimension: {shapes}")
  (local,) = local
  if global_batch is None:
    global_batch = local * jax.process_count()
  check_batch_size(global_batch, mesh)
  expected = len(local_rows(global_batch, mesh))
  if local != expected:
    raise ValueError(f"this process holds {local} rows but its devices take {expected} of the "
                     f"global batch of {global_batch}")
  sharding = rules.batch_sharding(mesh)

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (global_batch,) + x.shape[1:])

  return jax.tree.map(one, local_batch)


def host_array_on_mesh(x: np.ndarray, mesh: Mesh | None):
  """`x`, which every process holds whole and alike, as a global array on `mesh`.

  Rows are split over ('data', 'fsdp'). Each process fills only its own devices' shards from
  its copy, so a mesh spanning several processes needs no transfer between them (and no check
  that the copies agree). Without a mesh, `x` itself.
  """
  if mesh is None:
    return x
  x = np.asarray(x)
  return jax.make_array_from_process_local_data(rules.batch_sharding(mesh), x, x.shape)
