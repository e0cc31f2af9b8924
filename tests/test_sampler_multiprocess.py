"""Two processes on localhost (jax.distributed, gloo CPU collectives, 4 devices each) sample on
one (data, fsdp, tensor) = (2, 2, 2) mesh: every process gets the same completions, equal to one
process with 8 devices on that mesh and to one device without a mesh; a call that differs between
the processes raises on both. A fast test checks in one process that what the host reads leaves
the jitted functions replicated.

Run as a script, this file is one worker: `python test_sampler_multiprocess.py PORT PROCESS_ID`.
"""

import json
import sys

import numpy as np
import pytest
from conftest import run_local_workers

MESH_SHAPE = (2, 2, 2)  # rows over both processes' devices, weights and KV heads over 'tensor'
PROMPTS = ["x=1+2", "abc def gh(", "7*8"]
STOP = "e"  # ends some rows before max_new_tokens, others run to the end
RUNS = {
    "greedy": dict(n=1, max_new_tokens=20, stop=[STOP]),
    "sampled": dict(n=4, temperature=1.3, top_p=0.9, max_new_tokens=20, stop=[STOP], seed=3),
    # After update_params with other (global) weights: the same compiled code, other tokens.
    "updated": dict(n=1, max_new_tokens=20, stop=[STOP]),
}
WORKER_TIMEOUT_S = 300


def make_sampler(mesh_shape: tuple[int, ...] | None):
  """(Sampler of a tiny model with a table tokenizer, its params); mesh_shape None: no mesh.

  On a mesh the params are global arrays laid out by the training rules, as the train state and
  a restored checkpoint hold them.
  """
  # Imported here: a worker must join jax.distributed before JAX touches its devices.
  # pylint: disable=g-import-not-at-top
  import jax
  from qmath_jax import parallel
  from qmath_jax.model import get_config, init_params
  from qmath_jax.sampling.sampler import Sampler
  from qmath_jax.sampling.testing import TableTokenizer, default_table, perturbed_params
  # pylint: enable=g-import-not-at-top

  cfg = get_config("tiny")
  tokenizer = TableTokenizer(default_table(cfg.vocab_size))
  host_params = jax.device_get(perturbed_params(cfg, seed=0))
  mesh = None if mesh_shape is None else parallel.make_mesh(mesh_shape)
  if mesh is None:
    params = host_params
  else:
    boxed = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), boxed=True))
    params = jax.device_put(host_params, parallel.tree_shardings(boxed, mesh))
  sampler = Sampler(cfg, params, tokenizer, mesh=mesh, stop_check_interval=4,
                    initial_cache_len=4)  # several stop checks and cache growths per call
  return sampler, params


def sample_runs(sampler, params) -> dict[str, list]:
  """Every RUNS entry's completions as JSON lists `[prompt][sample]`."""
  import jax  # pylint: disable=g-import-not-at-top
  out = {}
  for name, knobs in RUNS.items():
    if name == "updated":
      sampler.update_params(jax.jit(lambda p: jax.tree.map(lambda x: -x, p))(params))
    out[name] = [[{"ids": c.token_ids, "logprobs": c.logprobs, "finish": c.finish_reason,
                   "stop": c.stop, "text": c.text} for c in group]
                 for group in sampler.generate(PROMPTS, **knobs)]
  return out


def _assert_same(got: dict, want: dict) -> None:
  """Equal token ids, texts and finish reasons; log-probs to 1e-5."""
  assert got.keys() == want.keys()
  for name in want:
    for got_group, want_group in zip(got[name], want[name], strict=True):
      for g, w in zip(got_group, want_group, strict=True):
        assert (g["ids"], g["text"], g["finish"], g["stop"]) == (
            w["ids"], w["text"], w["finish"], w["stop"]), name
        np.testing.assert_allclose(g["logprobs"], w["logprobs"], rtol=0, atol=1e-5)


@pytest.mark.slow  # three JAX start-ups and compiles: about a minute on two shared cores
def test_two_processes_match_one_process_and_one_device():
  results = run_local_workers(__file__, timeout_s=WORKER_TIMEOUT_S)
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.process_count() == 1 and jax.device_count() == 8
  for result in results:
    assert (result["process_count"], result["device_count"]) == (2, 8)
    assert result["local_device_count"] == 4
  assert results[0]["runs"] == results[1]["runs"]  # the same replicated results, bit for bit
  for pid, result in enumerate(results):  # a call that differs between processes: both raise
    assert result["mismatch_error"].startswith(f"process {pid}: processes [1] called generate")
  one_process = sample_runs(*make_sampler(MESH_SHAPE))
  one_device = sample_runs(*make_sampler(None))
  _assert_same(results[0]["runs"], one_process)
  _assert_same(results[0]["runs"], one_device)

  runs = one_device
  finishes = {c["finish"] for group in runs["greedy"] + runs["sampled"] for c in group}
  assert finishes == {"stop", "length"}  # stop strings cut some rows, others run to the end
  assert any(c["stop"] == STOP for group in runs["sampled"] for c in group)
  assert len({tuple(c["ids"]) for c in runs["sampled"][1]}) > 1  # a group's samples differ
  assert [g[0]["ids"] for g in runs["updated"]] != [g[0]["ids"] for g in runs["greedy"]]


def test_host_reads_replicated_arrays_and_state_stays_sharded(monkeypatch):
  """One process, 8 devices: what the host reads is whole on every device, so a process of a
  pod slice can read it from its own devices; the decode state keeps its row split."""
  from qmath_jax.sampling import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  seen = []  # per call: (host-read outputs all replicated, K cache rows, a K cache shard's shape)
  for name in ("_start", "_decode"):
    def spy(*args, _jitted=getattr(sampler_lib, name), **kwargs):
      state, *host_read = out = _jitted(*args, **kwargs)
      k_cache = state["own_cache"][0]["k"]  # read now: the next decode call donates the state
      seen.append((all(x.sharding.is_fully_replicated for x in host_read), k_cache.shape[0],
                   k_cache.addressable_shards[0].data.shape))
      return out
    monkeypatch.setattr(sampler_lib, name, spy)
  sampler, _ = make_sampler(MESH_SHAPE)
  out = sampler.generate(PROMPTS, n=2, temperature=1.0, max_new_tokens=8, stop=[STOP])
  assert len(out) == len(PROMPTS) and len(seen) >= 3  # prefill and several decode chunks
  for replicated, rows, k_shard in seen:
    assert replicated
    assert k_shard[:2] == (rows // 4, 1)  # rows over data x fsdp, 2 kv heads over tensor


def _worker(port: int, process_id: int) -> None:
  from qmath_jax import parallel  # pylint: disable=g-import-not-at-top
  assert parallel.initialize_distributed(f"localhost:{port}", 2, process_id, timeout_s=120)
  import jax  # pylint: disable=g-import-not-at-top
  sampler, params = make_sampler(MESH_SHAPE)
  runs = sample_runs(sampler, params)
  try:
    sampler.generate(PROMPTS, max_new_tokens=4, seed=process_id)
    mismatch_error = ""
  except ValueError as e:
    mismatch_error = str(e)
  print(json.dumps({"runs": runs, "mismatch_error": mismatch_error,
                    "process_count": jax.process_count(),
                    "device_count": jax.device_count(),
                    "local_device_count": jax.local_device_count()}))
  jax.distributed.shutdown()


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]))
