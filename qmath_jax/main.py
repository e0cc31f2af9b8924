r"""The one entry point: `python -m qmath_jax.main --config=configs/<round>.py --workdir=DIR`.

    python -m qmath_jax.main --config=configs/demo.py --workdir=/tmp/qmath_demo
    python -m qmath_jax.main --config=configs/sft.py:model=qwen2.5-math-7b --workdir=/mnt/ckpt/... \
        --config.optim.lr=1e-5 --config.init.hf_dir=/ckpt/Qwen2.5-Math-7B

`config.stage` picks the runner from `STAGES` (pretrain, sft, rm, sample, rl, eval, pipeline;
later stages join with `register_stage`). The config is checked before any compute (`config_validation`); a run
resumes from `<workdir>/checkpoints` when it has one; SIGTERM/SIGINT save and exit 0.

A train stage is built in big_vision's order: config -> mesh -> tokenizer and data -> sharded
init -> jitted step -> eval hooks -> `loop.train` (checkpoint/resume and the loop).
"""

from collections.abc import Callable
import contextlib
import dataclasses
import functools
import json
import logging as py_logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from flax import linen as nn
import ml_collections
from ml_collections import config_flags
import numpy as np

from qmath_jax import config_validation
from qmath_jax.data import chat
from qmath_jax.data import pipelines
from qmath_jax.data import records
from qmath_jax.data import sources
from qmath_jax.data import synthetic
from qmath_jax.data import tokenizer as tokenizer_lib
from qmath_jax.model import config as model_config
from qmath_jax.model import presets
from qmath_jax.model import transformer
from qmath_jax.parallel import batch as batch_lib
from qmath_jax.parallel import distributed
from qmath_jax.parallel import hosts
from qmath_jax.parallel import mesh as mesh_lib
from qmath_jax.parallel import rules as rules_lib
from qmath_jax.train import checkpoint as checkpoint_lib
from qmath_jax.train import flops as flops_lib
from qmath_jax.train import loop
from qmath_jax.train import losses
from qmath_jax.train import metrics_writer
from qmath_jax.train import optimizer as optimizer_lib
from qmath_jax.train import reward_model
from qmath_jax.train import state as state_lib
from qmath_jax.train import step as step_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Round config file (`path.py` or `path.py:arg`).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, outputs.")

# stage name -> runner(config, workdir) -> summary dict.
STAGES: dict[str, Callable[[ml_collections.ConfigDict, str], dict]] = {}
# stage name -> check(config, pending=()) -> ["config.x: problem", ...], run before any
# compute; `pending` holds the paths earlier pipeline stages will create (taken as present).
STAGE_CHECKS: dict[str, Callable[..., list[str]]] = {}
TOKENIZER_FILE = "tokenizer.model"
MODEL_META = "model"


def register_stage(name: str, check: Callable[..., list[str]] | None = None):
  """Decorator: makes `runner(config, workdir)` the stage `name` of the entry point.

  `check(config, pending=())` returns the config's problems (one "config.field: what is
  wrong" string each); it runs before any compute, also for the stages of a pipeline, where
  the inputs that earlier stages will write are `pending` (paths taken as present). pretrain,
  sft and pipeline are checked by `config_validation` itself.
  """

  def decorate(runner):
    if name in STAGES:
      raise ValueError(f"stage {name!r} is already registered")
    STAGES[name] = runner
    if check is not None:
      STAGE_CHECKS[name] = check
    return runner

  return decorate


# ----------------------------------------------------------------------------- tokenizer


def _stage_texts(config) -> list[str]:
  """Text a tokenizer for this stage is trained on: its documents or rendered conversations."""
  if config.stage == "pretrain":
    return _pretrain_texts(config.data.source, config.data.num_examples, config.seed,
                           synthetic_cfg=synthetic_config(config))
  if config.stage == "rm":
    return [chat.render(row["messages"] + [{"role": "assistant", "content": r}])
            for row in _rm_lists(config, config.data.source, config.data.num_examples)
            for r in row["responses"]]
  return [chat.render(c["messages"])
          for c in _conversations(config.data.source, config.data.num_examples, config.seed,
                                  synthetic_cfg=synthetic_config(config))]


def _tokenizer(config, workdir: str):
  """Loads `tokenizer.path`, or trains (once, on the writer) a sentencepiece model into the
  workdir."""
  if config.tokenizer.path:
    return tokenizer_lib.load_tokenizer(config.tokenizer.path)
  path = os.path.join(workdir, TOKENIZER_FILE)
  hosts.write_once(lambda: os.path.exists(path) or tokenizer_lib.train_sentencepiece(
      _stage_texts(config), config.tokenizer.train_vocab_size, path), "tokenizer trained")
  return tokenizer_lib.load_tokenizer(path)


# ----------------------------------------------------------------------------- data


def synthetic_config(config) -> synthetic.SyntheticConfig:
  """The synthetic generator's difficulty knobs from `config.synthetic` (defaults if absent)."""
  knobs = config.get("synthetic")
  return synthetic.SyntheticConfig(**knobs.to_dict()) if knobs else synthetic.SyntheticConfig()


def _pretrain_texts(source: str, num_examples: int, seed: int, split: str = "train", *,
                    synthetic_cfg=synthetic.SyntheticConfig()):
  if source == config_validation.SYNTHETIC:
    if split == "train":
      return synthetic.corpus(num_examples, seed=seed, cfg=synthetic_cfg)
    return [f"Question: {p.question}\nAnswer: {p.solution}"
            for p in synthetic.generate(num_examples, seed=seed, split=split, cfg=synthetic_cfg)]
  bad_rows = records.BadRows()
  texts = []
  for line_no, row in records.read_jsonl(source, bad_rows):
    if isinstance(row.get("text"), str):
      texts.append(row["text"])
    else:
      bad_rows.add("missing field", f"{source}:{line_no}", "field 'text' (a string)")
  _report_bad_rows(source, bad_rows)
  return texts


def _conversations(source: str, num_examples: int, seed: int, split: str = "train", *,
                   synthetic_cfg=synthetic.SyntheticConfig()):
  if source == config_validation.SYNTHETIC:
    return pipelines.sft_conversations(synthetic.generate(num_examples, seed=seed, split=split,
                                                          cfg=synthetic_cfg))
  bad_rows = records.BadRows()
  examples = pipelines.load_conversations(source, bad_rows)
  _report_bad_rows(source, bad_rows)
  return examples


