r"""GRPO from the final SFT model with the final reward model (SPEC §3.3).

    python -m qmath_jax.main --config=configs/rl.py:model=qwen2.5-math-7b --workdir=/runs/rl \
        --config.init.checkpoint=/runs/sft_r2 --config.scorer.rm_checkpoint=/runs/rm_r1 \
        --config.data.sources=/runs/rl_queries/queries.jsonl \
        --config.tokenizer.path=/ckpt/Qwen2.5-Math-7B

Queries: `queries.jsonl` of a `configs/sample.py:task=rl` run (the SFT model's 2-to-5-of-8
correct queries). Reward: `sigmoid(0.5 * r_m) + (r_v - 1)` with the RM score r_m and the
verifier r_v (verifier alone without `scorer.rm_checkpoint`). G = 32; 4096 samples per episode
(7B) or 2048 (72B) in optimizer steps of 512 rows; lr 1e-5 (7B) or 5e-6 (72B); beta 1e-3.
Variants: `--config.rl.scale_advantages_by_std=false` (Dr. GRPO advantage) and
`--config.rl.normalisation=token` (token-mean loss); in the demo pipeline `--config.rl.rl.*`.
Not reported: clip 0.2, sampling temperature 1.0 and top_p 1.0, the number of episodes (100
here), warmup and decay (none, constant lr), weight decay (0) and the 1.5B numbers (the 7B ones).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "qmath_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position

# SPEC §3.3: (samples per episode, peak lr) per model size; it gives none for 1.5B, which
# takes the 7B numbers here.
RL_SAMPLES_AND_LR = {
    "qwen2.5-math-1.5b": (4096, 1e-5),
    "qwen2.5-math-7b": (4096, 1e-5),
    "qwen2.5-math-72b": (2048, 5e-6),
}


def get_config(arg=None):
  args = common.parse_arg(arg, {"model": "qwen2.5-math-7b"})
  if args["model"] not in RL_SAMPLES_AND_LR:
    raise ValueError(f"rl config: model={args['model']!r}; expected one of "
                     f"{sorted(RL_SAMPLES_AND_LR)}")
  samples, lr = RL_SAMPLES_AND_LR[args["model"]]
  base = common.base_config("rl", args["model"])
  c = ml_collections.ConfigDict()
  c.stage = "rl"
  c.seed = 0
  c.model = common.model_fields()  # the shapes come from init.* (the SFT run)
  c.init = base.init
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""
  c.mesh = base.mesh

  c.data = ml_collections.ConfigDict()
  # Required: the queries.jsonl of a `sample.py:task=rl` run (SPEC §3.3), or other problem
  # sources as in configs/sample.py ("synthetic" for the demo's toy problems).
  c.data.sources = ()
  c.data.data_dir = ""
  c.data.num_examples = 0
  c.data.limit = 0

  c.rl = ml_collections.ConfigDict()
  c.rl.episodes = 100
  c.rl.group_size = 32
  c.rl.problems_per_episode = samples // 32
  c.rl.minibatch_rows = 512     # rows per optimizer step (SPEC global batch)
  c.rl.max_new_tokens = 2048
  c.rl.seq_len = common.SEQ_LEN
  c.rl.kl_beta = 1e-3
  c.rl.clip_eps = 0.2
  c.rl.alpha = 0.5
  # Variants (SPEC defaults): False = "Dr. GRPO" advantage r_i - mean(r), not divided by the
  # group's std; "token" = one loss mean over every completion token of a minibatch (DAPO /
  # Dr. GRPO) instead of the SPEC's mean over completions of each one's token-mean.
  c.rl.scale_advantages_by_std = True
  c.rl.normalisation = "sequence"  # or "token"

  c.sample = ml_collections.ConfigDict()
  c.sample.temperature = 1.0
  c.sample.top_p = 1.0
  c.sample.prompt_type = "cot"  # "tir": the model's python runs in the sandbox; its output
                                # tokens are masked out of the loss (SPEC §3.3)

  c.optim = base.optim
  c.optim.lr = lr
  c.optim.end_lr = lr
  c.optim.warmup_steps = 0
  c.optim.decay = "constant"
  c.optim.weight_decay = 0.0
  del c.optim.z_loss  # the GRPO loss has no z-loss term

  c.scorer = ml_collections.ConfigDict()
  c.scorer.rm_checkpoint = ""  # an rm run's workdir or a Hugging Face reward-model directory
  c.scorer.batch_size = 16
  c.scorer.max_length = common.SEQ_LEN
  c.sandbox = ml_collections.ConfigDict()
  c.sandbox.timeout = 5.0
  c.sandbox.num_workers = 0
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 5        # episodes
  c.checkpoint.keep_last = 2
  c.checkpoint.async_save = True
  return c
