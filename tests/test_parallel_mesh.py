"""Mesh construction, the rules table, shard fitting, batch placement, distributed config."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from qmath_jax import parallel
from qmath_jax.parallel import distributed, mesh as mesh_lib, rules


@pytest.mark.parametrize("shape,expected", [((-1, 1, 1), (8, 1, 1)), ((1, -1, 1), (1, 8, 1)),
                                            ((2, 2, -1), (2, 2, 2)), ((1, 2, 4), (1, 2, 4))])
def test_make_mesh_resolves_the_rest_and_uses_auto_axes(shape, expected):
  mesh = parallel.make_mesh(shape)
  assert tuple(mesh.shape.values()) == expected
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  assert mesh.devices.size == 8


@pytest.mark.parametrize("shape,message", [
    ((3, -1, 1), "do not divide the 8 devices"),
    ((2, 2, 1), "has 4 devices but 8 are available"),
    ((-1, -1, 1), "at most one dimension may be -1"),
    ((0, 8, 1), "positive or -1"),
    ((8, 1), "2 dimensions"),
])
def test_make_mesh_rejects_shapes_that_do_not_cover_the_devices(shape, message):
  with pytest.raises(ValueError, match=message):
    parallel.make_mesh(shape)


def test_rules_table_maps_logical_axes_as_designed():
  table = dict(rules.LOGICAL_AXIS_RULES)
  assert table["batch"] == ("data", "fsdp")
  assert table["embed"] == "fsdp"
  for name in ("heads", "kv_heads", "mlp", "vocab"):
    assert table[name] == "tensor"
  for name in ("length", "head_dim", "layers"):
    assert table[name] is None
  # Activations: batch takes fsdp, so embed is left whole rather than using fsdp twice.
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules.LOGICAL_AXIS_RULES) == P(
      ("data", "fsdp"), None, None)


def test_kv_heads_that_do_not_divide_the_tensor_axis_are_replicated():
  mesh = parallel.make_mesh((1, 2, 4))
  # 1.5B's k kernel: [embed=1536, kv_heads=2, head_dim=128]; tensor=4 does not divide 2.
  sharding = parallel.logical_sharding(("embed", "kv_heads", "head_dim"), (1536, 2, 128), mesh)
  assert sharding.spec == P("fsdp")
  # q kernel: 12 heads divide by 4.
  sharding = parallel.logical_sharding(("embed", "heads", "head_dim"), (1536, 12, 128), mesh)
  assert sharding.spec == P("fsdp", "tensor")
  assert sharding.shard_shape((1536, 12, 128)) == (768, 3, 128)


def test_fit_spec_keeps_divisible_multi_axis_entries():
  mesh = parallel.make_mesh((2, 2, 2))
  assert rules.fit_spec_to_shape(P(("data", "fsdp"), "tensor"), (8, 3), mesh) == P(
      ("data", "fsdp"))
  assert rules.fit_spec_to_shape(P(("data", "fsdp"), "tensor"), (6, 4), mesh) == P(
      None, "tensor")


def test_tree_shardings_follow_boxed_names_and_replicate_plain_leaves():
  mesh = parallel.make_mesh((1, 2, 4))

  class Toy(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param("w", nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")),
                     (8, 16))
      b = self.param("b", nn.initializers.zeros, (16,))
      return x @ w + b

  abstract = jax.eval_shape(Toy().init, jax.random.key(0), np.zeros((1, 8), np.float32))
  shardings = parallel.tree_shardings(abstract["params"], mesh)
  assert shardings["w"].spec == P("fsdp", "tensor")
  assert shardings["b"].spec == P()


def test_batch_size_must_divide_over_data_and_fsdp():
  mesh = parallel.make_mesh((2, 2, 2))
  parallel.check_batch_size(8, mesh, num_microbatches=2)
  with pytest.raises(ValueError, match=r"batch size 6 is not divisible by data x fsdp = 4"):
    parallel.check_batch_size(6, mesh)
  with pytest.raises(ValueError, match="num_microbatches = 2"):
    parallel.check_batch_size(4, mesh, num_microbatches=2)


def test_shard_batch_places_rows_over_data_and_fsdp():
  mesh = parallel.make_mesh((2, 2, 2))
  tokens = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
  batch = parallel.shard_batch({"tokens": tokens}, mesh)
  array = batch["tokens"]
  np.testing.assert_array_equal(np.asarray(array), tokens)
  assert array.sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in array.addressable_shards} == {(2, 3)}
  # Single process: this host loads every row.
  np.testing.assert_array_equal(parallel.local_rows(8, mesh), np.arange(8))


def test_shard_batch_rejects_mismatched_leading_dims():
  mesh = parallel.make_mesh((8, 1, 1))
  with pytest.raises(ValueError, match="leading"):
    parallel.shard_batch({"a": np.zeros((8, 2)), "b": np.zeros((4, 2))}, mesh)
  with pytest.raises(ValueError, match="not divisible"):
    parallel.shard_batch({"a": np.zeros((4, 2))}, mesh)


def _clear_cluster_env(monkeypatch):
  for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
               distributed.ENV_PROCESS_ID, "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS"):
    monkeypatch.delenv(name, raising=False)


def test_distributed_initialize_single_process_and_partial_config(monkeypatch):
  _clear_cluster_env(monkeypatch)
  assert distributed.initialize() is False
  monkeypatch.setenv(distributed.ENV_COORDINATOR, "localhost:1234")
  with pytest.raises(ValueError, match="missing"):
    distributed.initialize()
  with pytest.raises(ValueError, match="outside"):
    distributed.initialize(num_processes=2, process_id=2)
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
  with pytest.raises(ValueError, match="QMATH_NUM_PROCESSES"):
    distributed.initialize()


def test_distributed_initialize_on_a_tpu_pod_uses_jax_cluster_detection(monkeypatch):
  """A TPU pod cannot run here: jax.distributed.initialize is replaced by a recorder."""
  _clear_cluster_env(monkeypatch)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(distributed, "_initialized", False)
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1v-0")  # one host: single process
  assert distributed.initialize() is False and not calls
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1v-0,t1v-1,t1v-2,t1v-3")
  assert distributed.initialize() is True
  assert calls == [{"initialization_timeout": 300}]  # no address: JAX reads the pod
  assert distributed.initialize() is True and len(calls) == 1  # once only


def test_distributed_initialize_from_environment(monkeypatch):
  _clear_cluster_env(monkeypatch)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(distributed, "_initialized", False)
  monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
  monkeypatch.setenv(distributed.ENV_COORDINATOR, "10.0.0.1:8476")
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "4")
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, "3")
  assert distributed.initialize() is True
  assert calls[-1] == {"coordinator_address": "10.0.0.1:8476", "num_processes": 4,
                       "process_id": 3, "initialization_timeout": 300}
  assert ("jax_cpu_collectives_implementation", "gloo") in calls


def test_batch_shards():
  assert mesh_lib.batch_shards(parallel.make_mesh((2, 2, 2))) == 4
  assert mesh_lib.batch_shards(parallel.make_mesh((1, 2, 4))) == 2
