"""Checks a run config before any compute: field types, ranges, stages and input paths.

`validate(config, stages)` raises `ConfigError` listing every problem, each naming the field
(`config.optim.lr: expected a number, got 'fast'`), so a mistyped value or a missing input
checkpoint fails in a second instead of after a model has been built.
"""

from collections.abc import Callable, Collection, Mapping, Sequence
import numbers
import os
from typing import Any

import ml_collections

from qmath_jax.data import synthetic
from qmath_jax.model import config as model_config
from qmath_jax.model import presets
from qmath_jax.parallel import mesh as mesh_lib
from qmath_jax.train import optimizer as optimizer_lib

TRAIN_STAGES = ("pretrain", "sft", "rm")
DECODER_STAGES = ("pretrain", "sft", "rl")  # their checkpoints hold a decoder to sample
SYNTHETIC = "synthetic"
_MISSING = object()


class ConfigError(ValueError):
  """The config cannot run; the message lists each bad field."""


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


class _Checker:
  """Collects problems of one config (or sub-config) under a field-name prefix."""

  def __init__(self, config, prefix="config"):
    self.config = config
    self.prefix = prefix
    self.problems = []

  def get(self, path):
    """The value at dotted `path`; a missing field is a problem and reads as None."""
    value = self._lookup(path)
    if value is _MISSING:
      self.fail(path, "missing")
      return None
    return value

  def _lookup(self, path):
    node = self.config
    for part in path.split("."):
      if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
        return _MISSING
      node = node[part]
    return node

  def fail(self, path, message):
    self.problems.append(f"{self.prefix}.{path}: {message}")

  def int(self, path, minimum=None):
    v = self.get(path)
    if v is None and not self._missing(path):
      self.fail(path, "expected an integer, got None")
    elif v is not None and not _is_int(v):
      self.fail(path, f"expected an integer, got {v!r} ({type(v).__name__})")
    elif v is not None and minimum is not None and v < minimum:
      self.fail(path, f"expected an integer >= {minimum}, got {v}")
    return v if _is_int(v) else None

  def number(self, path, minimum=None, positive=False):
    v = self.get(path)
    if v is None and not self._missing(path):
      self.fail(path, "expected a number, got None")
    elif v is not None and not _is_number(v):
      self.fail(path, f"expected a number, got {v!r} ({type(v).__name__})")
    elif v is not None and positive and not v > 0:
      self.fail(path, f"expected a number > 0, got {v}")
    elif v is not None and minimum is not None and v < minimum:
      self.fail(path, f"expected a number >= {minimum}, got {v}")
    return v if _is_number(v) else None

  def string(self, path, choices=None):
    v = self.get(path)
    if v is None and not self._missing(path):
      self.fail(path, "expected a string, got None")
    elif v is not None and not isinstance(v, str):
      self.fail(path, f"expected a string, got {v!r} ({type(v).__name__})")
    elif v is not None and choices is not None and v not in choices:
      self.fail(path, f"expected one of {sorted(choices)}, got {v!r}")
    return v if isinstance(v, str) else None

  def boolean(self, path):
    v = self.get(path)
    if v is not None and not isinstance(v, bool):
      self.fail(path, f"expected true or false, got {v!r} ({type(v).__name__})")
    return v

  def _missing(self, path):
    return self._lookup(path) is _MISSING


def _check_optim(c: _Checker):
  """The AdamW and schedule fields of `config.optim` (`main._optimizer` reads them)."""
  c.number("optim.lr", positive=True)
  c.number("optim.end_lr", minimum=0)
  c.int("optim.warmup_steps", minimum=0)
  c.string("optim.decay", choices=optimizer_lib.DECAY_SHAPES)
  c.number("optim.weight_decay", minimum=0)
  c.number("optim.b1", minimum=0)
  c.number("optim.b2", minimum=0)
  c.number("optim.clip_norm", minimum=0)


def check_optim_and_checkpoint(config) -> list[str]:
  """Problems of `config.optim` and of the `checkpoint` fields every training stage reads
  (`every`, `keep_last`, `async_save`), for stages that train outside `loop.train` (rl)."""
  c = _Checker(config)
  _check_optim(c)
  c.int("checkpoint.every", minimum=1)
  c.int("checkpoint.keep_last", minimum=1)
  c.boolean("checkpoint.async_save")
  return c.problems


