"""Test set-up: 8 simulated CPU devices (set before JAX starts) and the data directory."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

from qmath_jax.data import paths  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
  """The benchmark/training data directory; skips the test cleanly when it is absent."""
  found = paths.find_data_dir()
  if found is None:
    pytest.skip("benchmark data directory not found (set QMATH_DATA_DIR)")
  return found


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory):
  """(tokenizer path, params checkpoint dir, params): a sentencepiece tokenizer of 384 ids
  trained on synthetic documents and a random tiny decoder saved with `convert.save_params`."""
  import jax  # pylint: disable=g-import-not-at-top
  from qmath_jax import convert  # pylint: disable=g-import-not-at-top
  from qmath_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from qmath_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from qmath_jax.model import get_config, init_params  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("tiny_decoder")
  tok_path = str(root / "tokenizer.model")
  tokenizer_lib.train_sentencepiece(synthetic.corpus(200, seed=0), 384, tok_path)
  cfg = get_config("tiny", vocab_size=384)
  params = init_params(cfg, jax.random.key(0))
  convert.save_params(root / "params", cfg, params)
  return tok_path, str(root / "params"), params


def load_config(name, arg=None):
  """`configs/<name>`'s `get_config(arg)`."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(__file__).parents[1] / "configs" / name
  spec = importlib.util.spec_from_file_location(path.stem + "_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def run_local_workers(script, *args, timeout_s=300, processes=2, devices_per_process=4):
  """Runs `script PORT PROCESS_ID *args` as the processes of one localhost jax.distributed run.

  Each worker gets `devices_per_process` CPU devices; returns each worker's last stdout line,
  parsed as JSON, in process order. A worker that fails fails the test with its stderr tail.
  """
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  import portpicker  # pylint: disable=g-import-not-at-top

  port = portpicker.pick_unused_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
             PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
  workers = [subprocess.Popen([sys.executable, script, str(port), str(pid), *map(str, args)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in range(processes)]
  results = []
  try:
    for worker in workers:
      stdout, stderr = worker.communicate(timeout=timeout_s)
      assert worker.returncode == 0, f"worker failed:\n{stderr[-3000:]}"
      results.append(json.loads(stdout.strip().splitlines()[-1]))
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
  return results


@pytest.fixture
def tpu_race_states(monkeypatch):
  """Every race-detection state TPU interpret mode creates during the test (one per kernel
  call, each reset when its call ends): a list to check `races_found` on after the calls.

  Race results have no public API yet; this import fails loudly if they move.
  """
  from jax._src.pallas.mosaic.interpret import interpret_pallas_call  # pylint: disable=g-import-not-at-top
  states = []
  base = interpret_pallas_call.RaceDetectionState

  def recording(*args, **kwargs):
    state = base(*args, **kwargs)
    states.append(state)
    return state

  monkeypatch.setattr(interpret_pallas_call, "RaceDetectionState", recording)
  return states