def _rm_lists(config, source: str, num_examples: int, split: str = "train"):
  """RM lists: planted errors in synthetic problems, or a jsonl of sampled, graded responses."""
  if source == config_validation.SYNTHETIC:
    problems = synthetic.generate(num_examples, seed=config.seed, split=split,
                                  cfg=synthetic_config(config))
    return pipelines.planted_rm_lists(problems, list_size=config.data.list_size,
                                      seed=config.seed)
  bad_rows = records.BadRows()
  lists = pipelines.load_rm_lists(source, bad_rows, list_size=config.data.list_size)
  _report_bad_rows(source, bad_rows)
  return lists


def _report_bad_rows(source, bad_rows):
  for reason, count in bad_rows.counts.items():
    logging.warning("%s: skipped %d rows (%s), e.g. %s", source, count, reason,
                    bad_rows.examples[reason][0])


def _pipeline(config, tokenizer, source, num_examples, *, split, per_host_batch, epochs, shuffle):
  cfg = pipelines.PipelineConfig(
      batch_size=per_host_batch, seq_len=config.data.seq_len, seed=config.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      num_epochs=epochs, shuffle=shuffle,
      num_packing_bins=config.data.num_packing_bins or None)
  if config.stage == "pretrain":
    texts = _pretrain_texts(source, num_examples, config.seed, split,
                            synthetic_cfg=synthetic_config(config))
    return pipelines.pretrain_pipeline(texts, tokenizer, cfg)
  if config.stage == "rm":
    return pipelines.rm_pipeline(_rm_lists(config, source, num_examples, split), tokenizer, cfg,
                                 list_size=config.data.list_size)
  return pipelines.sft_pipeline(_conversations(source, num_examples, config.seed, split,
                                               synthetic_cfg=synthetic_config(config)),
                                tokenizer, cfg, mask_tool_outputs=config.data.mask_tool_outputs)


# ----------------------------------------------------------------------------- model and init


def _init_run_meta(run_dir: str) -> dict:
  """The `meta` item of another run's latest checkpoint (its model config among it)."""
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(run_dir, loop.CHECKPOINT_DIR))
  try:
    return checkpointer.read_meta()
  finally:
    checkpointer.close()


def _model_config(config, tokenizer):
  """The ModelConfig: from the init checkpoint when there is one, else the preset."""
  numerics = dict(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                  attention=config.model.attention, remat_policy=config.model.remat_policy)
  if config.model.vocab_size and not any(config.init.values()):
    numerics["vocab_size"] = config.model.vocab_size
  if config.init.checkpoint:
    meta = _init_run_meta(config.init.checkpoint)
    if meta.get("stage") == "rm":  # every stage loads a decoder from init (rm: its backbone)
      raise ValueError(f"config.init.checkpoint {config.init.checkpoint!r} is an rm run: its "
                       "checkpoints hold a reward model, not a decoder")
    fields = meta.get(MODEL_META)
    if not fields:
      raise ValueError(f"init.checkpoint {config.init.checkpoint!r}: its checkpoint records no "
                       "model config")
    cfg = model_config.ModelConfig(**fields).replace(**numerics)
  elif config.init.params_dir:
    from qmath_jax import convert  # pylint: disable=g-import-not-at-top
    cfg = convert.read_params_config(config.init.params_dir).replace(**numerics)
  elif config.init.hf_dir:
    from qmath_jax import hf  # pylint: disable=g-import-not-at-top
    cfg = hf.read_config(config.init.hf_dir, config.model.param_dtype).replace(**numerics)
  else:
    cfg = presets.get_config(config.model.preset, **numerics)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                     f"{cfg.vocab_size}")
  return cfg


def _load_init_params(config, abstract_params):
  """Params from init.checkpoint / params_dir / hf_dir laid out as `abstract_params`."""
  if config.init.checkpoint:
    return checkpoint_lib.restore_params(
        os.path.join(config.init.checkpoint, loop.CHECKPOINT_DIR), abstract_params)
  shardings = jax.tree.map(lambda a: a.sharding, abstract_params)
  if config.init.params_dir:
    from qmath_jax import convert  # pylint: disable=g-import-not-at-top
    _, params = convert.load_params(config.init.params_dir, shardings,
                                    dtype=config.model.param_dtype)
    return params
  from qmath_jax import hf  # pylint: disable=g-import-not-at-top
  _, params = hf.load_hf(config.init.hf_dir, dtype=config.model.param_dtype,
                         shardings=shardings)
  return params


# ----------------------------------------------------------------------------- train stages


def _init_stage_params(config, init_params, abstract_params, param_shardings):
  """A stage's starting params from `config.init`, laid out as `param_shardings`.

  The reward model loads the decoder into its backbone (SPEC §3.2: initialised from the SFT
  model) and draws a fresh score head; the other stages load the decoder whole.
  """
  if config.stage != "rm":
    return _load_init_params(config, checkpoint_lib.abstract_with_shardings(
        abstract_params, param_shardings))
  backbone = _load_init_params(config, checkpoint_lib.abstract_with_shardings(
      abstract_params["backbone"], param_shardings["backbone"]))
  head = jax.jit(lambda rng: nn.unbox(init_params(rng))["score_head"],
                 out_shardings=param_shardings["score_head"])
  return {"backbone": backbone,
          "score_head": head(jax.random.fold_in(jax.random.key(config.seed), 2))}


def _eval_hook(config, loss_fn, eval_pipeline, mesh, param_shardings):
  """Weighted mean eval loss over the first `train.eval_batches` held-out batches."""

  @functools.partial(jax.jit, in_shardings=(param_shardings, rules_lib.batch_sharding(mesh)))
  def loss_and_weight(params, batch):
    loss, aux = loss_fn(params, batch, jax.random.key(0))
    weight = jnp.asarray(aux.get("weight", 1.0), jnp.float32)
    return loss * weight, weight

  def evaluate(state, step):
    del step
    total, weight, batches = 0.0, 0.0, 0
    eval_iter = iter(eval_pipeline.dataset)
    while batches < config.train.eval_batches:
      batch = next(eval_iter, None)
      if not hosts.all_processes(batch is not None)[0]:  # hosts' shards may end apart
        break
      s, w = jax.device_get(loss_and_weight(state.params, batch_lib.shard_batch(batch, mesh)))
      total, weight, batches = total + float(s), weight + float(w), batches + 1
    if not batches:
      raise ValueError(f"data.eval_source {config.data.eval_source!r} gives no full batch of "
                       f"{config.data.batch_size} rows of {config.data.seq_len} tokens")
    return {"loss": total / max(weight, 1e-12)}

  return loop.EvalHook(every=config.train.eval_every, fn=evaluate, prefix="eval")


