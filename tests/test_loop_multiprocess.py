"""Two processes (jax.distributed on localhost, 4 CPU devices each) whose hosts disagree stop
the loop at the same step: one host's data shard ends a batch early, or only one host gets
SIGTERM. Without agreement the other host waits forever in the next step's collectives.

Run as a script, this file is one worker: `python test_loop_multiprocess.py PORT PROCESS_ID
WORKDIR`.
"""

import json
import os
import signal
import sys

import pytest
from conftest import run_local_workers

MESH_SHAPE = (2, 2, 2)
GLOBAL_BATCH, LENGTH = 8, 16
WORKER_TIMEOUT_S = 240


def _run(workdir: str, batches_per_process: tuple[int, int], signal_step: int | None) -> dict:
  """Trains the tiny model through `loop.train`; process p's data shard holds
  `batches_per_process[p]` batches, and process 0 sends itself SIGTERM as it puts the batch of
  step `signal_step` on the devices (none when None). Returns the outcome and the checkpointed
  step."""
  # Imported here: a worker must join jax.distributed before JAX touches its devices.
  # pylint: disable=g-import-not-at-top
  import grain
  import jax
  import numpy as np
  from qmath_jax import parallel
  from qmath_jax.model import presets, transformer
  from qmath_jax.train import checkpoint as checkpoint_lib
  from qmath_jax.train import loop, losses, optimizer as optimizer_lib
  from qmath_jax.train import state as state_lib, step as step_lib
  # pylint: enable=g-import-not-at-top

  cfg = presets.get_config("tiny", vocab_size=64, hidden_size=32, head_dim=8,
                           intermediate_size=64)
  optimizer, schedule = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      peak_lr=1e-2, warmup_steps=0, total_steps=10))
  mesh = parallel.make_mesh(MESH_SHAPE)
  init_state, shardings = state_lib.sharded_init(
      lambda rng: transformer.init_params(cfg, rng, boxed=True), optimizer, mesh, 0)
  train_step = step_lib.make_train_step(
      losses.get_loss("lm", transformer.Transformer(cfg)), optimizer, mesh=mesh,
      state_shardings=shardings, learning_rate_fn=schedule)
  rows = parallel.local_rows(GLOBAL_BATCH, mesh)
  process = jax.process_index()

  class Batch(grain.transforms.Map):
    def map(self, index):
      tokens = np.random.default_rng(index).integers(1, cfg.vocab_size, (GLOBAL_BATCH, LENGTH))
      return {"tokens": tokens[rows].astype(np.int32),
              "segment_ids": np.ones((len(rows), LENGTH), np.int32)}

  def make_train_iter():
    count = batches_per_process[process]
    return iter(grain.MapDataset.range(count).map(Batch()).to_iter_dataset())

  put = []

  def put_batch(batch):
    put.append(1)
    if process == 0 and len(put) == signal_step:
      os.kill(os.getpid(), signal.SIGTERM)
    return parallel.shard_batch(batch, mesh, GLOBAL_BATCH)

  parts = loop.TrainParts(
      mesh=mesh, init_state=init_state, state_shardings=shardings, train_step=train_step,
      make_train_iter=make_train_iter, put_batch=put_batch)
  options = loop.LoopOptions(total_steps=10, log_every=1, checkpoint_every=100,
                             async_save=False, show_progress=False)
  outcome = loop.train(parts, options, workdir)
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR))
  saved = checkpointer.latest_step()
  checkpointer.close()
  return {"step": outcome.step, "preempted": outcome.preempted, "saved": saved}


@pytest.mark.slow  # two JAX start-ups and compiles: about a minute on two shared cores
def test_processes_stop_together_when_their_data_or_signals_differ(tmp_path):
  results = run_local_workers(__file__, str(tmp_path), timeout_s=WORKER_TIMEOUT_S)
  for result in results:
    assert result["process_count"] == 2
    # Process 1's shard ends after 3 batches, process 0's after 5: both train 3 steps.
    assert result["uneven_data"] == {"step": 3, "preempted": False, "saved": 3}
    # Only process 0 is signalled (as step 3 starts): both finish step 3, save it and stop.
    assert result["one_signal"] == {"step": 3, "preempted": True, "saved": 3}


def _worker(port: int, process_id: int, workdir: str) -> None:
  from qmath_jax import parallel  # pylint: disable=g-import-not-at-top
  assert parallel.initialize_distributed(f"localhost:{port}", 2, process_id, timeout_s=120)
  import jax  # pylint: disable=g-import-not-at-top
  uneven = _run(os.path.join(workdir, "uneven"), (5, 3), signal_step=None)
  one_signal = _run(os.path.join(workdir, "signal"), (6, 6), signal_step=3)
  print(json.dumps({"process_count": jax.process_count(), "uneven_data": uneven,
                    "one_signal": one_signal}))
  jax.distributed.shutdown()


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
