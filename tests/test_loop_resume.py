"""The loop's guarantees: exact resume after SIGKILL, SIGTERM saves and exits 0, NaN stops.

The loop trains the tiny Transformer with the real sharded init and train step on a grain
pipeline of random token rows. This file is also the child program of the subprocess tests:
`python tests/test_loop_resume.py WORKDIR STEPS SLEEP_S`.
"""

import dataclasses
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time

import grain
import jax
import numpy as np
import pytest

from qmath_jax.model import presets
from qmath_jax.model import transformer
from qmath_jax.parallel import batch as batch_lib
from qmath_jax.parallel import mesh as mesh_lib
from qmath_jax.train import checkpoint as checkpoint_lib
from qmath_jax.train import flops as flops_lib
from qmath_jax.train import loop
from qmath_jax.train import losses
from qmath_jax.train import metrics_writer
from qmath_jax.train import optimizer as optimizer_lib
from qmath_jax.train import state as state_lib
from qmath_jax.train import step as step_lib

BATCH, LENGTH = 8, 16


class _Rows(grain.transforms.Map):
  """Random token rows keyed by example index; sleeps per row when asked (so a test can kill
  a run mid-way)."""

  def __init__(self, sleep_s=0.0):
    self.sleep_s = sleep_s

  def map(self, index):
    if self.sleep_s:
      time.sleep(self.sleep_s)
    rows = np.random.default_rng(int(index)).integers(1, 256, size=LENGTH, dtype=np.int32)
    return {"tokens": rows, "segment_ids": np.ones(LENGTH, np.int32)}


@functools.cache  # One compile per pytest process: parts hold no run state.
def make_parts(mesh_shape=(2, 2, 2), lr=3e-3, sleep_s=0.0, seed=0):
  """The tiny Transformer under the real sharded init and train step, on random token rows."""
  mesh = mesh_lib.make_mesh(mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
  model_cfg = presets.get_config("tiny")
  optimizer, schedule = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      peak_lr=lr, end_lr=lr / 10, warmup_steps=2, total_steps=50))
  init_state, shardings = state_lib.sharded_init(
      lambda rng: transformer.init_params(model_cfg, rng, boxed=True), optimizer, mesh, seed)
  train_step = step_lib.make_train_step(
      losses.get_loss("lm", transformer.Transformer(model_cfg)), optimizer, mesh=mesh,
      state_shardings=shardings, learning_rate_fn=schedule)

  def make_train_iter():
    dataset = (grain.MapDataset.range(10_000).shuffle(seed=seed).map(_Rows(sleep_s))
               .batch(BATCH))
    return iter(dataset.to_iter_dataset())

  return loop.TrainParts(
      mesh=mesh, init_state=init_state, state_shardings=shardings, train_step=train_step,
      make_train_iter=make_train_iter, put_batch=lambda b: batch_lib.shard_batch(b, mesh),
      flops_per_token=flops_lib.train_flops_per_token(model_cfg, LENGTH))


def logged_losses(workdir):
  return [(row["step"], row["loss"]) for row in metrics_writer.read_metrics(workdir)
          if "loss" in row]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def child_env(tmp_path_factory):
  """Environment of the training children: the repo importable, and one persistent compile
  cache shared by this module's children (the second child loads the step instead of
  compiling it again)."""
  paths = [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  return dict(os.environ, PYTHONPATH=os.pathsep.join(paths),
              JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("compile_cache")),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _child(env, workdir, steps, sleep_s):
  """Starts this file as a training child (inherits the conftest's 8 CPU devices)."""
  return subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(workdir), str(steps), str(sleep_s)],
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(predicate, proc, timeout_s, what):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"child exited with {proc.returncode} before {what}: "
                           f"{proc.stderr.read().decode()[-2000:]}")
    time.sleep(0.05)
  raise AssertionError(f"timed out waiting for {what}")


