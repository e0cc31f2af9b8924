"""Multi-host start-up: `jax.distributed.initialize` from arguments or the environment.

Resolution order for each setting: explicit argument, then the environment variables
QMATH_COORDINATOR_ADDRESS ("host:port"), QMATH_NUM_PROCESSES, QMATH_PROCESS_ID. With none of
them set:
  * on a multi-host TPU slice (TPU_WORKER_HOSTNAMES lists more than one host) or a SLURM job
    of several tasks, or with `auto=True`, it calls `jax.distributed.initialize()` with no
    arguments, which reads the cluster's own description;
  * otherwise the run stays single-process and nothing is initialised.
On CPU, cross-process collectives use gloo (set before initialising).
"""

import os

import jax

ENV_COORDINATOR = "QMATH_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "QMATH_NUM_PROCESSES"
ENV_PROCESS_ID = "QMATH_PROCESS_ID"

_initialized = False


def _int_from_env(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False,
               cpu_collectives: str = "gloo", timeout_s: int = 300) -> bool:
  """Joins this process to a multi-process JAX run when one is configured.

  Call once, before any other JAX call that touches devices.

  Args:
    coordinator_address: "host:port" of process 0's coordinator.
    num_processes: processes in the run.
    process_id: this process's index in [0, num_processes).
    auto: with nothing configured, let JAX detect the cluster even when
      `cluster_detected()` sees none.
    cpu_collectives: collectives implementation for the CPU backend ("gloo" or "mpi").
    timeout_s: seconds to wait for every process to join.

  Returns:
    True when `jax.distributed.initialize` was called (now or earlier), False when the run
    is single-process.

  Raises:
    ValueError: a partial configuration (e.g. an address without a process id) or a
      process id outside [0, num_processes).
  """
  global _initialized
  if _initialized:
    return True
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  if num_processes is None:
    num_processes = _int_from_env(ENV_NUM_PROCESSES)
  if process_id is None:
    process_id = _int_from_env(ENV_PROCESS_ID)
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  if all(v is None for v in given.values()):
    if not (auto or cluster_detected()):
      return False
    jax.distributed.initialize(initialization_timeout=timeout_s)
    _initialized = True
    return True
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise ValueError(f"multi-process set-up is missing {missing} (given {given}); set all "
                     f"three or none ({ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id {process_id} is outside [0, {num_processes})")
  if _platforms_include_cpu():
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=timeout_s)
  _initialized = True
  return True


def cluster_detected() -> bool:
  """True on a multi-host TPU slice or a SLURM job with more than one task."""
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    return True
  tasks = os.environ.get("SLURM_NTASKS", "")
  return tasks.isdigit() and int(tasks) > 1


def _platforms_include_cpu() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
  return platforms == "" or "cpu" in platforms.split(",")