def _optimizer(optim, total_steps: int):
  """(optax AdamW with its schedule, the schedule) from a config's `optim` fields."""
  return optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      peak_lr=optim.lr, end_lr=optim.end_lr, warmup_steps=optim.warmup_steps,
      total_steps=total_steps, decay=optim.decay, weight_decay=optim.weight_decay, b1=optim.b1,
      b2=optim.b2, clip_norm=optim.clip_norm))


def _stage_model(stage: str, model_cfg):
  """(module, `init(rng)` -> boxed params, loss name) of a train stage.

  pretrain and sft train the decoder (`lm` and `sft` losses); rm trains the reward model, the
  decoder under a score head, with the listwise ranking loss (SPEC §3.2).
  """
  if stage == "rm":
    rm = reward_model.make_reward_model(model_cfg)
    tokens = jnp.zeros((1, 8), jnp.int32)
    return rm, lambda rng: rm.init(rng, tokens)["params"], "rm_listwise"
  return (transformer.Transformer(model_cfg),
          lambda rng: transformer.init_params(model_cfg, rng, boxed=True),
          "lm" if stage == "pretrain" else "sft")


def run_train_stage(config, workdir: str) -> dict:
  """pretrain / sft / rm: config -> mesh -> data -> sharded init -> step -> eval -> loop."""
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh(tuple(config.mesh.shape))
  tokenizer = _tokenizer(config, workdir)
  model_cfg = _model_config(config, tokenizer)
  model, init_params, loss_name = _stage_model(config.stage, model_cfg)

  per_host_batch = config.data.batch_size // jax.process_count()
  train_pipeline = _pipeline(config, tokenizer, config.data.source, config.data.num_examples,
                             split="train", per_host_batch=per_host_batch,
                             epochs=config.data.num_epochs or None, shuffle=True)
  eval_pipeline = None
  if config.data.eval_source and config.train.eval_every:
    eval_pipeline = _pipeline(config, tokenizer, config.data.eval_source,
                              config.data.num_eval_examples, split="test",
                              per_host_batch=per_host_batch, epochs=1, shuffle=False)

  optimizer, schedule = _optimizer(config.optim, config.train.total_steps)
  init_state, shardings = state_lib.sharded_init(init_params, optimizer, mesh, config.seed)
  abstract_state = jax.eval_shape(init_state)
  if any(config.init.values()):
    def init_state_from(params):
      # A fresh state around loaded params; rng as `state.make_init_fn` draws it.
      rng = jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1))
      return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=optimizer.init(params), rng=rng)

    jitted = jax.jit(init_state_from, out_shardings=shardings, donate_argnums=0)
    init_state = lambda: jitted(_init_stage_params(config, init_params, abstract_state.params,
                                                   shardings.params))

  loss_options = {} if config.stage == "rm" else {"z_loss": config.optim.z_loss}
  loss_fn = losses.get_loss(loss_name, model, **loss_options)
  train_step = step_lib.make_train_step(
      loss_fn, optimizer, mesh=mesh, state_shardings=shardings, learning_rate_fn=schedule,
      num_microbatches=config.optim.num_microbatches)
  hooks = []
  if eval_pipeline is not None:
    hooks.append(_eval_hook(config, loss_fn, eval_pipeline, mesh, shardings.params))

  parts = loop.TrainParts(
      mesh=mesh, init_state=init_state, state_shardings=shardings, train_step=train_step,
      make_train_iter=lambda: iter(train_pipeline.dataset),
      put_batch=lambda batch: batch_lib.shard_batch(batch, mesh),
      flops_per_token=flops_lib.train_flops_per_token(
          model_cfg, config.data.seq_len, include_lm_head=config.stage != "rm"),
      eval_hooks=hooks, abstract_state=abstract_state)
  best_metric = config.checkpoint.best_metric if hooks else ""
  options = loop.LoopOptions(
      total_steps=config.train.total_steps, log_every=config.train.log_every,
      checkpoint_every=config.checkpoint.every, keep_last=config.checkpoint.keep_last,
      keep_best=config.checkpoint.keep_best, best_metric=best_metric or None,
      best_mode=config.checkpoint.best_mode, async_save=config.checkpoint.async_save)
  meta = {"stage": config.stage, MODEL_META: dataclasses.asdict(model_cfg),
          "config": json.loads(config.to_json_best_effort())}
  outcome = loop.train(parts, options, workdir, meta=meta)
  _report_bad_rows(f"{config.stage} data", train_pipeline.bad_rows)
  return {"stage": config.stage, "step": outcome.step, "preempted": outcome.preempted}


register_stage("pretrain")(run_train_stage)
register_stage("sft")(run_train_stage)
register_stage("rm")(run_train_stage)


@register_stage("pipeline")
def run_pipeline(config, workdir: str) -> dict:
  """Runs `config.stages` in order, each `config.<name>` in `<workdir>/<name>`.

  Every stage is checked with the pipeline, before any compute (the run directories and the
  tokenizer that earlier stages will write taken as present); rl, sample and eval stages
  again when the pipeline reaches them, once those inputs exist.

  A tokenizer is trained first (once, by the writer process) into `<workdir>/tokenizer.model`
  when `tokenizer.train_vocab_size` > 0 and no path is given, on synthetic documents and
  rendered conversations; every stage then uses it. The pipeline's `seed` is every stage's seed, so
  `--config.seed` reruns the whole pipeline with other draws. A stage's `init.checkpoint`
  naming an earlier stage ("pretrain") means that stage's run directory, and so does a
  `scorer.rm_checkpoint` naming one ("rm"). With `report.num_problems` > 0, the greedy
  accuracy of each stage in `report.stages` on held-out synthetic problems ends the pipeline
  (`<workdir>/accuracy.json`, one report per stage: SFT then RL, say).
  """
  os.makedirs(workdir, exist_ok=True)
  tokenizer_path = config.tokenizer.path
  if not tokenizer_path:
    tokenizer_path = os.path.join(workdir, TOKENIZER_FILE)

    def train_tokenizer():
      if os.path.exists(tokenizer_path):
        return
      n = config.tokenizer.num_documents
      knobs = synthetic_config(config)
      texts = synthetic.corpus(n, seed=config.seed, cfg=knobs) + [
          chat.render(c["messages"])
          for c in pipelines.sft_conversations(synthetic.generate(n, seed=config.seed,
                                                                  cfg=knobs))]
      tokenizer_lib.train_sentencepiece(texts, config.tokenizer.train_vocab_size,
                                        tokenizer_path)

    hosts.write_once(train_tokenizer, "pipeline tokenizer trained")
  results = {}
  for name in config.stages:
    sub = ml_collections.ConfigDict(config[name].to_dict())
    sub.tokenizer.path = tokenizer_path
    sub.seed = config.seed
    if sub.stage == "eval":  # the eval stage draws its samples with eval.seed
      sub.eval.seed = config.seed
    if config.get("synthetic"):
      sub.synthetic = config.synthetic
    if sub.init.checkpoint in config.stages:
      sub.init.checkpoint = os.path.join(workdir, sub.init.checkpoint)
    if sub.get("scorer") and sub.scorer.rm_checkpoint in config.stages:
      sub.scorer.rm_checkpoint = os.path.join(workdir, sub.scorer.rm_checkpoint)
    if sub.stage in STAGE_CHECKS:  # its inputs exist now that the earlier stages ran
      problems = STAGE_CHECKS[sub.stage](sub)
      if problems:
        raise config_validation.ConfigError(
            "bad config:\n  " + "\n  ".join(p.replace("config.", f"config.{name}.", 1)
                                            for p in problems))
    logging.info("pipeline: stage %s in %s", name, os.path.join(workdir, name))
    results[name] = STAGES[sub.stage](sub, os.path.join(workdir, name))
    if results[name].get("preempted"):
      return results
  report = config.get("report")
  if report is not None and report.num_problems:
    reports = {stage: greedy_accuracy(
        os.path.join(workdir, stage), tokenizer_path, num_problems=report.num_problems,
        seed=config.seed, max_new_tokens=report.max_new_tokens,
        synthetic_cfg=synthetic_config(config)) for stage in report.stages}
    path = os.path.join(workdir, ACCURACY_FILE)
    hosts.write_once(lambda: records.write_atomic(path, json.dumps(reports, indent=1)),
                     "accuracy report written")
    results["accuracy"] = {stage: {k: r[k] for k in ("accuracy", "correct", "total", "step")}
                           for stage, r in reports.items()}
  return results


