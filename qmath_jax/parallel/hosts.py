"""Host-side work of a multi-process run: who writes the files, who runs host-only programs.

Every process of a pod slice runs the same program (multi-controller JAX). Files under the
shared workdir are written once, by the writer (process 0); the other processes wait at a
barrier wherever a later step reads what was written. Host-only work whose result must be the
same on every process but may differ from run to run (the TIR sandbox's programs) runs on the
writer, which shares the result. A single-process run skips every barrier and broadcast.

    if hosts.is_writer():
      append_records(path, new)                       # no later step of this call reads it
    hosts.write_once(lambda: write_report(dir), "eval report")   # written, then a barrier
    results = hosts.on_writer(lambda: sandbox.run_batch(codes))  # the writer's, everywhere
    have_batch, = hosts.all_processes(batch is not None)   # every process stops together

Every process must reach the same barriers and broadcasts in the same order: call these from
code that all processes run alike.
"""

import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")

MIN_PAYLOAD_BYTES = 1024  # broadcast buffers are padded to a power of two at least this big


def is_writer() -> bool:
  """True on the one process that writes the run's files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (no-op with one process).

  Args:
    name: what the processes wait for, e.g. "eval report written"; the same on every process.
  """
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def all_processes(*flags: bool) -> tuple[bool, ...]:
  """Each of `flags` AND-ed over every process: one answer, the same on all of them.

  For decisions that must not differ between processes, because the processes would otherwise
  part ways at a collective and wait forever: "every process still has a batch" (their data
  shards may end a batch apart), "no process was asked to stop" (`not signal`). One small
  all-gather, which also waits for the work already queued on the devices; none with one
  process.
  """
  if jax.process_count() == 1:
    return tuple(bool(f) for f in flags)
  gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))
  gathered = np.asarray(gathered).reshape(jax.process_count(), len(flags))
  return tuple(bool(f) for f in gathered.all(axis=0))


def write_once(write: Callable[[], Any], name: str) -> None:
  """Runs `write()` on the writer only, then waits at the barrier `name` on every process.

  After it returns, every process may read what `write` made (on a shared workdir).
  """
  if is_writer():
    write()
  barrier(name)


def broadcast_object(value: T) -> T:
  """The writer's `value` on every process (pickled; other processes' `value` is ignored).

  With one process, `value` itself. The pickled bytes are padded to a power of two, so
  payloads of similar size reuse one compiled broadcast.
  """
  if jax.process_count() == 1:
    return value
  payload = pickle.dumps(value) if is_writer() else b""
  size = int(multihost_utils.broadcast_one_to_all(np.int64(len(payload))))
  capacity = max(MIN_PAYLOAD_BYTES, 1 << max(size - 1, 0).bit_length())
  buffer = np.zeros(capacity, np.uint8)
  buffer[:len(payload)] = np.frombuffer(payload, np.uint8)
  received = multihost_utils.broadcast_one_to_all(buffer)
  if is_writer():
    return value
  return pickle.loads(np.asarray(received, np.uint8)[:size].tobytes())


def on_writer(compute: Callable[[], T]) -> T:
  """Runs `compute()` on the writer only and returns its result on every process.

  For host-only work whose result could differ between processes (a sandboxed program that
  prints the time, say) but must not: later steps of every process see the writer's result.
  """
  return broadcast_object(compute() if is_writer() else None)
