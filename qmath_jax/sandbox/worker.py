"""The sandbox worker: a fork server that runs untrusted Python programs one at a time.

The host starts this file as a script (``python -s -B worker.py``, with an environment of
fixed settings only), usually inside fresh PID, network, mount, IPC and UTS namespaces (see
``isolation.py``). It speaks one JSON object per line on stdin/stdout:

  host -> worker, first line: the configuration (timeout, user ids, rlimits, private root,
    preloads).
  worker -> host: ``{"ready": true, "layers": {...}}`` once set up, or ``{"ready": false,
    "error": "..."}``.
  host -> worker, then per job: ``{"code": str, "prelude": [str, ...]}``.
  worker -> host: ``{"output": str, "error": str | null, "timed_out": bool}``.

Per job the worker forks a child that starts its own session (process group), lowers its
rlimits, drops to the unprivileged user, closes every inherited descriptor, clears the
environment, closes the kernel keyring with a seccomp filter, works in a fresh temporary
directory and executes the program. After the job,
every process the job left behind is killed and reaped (all of the PID namespace when the
worker is its init, else generation by generation as a child subreaper), the temporary
directory is removed and the private /tmp emptied.

Program semantics follow the Qwen2.5-Math evaluation executor: stdout is captured; when the
last top-level statement is a bare expression other than a ``print(...)`` call its ``str``
value is shown after the captured output (``None`` is not shown); an exception gives the last
line of its traceback; ``input()`` is an error; ``random``, ``numpy.random`` and sympy's
generators start from a fixed seed; output and error text are stripped and cut to the first
200 + "..." + the last 200 characters. The prelude blocks (code that ran
successfully earlier in the same solution) run first with their output discarded.

This module imports nothing from ``qmath_jax``: it runs as a script whose own directory is
taken off ``sys.path``, so only the standard library and site-packages are importable.
"""

import ast
import builtins
import ctypes
import io
import json
import os
import random
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback

TRUNCATE_HALF = 200          # characters kept at each end of a long output
TIMEOUT_ERROR = "Timeout Error"
INPUT_ERROR = "input() is not supported in the sandbox"
MAX_RESULT_BYTES = 1 << 20   # longest result line the worker accepts from a job child
_KEEP_CHARS = 1 << 16        # stdout characters kept at each end while a program runs
_SETUP_FAILED = 70           # exit status of a job child whose isolation set-up raised

_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
# add_key, request_key, keyctl per machine, with the seccomp audit arch of its syscalls.
_KEYRING_SYSCALLS = {"x86_64": (0xC000003E, (248, 249, 250)),
                     "aarch64": (0xC00000B7, (217, 218, 219))}
_X32_SYSCALL_BIT = 0x40000000
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_DEVICES = ("null", "zero", "full", "random", "urandom")
# Run once after preloading, so the lazy imports and caches of the first call are paid in the
# worker instead of in every forked program.
_WARMUP = {
    "sympy": ("x = sympy.symbols('x')\n"
              "sympy.solve(x**2 - 5*x + 6, x)\n"
              "sympy.simplify(sympy.sin(x)**2 + sympy.cos(x)**2)\n"
              "sympy.integrate(x**2, (x, 0, 1))\n"
              "sympy.factorint(360)\n"
              "sympy.N(sympy.pi + sympy.sqrt(2) + sympy.Rational(1, 3), 20)\n"),
    "numpy": ("numpy.linalg.solve(numpy.eye(3), numpy.ones(3))\n"
              "numpy.random.rand(1)\n"),  # numpy.random loads lazily: load it to seed it
}
# Global generators a program may draw from without seeding them, besides `random`; each job
# child seeds them all, so a program prints the same on every worker and in every run
# (`random` reseeds itself from the OS in every forked child, the others hold whatever state
# their worker started with).
_SEEDED_MODULES = ("numpy.random", "sympy.core.random")
RANDOM_SEED = 0


# ----------------------------------------------------------------------------- semantics


def truncate(text: str, half: int = TRUNCATE_HALF) -> str:
  """Strips `text` and keeps its first and last `half` characters around "..." when longer.

  Lone surrogates (`print(chr(0xd800))`) are escaped first ("\\ud800"): the text goes into a
  transcript that tokenizers and UTF-8 files must encode.
  """
  text = text.encode("utf-8", "backslashreplace").decode("utf-8").strip()
  if len(text) > 2 * half:
    text = text[:half] + "..." + text[-half:]
  return text


