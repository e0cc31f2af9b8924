r"""Pretraining (SPEC §2): next-token loss on packed 4K rows of math text.

    python -m qmath_jax.main --config=configs/pretrain.py:model=qwen2.5-math-1.5b \
        --workdir=/runs/pt --config.data.source=/data/corpus.jsonl \
        --config.tokenizer.path=/ckpt/tokenizer.json

The report gives no pretraining batch size or learning rate for these models (it continues
from Qwen2.5 base checkpoints); the defaults here (batch 512 x 4096 tokens, peak 3e-4, cosine
to 3e-5, 2000 warmup steps) are common choices and are config values.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "qmath_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config(arg=None):
  args = common.parse_arg(arg, {"model": "qwen2.5-math-1.5b"})
  c = common.base_config("pretrain", args["model"])
  c.data.batch_size = 512
  c.optim.lr = 3e-4
  c.optim.end_lr = 3e-5
  c.optim.warmup_steps = 2000
  c.train.total_steps = 100_000
  c.train.eval_every = 0
  c.checkpoint.every = 1000
  c.checkpoint.best_metric = ""
  return c