def _check_train_stage(c: _Checker, num_devices: int, in_pipeline: bool, pipeline_stages=()):
  """Fields of a pretrain / sft stage."""
  c.int("seed", minimum=0)
  preset = c.string("model.preset", choices=presets.names())
  for field in ("dtype", "param_dtype"):
    c.string(f"model.{field}", choices=("float32", "bfloat16", "float16"))
  c.string("model.attention", choices=model_config.ATTENTION_IMPLS)
  c.string("model.remat_policy", choices=model_config.REMAT_POLICIES)

  shape = c.get("mesh.shape")
  mesh_shape = None
  if shape is not None:
    if not isinstance(shape, (tuple, list)) or len(shape) != 3 or not all(map(_is_int, shape)):
      c.fail("mesh.shape", f"expected 3 integers (data, fsdp, tensor), got {shape!r}")
    else:
      try:
        mesh_shape = mesh_lib.resolve_mesh_shape(shape, num_devices)
      except ValueError as e:
        c.fail("mesh.shape", str(e))

  c.int("data.seq_len", minimum=2)
  batch = c.int("data.batch_size", minimum=1)
  c.int("data.num_epochs", minimum=0)
  if c._lookup("stage") == "rm":
    c.int("data.list_size", minimum=2)
  if c._lookup("stage") == "sft":
    c.boolean("data.mask_tool_outputs")
  c.int("data.num_packing_bins", minimum=0)
  micro = c.int("optim.num_microbatches", minimum=1)
  if mesh_shape and batch and micro:
    shards = mesh_shape[0] * mesh_shape[1]
    if batch % (shards * micro):
      c.fail("data.batch_size", f"{batch} rows do not split into {micro} microbatch(es) over "
             f"data x fsdp = {shards} device groups")
  source = c.string("data.source")
  if source is not None:
    if not source:
      c.fail("data.source", f"expected {SYNTHETIC!r} or a jsonl path, got ''")
    elif source != SYNTHETIC and not os.path.isfile(source):
      c.fail("data.source", f"file {source!r} does not exist")
    elif source == SYNTHETIC:
      c.int("data.num_examples", minimum=1)
  eval_source = c.string("data.eval_source")
  if eval_source and eval_source != SYNTHETIC and not os.path.isfile(eval_source):
    c.fail("data.eval_source", f"file {eval_source!r} does not exist")
  if eval_source == SYNTHETIC:
    c.int("data.num_eval_examples", minimum=1)

  _check_optim(c)
  if c._lookup("stage") != "rm":  # the rm loss has no z-loss term
    c.number("optim.z_loss", minimum=0)

  total = c.int("train.total_steps", minimum=1)
  warmup = c._lookup("optim.warmup_steps")  # its type is checked with the optim fields
  if _is_int(total) and _is_int(warmup) and warmup > total:
    c.fail("optim.warmup_steps", f"{warmup} exceeds train.total_steps {total}")
  c.int("train.log_every", minimum=1)
  c.int("train.eval_every", minimum=0)
  c.int("train.eval_batches", minimum=1)
  c.int("checkpoint.every", minimum=1)
  c.int("checkpoint.keep_last", minimum=1)
  c.int("checkpoint.keep_best", minimum=1)
  c.string("checkpoint.best_metric", choices=("", "eval/loss"))  # what the stages report
  c.string("checkpoint.best_mode", choices=("min", "max"))
  c.boolean("checkpoint.async_save")

  tok_path = c.string("tokenizer.path")
  vocab = c.int("tokenizer.train_vocab_size", minimum=0)
  inits = {k: c._lookup(f"init.{k}") for k in ("checkpoint", "params_dir", "hf_dir")}
  init_given = [k for k, v in inits.items() if v and isinstance(v, str)]
  if tok_path:
    if not os.path.exists(tok_path):
      c.fail("tokenizer.path", f"{tok_path!r} does not exist")
  elif not in_pipeline and init_given:
    c.fail("tokenizer.path", f"init.{init_given[0]} gives the model, so give the tokenizer it "
           "was trained with; one trained here would give its ids to other pieces than the "
           "model's embedding learned")
  elif not in_pipeline and vocab == 0:
    c.fail("tokenizer.path", "give a tokenizer path, or tokenizer.train_vocab_size > 0 to "
           "train a sentencepiece model")
  model_vocab = c.int("model.vocab_size", minimum=0)
  if preset and vocab:
    model_vocab = model_vocab or presets.get_config(preset).vocab_size
    if vocab > model_vocab:
      c.fail("tokenizer.train_vocab_size",
             f"{vocab} exceeds the model's vocab_size {model_vocab} (preset {preset!r})")

  inits = {k: c.string(f"init.{k}") for k in ("checkpoint", "params_dir", "hf_dir")}
  given = [k for k, v in inits.items() if v]
  if len(given) > 1:
    c.fail("init", f"give at most one of init.checkpoint, init.params_dir, init.hf_dir; got "
           f"{', '.join('init.' + k for k in given)}")
  ckpt = inits.get("checkpoint")
  if ckpt and not (in_pipeline and ckpt in pipeline_stages):
    directory = os.path.join(ckpt, "checkpoints")
    if not os.path.isdir(directory) or not any(n.isdigit() for n in os.listdir(directory)):
      c.fail("init.checkpoint", f"no checkpoint in {directory!r} (expected another run's "
             "workdir)")
  if inits.get("params_dir") and not os.path.isfile(
      os.path.join(inits["params_dir"], "model_config.json")):
    c.fail("init.params_dir", f"{inits['params_dir']!r} is not a params checkpoint (no "
           "model_config.json)")
  if inits.get("hf_dir") and not os.path.isfile(os.path.join(inits["hf_dir"], "config.json")):
    c.fail("init.hf_dir", f"{inits['hf_dir']!r} is not a Hugging Face checkpoint (no "
           "config.json)")