def last_traceback_line(exc: BaseException) -> str:
  """The last line of the formatted exception, e.g. "ZeroDivisionError: division by zero"."""
  lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
  return lines[-1] if lines else type(exc).__name__


class BoundedText(io.TextIOBase):
  """A write-only text stream that keeps the first and last `keep` characters it was given.

  Programs may print without bound; the shown output only needs both ends, so memory stays
  bounded by 3 * `keep` characters however much is written.
  """

  def __init__(self, keep: int = _KEEP_CHARS):
    super().__init__()
    self._keep = keep
    self._head = ""
    self._tail = ""
    self._dropped = False

  def writable(self) -> bool:
    return True

  def write(self, text: str) -> int:
    if not isinstance(text, str):
      raise TypeError(f"write() argument must be str, not {type(text).__name__}")
    room = self._keep - len(self._head)
    if room > 0:
      self._head += text[:room]
      rest = text[room:]
    else:
      rest = text
    if rest:
      self._tail += rest
      if len(self._tail) > 2 * self._keep:
        self._tail = self._tail[-self._keep:]
        self._dropped = True
    return len(text)

  def getvalue(self) -> str:
    if self._dropped:
      return self._head + "\n" + self._tail[-self._keep:]
    return self._head + self._tail


def _refuse_input(*unused_args, **unused_kwargs):
  raise RuntimeError(INPUT_ERROR)


def _is_print_call(node: ast.stmt) -> bool:
  return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
          and isinstance(node.value.func, ast.Name) and node.value.func.id == "print")


def execute(code: str, prelude=()) -> dict:
  """Runs `prelude` blocks (output discarded) then `code` in one fresh namespace.

  Runs in the current process: the worker calls it only inside a sandboxed child.

  Returns:
    {"output": str, "error": str | None, "timed_out": False}, both texts truncated.
  """
  namespace = {"__name__": "__main__", "__builtins__": builtins}
  saved_input, builtins.input = builtins.input, _refuse_input
  captured = BoundedText()
  saved_stdout = sys.stdout
  error = None
  try:
    sys.stdout = BoundedText()
    for block in prelude:
      exec(compile(block, "<prelude>", "exec"), namespace)  # pylint: disable=exec-used
    sys.stdout = captured
    tree = ast.parse(code, "<code>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not _is_print_call(tree.body[-1]):
      last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<code>", "exec"), namespace)  # pylint: disable=exec-used
    if last is not None:
      value = eval(compile(last, "<code>", "eval"), namespace)  # pylint: disable=eval-used
      if value is not None:
        print(value)
  except BaseException as exc:  # pylint: disable=broad-except  (SystemExit too, as Qwen's)
    error = truncate(last_traceback_line(exc))
  finally:
    sys.stdout = saved_stdout
    builtins.input = saved_input
  return {"output": truncate(captured.getvalue()), "error": error, "timed_out": False}


# ----------------------------------------------------------------------------- set-up


def _libc():
  return ctypes.CDLL(None, use_errno=True)


def _mount(source, target, fstype, flags, data=None):
  libc = _libc()
  encode = lambda s: None if s is None else s.encode()
  if libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags),
                encode(data)) != 0:
    errno = ctypes.get_errno()
    raise OSError(errno, f"mount {source!r} on {target!r} ({fstype}): {os.strerror(errno)}")


def _bind_read_only(source: str, target: str) -> None:
  _mount(source, target, None, _MS_BIND | _MS_REC)
  _mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _python_dirs() -> list[str]:
  """Directories the interpreter reads: its prefixes and every existing sys.path entry."""
  dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
  dirs.update(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p))
  dirs.add(os.path.dirname(os.path.realpath(sys.executable)))
  # Drop directories that lie inside another one already bound.
  return sorted(d for d in dirs
                if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs))


