"""The training loop every stage runs: resume, step, evaluate, checkpoint, stop cleanly.

A stage (pretrain, SFT, RM, RL) builds its pieces in big_vision's order (config -> mesh ->
data -> sharded init -> jitted step -> eval hooks) into a `TrainParts`, and `train` runs them:

    checkpoint/resume -> loop: next batch -> step -> metrics -> eval hooks -> checkpoint

What `train` guarantees:
  * Exact resume: the checkpoint at step s holds the state after s steps and the data iterator
    positioned after s batches, so a run killed anywhere and restarted gives the same losses
    and the same final params as a straight run (bitwise on one machine).
  * Preemption: SIGTERM or SIGINT lets the current step finish, saves it, and returns
    `Outcome(preempted=True)`; the entry point then exits 0.
  * A non-finite loss stops the run with `NonFiniteLossError` before any state holding it is
    saved, so the last checkpoint on disk is the last good one.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qmath_jax.parallel import hosts
from qmath_jax.train import checkpoint as checkpoint_lib
from qmath_jax.train import metrics_writer

CHECKPOINT_DIR = "checkpoints"


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the run stopped without saving that state."""


@dataclasses.dataclass
class EvalHook:
  """A periodic evaluation: `fn(state, step) -> {name: scalar}` every `every` steps.

  Its metrics are written as `<prefix>/<name>`; the checkpoint's best-by-metric retention reads
  `<prefix>/<name>` too.
  """
  every: int
  fn: Callable[[Any, int], Mapping[str, float]]
  prefix: str = "eval"


@dataclasses.dataclass
class TrainParts:
  """What a stage hands to `train`.

  Attributes:
    mesh: the device mesh the state and batches live on.
    init_state: `() -> state`, jitted with `out_shardings=state_shardings`, so the state is
      created in its shards; called only when the run has no checkpoint of its own (so an
      initialisation from another run's or an HF checkpoint belongs inside it).
    state_shardings: pytree of shardings matching the state (its restore target).
    train_step: `(state, batch) -> (state, metrics)`, jitted; `metrics["loss"]` a scalar.
    make_train_iter: `() -> iterator` of host-local numpy batches (dicts); a grain iterator
      whose `get_state`/`set_state` the checkpoint stores. A fresh one starts at the beginning.
    put_batch: host-local numpy batch -> global device batch on `mesh`.
    flops_per_token: model training FLOPs per token (forward + backward), for TFLOP/s; 0 skips.
    eval_hooks: periodic evaluations.
    abstract_state: ShapeDtypeStructs of the state (the restore target's shapes); default
      `jax.eval_shape(init_state)` (give it when `init_state` reads files, e.g. HF weights).
  """
  mesh: jax.sharding.Mesh
  init_state: Callable[[], Any]
  state_shardings: Any
  train_step: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]]
  make_train_iter: Callable[[], Iterator[Mapping[str, np.ndarray]]]
  put_batch: Callable[[Mapping[str, np.ndarray]], Any]
  flops_per_token: float = 0.0
  eval_hooks: Sequence[EvalHook] = ()
  abstract_state: Any = None


@dataclasses.dataclass
class LoopOptions:
  """How long to run and how often to log, evaluate and save (the config's `train`/`checkpoint`).

  Attributes:
    total_steps: the step count at which the run ends.
    log_every: steps between metrics rows and log lines.
    checkpoint_every: steps between checkpoints (the last step is always saved).
    keep_last / keep_best / best_metric / best_mode: retention (see `checkpoint.Checkpointer`).
    async_save: background checkpoint writes.
    show_progress: tqdm progress bar on the main process.
    stop_after: stop (saving) once this step is reached, even if before `total_steps`; None
      runs to the end. For staged runs and tests of resume.
  """
  total_steps: int
  log_every: int = 10
  checkpoint_every: int = 500
  keep_last: int = 3
  keep_best: int = 1
  best_metric: str | None = None
  best_mode: str = "min"
  async_save: bool = True
  show_progress: bool = True
  stop_after: int | None = None


@dataclasses.dataclass
class Outcome:
  """How `train` ended: the step reached, whether a signal stopped it, the final state."""
  step: int
  preempted: bool
  state: Any


class StopSignals:
  """Turns the first SIGTERM/SIGINT into a flag checked between steps.

  The previous handlers come back as soon as one signal arrived (and on exit), so a second
  signal stops a run that is stuck (e.g. waiting for data) the usual way.
  """

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: signals stay with their owner.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    logging.warning("%s received: finishing the current step, then saving (send it again to "
                    "stop at once)", self.received)
    self._restore()

  def _restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore()


def _batch_tokens(batch: Mapping[str, np.ndarray]) -> int:
  """Non-padding tokens in a host-local batch (segment_ids > 0, else every token)."""
  if "segment_ids" in batch:
    return int(np.count_nonzero(np.asarray(batch["segment_ids"])))
  first = next(iter(batch.values()))
  return int(np.asarray(first).size)


def _check_finite(step: int, loss: float, step_finite: bool = True):
  """Raises NonFiniteLossError for a NaN/inf loss, or a step that flagged its gradient."""
  if not math.isfinite(loss) or not step_finite:
    what = f"loss is {loss}" if not math.isfinite(loss) else "gradient is not finite"
    raise NonFiniteLossError(
        f"{what} at step {step}; stopping without saving this state (the last "
        "checkpoint on disk is the last good one). Lower the learning rate or check the data.")