# ----------------------------------------------------------------------------- eval stage


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


def _check_sampling_inputs(config, pending=()) -> list[str]:
  """Problems of the fields every sampling stage reads: params source, tokenizer, mesh."""
  problems = []
  given = [k for k in ("checkpoint", "params_dir", "hf_dir") if config.init.get(k)]
  if len(given) != 1:
    problems.append("config.init: give exactly one of checkpoint, params_dir, hf_dir "
                    f"(got {given or 'none'})")
  for key in given:
    if config.init[key] in pending:
      continue
    if not os.path.isdir(config.init[key]):
      problems.append(f"config.init.{key}: {config.init[key]!r} is not a directory")
    elif key == "checkpoint" and not any(  # else reading it would make an empty checkpoints/
        n.isdigit() for n in _listdir(os.path.join(config.init[key], loop.CHECKPOINT_DIR))):
      problems.append(f"config.init.checkpoint: no checkpoint in {config.init[key]!r} "
                      "(expected another run's workdir)")
  if config.tokenizer.path not in pending and (not config.tokenizer.path or
                                              not os.path.exists(config.tokenizer.path)):
    problems.append(f"config.tokenizer.path: {config.tokenizer.path!r} does not exist")
  try:
    mesh_lib.resolve_mesh_shape(tuple(config.mesh.shape), jax.device_count())
  except (ValueError, TypeError, AttributeError) as e:
    problems.append(f"config.mesh.shape: {e}")
  return problems


def _check_eval_stage(config, pending=()) -> list[str]:
  """Problems of an eval config, found before any compute."""
  from qmath_jax.evaluation import benchmarks, runner  # pylint: disable=g-import-not-at-top
  problems = _check_sampling_inputs(config, pending) + _check_rm_checkpoint(config, pending)
  try:
    eval_config = runner.EvalConfig.from_mapping(config.eval)
  except (ValueError, TypeError) as e:
    return problems + [f"config.eval: {e}"]
  if eval_config.prompt_type not in ("cot", "tir"):
    problems.append(f"config.eval.prompt_type: expected 'cot' or 'tir', got "
                    f"{eval_config.prompt_type!r}")
  unknown = [d for d in eval_config.datasets if d not in benchmarks.BENCHMARKS]
  if unknown:
    problems.append(f"config.eval.datasets: unknown {unknown}; known: "
                    f"{', '.join(sorted(benchmarks.BENCHMARKS))}")
  return problems


def _init_sampler(config):
  """(Sampler over `config.init`'s params on `config.mesh`, tokenizer, model config)."""
  from qmath_jax.sampling import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer.path)
  model_cfg = _model_config(config, tokenizer)
  mesh = mesh_lib.make_mesh(tuple(config.mesh.shape))
  boxed = jax.eval_shape(
      lambda: transformer.init_params(model_cfg, jax.random.key(0), boxed=True))
  params = _load_init_params(config, checkpoint_lib.abstract_with_shardings(
      nn.unbox(boxed), rules_lib.tree_shardings(boxed, mesh)))
  return sampler_lib.Sampler(model_cfg, params, tokenizer, mesh=mesh), tokenizer, model_cfg


@contextlib.contextmanager
def _prompt_sampler(config, sampler, tokenizer, prompt_type: str):
  """The sampler for CoT prompts, or the TIR loop around it with a live sandbox."""
  if prompt_type != "tir":
    yield sampler
    return
  from qmath_jax.sampling import tir  # pylint: disable=g-import-not-at-top
  from qmath_jax.sandbox import PythonSandbox  # pylint: disable=g-import-not-at-top
  with PythonSandbox(timeout=config.sandbox.timeout,
                     num_workers=config.sandbox.num_workers or None) as sandbox:
    yield tir.TirSampler(sampler, tokenizer, sandbox)


MODELS_FILE = "models.json"


def _params_source(path: str) -> dict:
  """Which params `path` gives: the directory, and for a run's workdir its latest step."""
  source = {"path": os.path.abspath(path)}
  if os.path.isdir(os.path.join(path, loop.CHECKPOINT_DIR)):
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(path, loop.CHECKPOINT_DIR))
    try:
      source["step"] = checkpointer.latest_step()
    finally:
      checkpointer.close()
  return source


