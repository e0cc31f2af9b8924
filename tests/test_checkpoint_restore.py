"""Checkpoints: restore onto other meshes, survive SIGKILL mid-save, keep the data position.

This file is also the child program of the kill test: `python tests/test_checkpoint_restore.py
DIR` saves step 1, starts an async save of step 2 and SIGKILLs itself while it is written.
"""

import json
import os
import signal
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax.model import presets
from qmath_jax.model import transformer
from qmath_jax.parallel import mesh as mesh_lib
from qmath_jax.train import checkpoint as checkpoint_lib
from qmath_jax.train import optimizer as optimizer_lib
from qmath_jax.train import state as state_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state_and_shardings(mesh_shape, seed=0):
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = mesh_lib.make_mesh(mesh_shape, devices=devices)
  cfg = presets.get_config("tiny")
  optimizer, _ = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig())
  init_state, shardings = state_lib.sharded_init(
      lambda rng: transformer.init_params(cfg, rng, boxed=True), optimizer, mesh, seed)
  return init_state, shardings


def _assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_saved_on_2x2x2_restores_on_8x1x1_and_one_device(tmp_path):
  init_state, shardings = _state_and_shardings((2, 2, 2))
  state = init_state()
  state = state.replace(step=jnp.int32(7), params=jax.tree.map(lambda x: x + 0.5, state.params))
  embedding = state.params["embedding"]
  assert embedding.sharding.shard_shape(embedding.shape) != embedding.shape  # really sharded
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, keep_last=1)
  checkpointer.save(7, state, meta={"note": "2x2x2"})
  checkpointer.wait()

  for mesh_shape in ((8, 1, 1), (1, 1, 1)):
    init_other, other_shardings = _state_and_shardings(mesh_shape)
    abstract = checkpoint_lib.abstract_with_shardings(jax.eval_shape(init_other),
                                                      other_shardings)
    restored, _, meta = checkpointer.restore(None, abstract)
    assert meta == {"note": "2x2x2", "step": 7}
    assert int(restored.step) == 7
    _assert_trees_equal(restored.params, state.params)
    _assert_trees_equal(restored.opt_state, state.opt_state)
    for leaf, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(other_shardings)):
      assert leaf.sharding == sharding
      assert len(leaf.sharding.device_set) == int(np.prod(mesh_shape))
  checkpointer.close()


def test_params_only_restore_and_data_position(tmp_path):
  init_state, shardings = _state_and_shardings((2, 2, 2))
  state = init_state()
  data = iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())
  next(data), next(data)
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, keep_last=2)
  checkpointer.save(2, state, data)
  checkpointer.close()
  expected_next = next(data)

  fresh = iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, keep_last=2)
  abstract = checkpoint_lib.abstract_with_shardings(jax.eval_shape(init_state), shardings)
  _, fresh, _ = checkpointer.restore(2, abstract, fresh)
  checkpointer.close()
  np.testing.assert_array_equal(next(fresh), expected_next)

  _, one_device = _state_and_shardings((1, 1, 1))
  abstract_params = checkpoint_lib.abstract_with_shardings(
      jax.eval_shape(init_state).params, one_device.params)
  params = checkpoint_lib.restore_params(tmp_path, abstract_params)
  _assert_trees_equal(params, state.params)


def test_sigkill_during_async_save_keeps_previous_checkpoint(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path)], env=env,
                        capture_output=True, timeout=240)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
  report = json.loads((tmp_path / "report.json").read_text())
  # The kill landed while step 2 was being written: no finished step-2 directory yet.
  assert report["step_2_finished_before_kill"] is False

  checkpointer = checkpoint_lib.Checkpointer(tmp_path / "ckpt", keep_last=3)
  assert checkpointer.latest_step() == 1  # The half-written step 2 is not taken for a step.
  abstract = jax.eval_shape(_big_state, 1)
  replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpoint_lib.abstract_with_shardings(
      abstract, jax.tree.map(lambda _: replicated, abstract))
  restored, _, meta = checkpointer.restore(1, abstract)
  _assert_trees_equal(restored, _big_state(1))
  assert meta["step"] == 1
  # The interrupted step can be written again afterwards.
  checkpointer.save(2, _big_state(2))
  checkpointer.wait()
  assert checkpointer.all_steps() == [1, 2]
  checkpointer.close()


def test_best_step_survives_a_restart_and_ignores_other_metrics(tmp_path):
  def checkpointer():
    return checkpoint_lib.Checkpointer(tmp_path, keep_last=1, best_metric="eval/loss",
                                       best_mode="min", async_save=False)

  first = checkpointer()
  for step, metrics in ((1, {"eval/loss": 3.0}), (2, {"eval/loss": 1.0}),
                        (3, {"eval/loss": 2.0}), (4, {"eval/other": 0.0}), (5, None)):
    first.save(step, {"x": jnp.full((2,), step, jnp.float32)}, metrics=metrics)
  assert first.all_steps() == [2, 5]  # the best and the last
  assert first.best_step() == 2
  first.close()

  resumed = checkpointer()  # a restarted run reads the ranking back from disk
  assert resumed.best_step() == 2
  resumed.save(6, {"x": jnp.full((2,), 6, jnp.float32)}, metrics={"eval/loss": 4.0})
  assert resumed.all_steps() == [2, 6]
  abstract = {"x": jax.ShapeDtypeStruct((2,), jnp.float32,
                                        sharding=jax.sharding.SingleDeviceSharding(
                                            jax.devices()[0]))}
  restored, _, _ = resumed.restore(resumed.best_step(), abstract)
  np.testing.assert_array_equal(restored["x"], [2.0, 2.0])
  resumed.close()


def _big_state(value):
  """About 96 MB of float32, so writing it takes long enough to be interrupted."""
  return {"w": jnp.full((3, 2048, 4096), value, jnp.float32), "step": jnp.int32(value)}


def _kill_during_save(directory):
  directory = os.path.abspath(directory)
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(directory, "ckpt"), keep_last=3)
  checkpointer.save(1, _big_state(1))
  checkpointer.wait()
  checkpointer.save(2, _big_state(2))  # returns once the write has started in the background
  report = {"step_2_finished_before_kill": os.path.isdir(os.path.join(directory, "ckpt", "2"))}
  with open(os.path.join(directory, "report.json"), "w") as f:
    json.dump(report, f)
  os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
  _kill_during_save(sys.argv[1])


def test_reading_the_meta_of_a_step_that_has_none_names_the_step(tmp_path):
  (tmp_path / "1").mkdir()  # e.g. copied by hand, or another program's checkpoint
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, async_save=False)
  with pytest.raises(FileNotFoundError, match=r"/1: no 'meta' item"):
    checkpointer.read_meta()
  checkpointer.close()
