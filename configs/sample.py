r"""Sampling rounds (SPEC §3.1-§3.3): the current model answers problems; the graded responses
become the next round's data.

    # SFT round r+1 data: RM-guided rejection sampling with round r's SFT and RM runs.
    python -m qmath_jax.main --config=configs/sample.py:task=sft --workdir=/runs/sample_r1 \
        --config.init.checkpoint=/runs/sft_r1 --config.scorer.rm_checkpoint=/runs/rm_r1 \
        --config.tokenizer.path=/ckpt/Qwen2.5-Math-7B
    # then: configs/sft.py:round=2 with --config.data.source=/runs/sample_r1/sft.jsonl
    # RM lists (6 responses per query, labelled by correctness):
    python -m qmath_jax.main --config=configs/sample.py:task=rm ...   # -> rm.jsonl
    # RL queries (keep 2 to 5 of 8 correct):
    python -m qmath_jax.main --config=configs/sample.py:task=rl ...   # -> queries.jsonl

Problems come from `data.sources`: names of `qmath_jax.data.sources.SOURCES` read from
`data.data_dir` (default $QMATH_DATA_DIR, then ../shared/data), jsonl files of problems in the
common schema, or "synthetic". Sampling follows SPEC (temperature 0.7, top-p 0.8); the number
of samples for rejection sampling and its top-k are not reported (8 and 4 here).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "qmath_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  args = common.parse_arg(arg, {"task": "sft", "prompt": "cot"})
  c = ml_collections.ConfigDict()
  c.stage = "sample"
  c.task = args["task"]
  c.seed = 0
  c.model = common.model_fields()  # the shapes come from init.*
  c.model.remat_policy = "none"
  c.init = common.init_fields()
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)   # rows over 'data'; (-1, 1, 4) splits weights 4 ways

  c.data = ml_collections.ConfigDict()
  c.data.sources = ("gsm8k/train", "math/train")
  c.data.data_dir = ""
  c.data.num_examples = 0     # synthetic problems, when "synthetic" is a source
  c.data.limit = 0            # 0: every problem

  c.sample = ml_collections.ConfigDict()
  c.sample.n = {"sft": 8, "rm": 6, "rl": 8}[args["task"]]
  c.sample.temperature = 0.7
  c.sample.top_p = 0.8
  c.sample.top_k = 0
  c.sample.max_new_tokens = 2048
  c.sample.prompt_type = args["prompt"]
  c.sample.batch_size = 64    # problems per sampler call

  c.rejection = ml_collections.ConfigDict()
  c.rejection.top_k = 4
  c.rejection.drop_truncated = True
  c.rm_data = ml_collections.ConfigDict()
  c.rm_data.list_size = 6     # SPEC §3.2; the balancing knobs below are not reported
  c.rm_data.difficulty_cap = 2.0
  c.rm_data.positive_fraction = (0.45, 0.55)
  c.rl_queries = ml_collections.ConfigDict()
  c.rl_queries.min_correct = 2
  c.rl_queries.max_correct = 5

  c.scorer = ml_collections.ConfigDict()
  # An rm run's workdir or a Hugging Face reward-model directory: ranks kept responses.
  c.scorer.rm_checkpoint = ""
  c.scorer.batch_size = 16
  c.scorer.max_length = 4096
  c.sandbox = ml_collections.ConfigDict()
  c.sandbox.timeout = 5.0
  c.sandbox.num_workers = 0
  return c
