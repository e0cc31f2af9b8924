r"""The eval stage: the report's benchmarks with CoT or TIR prompts, greedy or maj@N.

    python -m qmath_jax.main --config=configs/eval.py --workdir=/runs/eval_7b \
        --config.init.hf_dir=/ckpt/Qwen2.5-Math-7B-Instruct \
        --config.tokenizer.path=/ckpt/Qwen2.5-Math-7B-Instruct
    python -m qmath_jax.main --config=configs/eval.py:mode=maj8,prompt=tir ...

Modes (SPEC): `greedy` (temperature 0), `maj8` (n=8, temperature 0.7, top_p 0.8); with
`--config.scorer.rm_checkpoint=<rm run or HF reward-model dir>` the same samples also give
RM@8. SPEC's larger N for AIME24 and AMC23 is a run of its own, since `eval.n` holds for every
dataset: `:mode=maj8 "--config.eval.datasets=('aime24','amc23')" --config.eval.n=64`.
Params (and the model's shapes) come from exactly one of `init.checkpoint` (a run's
workdir), `init.params_dir`, `init.hf_dir`.
Benchmark files are read from `eval.data_dir` (default: $QMATH_DATA_DIR, then ../shared/data).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "qmath_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position

REPORT_DATASETS = ("gsm8k", "math", "minerva_math", "gaokao2023en", "olympiadbench",
                   "college_math", "mmlu_stem", "gaokao2024_mix", "cmath", "cn_middle_school",
                   "aime24", "amc23")


def get_config(arg=None):
  args = common.parse_arg(arg, {"mode": "greedy", "prompt": "cot"})
  if args["mode"] not in ("greedy", "maj8"):
    raise ValueError(f"eval config: mode={args['mode']!r}; expected greedy or maj8")
  c = ml_collections.ConfigDict()
  c.stage = "eval"
  c.model = common.model_fields()  # the shapes come from init.*
  c.model.remat_policy = "none"
  c.init = common.init_fields()
  c.mesh = ml_collections.ConfigDict()
  # Rows split over 'data'; e.g. (-1, 1, 4) splits each weight and the KV cache 4 ways
  # (tensor parallel) when a model does not fit one device.
  c.mesh.shape = (-1, 1, 1)
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""
  c.eval = ml_collections.ConfigDict()
  c.eval.datasets = REPORT_DATASETS
  c.eval.prompt_type = args["prompt"]
  c.eval.n = 1 if args["mode"] == "greedy" else 8
  c.eval.temperature = 0.0 if args["mode"] == "greedy" else 0.7
  c.eval.top_p = 1.0 if args["mode"] == "greedy" else 0.8
  c.eval.max_new_tokens = 2048
  c.eval.batch_size = 64
  c.eval.limit = ml_collections.FieldReference(None, field_type=int)
  c.eval.pass_k = (1, 8)
  c.eval.seed = 0     # the sampling seed
  c.eval.data_dir = ""
  c.scorer = ml_collections.ConfigDict()
  # An rm run's workdir or a Hugging Face reward-model directory (e.g. Qwen2.5-Math-RM-72B):
  # adds RM@N (best of n by its score).
  c.scorer.rm_checkpoint = ""
  c.scorer.batch_size = 16
  c.scorer.max_length = 4096
  c.sandbox = ml_collections.ConfigDict()
  c.sandbox.timeout = 5.0     # seconds per program (SPEC)
  c.sandbox.num_workers = 0   # 0: min(4, cores)
  return c
