r"""Reward model round (SPEC §3.2): the SFT model under a score head, listwise ranking loss.

    python -m qmath_jax.main --config=configs/rm.py:model=qwen2.5-math-7b --workdir=/runs/rm_r1 \
        --config.init.checkpoint=/runs/sft_r1 --config.data.source=/data/rm_lists_r1.jsonl \
        --config.tokenizer.path=/ckpt/Qwen2.5-Math-7B

`data.source` holds one list per query: ``{"id", "messages", "responses": [6], "labels": [6]}``
(responses sampled from the current SFT model and labelled by answer correctness, queries with
all 6 right or all 6 wrong dropped), or "synthetic" for planted-error lists on synthetic
problems. The backbone starts from `init` (an SFT run, params or HF checkpoint); the score head
(Linear(H, H) -> ReLU -> Linear(H, 1)) starts fresh. Batch, learning rate, epochs and schedule
are not reported: 64 lists x 6 responses, 5e-6 decaying to 0 over 1 epoch, 3% warmup. The
schedule runs over `train.total_steps` (1000, warmup 30): set it (and `optim.warmup_steps`) to
one epoch of your lists; the run also stops when the epoch ends.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "qmath_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config(arg=None):
  args = common.parse_arg(arg, {"model": "qwen2.5-math-7b"})
  c = common.base_config("rm", args["model"])
  c.data.list_size = 6
  c.data.batch_size = 64       # lists per step (each list is 6 rows of seq_len tokens)
  c.data.seq_len = common.SEQ_LEN
  c.data.num_epochs = 1
  c.optim.lr = 5e-6
  c.optim.end_lr = 0.0
  c.train.total_steps = 1000
  c.optim.warmup_steps = 30
  del c.optim.z_loss  # the RM loss has no z-loss term
  return c
