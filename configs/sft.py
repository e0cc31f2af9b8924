r"""SFT rounds (SPEC §3.1): assistant-only loss, 3 epochs, 4096 tokens, lr decaying to 7e-7.

    python -m qmath_jax.main --config=configs/sft.py:model=qwen2.5-math-7b,round=1 \
        --workdir=/runs/sft_r1 --config.init.hf_dir=/ckpt/Qwen2.5-Math-7B \
        --config.data.source=/data/sft_r1.jsonl --config.tokenizer.path=/ckpt/Qwen2.5-Math-7B \
        --config.train.total_steps=N

Batch 128 and peak lr 2e-5 for 1.5B/7B, batch 256 and 5e-6 for 72B (SPEC). Every round starts
from the base model (`init.hf_dir`); a round differs by its data (round r+1's responses come
from RM-guided rejection sampling with round r's models). Set `train.total_steps` to
3 epochs of packed rows for your data (the run also stops when the 3 epochs end). Warmup,
decay shape and weight decay are not reported: 3% warmup, cosine, 0.1.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "qmath_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config(arg=None):
  args = common.parse_arg(arg, {"model": "qwen2.5-math-7b", "round": 1})
  if args["model"] not in common.SFT_BATCH_AND_LR:
    raise ValueError(f"sft config: model={args['model']!r}; expected one of "
                     f"{sorted(common.SFT_BATCH_AND_LR)}")
  batch, lr = common.SFT_BATCH_AND_LR[args["model"]]
  c = common.base_config("sft", args["model"])
  c.round = args["round"]  # a label kept in the checkpoint meta; rounds differ by data only
  c.data.batch_size = batch
  c.data.num_epochs = common.SFT_EPOCHS
  c.data.seq_len = common.SEQ_LEN
  c.optim.lr = lr
  c.optim.end_lr = common.SFT_END_LR
  c.train.total_steps = 3000
  c.optim.warmup_steps = 90
  return c
