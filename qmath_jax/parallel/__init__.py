"""Mesh construction, the logical-axis rules table, batch sharding, multi-host start-up and the
host-side rules of a multi-process run (one writer, barriers, broadcasts)."""

from qmath_jax.parallel.batch import (check_batch_size, host_array_on_mesh, local_rows,
                                      shard_batch)
from qmath_jax.parallel.distributed import initialize as initialize_distributed
from qmath_jax.parallel.hosts import (all_processes, barrier, broadcast_object, is_writer,
                                      on_writer, write_once)
from qmath_jax.parallel.mesh import AXIS_NAMES, BATCH_AXES, batch_shards, make_mesh
from qmath_jax.parallel.rules import (LOGICAL_AXIS_RULES, batch_sharding, fit_spec_to_shape,
                                      logical_sharding, on_mesh, onto_mesh, replicated,
                                      tree_shardings)