@jax.jit
def _all_finite(state) -> jax.Array:
  """True when every floating-point leaf of `state` is free of NaN and inf."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def train(parts: TrainParts, options: LoopOptions, workdir: str | os.PathLike,
          meta: Mapping[str, Any] | None = None) -> Outcome:
  """Runs (or resumes) a training run in `workdir` until `options.total_steps`.

  Args:
    parts: the stage's mesh, state, step, data and eval hooks.
    options: step counts and intervals.
    workdir: run directory: `checkpoints/`, `metrics.jsonl`, `tensorboard/`.
    meta: JSON-able run description stored with every checkpoint (e.g. the config).

  Returns:
    The `Outcome`. Raises `NonFiniteLossError` on a NaN/inf loss.
  """
  workdir = os.fspath(workdir)
  is_main = jax.process_index() == 0
  checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(workdir, CHECKPOINT_DIR), keep_last=options.keep_last,
      best_metric=options.best_metric, best_mode=options.best_mode,
      keep_best=options.keep_best, async_save=options.async_save)
  writer = metrics_writer.MetricsWriter(workdir, options.total_steps, is_main=is_main,
                                        show_progress=options.show_progress)
  meta = dict(meta or {}, mesh_shape=dict(parts.mesh.shape))
  try:
    return _run(parts, options, checkpointer, writer, meta)
  finally:
    writer.close()
    checkpointer.close()


def _run(parts, options, checkpointer, writer, meta) -> Outcome:
  # Resume from this run's own checkpoint, else initialise.
  data_iter = parts.make_train_iter()
  step = checkpointer.latest_step()
  if step is not None:
    abstract = parts.abstract_state
    if abstract is None:
      abstract = jax.eval_shape(parts.init_state)
    abstract = checkpoint_lib.abstract_with_shardings(abstract, parts.state_shardings)
    state, data_iter, _ = checkpointer.restore(step, abstract, data_iter)
    logging.info("resumed from step %d in %s", step, checkpointer.directory)
  else:
    step = 0
    state = parts.init_state()
  writer.start(step)
  end_step = options.total_steps
  if options.stop_after is not None:
    end_step = min(end_step, options.stop_after)

  num_local_devices = jax.local_device_count()
  pending = []  # (step, metrics on device) since the last host read.
  window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
  preempted = False
  saved_step = step if checkpointer.latest_step() == step else None

  def flush(now_step, final=False):
    """Reads pending metrics to the host, checks every loss, writes the logging steps' rows.

    Throughput covers the steps since the last written row.
    """
    nonlocal window_start, window_tokens, window_steps
    rows = jax.device_get([m for _, m in pending])
    for (s, _), row in zip(pending, rows):
      _check_finite(s, float(row["loss"]), bool(row.get("finite", True)))
    for (s, _), row in zip(pending, rows):
      if s % options.log_every and not (final and s == now_step):
        continue
      row = dict(row)
      elapsed = time.perf_counter() - window_start
      if s == now_step and window_steps and elapsed > 0:
        tokens_per_sec = window_tokens / elapsed / num_local_devices
        row["tokens_per_sec_per_device"] = tokens_per_sec
        row["step_time_s"] = elapsed / window_steps
        if parts.flops_per_token:
          row["tflops_per_device"] = tokens_per_sec * parts.flops_per_token / 1e12
        window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
      writer.write(s, row)
    pending.clear()

  def save(at_step, eval_metrics=None, final=False):
    nonlocal saved_step
    if pending:
      flush(at_step, final)  # Never save a state whose loss was not checked.
    if not bool(_all_finite(state)):
      raise NonFiniteLossError(
          f"the train state holds NaN or inf after step {at_step} (its loss was finite); "
          "stopping without saving it (the last checkpoint on disk is the last good one).")
    checkpointer.save(at_step, state, data_iter, metrics=eval_metrics, meta=meta)
    saved_step = at_step

  with StopSignals() as signals:
    while step < end_step:
      try:
        batch = next(data_iter)
      except StopIteration:
        batch = None
      # Processes stop together: a host whose data shard ends a batch early must not leave the
      # others waiting in the next step's collectives.
      if not hosts.all_processes(batch is not None)[0]:
        logging.info("training data exhausted at step %d", step)
        break
      window_tokens += _batch_tokens(batch)
      state, step_metrics = parts.train_step(state, parts.put_batch(batch))
      step += 1
      window_steps += 1
      pending.append((step, step_metrics))
      if step % options.log_every == 0:
        flush(step)
      writer.advance(step)

      eval_metrics = None
      for hook in parts.eval_hooks:
        if step % hook.every == 0 or step == options.total_steps:
          if pending:
            flush(step)
          values = {f"{hook.prefix}/{k}": float(v) for k, v in hook.fn(state, step).items()}
          writer.write(step, values)
          eval_metrics = {**(eval_metrics or {}), **values}
          # Eval time is not training time: restart the throughput window after it.
          window_start, window_tokens, window_steps = time.perf_counter(), 0, 0

      # A signal reaches the hosts at slightly different steps; all save the same step.
      if not hosts.all_processes(not signals.received)[0]:
        preempted = True
        save(step, eval_metrics, final=True)
        break
      best_candidate = bool(eval_metrics) and options.best_metric in eval_metrics
      if step % options.checkpoint_every == 0 or step == end_step or best_candidate:
        save(step, eval_metrics, final=step == end_step)

    if pending:
      flush(step, final=True)
    if saved_step != step:
      save(step, final=True)
    checkpointer.wait()
  if preempted:
    logging.warning("stopped by %s at step %d; checkpoint saved",
                    signals.received or "another process's signal", step)
  return Outcome(step=step, preempted=preempted, state=state)