def _check_stage_references(c: _Checker, name: str, sub, earlier: Sequence[str]):
  """A pipeline stage's `init.checkpoint` naming an earlier stage must name a run whose
  checkpoints hold a decoder, and its `scorer.rm_checkpoint` one that holds a reward model."""
  sub_checker = _Checker(sub)
  for field, kinds, holds in (("init.checkpoint", DECODER_STAGES, "decoder"),
                              ("scorer.rm_checkpoint", ("rm",), "reward model")):
    target = sub_checker._lookup(field)
    if isinstance(target, str) and target in earlier:
      kind = c._lookup(f"{target}.stage")
      if kind not in kinds:
        c.fail(f"{name}.{field}", f"names the {target!r} stage, a {kind!r} run, whose "
               f"checkpoints hold no {holds}; expected a stage of kind {list(kinds)}")


def _configured_vocab(sub) -> int | None:
  """The vocab size of a train stage's model when its config sets it (no init.*), else None."""
  init = sub.get("init") or {}
  if any(init.get(k) for k in ("checkpoint", "params_dir", "hf_dir")):
    return None  # the init's model config decides
  model = sub.get("model") or {}
  vocab, preset = model.get("vocab_size"), model.get("preset")
  if _is_int(vocab) and vocab > 0:
    return vocab
  return presets.get_config(preset).vocab_size if preset in presets.names() else None


# The tokenizer a pipeline trains before its first stage, as its stages see it when checked.
PIPELINE_TOKENIZER = "<tokenizer trained by the pipeline>"


def _as_run_in_pipeline(pipeline, sub, earlier: Sequence[str]):
  """(the stage config as the pipeline will run it, the inputs pending from earlier stages).

  The pipeline gives every stage its tokenizer and seed; `init.checkpoint` and
  `scorer.rm_checkpoint` may name an earlier stage, whose run directory does not exist yet.
  """
  sub = ml_collections.ConfigDict(sub.to_dict())
  tokenizer = pipeline.get("tokenizer", {}).get("path") or PIPELINE_TOKENIZER
  if sub.get("tokenizer") is not None:
    sub.tokenizer.path = tokenizer
  if pipeline.get("seed") is not None:
    sub.seed = pipeline.seed
  return sub, frozenset(earlier) | {PIPELINE_TOKENIZER}