def _check_models(config, workdir: str) -> None:
  """Records in `<workdir>/models.json` which policy and RM make a sampling stage's outputs
  (eval's cached samples, a finished round's files); raises ValueError when others made them:
  a rerun would report those as this model's."""
  init = next(config.init[k] for k in ("checkpoint", "params_dir", "hf_dir") if config.init[k])
  models = {"policy": _params_source(init), "rm": (
      _params_source(config.scorer.rm_checkpoint) if config.scorer.rm_checkpoint else None)}
  path = os.path.join(workdir, MODELS_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      recorded = json.load(f)
    if recorded != models:
      raise ValueError(f"{path}: the samples in {workdir} were made by {recorded}, not "
                       f"{models}; use another workdir, or empty this one")
  os.makedirs(workdir, exist_ok=True)
  hosts.write_once(lambda: os.path.exists(path) or records.write_atomic(
      path, json.dumps(models, indent=1)), "models recorded")


@register_stage("eval", check=_check_eval_stage)
def run_eval_stage(config, workdir: str) -> dict:
  """Greedy / maj@N / RM@N / pass@k on the benchmarks with `config.init`'s params (CoT or TIR).

  Writes `<workdir>/samples/<dataset>.jsonl` (resumable), `eval_results.json`,
  `eval_report.md` and `eval_scores.png`; returns the headline metric and group averages.
  A rerun reuses the cached samples only when the same params made them (`models.json`: the
  init and RM paths, and a run's latest step).
  """
  from qmath_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
  _check_models(config, workdir)
  sampler, tokenizer, _ = _init_sampler(config)
  eval_config = runner.EvalConfig.from_mapping(config.eval)
  score_fn = None
  if config.scorer.rm_checkpoint:  # RM@N: each problem's best response by the RM's score
    score_fn = _rm_scorer(config.scorer.rm_checkpoint, tokenizer, config.scorer.batch_size,
                          config.scorer.max_length, sampler.mesh).score_completions
  with _prompt_sampler(config, sampler, tokenizer, eval_config.prompt_type) as prompt_sampler:
    results = runner.run_eval(prompt_sampler, workdir, eval_config, score_fn)
  return {"metric": results["metric"], "averages": results["averages"],
          "datasets": {name: scores.get(results["metric"])
                       for name, scores in results["datasets"].items()}}


# ----------------------------------------------------------------------------- sample stage

SAMPLE_TASKS = ("sft", "rm", "rl")


def _check_sample_stage(config, pending=()) -> list[str]:
  """Problems of a sample config, found before any compute."""
  problems = _check_sampling_inputs(config, pending)
  if config.task not in SAMPLE_TASKS:
    problems.append(f"config.task: expected one of {SAMPLE_TASKS}, got {config.task!r}")
  if config.sample.prompt_type not in ("cot", "tir"):
    problems.append(f"config.sample.prompt_type: expected 'cot' or 'tir', got "
                    f"{config.sample.prompt_type!r}")
  if config.sample.n < 1:
    problems.append(f"config.sample.n: expected >= 1, got {config.sample.n}")
  if config.task == "rm" and config.sample.n != config.rm_data.list_size:
    problems.append(f"config.sample.n: {config.sample.n} responses per query, but "
                    f"config.rm_data.list_size is {config.rm_data.list_size}")
  problems += _check_rm_checkpoint(config, pending)
  return problems + _check_problem_sources(config, pending)


def _check_problem_sources(config, pending=()) -> list[str]:
  """Problems of `config.data.sources`: at least one; each a known source name, a jsonl file
  or 'synthetic' (with `data.num_examples` >= 1)."""
  if not config.data.sources:
    return ["config.data.sources: empty; give a jsonl path (e.g. a sample run's "
            f"queries.jsonl), 'synthetic' or some of {sorted(sources.SOURCES)}"]
  problems = []
  for name in config.data.sources:
    if name == config_validation.SYNTHETIC:
      if not isinstance(config.data.num_examples, int) or config.data.num_examples < 1:
        problems.append("config.data.num_examples: 'synthetic' is a source, so expected an "
                        f"integer >= 1, got {config.data.num_examples!r}")
      continue
    if name in pending:
      continue
    if name.endswith(".jsonl"):
      if not os.path.isfile(name):
        problems.append(f"config.data.sources: file {name!r} does not exist")
    elif name not in sources.SOURCES:
      problems.append(f"config.data.sources: unknown source {name!r}; give a jsonl path, "
                      f"'synthetic' or one of {sorted(sources.SOURCES)}")
  return problems


def _check_rm_checkpoint(config, pending=()) -> list[str]:
  """Problems of `config.scorer.rm_checkpoint`: empty, an rm run's workdir, or a Hugging Face
  reward-model directory (config.json naming Qwen2ForRewardModel, e.g. Qwen2.5-Math-RM-72B)."""
  from qmath_jax import hf  # pylint: disable=g-import-not-at-top
  rm = config.scorer.rm_checkpoint
  if not rm or rm in pending or hf.is_reward_model(rm):
    return []
  if os.path.isdir(os.path.join(rm, loop.CHECKPOINT_DIR)):
    try:
      stage = _init_run_meta(rm).get("stage")
    except FileNotFoundError:
      stage = None
    if stage == "rm":
      return []
    if stage is not None:
      return [f"config.scorer.rm_checkpoint: {rm!r} is a {stage!r} run, whose checkpoints hold "
              "a decoder, not a reward model (expected an rm run's workdir)"]
  return [f"config.scorer.rm_checkpoint: no checkpoints in {rm!r} (expected an rm run's "
          "workdir, or a Hugging Face reward-model directory whose config.json names "
          "Qwen2ForRewardModel)"]


def _problems(config, keep_empty_answers: bool = False) -> list:
  """Problems of `config.data.sources`, in order, at most `config.data.limit` of them."""
  problems = []
  for name in config.data.sources:
    if name == config_validation.SYNTHETIC:
      problems += synthetic.generate(config.data.num_examples, seed=config.seed,
                                     cfg=synthetic_config(config))
    else:
      bad_rows = records.BadRows()
      if name.endswith(".jsonl"):
        problems += sources.load_jsonl_problems(name, bad_rows=bad_rows)
      else:
        problems += sources.load(name, config.data.data_dir or None, bad_rows=bad_rows,
                                 keep_empty_answers=keep_empty_answers)
      _report_bad_rows(name, bad_rows)
  return problems[:config.data.limit] if config.data.limit else problems


# sample task -> the key under which its round records its own settings in summary.json.
_ROUND_SETTINGS = {"sft": "rejection", "rm": "rm_data", "rl": "rl_queries"}


def _finished_round(workdir: str, task: str, problems, sample_cfg, round_cfg) -> dict | None:
  """The `summary.json` of a round finished in `workdir` (written last), or None.

  Raises ValueError when it was made for another task, on other problems, or with other
  sampling or selection settings (`round_cfg`, the task's): its files are not this round's,
  and are not overwritten.
  """
  from qmath_jax.rounds import graded  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, graded.SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    summary = json.load(f)
  recorded = summary.get("config", {})
  wanted = json.loads(json.dumps({"sample": dataclasses.asdict(sample_cfg),
                                  _ROUND_SETTINGS[task]: dataclasses.asdict(round_cfg)}))
  if any(recorded.get(key) != value for key, value in wanted.items()):
    raise ValueError(f"{path}: a finished sample round made with other settings "
                     f"({recorded}), not task {task!r} with {wanted}; use another workdir or "
                     "delete its files")
  done = [row.get("id") for _, row in records.read_jsonl(
      os.path.join(workdir, graded.PROBLEMS_FILE), records.BadRows())]
  if done != [p.id for p in problems]:
    raise ValueError(f"{path}: a finished sample round of {len(done)} other problems than the "
                     f"{len(problems)} of config.data.sources; use another workdir or delete "
                     "its files")
  return summary


@register_stage("sample", check=_check_sample_stage)
def run_sample_stage(config, workdir: str) -> dict:
  """Samples the current model on problems and writes the next round's data (SPEC §3.1-3.3).

  task "sft": RM-guided rejection sampling -> `<workdir>/sft.jsonl` (the next SFT round's
  `data.source`); "rm": graded lists -> `<workdir>/rm.jsonl` (the rm stage's `data.source`);
  "rl": queries with 2 to 5 of 8 right -> `<workdir>/queries.jsonl`. Each also writes
  `problems.jsonl` (per-problem counts) and `summary.json`, last. A rerun in a workdir that
  has the `summary.json` of the same round, made by the same params (`models.json`), returns it
  and samples nothing.
  """
  from qmath_jax.rounds import graded, rejection, rl_queries, rm_data  # pylint: disable=g-import-not-at-top
  _check_models(config, workdir)
  problems = _problems(config, keep_empty_answers=config.task == "sft")
  sample_cfg = graded.SampleConfig(**config.sample.to_dict(), seed=config.seed)
  if config.task == "sft":
    round_cfg = rejection.RejectionConfig(**config.rejection.to_dict())
  elif config.task == "rm":
    round_cfg = rm_data.RmDataConfig(**config.rm_data.to_dict(), seed=config.seed)
  else:
    round_cfg = rl_queries.RlQueryConfig(**config.rl_queries.to_dict())
  summary = _finished_round(workdir, config.task, problems, sample_cfg, round_cfg)
  if summary is not None:
    logging.info("sample: %s already holds this round's files; nothing to do", workdir)
    return {"stage": "sample", "task": config.task, "problems": len(problems),
            "summary": summary}
  sampler, tokenizer, _ = _init_sampler(config)
  with _prompt_sampler(config, sampler, tokenizer, sample_cfg.prompt_type) as prompt_sampler:
    if config.task == "sft":
      scorer = _rm_scorer(config.scorer.rm_checkpoint, tokenizer, config.scorer.batch_size,
                          config.scorer.max_length,
                          sampler.mesh) if config.scorer.rm_checkpoint else None
      summary = rejection.rejection_round(prompt_sampler, problems, workdir, sample_cfg,
                                          round_cfg, scorer)
    elif config.task == "rm":
      summary = rm_data.rm_data_round(prompt_sampler, problems, workdir, sample_cfg, round_cfg)
    else:
      summary = rl_queries.rl_queries_round(prompt_sampler, problems, workdir, sample_cfg,
                                            round_cfg)
  return {"stage": "sample", "task": config.task, "problems": len(problems),
          "summary": summary}


def _rm_scorer(rm_checkpoint: str, tokenizer, batch_size: int, max_length: int, mesh):
  """`rl.rewards.RewardModelScorer` over `scorer.rm_checkpoint`, sharded on `mesh` (the stage's:
  rows over its batch axes, the RM's weights by the logical-axis rules): an rm run's latest
  checkpoint, or a Hugging Face Qwen2ForRewardModel directory (e.g. Qwen2.5-Math-RM-72B,
  loaded in its own dtype with `hf.load_hf_rm`)."""
  from qmath_jax import hf  # pylint: disable=g-import-not-at-top
  from qmath_jax.rl import rewards  # pylint: disable=g-import-not-at-top

  def check_vocab(model_cfg):  # before any sampling, not at the first id past its embedding
    if tokenizer.vocab_size > model_cfg.vocab_size:
      raise ValueError(f"config.scorer.rm_checkpoint {rm_checkpoint!r}: its vocab_size is "
                       f"{model_cfg.vocab_size}, but the tokenizer has {tokenizer.vocab_size} ids")

  if hf.is_reward_model(rm_checkpoint):
    model_cfg = hf.read_config(rm_checkpoint, dtype=None)
    check_vocab(model_cfg)
    _, shardings = _stage_shardings("rm", model_cfg, mesh)
    _, params = hf.load_hf_rm(rm_checkpoint, dtype=model_cfg.param_dtype, shardings=shardings,
                              config=model_cfg)
  else:
    model_cfg, params, _ = latest_run_params(rm_checkpoint, mesh)
    check_vocab(model_cfg)
  return rewards.RewardModelScorer(model_cfg, params, tokenizer, batch_size=batch_size,
                                   max_length=max_length, mesh=mesh)


# ----------------------------------------------------------------------------- rl stage


def _check_rl_stage(config, pending=()) -> list[str]:
  """Problems of an rl config, found before any compute."""
  problems = _check_sampling_inputs(config, pending) + _check_problem_sources(config, pending)
  rl = config.rl
  for field in ("episodes", "problems_per_episode", "group_size", "max_new_tokens", "seq_len"):
    if not isinstance(rl[field], int) or rl[field] < (2 if field == "group_size" else 1):
      problems.append(f"config.rl.{field}: expected an integer >= "
                      f"{2 if field == 'group_size' else 1}, got {rl[field]!r}")
  if not isinstance(rl.minibatch_rows, int) or rl.minibatch_rows < 0:
    problems.append("config.rl.minibatch_rows: expected an integer >= 0 (0: one optimizer step "
                    f"per episode), got {rl.minibatch_rows!r}")
  numbers = {"rl.clip_eps": ("a number > 0", lambda v: v > 0),
             "rl.kl_beta": ("a number >= 0", lambda v: v >= 0),
             "sample.temperature": ("a number >= 0", lambda v: v >= 0),
             "sample.top_p": ("a number in (0, 1]", lambda v: 0 < v <= 1)}
  for field, (expected, ok) in numbers.items():
    section, key = field.split(".")
    value = config[section][key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
      problems.append(f"config.{field}: expected {expected}, got {value!r}")
  microbatches = config.optim.num_microbatches
  if not isinstance(microbatches, int) or microbatches < 1:
    problems.append(f"config.optim.num_microbatches: expected an integer >= 1, got "
                    f"{microbatches!r}")
  if not problems:
    rows = rl.problems_per_episode * rl.group_size
    if rl.minibatch_rows and rows % rl.minibatch_rows:
      problems.append(f"config.rl.minibatch_rows: {rows} rows per episode (problems_per_episode "
                      f"x group_size) do not split into minibatches of {rl.minibatch_rows}")
    else:
      step_rows = rl.minibatch_rows or rows
      shape = mesh_lib.resolve_mesh_shape(tuple(config.mesh.shape), jax.device_count())
      if step_rows % (shape[0] * shape[1] * microbatches):
        problems.append(f"config.optim.num_microbatches: {step_rows} rows per optimizer step do "
                        f"not split into {microbatches} microbatch(es) over data x fsdp = "
                        f"{shape[0] * shape[1]} device groups")
  if rl.normalisation not in losses.NORMALISATIONS:
    problems.append(f"config.rl.normalisation: expected one of {list(losses.NORMALISATIONS)}, "
                    f"got {rl.normalisation!r}")
  if config.sample.prompt_type not in ("cot", "tir"):
    problems.append(f"config.sample.prompt_type: expected 'cot' or 'tir', got "
                    f"{config.sample.prompt_type!r}")
  problems += _check_rm_checkpoint(config, pending)
  return problems + config_validation.check_optim_and_checkpoint(config)


def _episode_problems(problems: list, episode: int, per_episode: int, seed: int) -> list:
  """The problems of `episode`: consecutive slices of a per-epoch seeded shuffle."""
  start = episode * per_episode
  chosen = []
  while len(chosen) < per_episode:
    epoch, offset = divmod(start + len(chosen), len(problems))
    order = np.random.default_rng([seed, epoch]).permutation(len(problems))
    chosen += [problems[i] for i in order[offset:offset + per_episode - len(chosen)]]
  return chosen


@register_stage("rl", check=_check_rl_stage)
def run_rl_stage(config, workdir: str) -> dict:
  """GRPO from `config.init` (SPEC §3.3): episodes of rollout, reward, minibatched steps.

  The init params are both the starting policy and the frozen reference. Each episode samples
  `rl.group_size` responses for each of the next `rl.problems_per_episode` problems, rewards
  them (the verifier, shaped by the reward model of `scorer.rm_checkpoint` when given) and
  takes `problems_per_episode * group_size / minibatch_rows` optimizer steps
  (`qmath_jax.rl.grpo`). Episode metrics go to `metrics.jsonl` (step = episode); the state is
  checkpointed every `checkpoint.every` episodes, at the end and on SIGTERM/SIGINT (after the
  episode in flight), and a rerun resumes there.
  """
  from qmath_jax.rl import grpo, rollout  # pylint: disable=g-import-not-at-top
  from qmath_jax.sampling import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  rl = config.rl
  mesh = mesh_lib.make_mesh(tuple(config.mesh.shape))
  tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer.path)
  model_cfg = _model_config(config, tokenizer)
  rows = rl.problems_per_episode * rl.group_size
  steps_per_episode = rows // (rl.minibatch_rows or rows)
  optimizer, schedule = _optimizer(config.optim, rl.episodes * steps_per_episode)
  _, init_params, _ = _stage_model("sft", model_cfg)
  init_state, shardings = state_lib.sharded_init(init_params, optimizer, mesh, config.seed)
  abstract_state = checkpoint_lib.abstract_with_shardings(jax.eval_shape(init_state), shardings)
  load = lambda: _load_init_params(config, abstract_state.params)
  ref_params = load()  # the frozen reference; the policy gets its own copy (its state is donated)

  checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(workdir, loop.CHECKPOINT_DIR), keep_last=config.checkpoint.keep_last,
      async_save=config.checkpoint.async_save)
  done = checkpointer.latest_step() or 0
  if done:
    state, _, _ = checkpointer.restore(done, abstract_state)
  else:
    rng = jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1))
    state = jax.jit(lambda params: state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
        rng=rng), out_shardings=shardings, donate_argnums=0)(load())

  grpo_cfg = grpo.GrpoConfig(
      rollout=rollout.RolloutConfig(
          group_size=rl.group_size, temperature=config.sample.temperature,
          top_p=config.sample.top_p, max_new_tokens=rl.max_new_tokens,
          system=chat.SYSTEM_PROMPTS[config.sample.prompt_type], alpha=rl.alpha,
          scale_advantages_by_std=rl.scale_advantages_by_std),
      seq_len=rl.seq_len, minibatch_rows=rl.minibatch_rows or None, clip_eps=rl.clip_eps,
      kl_beta=rl.kl_beta, normalisation=rl.normalisation)
  train_step = grpo.make_grpo_step(model_cfg, optimizer, grpo_cfg, mesh=mesh,
                                   state_shardings=shardings, learning_rate_fn=schedule,
                                   num_microbatches=config.optim.num_microbatches)
  scorer = _rm_scorer(config.scorer.rm_checkpoint, tokenizer, config.scorer.batch_size,
                      config.scorer.max_length, mesh) if config.scorer.rm_checkpoint else None
  problems = _problems(config)
  if not problems:
    raise ValueError(f"rl: no problems in config.data.sources {list(config.data.sources)}")
  sampler = sampler_lib.Sampler(model_cfg, ref_params, tokenizer, mesh=mesh)
  meta = {"stage": "rl", MODEL_META: dataclasses.asdict(model_cfg),
          "config": json.loads(config.to_json_best_effort())}
  writer = metrics_writer.MetricsWriter(workdir, rl.episodes, is_main=hosts.is_writer())
  writer.start(done)
  metrics, episode = {}, done
  try:
    with loop.StopSignals() as signals, _prompt_sampler(
        config, sampler, tokenizer, config.sample.prompt_type) as policy:
      stop = False
      while episode < rl.episodes and not stop:
        state, metrics = grpo.grpo_iteration(
            state, train_step, policy, tokenizer,
            _episode_problems(problems, episode, rl.problems_per_episode, config.seed),
            model_cfg, ref_params, grpo_cfg, seed=config.seed + episode, scorer=scorer)
        episode += 1
        writer.write(episode, metrics)
        writer.advance(episode)
        # SIGTERM/SIGINT: save the finished episode, exit 0. Hosts signalled an episode apart
        # agree, so that every one saves the same episode.
        stop = not hosts.all_processes(not signals.received)[0]
        if episode % config.checkpoint.every == 0 or episode == rl.episodes or stop:
          checkpointer.save(episode, state, meta=dict(meta, episode=episode))
  finally:
    checkpointer.close()
    writer.close()
  return {"stage": "rl", "step": episode, "episodes_run": episode - done,
          "preempted": episode < rl.episodes, **metrics}


