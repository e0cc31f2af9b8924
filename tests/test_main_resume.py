"""The pretrain stage resumed from a mid-run checkpoint replays the straight run exactly.

Uses the real stage (sentencepiece tokenizer, packed grain pipeline, sharded step); the
"crash" is simulated by deleting the checkpoints after step 6 (the SIGKILL case itself is
tested in test_loop_resume.py).
"""

import os
import shutil

import ml_collections
import pytest
from conftest import load_config

from qmath_jax import main
from qmath_jax.train import loop
from qmath_jax.train import metrics_writer

def _pretrain_config(tokenizer_dir):
  config = ml_collections.ConfigDict(load_config("demo.py", "quick=1").pretrain.to_dict())
  config.tokenizer.train_vocab_size = 0
  config.tokenizer.path = str(tokenizer_dir / "tokenizer.model")
  config.train.log_every = 1
  config.checkpoint.every = 3
  config.checkpoint.keep_last = 10
  config.checkpoint.async_save = False
  return config


@pytest.mark.slow
def test_resumed_pretrain_matches_straight_run(tmp_path):
  from qmath_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from qmath_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  tokenizer_lib.train_sentencepiece(synthetic.corpus(200), 384, tmp_path / "tokenizer.model")
  config = _pretrain_config(tmp_path)

  main.run(config, str(tmp_path / "straight"))
  main.run(config, str(tmp_path / "crashed"))
  checkpoints = tmp_path / "crashed" / loop.CHECKPOINT_DIR
  for name in os.listdir(checkpoints):
    if name.isdigit() and int(name) > 6:
      shutil.rmtree(checkpoints / name)
  main.run(config, str(tmp_path / "crashed"))

  def losses(run):
    return [(r["step"], r["loss"]) for r in metrics_writer.read_metrics(tmp_path / run)]

  assert [s for s, _ in losses("crashed")] == list(range(1, 13))
  assert losses("crashed") == losses("straight")