def validate(config, stages: Collection[str], num_devices: int,
             stage_checks: Mapping[str, Callable[[Any], list[str]]] | None = None) -> None:
  """Raises ConfigError naming every bad field of `config`.

  Args:
    config: the run's ConfigDict.
    stages: registered stage names (the entry point's dispatch table).
    num_devices: devices the mesh must cover (`jax.device_count()`).
    stage_checks: stage name -> `check(config) -> ["config.x: problem", ...]` for stages
      other than pretrain, sft and pipeline (each stage that joins brings its own).
  """
  c = _Checker(config)
  stage = c.string("stage")
  if c._lookup("synthetic") not in (_MISSING, None):  # the synthetic generator's knobs
    try:
      synthetic.SyntheticConfig(**c._lookup("synthetic").to_dict())
    except (TypeError, ValueError) as e:
      c.fail("synthetic", str(e))
  if stage is not None and stage not in stages:
    c.fail("stage", f"unknown stage {stage!r}; known stages: {', '.join(sorted(stages))}")
  elif stage in (stage_checks or {}):
    c.problems.extend(stage_checks[stage](config))
  elif stage in TRAIN_STAGES:
    _check_train_stage(c, num_devices, in_pipeline=False)
  elif stage == "pipeline":
    names = c.get("stages")
    if names is not None and isinstance(names, list):
      names = tuple(names)
    if names is not None and (not isinstance(names, (tuple, list)) or not names or
                              not all(isinstance(n, str) for n in names)):
      c.fail("stages", f"expected a non-empty list of stage names, got {names!r}")
      names = None
    c.int("seed", minimum=0)  # every stage's seed
    tok_path = c.string("tokenizer.path")
    pipeline_vocab = c.int("tokenizer.train_vocab_size", minimum=0)
    if not tok_path:  # the pipeline trains the tokenizer every stage uses
      if pipeline_vocab == 0:
        c.fail("tokenizer.train_vocab_size", "expected > 0 to train the pipeline's tokenizer, "
               "or give tokenizer.path")
      c.int("tokenizer.num_documents", minimum=1)
    for i, name in enumerate(names or ()):
      sub = c.get(name)
      if sub is None:
        continue
      sub_stage = sub.get("stage") if isinstance(sub, ml_collections.ConfigDict) else None
      if sub_stage is not None:
        _check_stage_references(c, name, sub, names[:i])
      if sub_stage in (stage_checks or {}) and sub_stage != "pipeline":
        # Checked now, taking what earlier stages write (their run directories, the trained
        # tokenizer) as present, and again when the pipeline reaches it.
        c.problems.extend(
            problem.replace("config.", f"config.{name}.", 1)
            for problem in stage_checks[sub_stage](*_as_run_in_pipeline(config, sub, names[:i])))
        continue
      if sub_stage not in TRAIN_STAGES:
        known = TRAIN_STAGES + tuple(sorted(set(stage_checks or ()) - {"pipeline"}))
        c.fail(f"{name}.stage", f"pipeline stages must be one of {known}, got {sub_stage!r}")
        continue
      sub_checker = _Checker(sub, f"config.{name}")
      _check_train_stage(sub_checker, num_devices, in_pipeline=True,
                         pipeline_stages=tuple(names[:i]))
      c.problems.extend(sub_checker.problems)
      model_vocab = _configured_vocab(sub)
      if not tok_path and pipeline_vocab and model_vocab and pipeline_vocab > model_vocab:
        c.fail("tokenizer.train_vocab_size", f"{pipeline_vocab} exceeds the vocab_size "
               f"{model_vocab} of the {name!r} stage's model")
  if stage == "pipeline" and c._lookup("report") is not _MISSING:
    report_stages = c.get("report.stages")
    if (not isinstance(report_stages, (tuple, list)) or not report_stages
        or (names and any(s not in names for s in report_stages))):
      c.fail("report.stages", f"expected some of the pipeline's stages {list(names or ())}, "
             f"got {report_stages!r}")
    else:  # the report samples each stage's latest params: a decoder's
      for name in report_stages:
        sub_stage = c._lookup(f"{name}.stage")
        if sub_stage not in DECODER_STAGES:
          c.fail("report.stages", f"{name!r} is a {sub_stage!r} stage, whose run has no decoder "
                 f"to sample; expected stages of kind {list(DECODER_STAGES)}")
    c.int("report.num_problems", minimum=0)
    c.int("report.max_new_tokens", minimum=1)
  if c.problems:
    raise ConfigError("bad config:\n  " + "\n  ".join(c.problems))