# ----------------------------------------------------------------------------- accuracy


ACCURACY_FILE = "accuracy.json"


def _stage_shardings(stage: str, model_cfg, mesh=None):
  """(abstract params, their shardings) of a stage's model (`_stage_model`): all on one local
  device, or with `mesh` sharded over it by the logical-axis rules."""
  _, init, _ = _stage_model(stage, model_cfg)
  boxed = jax.eval_shape(lambda: init(jax.random.key(0)))
  abstract = nn.unbox(boxed)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return abstract, jax.tree.map(lambda _: device, abstract)
  return abstract, rules_lib.tree_shardings(boxed, mesh)


def latest_run_params(run_dir: str, mesh=None):
  """(ModelConfig, params, step) of a run directory's latest checkpoint.

  The params are the decoder's, or for an rm run the reward model's (backbone + score head):
  on one local device, or with `mesh` sharded over it by the logical-axis rules (a model too
  large for one device; a mesh spanning several processes).
  """
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(run_dir, loop.CHECKPOINT_DIR))
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f"{run_dir}: no checkpoint to read params from")
    meta = checkpointer.read_meta(step)
  finally:
    checkpointer.close()
  model_cfg = model_config.ModelConfig(**meta[MODEL_META])
  abstract, shardings = _stage_shardings(meta.get("stage", "sft"), model_cfg, mesh)
  params = checkpoint_lib.restore_params(
      os.path.join(run_dir, loop.CHECKPOINT_DIR),
      checkpoint_lib.abstract_with_shardings(abstract, shardings))
  return model_cfg, params, step


