"""What isolation this host allows, and the command that starts a sandbox worker with it.

Layers, strongest first: Linux namespaces through ``unshare`` (own PID, network, mount, IPC
and UTS namespaces, SysV IPC and POSIX message queue limits zero inside the IPC one; a user
namespace too when not running as root), a private read-only root built inside the mount
namespace, an unprivileged user (``nobody``) for every program when the host runs as root,
a seccomp filter that closes the kernel keyring (not namespaced), rlimits, an empty
environment, a fresh temporary directory per program.
``bwrap`` is detected and reported, but workers use ``unshare``: the worker must be root inside
its namespaces to build the private root and drop each program to the unprivileged user.
"""

import dataclasses
import functools
import os
import pwd
import shutil
import subprocess
import sys

_WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
_NAMESPACE_FLAGS = ("--fork", "--kill-child", "--pid", "--net", "--mount", "--ipc", "--uts",
                    "--mount-proc", "--propagation", "private")


@dataclasses.dataclass(frozen=True)
class HostCapabilities:
  """What the host offers, probed once per process.

  Attributes:
    is_root: the host process runs as uid 0.
    unshare: path of the `unshare` binary, or None.
    bwrap: path of `bwrap`, or None (reported only).
    namespaces: `unshare` really creates PID + network + mount namespaces here.
    user_namespace: whether `unshare` must add a user namespace (non-root hosts).
    namespace_error: why namespaces are unavailable, when they are.
  """
  is_root: bool
  unshare: str | None
  bwrap: str | None
  namespaces: bool
  user_namespace: bool
  namespace_error: str | None


def _try_unshare(args: list[str]) -> str | None:
  """Runs `args + [true]`; None on success, else the reason it failed."""
  try:
    done = subprocess.run(args + ["/bin/true"], capture_output=True, timeout=20, env={},
                          check=False)
  except (OSError, subprocess.TimeoutExpired) as exc:
    return str(exc)
  if done.returncode != 0:
    return done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
  return None


@functools.cache
def probe() -> HostCapabilities:
  """Probes the host once: root or not, unshare/bwrap present, namespaces usable."""
  is_root = os.geteuid() == 0
  unshare = shutil.which("unshare")
  bwrap = shutil.which("bwrap")
  error = "unshare not installed" if unshare is None else None
  namespaces = False
  user_namespace = not is_root
  if unshare is not None:
    base = [unshare] + (["--user", "--map-root-user"] if user_namespace else [])
    error = _try_unshare(base + list(_NAMESPACE_FLAGS))
    namespaces = error is None
  return HostCapabilities(is_root=is_root, unshare=unshare, bwrap=bwrap,
                          namespaces=namespaces, user_namespace=user_namespace,
                          namespace_error=error)


def user_ids(user: str | None) -> tuple[int, int] | None:
  """(uid, gid) that programs run as: `user` when the host is root, else None (unchanged)."""
  if user is None:
    return None
  try:
    entry = pwd.getpwnam(user)
  except KeyError as exc:
    raise ValueError(f"sandbox user {user!r} does not exist on this host") from exc
  if entry.pw_uid == 0:
    raise ValueError(f"sandbox user {user!r} is root; pick an unprivileged user")
  if os.geteuid() != 0:
    return None
  return entry.pw_uid, entry.pw_gid


def worker_command(caps: HostCapabilities, use_namespaces: bool) -> list[str]:
  """The argv that starts one worker: the interpreter in isolated mode, maybe under unshare."""
  python = [os.path.realpath(sys.executable), "-s", "-B", _WORKER_PATH]
  if not (use_namespaces and caps.namespaces):
    return python
  user = ["--user", "--map-root-user"] if caps.user_namespace else []
  return [caps.unshare] + user + list(_NAMESPACE_FLAGS) + python


# Fixed settings for the worker interpreter: one thread for the preloaded numeric libraries and
# a fixed hash seed (same program, same output on every worker). Nothing of the host's
# environment is passed, and programs see an empty os.environ.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
