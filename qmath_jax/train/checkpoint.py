"""Orbax checkpoints of a training run: state, data-iterator position and run metadata.

One checkpoint step directory holds three items:
  `state`: the train state pytree (step, params, optimizer state, rng), every array saved from
    its shards, so a restore can lay it out on any other mesh (pass the target shardings).
  `data`:  the grain iterator's position, one JSON file per process (grain's own orbax handler),
    so a resumed run reads exactly the batches the straight run would have read.
  `meta`:  JSON: the step, the mesh shape it was written on, the config (best effort).

Saves are asynchronous: `save` returns once the arrays are copied off the devices and the write
goes on in the background; a process killed mid-write leaves only a temporary directory, which
`latest_step` ignores and the next manager removes. Retention keeps the last `keep_last` steps
and, when an eval metric is given, the `keep_best` best steps by that metric.
"""

from collections.abc import Mapping
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

STATE = "state"
DATA = "data"
META = "meta"


def _is_key(x) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
  """Typed PRNG keys become their uint32 key data (orbax stores plain arrays only)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_keys_to_data(abstract_tree):
  """The abstract counterpart of `_keys_to_data`: shapes and shardings of the key data."""

  def convert(x):
    if not _is_key(x):
      return x
    data = jax.eval_shape(jax.random.key_data, x)
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      spec = tuple(sharding.spec) + (None,) * (len(data.shape) - len(sharding.spec))
      sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)

  return jax.tree.map(convert, abstract_tree)


def _data_to_keys(abstract_tree, restored_tree):
  """Wraps restored key data back into typed keys where the target holds keys."""

  def convert(target, value):
    if not _is_key(target):
      return value
    impl = []  # key_impl reads the key type while tracing, from the abstract target alone.
    jax.eval_shape(lambda key: impl.append(jax.random.key_impl(key)), target)
    return jax.random.wrap_key_data(value, impl=impl[0])

  return jax.tree.map(convert, abstract_tree, restored_tree)


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs of `abstract_tree` carrying the matching leaf of `shardings`."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


class Checkpointer:
  """Saves and restores one run's checkpoints under `directory`.

  Args:
    directory: where the step directories go (created when missing).
    keep_last: how many of the most recent steps to keep.
    best_metric: name of an eval metric passed to `save(metrics=...)`; the `keep_best` best
      steps by it are kept as well as the last ones. None keeps only the last ones.
    best_mode: "min" or "max": which end of `best_metric` is best.
    keep_best: how many best steps to keep.
    async_save: write in a background thread (True) or block in `save` (False).
  """

  def __init__(self, directory: str | os.PathLike, *, keep_last: int = 3,
               best_metric: str | None = None, best_mode: str = "min", keep_best: int = 1,
               async_save: bool = True):
    if keep_last < 1:
      raise ValueError(f"checkpoint keep_last must be >= 1, got {keep_last}")
    if best_mode not in ("min", "max"):
      raise ValueError(f"checkpoint best_mode must be 'min' or 'max', got {best_mode!r}")
    self.directory = os.fspath(directory)
    self.best_metric = best_metric
    policies = [checkpoint_managers.LatestN(n=keep_last)]
    best_fn = None
    if best_metric:
      best_fn = lambda metrics: float(metrics[best_metric])
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=best_mode == "min", n=keep_best,
          keep_checkpoints_without_metrics=False))
    # best_fn also makes orbax write each step's metrics to disk (a restarted run's BestN
    # would otherwise see no metrics and delete the best step) and drives `best_step`.
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       DATA: grain.checkpoint.CheckpointHandler(),
                       META: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    """The newest fully written step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The best step by `best_metric` among those kept, or None."""
    return self._manager.best_step() if self.best_metric else None

  def save(self, step: int, state: Any, data_iterator: Any = None,
           metrics: Mapping[str, float] | None = None,
           meta: Mapping[str, Any] | None = None) -> bool:
    """Starts saving `state` (and the iterator position) as `step`; returns when it was started.

    `metrics` are the eval metrics of this step, used to keep the best ones; they are
    ignored (the step ranks as one without metrics) when they lack `best_metric`.
    """
    items = {STATE: ocp.args.StandardSave(_keys_to_data(state)),
             META: ocp.args.JsonSave(dict(meta or {}, step=int(step)))}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    if metrics is not None and self.best_metric in metrics:
      metrics = {k: float(v) for k, v in metrics.items()}
    else:  # Metrics without the ranked one would rank nothing (and break the ranking).
      metrics = None
    saved = self._manager.save(int(step), args=ocp.args.Composite(**items),
                               metrics=metrics, force=True)
    logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, step: int | None, abstract_state: Any, data_iterator: Any = None):
    """Restores `step` (default: the latest) laid out as `abstract_state` says.

    Args:
      step: which step; None means the latest.
      abstract_state: pytree of `jax.ShapeDtypeStruct` with `.sharding` set to the target
        shardings (any mesh: the arrays are re-sharded while read).
      data_iterator: a grain iterator of the same pipeline; its position is set in place.

    Returns:
      (state, data_iterator, meta).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = {STATE: ocp.args.StandardRestore(_abstract_keys_to_data(abstract_state)),
             META: ocp.args.JsonRestore()}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = _data_to_keys(abstract_state, restored[STATE])
    return state, (restored[DATA] if data_iterator is not None else None), restored[META]

  def read_meta(self, step: int | None = None) -> dict:
    """The `meta` JSON of `step` (default: the latest), without reading any array."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          **{META: ocp.args.JsonRestore()}))
    except KeyError:  # orbax: the item is not in the step's directory
      raise FileNotFoundError(f"{self.directory}/{step}: no {META!r} item (not a checkpoint this "
                              "project wrote, or an incomplete one)") from None
    return dict(restored[META])

  def wait(self):
    """Blocks until the background write (if any) is on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def restore_params(directory: str | os.PathLike, abstract_params: Any, step: int | None = None):
  """Reads only the `params` of another run's checkpoint (e.g. SFT starting from a base model).

  Args:
    directory: the other run's `checkpoints/` directory.
    abstract_params: ShapeDtypeStructs with target shardings for the params tree.
    step: which step; None means the latest.

  Returns:
    The params pytree laid out on the target shardings.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"init checkpoint directory {directory!r} does not exist")
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_handlers={STATE: ocp.PyTreeCheckpointHandler()})
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint step in init checkpoint directory {directory!r}")
    target = {"params": abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                      partial_restore=True)}))
  finally:
    manager.close()
  return restored[STATE]["params"]