def build_private_root(tmpfs_bytes: int) -> None:
  """Makes a fresh read-only root holding only system and Python directories, and enters it.

  Needs root in a private mount namespace. The new root is a tmpfs with read-only binds of
  /usr, /bin, /lib*, /etc and the interpreter's directories, a few /dev nodes, a new /proc and
  a size-limited writable /tmp; nothing else of the host (home directories, work trees, data)
  is visible.
  """
  _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
  _mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=16m,mode=700")
  root = "/tmp/root"
  os.mkdir(root)
  _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=16m,mode=755")
  for path in list(_SYSTEM_DIRS) + _python_dirs():
    if not os.path.lexists(path) or os.path.lexists(root + path):
      continue
    if os.path.islink(path):
      os.makedirs(os.path.dirname(root + path), mode=0o755, exist_ok=True)
      os.symlink(os.readlink(path), root + path)
    elif os.path.isdir(path):
      os.makedirs(root + path, mode=0o755)
      _bind_read_only(path, root + path)
  os.makedirs(root + "/dev", mode=0o755)
  _mount("tmpfs", root + "/dev", "tmpfs", _MS_NOSUID | _MS_NOEXEC, "size=64k,mode=755")
  for name in _DEVICES:
    if os.path.exists("/dev/" + name):
      open(root + "/dev/" + name, "w").close()
      _mount("/dev/" + name, root + "/dev/" + name, None, _MS_BIND)
  os.makedirs(root + "/proc", mode=0o555)
  _mount("proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
  os.makedirs(root + "/tmp", mode=0o1777)
  _mount("tmpfs", root + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV,
         f"size={tmpfs_bytes},mode=1777")
  os.chdir(root)
  os.chroot(".")
  os.chdir("/")
  _mount(None, "/", None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


# SysV IPC objects and POSIX message queues outlive the processes that made them: the next
# program of the worker could read them, and they hold memory outside RLIMIT_AS. Zero limits
# in the worker's own IPC namespace forbid them (the host's limits are untouched).
_IPC_LIMITS = (("/proc/sys/kernel/shmmni", "0"), ("/proc/sys/kernel/msgmni", "0"),
               ("/proc/sys/kernel/sem", "0 0 0 0"), ("/proc/sys/fs/mqueue/queues_max", "0"))


def _forbid_lasting_ipc() -> bool:
  """Sets this IPC namespace's SysV and POSIX queue limits to zero; whether that worked."""
  try:
    for path, value in _IPC_LIMITS:
      with open(path, "w") as f:
        f.write(value)
    return True
  except OSError:
    return False


def _network_interfaces() -> list[str]:
  try:
    return sorted(name for _, name in socket.if_nameindex())
  except OSError:
    return []


def _loopback_reachable() -> bool:
  """Whether a TCP socket can even be bound and reached on 127.0.0.1 here."""
  try:
    with socket.socket() as server:
      server.bind(("127.0.0.1", 0))
      server.listen(1)
      with socket.create_connection(server.getsockname(), timeout=1):
        return True
  except OSError:
    return False


def set_up(config: dict) -> dict:
  """Applies the worker-wide layers; returns what is really active, checked from inside."""
  layers = {}
  if config.get("private_root"):
    try:
      build_private_root(int(config["tmpfs_bytes"]))
      layers["private_root"] = True
    except OSError as exc:
      layers["private_root"] = False
      layers["private_root_error"] = str(exc)
  else:
    layers["private_root"] = False
  for name in config.get("preload", ()):
    module = __import__(name)
    if name in _WARMUP:
      exec(_WARMUP[name], {name: module})  # pylint: disable=exec-used  (our own code)
  layers["pid_namespace"] = os.getpid() == 1
  # Only in a namespace of our own: as root on the host this would change the host's limits.
  layers["no_lasting_ipc"] = layers["pid_namespace"] and _forbid_lasting_ipc()
  layers["no_keyring"] = _keyring_filter_works()
  if not layers["pid_namespace"]:
    _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
  interfaces = _network_interfaces()
  layers["network_interfaces"] = interfaces
  layers["no_network"] = (set(interfaces) <= {"lo"} and not _loopback_reachable())
  layers["preloaded"] = list(config.get("preload", ()))
  return layers


# ----------------------------------------------------------------------------- jobs


def _isolate(config: dict, result_fd: int, workdir: str) -> None:
  """Runs in the forked child before the program: every per-program isolation layer."""
  os.setsid()
  os.dup2(result_fd, 3)
  null = os.open("/dev/null", os.O_RDWR)
  for fd in (0, 1, 2):
    os.dup2(null, fd)
  os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
  limits = config["rlimits"]
  for name, value in limits.items():
    # A hard CPU limit equal to the soft one sends SIGKILL, never SIGXCPU: the hard limit sits
    # a second later, so the program gets SIGXCPU (a timeout) at the soft one.
    hard = value + 1 if name == "RLIMIT_CPU" else value
    resource.setrlimit(getattr(resource, name), (value, hard))
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  os.chdir(workdir)
  if config.get("uid") is not None:
    os.setgroups([])
    os.setresgid(config["gid"], config["gid"], config["gid"])
    os.setresuid(config["uid"], config["uid"], config["uid"])
  _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
  os.environ.clear()
  os.umask(0o077)
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _seed_generators() -> None:
  """Seeds `random` and every loaded module of `_SEEDED_MODULES` with RANDOM_SEED."""
  random.seed(RANDOM_SEED)
  for name in _SEEDED_MODULES:
    module = sys.modules.get(name)
    if module is not None:
      module.seed(RANDOM_SEED)


class _SockFilter(ctypes.Structure):
  _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
              ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
  _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def deny_keyring_syscalls() -> None:
  """Installs a seccomp filter under which add_key, request_key and keyctl fail with EPERM.

  The kernel keyring is not namespaced: a key a program adds to its user's keyring stays
  there for every later program of that user, on every worker (Docker's default seccomp
  profile denies these calls for the same reason). Needs no_new_privs or CAP_SYS_ADMIN;
  raises OSError when the kernel refuses, KeyError on a machine without a syscall table here.
  """
  arch, numbers = _KEYRING_SYSCALLS[os.uname().machine]
  load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06   # BPF_LD|W|ABS, BPF_JMP|JEQ|K, |JGE|K, BPF_RET|K
  allow, deny = 0x7FFF0000, 0x00050000 | 1       # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
  checks = [(jge, _X32_SYSCALL_BIT)] * (arch == 0xC000003E) + [(jeq, n) for n in numbers]
  # [0] arch, [1] another arch (32-bit calls, keyctl under other numbers): deny, [2] nr,
  # checks jumping to deny, allow, deny.
  program = [(load, 0, 0, 4), (jeq, 0, len(checks) + 2, arch), (load, 0, 0, 0)]
  program += [(op, len(checks) - i, 0, k) for i, (op, k) in enumerate(checks)]
  program += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
  filters = (_SockFilter * len(program))(*program)
  fprog = _SockFprog(len(program), filters)
  libc = _libc()
  if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
    errno = ctypes.get_errno()
    raise OSError(errno, f"seccomp filter refused: {os.strerror(errno)}")


def _keyring_filter_works() -> bool:
  """Whether deny_keyring_syscalls works here (tried in a throwaway child)."""
  if os.uname().machine not in _KEYRING_SYSCALLS:
    return False
  pid = os.fork()
  if pid == 0:
    code = 1
    try:
      _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
      deny_keyring_syscalls()
      code = 0
    finally:
      os._exit(code)  # pylint: disable=protected-access
  _, status = os.waitpid(pid, 0)
  return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _report(result: dict) -> None:
  """Writes the child's one result line on fd 3."""
  with os.fdopen(3, "wb", buffering=0) as out:
    out.write((json.dumps(result) + "\n").encode())


class LineReader:
  """Newline-terminated lines from a pipe, each read before a deadline.

  Bytes after a line stay buffered for the next call. The host (``sandbox.py``) and the sympy
  client (``qmath_jax.evaluation.symbolic``) read their child processes with it too; it lives
  here because this file may import nothing from ``qmath_jax``.
  """

  def __init__(self, fd: int, limit: int | None = None):
    self.fd = fd
    self.limit = limit
    self.buffer = b""

  def read_line(self, deadline: float) -> bytes | None:
    """The next line without its newline; None at `deadline`, at EOF or past `limit` bytes."""
    while b"\n" not in self.buffer:
      if self.limit is not None and len(self.buffer) >= self.limit:
        return None
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        return None
      ready, _, _ = select.select([self.fd], [], [], remaining)
      if not ready:
        return None
      chunk = os.read(self.fd, 65536)
      if not chunk:
        return None
      self.buffer += chunk
    line, self.buffer = self.buffer.split(b"\n", 1)
    return line


def _wait_exit(pid: int, deadline: float) -> int | None:
  """Polls for `pid` to exit until `deadline`; its wait status, or None if still running."""
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      return status
    if time.monotonic() >= deadline:
      return None
    time.sleep(0.002)


def _children_of(parent: int) -> list[int]:
  """Pids whose parent is `parent`, from /proc."""
  found = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat", "rb") as stat:
          fields = stat.read().rsplit(b")", 1)[1].split()
      except (OSError, IndexError):
        continue
      if int(fields[1]) == parent:
        found.append(int(entry))
  return found


def _kill_everything(child_pid: int, pid_namespace: bool) -> None:
  """Kills and reaps every process the job left.

  As init of a PID namespace, kill(-1) reaches all of them. Otherwise the worker is a child
  subreaper: it kills the job's process group and every direct child, reaps one, and repeats;
  the orphans of each killed generation become its children and fall in the next round, so
  even processes that left the group with setsid() end.
  """
  while True:
    if pid_namespace:
      targets = [lambda: os.kill(-1, signal.SIGKILL)]
    else:
      targets = [lambda: os.killpg(child_pid, signal.SIGKILL)]
      targets += [lambda pid=pid: os.kill(pid, signal.SIGKILL)
                  for pid in _children_of(os.getpid())]
    for kill in targets:
      try:
        kill()
      except (ProcessLookupError, PermissionError):
        pass
    try:
      os.waitpid(-1, 0)
    except ChildProcessError:
      return


def _empty_directory(path: str) -> None:
  for name in os.listdir(path):
    entry = os.path.join(path, name)
    if os.path.isdir(entry) and not os.path.islink(entry):
      shutil.rmtree(entry, ignore_errors=True)
    else:
      try:
        os.unlink(entry)
      except OSError:
        pass


def _describe_exit(status: int | None) -> str:
  if status is not None and os.WIFSIGNALED(status):
    return f"Process killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
  code = os.WEXITSTATUS(status) if status is not None else "unknown"
  if code == _SETUP_FAILED:
    return "Sandbox set-up failed in the program's process"
  return f"Process exited with status {code} before reporting a result"


def run_job(job: dict, config: dict, layers: dict) -> dict:
  """Forks a sandboxed child for `job`, enforces its timeout, cleans up; returns the result."""
  timeout = float(config["timeout"])
  workdir = tempfile.mkdtemp(prefix="job-", dir="/tmp")
  if config.get("uid") is not None:
    os.chown(workdir, config["uid"], config["gid"])
  read_fd, write_fd = os.pipe()
  pid = os.fork()
  if pid == 0:
    status = _SETUP_FAILED
    try:
      os.close(read_fd)
      _isolate(config, write_fd, workdir)
      if layers.get("no_keyring"):
        deny_keyring_syscalls()
      _seed_generators()
      status = 0
      _report(execute(job["code"], job.get("prelude", ())))
    finally:
      os._exit(status)  # pylint: disable=protected-access
  os.close(write_fd)
  deadline = time.monotonic() + timeout
  try:
    line = LineReader(read_fd, limit=MAX_RESULT_BYTES).read_line(deadline)
    status = _wait_exit(pid, min(deadline, time.monotonic() + 0.5) if line else deadline)
  finally:
    os.close(read_fd)
    _kill_everything(pid, layers["pid_namespace"])
    shutil.rmtree(workdir, ignore_errors=True)
    if layers["private_root"]:
      _empty_directory("/tmp")  # the private /tmp: nothing carries over to the next program
  if line:
    try:
      result = json.loads(line)
      return {"output": truncate(str(result["output"])),
              "error": None if result["error"] is None else truncate(str(result["error"])),
              "timed_out": False}
    except (ValueError, KeyError, TypeError):
      return {"output": "", "error": "Malformed result from the program", "timed_out": False}
  if status is None or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU):
    return {"output": "", "error": TIMEOUT_ERROR, "timed_out": True}
  return {"output": "", "error": _describe_exit(status), "timed_out": False}


def serve(proto_in, proto_out) -> None:
  """Reads the configuration, sets up, then answers one job per line until EOF."""
  def send(obj):
    proto_out.write((json.dumps(obj) + "\n").encode())
    proto_out.flush()

  config = json.loads(proto_in.readline())
  try:
    layers = set_up(config)
  except Exception as exc:  # pylint: disable=broad-except  (reported to the host)
    send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
    return
  send({"ready": True, "layers": layers})
  for line in proto_in:
    job = json.loads(line)
    send(run_job(job, config, layers))


def main() -> None:
  script_dir = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != script_dir]
  # The protocol moves off fds 0/1 so nothing a library prints can corrupt it.
  proto_in = os.fdopen(os.dup(0), "rb")
  proto_out = os.fdopen(os.dup(1), "wb")
  null = os.open("/dev/null", os.O_RDWR)
  os.dup2(null, 0)
  os.dup2(null, 1)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  serve(proto_in, proto_out)


if __name__ == "__main__":
  main()
