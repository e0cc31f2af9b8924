"""PythonSandbox: runs untrusted Python programs on a pool of isolated worker processes.

    with PythonSandbox(timeout=5.0) as sandbox:
      sandbox.run("x = 6 * 7\\nx").output                        # "42"
      [r.output for r in sandbox.run_batch(["1 + 1", "print('a')"])]  # ["2", "a"]
      sandbox.isolation_report()                                 # which layers are active

Each worker (``worker.py``) is a fork server started under ``unshare`` when the host allows
namespaces; every program runs in its own forked, unprivileged, rlimited child, so one program
can neither see nor disturb another, the worker or the host. A worker that stops answering is
killed with its whole process group and replaced.
"""

import concurrent.futures
import dataclasses
import json
import math
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence

from qmath_jax.sandbox import isolation
from qmath_jax.sandbox import worker

_ANSWER_GRACE_S = 30.0   # extra time a worker gets, past the program timeout, to answer


class SandboxError(RuntimeError):
  """A worker could not be started (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Result:
  """What one program produced.

  Attributes:
    output: captured stdout (plus the value of a last bare expression), stripped and cut to
      the first 200 + "..." + last 200 characters.
    error: the last traceback line ("NameError: name 'x' is not defined"), "Timeout Error",
      or None when the program finished without an exception.
    timed_out: the program ran past the timeout (wall clock or CPU) and was killed.
  """
  output: str
  error: str | None
  timed_out: bool


class _Worker:
  """Host-side handle of one worker process and its line protocol."""

  def __init__(self, argv: list[str], config: dict, startup_timeout: float):
    self._log = tempfile.TemporaryFile()
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self._log, env=isolation.WORKER_ENV, cwd="/",
                                 start_new_session=True, close_fds=True)
    self._lines = worker.LineReader(self.proc.stdout.fileno())
    self.alive = True
    self._send(config)
    reply = self._receive(time.monotonic() + startup_timeout)
    if reply is None or not reply.get("ready"):
      reason = (reply or {}).get("error") or self._log_tail() or "no answer"
      self.kill()
      raise SandboxError(f"sandbox worker failed to start ({' '.join(argv)}): {reason}")
    self.layers = reply["layers"]

  def _log_tail(self) -> str:
    self._log.seek(0)
    return self._log.read()[-2000:].decode(errors="replace").strip()

  def _send(self, obj: dict) -> bool:
    try:
      self.proc.stdin.write((json.dumps(obj) + "\n").encode())
      self.proc.stdin.flush()
      return True
    except (BrokenPipeError, OSError):
      return False

  def _receive(self, deadline: float) -> dict | None:
    line = self._lines.read_line(deadline)
    return None if line is None else json.loads(line)

  def run(self, code: str, prelude: Sequence[str], timeout: float) -> Result:
    """Runs one program; on a protocol failure kills this worker and says so in the Result."""
    if not self._send({"code": code, "prelude": list(prelude)}):
      self.kill()
      return Result("", "Sandbox worker is not running", False)
    try:
      reply = self._receive(time.monotonic() + timeout + _ANSWER_GRACE_S)
    except ValueError:
      reply = None
    if reply is None:
      self.kill()
      return Result("", "Sandbox worker stopped answering", True)
    return Result(str(reply["output"]), reply["error"], bool(reply["timed_out"]))

  def kill(self) -> None:
    """Kills the worker's process group (the namespace's init with it) and reaps it."""
    self.alive = False
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
    self.proc.wait()
    for stream in (self.proc.stdin, self.proc.stdout):
      try:
        stream.close()
      except OSError:
        pass
    self._log.close()

  def close(self, wait_s: float = 5.0) -> None:
    """Asks the worker to exit (EOF on its input), then kills whatever is left."""
    if not self.alive:
      return
    try:
      self.proc.stdin.close()
      self.proc.wait(timeout=wait_s)
    except (OSError, subprocess.TimeoutExpired):
      pass
    self.kill()


def _close_all(workers: list[_Worker]) -> None:
  for each in list(workers):
    if each is not None:
      each.close()


class PythonSandbox:
  """Runs Python programs in isolated, rlimited, unprivileged processes with a timeout.

  Args:
    timeout: wall-clock seconds per program (prelude included); CPU time is limited to
      ceil(timeout) + 1 seconds as well.
    num_workers: worker processes (programs running at once); default min(4, CPUs).
    memory_mb: address-space limit of each program (RLIMIT_AS), MiB.
    max_processes: process limit (RLIMIT_NPROC) of the program's user, which counts every
      process of that user on the host.
    max_file_mb: largest file a program may write (RLIMIT_FSIZE), MiB.
    max_open_files: open file descriptors per program (RLIMIT_NOFILE).
    tmpfs_mb: size of the private /tmp that holds the programs' working directories, MiB.
    user: unprivileged user programs run as when the host runs as root; None keeps the uid.
    namespaces: use PID/network/mount/IPC/UTS namespaces when the host allows them.
    private_root: inside the mount namespace, show programs only a read-only root of system
      and Python directories.
    preload: modules imported once per worker, so programs import them at no cost.
    startup_timeout: seconds a worker may take to start and preload.
  """

  def __init__(self, timeout: float = 5.0, *, num_workers: int | None = None,
               memory_mb: int = 1024, max_processes: int = 64, max_file_mb: int = 16,
               max_open_files: int = 64, tmpfs_mb: int = 64, user: str | None = "nobody",
               namespaces: bool = True, private_root: bool = True,
               preload: Sequence[str] = ("numpy", "sympy"), startup_timeout: float = 120.0):
    if not timeout > 0:
      raise ValueError(f"timeout must be positive, got {timeout}")
    for name, value in (("memory_mb", memory_mb), ("max_processes", max_processes),
                        ("max_file_mb", max_file_mb), ("max_open_files", max_open_files),
                        ("tmpfs_mb", tmpfs_mb)):
      if int(value) < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    self.timeout = float(timeout)
    self.num_workers = num_workers or min(4, os.cpu_count() or 1)
    if self.num_workers < 1:
      raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    self._caps = isolation.probe()
    ids = isolation.user_ids(user)
    self._user = user if ids else None
    self._argv = isolation.worker_command(self._caps, namespaces)
    self._namespaces = namespaces and self._caps.namespaces
    self._rlimits = {
        "RLIMIT_CPU": math.ceil(self.timeout) + 1,
        "RLIMIT_AS": int(memory_mb) << 20,
        "RLIMIT_NPROC": int(max_processes),
        "RLIMIT_FSIZE": int(max_file_mb) << 20,
        "RLIMIT_NOFILE": int(max_open_files),
    }
    self._config = {
        "timeout": self.timeout,
        "uid": ids[0] if ids else None,
        "gid": ids[1] if ids else None,
        "rlimits": self._rlimits,
        "private_root": bool(private_root and self._namespaces),
        "tmpfs_bytes": int(tmpfs_mb) << 20,
        "preload": list(preload),
    }
    self._startup_timeout = startup_timeout
    self._idle: queue.Queue = queue.Queue()
    self._workers: list[_Worker] = []
    self._lock = threading.Lock()
    self._closed = False
    self._threads = concurrent.futures.ThreadPoolExecutor(self.num_workers,
                                                          thread_name_prefix="sandbox")
    self._finalizer = weakref.finalize(self, _close_all, self._workers)

  # --------------------------------------------------------------------------- pool

  def _acquire(self) -> _Worker:
    """An idle worker; starts one while the pool has room, else waits for one."""
    while True:
      with self._lock:
        if self._closed:
          raise RuntimeError("PythonSandbox is closed")
        start = len(self._workers) < self.num_workers and self._idle.empty()
        if start:
          self._workers.append(None)  # holds the slot while the worker starts
      if start:
        return self._start_worker()
      each = self._idle.get()
      if each is not None:
        return each
      # None: a dead worker freed its slot; go round and start a new one.

  def _start_worker(self) -> _Worker:
    try:
      started = _Worker(self._argv, self._config, self._startup_timeout)
    except BaseException:
      with self._lock:
        self._workers.remove(None)
      self._idle.put(None)
      raise
    with self._lock:
      self._workers[self._workers.index(None)] = started
    return started

  def _release(self, each: _Worker) -> None:
    if each.alive and not self._closed:
      self._idle.put(each)
      return
    with self._lock:
      if each in self._workers:
        self._workers.remove(each)
    if each.alive:
      each.close()
    self._idle.put(None)  # wakes a caller waiting for a worker

  def _run_one(self, code: str, prelude: Sequence[str]) -> Result:
    if not isinstance(code, str):
      raise TypeError(f"code must be a str, got {type(code).__name__}")
    each = self._acquire()
    try:
      return each.run(code, prelude, self.timeout)
    finally:
      self._release(each)

  # --------------------------------------------------------------------------- API

  def run(self, code: str, prelude: Sequence[str] = ()) -> Result:
    """Runs `code` after the `prelude` blocks (their output discarded); returns its Result."""
    return self._run_one(code, prelude)

  def run_batch(self, codes: Sequence[str],
                preludes: Sequence[Sequence[str]] | None = None) -> list[Result]:
    """Runs the programs in parallel on the pool; Results in the order of `codes`."""
    if preludes is not None and len(preludes) != len(codes):
      raise ValueError(f"preludes has {len(preludes)} entries for {len(codes)} codes")
    preludes = preludes if preludes is not None else [()] * len(codes)
    return list(self._threads.map(self._run_one, codes, preludes))

  def isolation_report(self) -> dict:
    """Which isolation layers are active, as checked from inside a running worker."""
    each = self._acquire()
    try:
      layers = dict(each.layers)
    finally:
      self._release(each)
    caps = self._caps
    uid = self._config["uid"]
    return {
        "separate_process": "a forked child per program, own session and process group, "
                            "killed with everything it started on timeout",
        "pid_namespace": bool(layers.get("pid_namespace")),
        "no_network": bool(layers.get("no_network")),
        "no_lasting_ipc": bool(layers.get("no_lasting_ipc")),
        "no_keyring": bool(layers.get("no_keyring")),
        "network_interfaces": layers.get("network_interfaces", []),
        "mount_namespace": self._namespaces,
        "private_root": bool(layers.get("private_root")),
        "private_root_error": layers.get("private_root_error"),
        "unprivileged_user": f"{self._user} (uid {uid})" if uid is not None else None,
        "no_new_privs": True,
        "rlimits": dict(self._rlimits),
        "empty_environment": True,
        "fresh_temp_dir": True,
        "launcher": self._argv[0] if self._namespaces else None,
        "unshare": caps.unshare,
        "bwrap": caps.bwrap,
        "user_namespace": caps.user_namespace and self._namespaces,
        "namespace_error": caps.namespace_error,
    }

  def worker_pids(self) -> list[int]:
    """Host pids of the running workers (their launchers under unshare)."""
    with self._lock:
      return [each.proc.pid for each in self._workers if each is not None and each.alive]

  def close(self) -> None:
    """Stops every worker; the sandbox cannot be used afterwards."""
    with self._lock:
      self._closed = True
    self._threads.shutdown(wait=True)
    _close_all(self._workers)
    with self._lock:
      self._workers.clear()

  def __enter__(self) -> "PythonSandbox":
    return self

  def __exit__(self, *unused_exc) -> None:
    self.close()