def _checkpoint_steps(workdir):
  directory = os.path.join(workdir, loop.CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


OPTIONS = dict(log_every=1, checkpoint_every=2, show_progress=False)


def test_sigkill_then_resume_matches_straight_run(tmp_path, child_env):
  steps = 8
  straight = loop.train(make_parts(), loop.LoopOptions(total_steps=steps, **OPTIONS),
                        tmp_path / "straight")
  killed_dir = str(tmp_path / "killed")
  proc = _child(child_env, killed_dir, steps, 0.04)
  try:
    _wait_for(lambda: 4 in _checkpoint_steps(killed_dir), proc, 90, "checkpoint 4")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  reached = max(s for s, _ in logged_losses(killed_dir))
  assert reached < steps, "the child finished before it was killed; the test proved nothing"

  resumed = loop.train(make_parts(), loop.LoopOptions(total_steps=steps, **OPTIONS), killed_dir)
  assert resumed.step == steps
  # Bitwise: JSON writes the shortest repr that reads back to the same float.
  assert logged_losses(killed_dir) == logged_losses(tmp_path / "straight")
  assert [s for s, _ in logged_losses(killed_dir)] == list(range(1, steps + 1))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               straight.state.params, resumed.state.params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               straight.state.opt_state, resumed.state.opt_state)


def test_sigterm_saves_reached_step_and_exits_zero(tmp_path, child_env):
  workdir = str(tmp_path / "run")
  proc = _child(child_env, workdir, 1000, 0.05)
  try:
    metrics_path = os.path.join(workdir, metrics_writer.METRICS_FILE)
    _wait_for(lambda: os.path.exists(metrics_path) and len(logged_losses(workdir)) >= 3,
              proc, 120, "three logged steps")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
  last_logged = max(s for s, _ in logged_losses(workdir))
  assert 3 <= last_logged < 1000
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR))
  assert checkpointer.latest_step() == last_logged
  checkpointer.close()


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  parts = make_parts(lr=1e30)  # Diverges within a few steps.
  pattern = r"(is (nan|inf|not finite) at|after) step \d+"
  with pytest.raises(loop.NonFiniteLossError, match=pattern) as e:
    loop.train(parts, loop.LoopOptions(total_steps=50, log_every=1, checkpoint_every=1,
                                       show_progress=False), tmp_path)
  bad_step = int(re.search(r"step (\d+)", str(e.value)).group(1))
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / loop.CHECKPOINT_DIR)
  kept = checkpointer.latest_step()
  abstract = checkpoint_lib.abstract_with_shardings(jax.eval_shape(parts.init_state),
                                                    parts.state_shardings)
  state, _, _ = checkpointer.restore(kept, abstract)
  checkpointer.close()
  assert kept == bad_step - 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  # No NaN row was written as if it were a result.
  assert all(np.isfinite(v) for _, v in logged_losses(tmp_path))


def test_metrics_rows_and_eval_hook_best_checkpoint(tmp_path):
  evals = {2: 3.0, 4: 1.0, 6: 2.0, 8: 5.0}
  parts = dataclasses.replace(make_parts(), eval_hooks=[
      loop.EvalHook(every=2, fn=lambda state, step: {"score": evals[step]})])
  loop.train(parts, loop.LoopOptions(total_steps=8, log_every=4, checkpoint_every=2,
                                     keep_last=1, best_metric="eval/score", best_mode="min",
                                     show_progress=False), tmp_path)
  rows = metrics_writer.read_metrics(tmp_path)
  assert [r["step"] for r in rows if "loss" in r] == [4, 8]
  assert all(r["tokens_per_sec_per_device"] > 0 and r["tflops_per_device"] > 0
             for r in rows if "loss" in r)
  assert {r["step"]: r["eval/score"] for r in rows if "eval/score" in r} == evals
  assert _checkpoint_steps(str(tmp_path)) == [4, 8]  # Best (step 4) and last (step 8).
  assert os.listdir(tmp_path / metrics_writer.TENSORBOARD_DIR)


if __name__ == "__main__":
  workdir_arg, steps_arg, sleep_arg = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
  outcome = loop.train(make_parts(sleep_s=sleep_arg),
                       loop.LoopOptions(total_steps=steps_arg, **OPTIONS), workdir_arg)
  print(json.dumps({"step": outcome.step, "preempted": outcome.preempted}))