def greedy_accuracy(run_dir: str, tokenizer_path: str, *, num_problems: int, seed: int,
                    max_new_tokens: int, synthetic_cfg=synthetic.SyntheticConfig()) -> dict:
  """Greedy CoT accuracy of a run's latest params on held-out synthetic problems.

  The problems come from the generator's "test" split (disjoint from training); each answer
  is graded as evaluation grades (`evaluation.benchmarks.grade_texts`). Returns
  `{"accuracy", "correct", "total", "step", "examples": [...]}`.
  """
  from qmath_jax.evaluation import benchmarks  # pylint: disable=g-import-not-at-top
  from qmath_jax.sampling import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  model_cfg, params, step = latest_run_params(run_dir)
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_path)
  sampler = sampler_lib.Sampler(model_cfg, params, tokenizer)
  problems = synthetic.generate(num_problems, seed=seed, split="test", cfg=synthetic_cfg)
  prompts = [chat.render(pipelines.prompt_messages(p), add_generation_prompt=True)
             for p in problems]
  completions = sampler.generate(prompts, temperature=0.0, max_new_tokens=max_new_tokens)
  examples = []
  for problem, (completion,) in zip(problems, completions):
    (predicted,), (correct,) = benchmarks.grade_texts(
        [completion.text], problem.answer, problem.dataset, problem.is_choice)
    examples.append({"id": problem.id, "gold": problem.answer, "predicted": predicted,
                     "correct": bool(correct)})
  correct = sum(e["correct"] for e in examples)
  report = {"accuracy": correct / len(examples), "correct": correct, "total": len(examples),
            "step": step, "examples": examples}
  logging.info("greedy accuracy of %s on %d held-out problems: %.3f", run_dir, len(examples),
               report["accuracy"])
  return report


