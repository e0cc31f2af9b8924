"""SFT round 2: `configs/sft.py` with round=2 (pass model=... as for sft.py).

Its `data.source` is round 1's evolved SFT data: the `sft.jsonl` of a `configs/sample.py:task=sft`
run with the round-1 SFT and RM runs (`init.checkpoint`, `scorer.rm_checkpoint`).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "qmath_configs_sft", os.path.join(os.path.dirname(__file__), "sft.py"))
sft = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sft)


def get_config(arg=None):
  return sft.get_config(",".join(filter(None, [arg, "round=2"])))
