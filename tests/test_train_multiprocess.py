"""Two processes on localhost (jax.distributed, gloo CPU collectives, 4 devices each) train the
same SFT steps with the same losses as one process with 8 devices.

Run as a script, this file is one worker: `python test_train_multiprocess.py PORT PROCESS_ID`.
"""

import json
import sys

import numpy as np
import pytest
from conftest import run_local_workers

MESH_SHAPE = (2, 2, 2)
GLOBAL_BATCH, LENGTH, STEPS = 8, 16, 3
WORKER_TIMEOUT_S = 300


def train_losses() -> list[float]:
  """SFT steps on MESH_SHAPE over every process's devices; each process feeds its own rows."""
  # Imported here: a worker must join jax.distributed before JAX touches its devices.
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from qmath_jax import parallel
  from qmath_jax.model import presets
  from qmath_jax.model.transformer import Transformer
  from qmath_jax.train import losses, optimizer as optimizer_lib
  from qmath_jax.train import state as state_lib, step as step_lib
  # pylint: enable=g-import-not-at-top

  cfg = presets.get_config("tiny", vocab_size=64, hidden_size=32, head_dim=8,
                           intermediate_size=64)
  model = Transformer(cfg)
  optimizer, schedule = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      peak_lr=1e-2, warmup_steps=0, total_steps=10))
  mesh = parallel.make_mesh(MESH_SHAPE)
  init = lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
  state, shardings = state_lib.create_train_state(init, optimizer, mesh, seed=0)
  train_step = step_lib.make_train_step(losses.get_loss("sft", model), optimizer, mesh=mesh,
                                        state_shardings=shardings, learning_rate_fn=schedule)
  rng = np.random.default_rng(0)
  rows = parallel.local_rows(GLOBAL_BATCH, mesh)
  out = []
  for _ in range(STEPS):
    tokens = rng.integers(0, cfg.vocab_size, (GLOBAL_BATCH, LENGTH)).astype(np.int32)
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, GLOBAL_BATCH)
    segment_ids = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
    loss_mask = segment_ids * (np.arange(LENGTH)[None] >= 4)
    global_batch = {"tokens": tokens, "segment_ids": segment_ids, "loss_mask": loss_mask,
                    "positions": np.broadcast_to(np.arange(LENGTH, dtype=np.int32),
                                                 tokens.shape).copy()}
    local = {k: v[rows] for k, v in global_batch.items()}  # only this host's rows
    state, metrics = train_step(state, parallel.shard_batch(local, mesh, GLOBAL_BATCH))
    out.append(float(metrics["loss"].addressable_shards[0].data))
  return out


@pytest.mark.slow  # three JAX start-ups and compiles: ~80 s on two shared cores
def test_two_processes_match_one_process():
  results = run_local_workers(__file__, timeout_s=WORKER_TIMEOUT_S)
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.process_count() == 1 and jax.device_count() == 8
  single = train_losses()
  rows = [set(r["rows"]) for r in results]
  assert rows[0].isdisjoint(rows[1]) and rows[0] | rows[1] == set(range(GLOBAL_BATCH))
  for result in results:
    assert result["process_count"] == 2 and result["device_count"] == 8
    assert result["local_device_count"] == 4
    np.testing.assert_allclose(result["losses"], single, rtol=1e-5)
  assert single[-1] != single[0]


def _worker(port: int, process_id: int) -> None:
  from qmath_jax import parallel  # pylint: disable=g-import-not-at-top
  assert parallel.initialize_distributed(f"localhost:{port}", 2, process_id, timeout_s=120)
  import jax  # pylint: disable=g-import-not-at-top
  losses = train_losses()
  rows = parallel.local_rows(GLOBAL_BATCH, parallel.make_mesh(MESH_SHAPE)).tolist()
  print(json.dumps({"losses": losses, "rows": rows, "process_count": jax.process_count(),
                    "device_count": jax.device_count(),
                    "local_device_count": jax.local_device_count()}))
  jax.distributed.shutdown()


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]))