# ----------------------------------------------------------------------------- entry


def check_workdir(workdir: str) -> None:
  """Raises ConfigError for an empty workdir or one given as a URL (gs://, s3://, ...).

  The stages write metrics, jsonl outputs, reports and the tokenizer with local file calls
  (appends and renames that object stores do not offer), so a URL would leave those in a
  local folder named after it while checkpoints went to the bucket. Mount the bucket instead
  (e.g. `gcsfuse BUCKET /mnt/BUCKET`, then `--workdir=/mnt/BUCKET/run`).
  """
  if not workdir:
    raise config_validation.ConfigError(
        f"--workdir={workdir or ''}: expected a directory for the run's checkpoints and outputs")
  if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", workdir):
    raise config_validation.ConfigError(
        f"--workdir={workdir}: a URL is not supported; mount the bucket (e.g. `gcsfuse "
        f"BUCKET /mnt/BUCKET`) and pass the mounted path, e.g. --workdir=/mnt/BUCKET/run")


def run(config, workdir: str) -> dict:
  """Validates `config` and `workdir` (before any compute) and runs its stage in `workdir`."""
  check_workdir(workdir)
  config_validation.validate(config, STAGES, jax.device_count(), STAGE_CHECKS)
  return STAGES[config.stage](config, workdir)


class _QuietLibraries(py_logging.Filter):
  """Drops INFO lines of orbax and JAX internals (every checkpoint logs dozens)."""

  def filter(self, record):
    quiet = ("/orbax/", "/jax/_src/")
    return record.levelno >= py_logging.WARNING or not any(q in record.pathname for q in quiet)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  distributed.initialize()
  config = _CONFIG.value
  try:
    result = run(config, _WORKDIR.value)
  except config_validation.ConfigError as e:
    raise app.UsageError(str(e)) from None
  logging.info("done: %s", json.dumps(result))
  print(json.dumps(result), flush=True)


def _unknown_override(argv, config) -> str | None:
  """'flag --config.a.b=v: config.a has no field 'b' (it has: ...)' for the first override in
  `argv` whose path `config` lacks; None when every path is there."""
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    node, parent = config, "config"
    for part in arg[len("--config."):].split("=", 1)[0].split("."):
      if not isinstance(node, ml_collections.ConfigDict):
        return f"flag {arg}: {parent} is {node!r}, not a config with fields"
      if part not in node:
        return (f"flag {arg}: {parent} has no field {part!r} (it has: "
                f"{', '.join(sorted(node.keys()))})")
      node, parent = node[part], f"{parent}.{part}"
  return None


def _parse_flags(argv):
  """absl's flag parsing; a `--config.x=v` naming no field of the config is a usage error.

  ml_collections raises a bare KeyError or AttributeError ("'nope'") for it from inside the
  parse, which absl shows as a traceback naming no flag.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    problem = None
    files = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    if files:  # the config as its file makes it, before the overrides
      problem = _unknown_override(argv, flags.FLAGS["config"].parser.parse(files[-1]))
    sys.stderr.write(f"FATAL Flags parsing error: {problem or e}\n")
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=_parse_flags)
