"""Pieces every round config shares: the field layout, SPEC numbers and `key=value` arguments.

A round config file defines `get_config(arg)`; `arg` is what follows the colon on the command
line (`--config=configs/sft.py:model=qwen2.5-math-7b,round=2`), parsed by `parse_arg`. Every
field below can then be overridden with `--config.<field>=<value>`.
"""

import ml_collections

# SPEC §3.1 SFT numbers: (global batch, peak lr) per model size; all decay to 7e-7.
SFT_BATCH_AND_LR = {
    "qwen2.5-math-1.5b": (128, 2e-5),
    "qwen2.5-math-7b": (128, 2e-5),
    "qwen2.5-math-72b": (256, 5e-6),
}
SFT_END_LR = 7e-7
SFT_EPOCHS = 3
SEQ_LEN = 4096


def parse_arg(arg: str | None, defaults: dict) -> dict:
  """`"model=qwen2.5-math-7b,round=2"` -> dict over `defaults` (values keep their type)."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config argument {item!r}: expected key=value with key in "
                       f"{sorted(defaults)}")
    values[key] = type(defaults[key])(value)
  return values


def model_fields(preset: str | None = None) -> ml_collections.ConfigDict:
  """A preset name (qmath_jax.model.presets) plus ModelConfig field overrides.

  The sampling stages (rl, sample, eval) need `init.*` and take the model's shapes from it,
  so they have no preset.
  """
  m = ml_collections.ConfigDict()
  if preset is not None:
    m.preset = preset
  m.vocab_size = 0            # used without init.* only; 0: the preset's
  m.dtype = "bfloat16"        # compute dtype
  m.param_dtype = "float32"   # master weights
  m.attention = "xla"         # xla | pallas | cudnn
  m.remat_policy = "full"
  return m


def init_fields() -> ml_collections.ConfigDict:
  """Where the params start (at most one; none = random init, for the training stages)."""
  i = ml_collections.ConfigDict()
  i.checkpoint = ""   # another run's workdir (its latest checkpoints/ step)
  i.params_dir = ""   # a params-only checkpoint from `python -m qmath_jax.convert`
  i.hf_dir = ""       # a Hugging Face Qwen2 checkpoint directory
  return i


def base_config(stage: str, model: str) -> ml_collections.ConfigDict:
  """The fields every training stage reads, with neutral defaults."""
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0
  c.model = model_fields(model)

  # Mesh over ('data', 'fsdp', 'tensor'); -1 = the rest of the devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (1, -1, 1)

  # Tokenizer: a tokenizer.json / *.model path (or an HF directory holding one); with
  # train_vocab_size > 0 and no path, a sentencepiece model is trained on the stage's text.
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""
  c.tokenizer.train_vocab_size = 0

  # Data: "synthetic" (qmath_jax.data.synthetic) or a jsonl path (pretrain: {"text"} rows;
  # sft: {"messages"} rows).
  c.data = ml_collections.ConfigDict()
  c.data.source = ""
  c.data.num_examples = 0     # synthetic only: how many documents / problems
  c.data.eval_source = ""     # held-out rows for the eval loss ("synthetic" or a jsonl path)
  c.data.num_eval_examples = 0
  c.data.seq_len = SEQ_LEN
  c.data.batch_size = 128     # global rows per step (packed)
  c.data.num_epochs = 1       # passes over the data; the run also ends at train.total_steps
  c.data.num_packing_bins = 0  # 0: the per-host batch size
  if stage == "sft":  # no loss on the "```output" blocks the interpreter spliced into TIR replies
    c.data.mask_tool_outputs = True

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-5
  c.optim.end_lr = SFT_END_LR
  c.optim.warmup_steps = 100   # not reported in SPEC
  c.optim.decay = "cosine"     # not reported in SPEC
  c.optim.weight_decay = 0.1   # not reported in SPEC
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.clip_norm = 1.0
  c.optim.num_microbatches = 1
  c.optim.z_loss = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.total_steps = 1000   # also the schedule length
  c.train.log_every = 10
  c.train.eval_every = 500     # 0: no eval
  c.train.eval_batches = 8

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 500
  c.checkpoint.keep_last = 2
  c.checkpoint.keep_best = 1
  c.checkpoint.best_metric = "eval/loss"  # "" keeps only the last ones
  c.checkpoint.best_mode = "min"
  c.checkpoint.async_save = True

  # A run that has its own checkpoint resumes from it instead.
  c.init = init_fields()
  return c
