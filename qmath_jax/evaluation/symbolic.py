"""Symbolic equality in a persistent sympy worker process, with a timeout that works anywhere.

Signal-based timeouts only work in the main thread, so the expensive check runs in a child
process (this file run as a script; it imports the standard library, sympy and, for the pipe
reader, the standard-library-only ``qmath_jax.sandbox``). The client writes one JSON request
per line and waits on the pipe with ``sandbox.worker.LineReader`` (``select``); when the answer
does not come within the timeout the child is killed, the check counts as "not equal", and the
next check starts a fresh child. Each thread (and each forked process) gets its own child.

Request: {"a": tree, "b": tree, "up_to_sign": bool}; trees are `latex_expr.to_json` lists.
Reply: {"equal": bool}.
"""

import atexit
import json
import os
import subprocess
import sys
import threading
import time

from qmath_jax.sandbox import worker as sandbox_worker

_STARTUP_TIMEOUT_S = 60.0
_MEMORY_LIMIT_BYTES = 2 << 30


class SympyWorker:
  """One child process answering equality questions; restarted after a timeout or crash."""

  def __init__(self):
    self.proc = None
    self.lines = None
    self.ready = False
    self.owner_pid = os.getpid()   # only the process that started a child may stop it

  def _spawn(self) -> None:
    """Starts a child without waiting for it: it imports sympy while the caller goes on."""
    self.proc = subprocess.Popen(
        [sys.executable, "-u", os.path.abspath(__file__)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    self.lines = sandbox_worker.LineReader(self.proc.stdout.fileno())
    self.ready = False

  def _wait_ready(self) -> None:
    if self._read_line(_STARTUP_TIMEOUT_S) != b"ready":
      self.close()
      raise RuntimeError("sympy worker did not start")
    self.ready = True

  def _start(self) -> None:
    self._spawn()
    self._wait_ready()

  def _read_line(self, timeout: float) -> bytes | None:
    line = self.lines.read_line(time.monotonic() + timeout)
    return None if line is None else line.strip()

  def close(self) -> None:
    if self.proc is not None:
      try:
        self.proc.kill()
        self.proc.wait(timeout=5)
      except (OSError, subprocess.TimeoutExpired):
        pass
      for pipe in (self.proc.stdin, self.proc.stdout):
        try:
          pipe.close()
        except OSError:
          pass
    self.proc = None

  def equal(self, a, b, timeout: float, up_to_sign: bool = False) -> bool:
    """True when sympy proves a == b (or a == -b) within `timeout` seconds."""
    if self.proc is None or self.proc.poll() is not None:
      self._spawn()
    if not self.ready:
      self._wait_ready()   # start-up is not part of a check's time
    request = json.dumps({"a": a, "b": b, "up_to_sign": up_to_sign}).encode() + b"\n"
    try:
      self.proc.stdin.write(request)
      self.proc.stdin.flush()
    except (BrokenPipeError, OSError):
      self.close()
      return False
    line = self._read_line(timeout)
    if line is None:
      # Timed out (or died): kill it and start the replacement now, so that the next check
      # does not wait for a sympy import on top of its own timeout.
      self.close()
      self._spawn()
      return False
    try:
      return bool(json.loads(line)["equal"])
    except (ValueError, KeyError):
      return False


_local = threading.local()
_all_workers = []
_all_lock = threading.Lock()


def worker() -> SympyWorker:
  """The calling thread's worker (a forked child never reuses its parent's)."""
  owner = getattr(_local, "owner", None)
  if owner != os.getpid():
    _local.worker = SympyWorker()
    _local.owner = os.getpid()
    with _all_lock:
      _all_workers.append(_local.worker)
  return _local.worker


@atexit.register
def _close_all() -> None:
  for w in _all_workers:
    if w.proc is not None and w.owner_pid == os.getpid():
      w.close()


def symbolic_equal(a, b, timeout: float = 3.0, up_to_sign: bool = False) -> bool:
  """sympy equality of two `latex_expr.to_json` trees; False on timeout or error."""
  return worker().equal(a, b, timeout, up_to_sign)


# ----------------------------------------------------------------------------- child process


def _to_sympy(tree, sp):
  kind = tree[0]
  if kind == "num":
    return sp.Rational(tree[1])
  if kind == "sym":
    return sp.Symbol(tree[1])
  if kind == "const":
    return {"pi": sp.pi, "e": sp.E, "i": sp.I, "inf": sp.oo}[tree[1]]
  if kind == "neg":
    return -_to_sympy(tree[1], sp)
  if kind == "add":
    return sp.Add(*[_to_sympy(c, sp) for c in tree[1]])
  if kind == "mul":
    return sp.Mul(*[_to_sympy(c, sp) for c in tree[1]])
  if kind == "div":
    return _to_sympy(tree[1], sp) / _to_sympy(tree[2], sp)
  if kind == "pow":
    return sp.Pow(_to_sympy(tree[1], sp), _to_sympy(tree[2], sp))
  if kind == "fact":
    return sp.factorial(_to_sympy(tree[1], sp))
  if kind == "fn":
    args = [_to_sympy(c, sp) for c in tree[2]]
    table = {"sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "sec": sp.sec, "csc": sp.csc,
             "cot": sp.cot, "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan,
             "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "exp": sp.exp, "ln": sp.log,
             "abs": sp.Abs, "floor": sp.floor, "ceil": sp.ceiling, "binom": sp.binomial}
    return table[tree[1]](*args)
  raise ValueError(f"unknown node {kind}")


def _equal(a, b, sp) -> bool:
  """simplify(a - b) == 0, else agreement of 40-digit values to a relative 1e-15."""
  if a == b or sp.simplify(a - b) == 0:
    return True
  va, vb = sp.N(a, 40), sp.N(b, 40)
  if not (va.is_number and vb.is_number and va.is_finite and vb.is_finite):
    return False   # undefined values (1/0, nan) equal nothing
  scale = sp.Max(sp.Abs(va), sp.Abs(vb))   # arbitrary-precision: no float underflow
  if scale == 0:
    return True
  return bool(sp.Abs(sp.N(va - vb, 40)) <= sp.Float("1e-15") * scale)


def _serve() -> None:
  try:
    import resource  # pylint: disable=g-import-not-at-top
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT_BYTES, _MEMORY_LIMIT_BYTES))
  except (ImportError, ValueError, OSError):
    pass
  import sympy as sp  # pylint: disable=g-import-not-at-top
  sys.stdout.write("ready\n")
  sys.stdout.flush()
  for line in sys.stdin:
    try:
      request = json.loads(line)
      a, b = _to_sympy(request["a"], sp), _to_sympy(request["b"], sp)
      equal = _equal(a, b, sp) or (request.get("up_to_sign") and _equal(a, -b, sp))
    except Exception:  # pylint: disable=broad-except
      equal = False
    sys.stdout.write(json.dumps({"equal": bool(equal)}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
  _serve()
