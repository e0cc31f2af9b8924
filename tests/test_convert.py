"""The convert CLI: HF -> params checkpoint -> HF is lossless."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from qmath_jax import convert, hf

GOLDEN = pathlib.Path(__file__).parent / "golden" / "hf" / "gqa_untied"


def test_cli_round_trip(tmp_path):
  run = lambda *args: subprocess.run([sys.executable, "-m", "qmath_jax.convert", *args],
                                     check=True, capture_output=True, text=True, timeout=300)
  run(f"--hf_dir={GOLDEN}", f"--out={tmp_path / 'ckpt'}")
  run(f"--params_dir={tmp_path / 'ckpt'}", f"--hf_out={tmp_path / 'back'}")
  _, before = hf.load_hf(GOLDEN)
  _, after = hf.load_hf(tmp_path / "back")
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_params_checkpoint_restores_sharded(tmp_path):
  cfg, params = hf.load_hf(GOLDEN)
  convert.save_params(tmp_path / "ckpt", cfg, params)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("fsdp",))
  spec = jax.sharding.PartitionSpec
  shardings = jax.tree.map(lambda x: jax.sharding.NamedSharding(
      mesh, spec(*([None] * (x.ndim - 1) + ["fsdp"])) if x.shape[-1] % 2 == 0 else spec()), params)
  cfg2, restored = convert.load_params(tmp_path / "ckpt", shardings=shardings)
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert restored["embedding"].sharding == shardings["embedding"]
  with pytest.raises(FileExistsError):
    convert.save_params(tmp_path / "ckpt", cfg, params)
  with pytest.raises(FileNotFoundError, match="not a params checkpoint"):
    convert.load_params(tmp_path)
