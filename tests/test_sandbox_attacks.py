"""One test per attack on PythonSandbox: each is contained, the host is untouched, the sandbox
keeps serving and no process is left behind.

These run real programs in real isolated workers (no mocks). The layers they rely on are
checked first from `isolation_report()`; on this kind of host (root, unshare available) every
layer is active.
"""

import os
import pathlib
import socket
import threading
import time
import uuid

import pytest

from qmath_jax.sandbox import PythonSandbox
from qmath_jax.sandbox import isolation

TIMEOUT_S = 2.0
MAX_PROCESSES = 16
SECRET = "qmath-secret-" + uuid.uuid4().hex
os.environ["QMATH_SANDBOX_TEST_SECRET"] = SECRET  # set before any worker starts


def _uid_processes(uid: int) -> set[int]:
  """Host pids whose real uid is `uid`."""
  found = set()
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      status = pathlib.Path(f"/proc/{entry}/status").read_text()
    except OSError:
      continue
    for line in status.splitlines():
      if line.startswith("Uid:") and int(line.split()[1]) == uid:
        found.add(int(entry))
  return found


def _descendants(pid: int) -> set[int]:
  """Host pids below `pid` in the process tree."""
  children = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        ppid = int(pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
      children.setdefault(ppid, []).append(int(entry))
  found, todo = set(), [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      if child not in found:
        found.add(child)
        todo.append(child)
  return found


@pytest.fixture(scope="module")
def sandbox():
  box = PythonSandbox(timeout=TIMEOUT_S, num_workers=2, max_processes=MAX_PROCESSES,
                      memory_mb=384)
  box.run_batch(["1", "2"])  # start both workers
  yield box
  box.close()


@pytest.fixture(scope="module")
def report(sandbox):
  return sandbox.isolation_report()


@pytest.fixture
def contained(sandbox, report):
  """Checks, after the attack, that the sandbox serves, its workers survived and no program
  process is left (no process of the sandbox user, nothing extra under the workers)."""
  uid = int(report["unprivileged_user"].split("uid ")[1].rstrip(")")) \
      if report["unprivileged_user"] else None
  before_uid = _uid_processes(uid) if uid is not None else set()
  workers = set(sandbox.worker_pids())
  yield
  assert sandbox.run("print(1 + 1)").output == "2"
  assert set(sandbox.worker_pids()) == workers, "a worker died and was replaced"
  if uid is not None:
    assert _uid_processes(uid) - before_uid == set(), "a program process was left behind"
  for pid in workers:
    # Under each launcher: the worker itself (namespace init) and nothing else when idle.
    assert len(_descendants(pid)) <= 1, f"processes left under worker {pid}"


def test_layers_active_on_this_host(report):
  caps = isolation.probe()
  assert report["rlimits"]["RLIMIT_NPROC"] == MAX_PROCESSES
  assert report["rlimits"]["RLIMIT_CPU"] == 3
  if caps.namespaces:
    assert report["pid_namespace"] and report["no_network"] and report["private_root"]
    assert report["network_interfaces"] == ["lo"]
  if caps.is_root:
    assert report["unprivileged_user"] == "nobody (uid 65534)"


def test_infinite_loop(sandbox, contained):
  start = time.monotonic()
  result = sandbox.run("while True:\n  pass")
  assert result.timed_out and result.error == "Timeout Error"
  assert time.monotonic() - start < TIMEOUT_S + 5


def test_sleep(sandbox, contained):
  start = time.monotonic()
  result = sandbox.run("import time\ntime.sleep(600)\nprint('woke')")
  assert result.timed_out and result.output == ""
  assert time.monotonic() - start < TIMEOUT_S + 5


def test_memory_bomb(sandbox, contained):
  at_once = sandbox.run("x = bytearray(64 << 30)")
  assert at_once.error == "MemoryError" and not at_once.timed_out
  growing = sandbox.run("chunks = []\nwhile True:\n  chunks.append(bytearray(50 << 20))")
  assert growing.error == "MemoryError" and not growing.timed_out


def test_fork_bomb(sandbox, report, contained):
  # Containment first: the process limit bounds it, the PID namespace takes every process down.
  assert report["rlimits"]["RLIMIT_NPROC"] == MAX_PROCESSES
  if not report["pid_namespace"]:
    pytest.skip("no PID namespace on this host: only the bounded variant is safe to run")
  counted = sandbox.run(
      "import os, time\n"
      "forked = 0\n"
      "for _ in range(1000):\n"
      "  try:\n"
      "    pid = os.fork()\n"
      "  except OSError:\n"
      "    break\n"
      "  if pid == 0:\n"
      "    time.sleep(600)\n"
      "    os._exit(0)\n"
      "  forked += 1\n"
      "print(forked)")
  assert counted.error is None
  assert 0 < int(counted.output) < MAX_PROCESSES
  classic = sandbox.run(
      "import os, time\n"
      "while True:\n"
      "  try:\n"
      "    os.fork()\n"
      "  except OSError:\n"
      "    time.sleep(0.05)")
  assert classic.timed_out


def test_huge_output(sandbox, contained):
  once = sandbox.run("print('x' * 10**7)")
  assert once.output == "x" * 200 + "..." + "x" * 200
  endless = sandbox.run("while True:\n  print('y' * 1000)")
  assert endless.timed_out and endless.error == "Timeout Error"


def test_host_environment_is_invisible(sandbox, contained):
  result = sandbox.run(
      "import os\n"
      f"secret = {SECRET!r}\n"
      "seen = [repr(dict(os.environ))]\n"
      "for pid in os.listdir('/proc'):\n"
      "  if pid.isdigit() or pid == 'self':\n"
      "    for name in ('environ', 'cmdline'):\n"
      "      try:\n"
      "        seen.append(open(f'/proc/{pid}/{name}', 'rb').read().decode(errors='replace'))\n"
      "      except OSError:\n"
      "        pass\n"
      "print(len(os.environ), any(secret in s for s in seen))")
  assert result.error is None
  assert result.output == "0 False"


def test_files_outside_temp_dir(sandbox, contained, tmp_path):
  private = tmp_path / "private.txt"
  private.write_text(SECRET)
  private.chmod(0o600)
  shared_dir = pathlib.Path("/tmp") / f"qmath-sandbox-test-{uuid.uuid4().hex}"
  shared_dir.mkdir(mode=0o777)
  shared_dir.chmod(0o777)  # world-writable on the host, like /tmp itself
  try:
    (shared_dir / "public.txt").write_text(SECRET)
    (shared_dir / "public.txt").chmod(0o644)
    targets = [str(private), str(shared_dir / "public.txt"), "/etc/shadow"]
    read = sandbox.run(
        f"secret = {SECRET!r}\n"
        "leaked = []\n"
        f"for path in {targets!r}:\n"
        "  try:\n"
        "    leaked.append(secret in open(path).read())\n"
        "  except OSError as exc:\n"
        "    leaked.append(type(exc).__name__)\n"
        "print(leaked)")
    assert "True" not in read.output and read.error is None
    writes = [str(tmp_path / "planted.txt"), str(shared_dir / "planted.txt"),
              f"/tmp/qmath-planted-{uuid.uuid4().hex}", "/etc/qmath-planted",
              str(pathlib.Path(__file__).with_name("qmath-planted.py"))]
    wrote = sandbox.run(
        f"for path in {writes!r}:\n"
        "  try:\n"
        "    open(path, 'w').write('planted')\n"
        "  except OSError:\n"
        "    pass\n"
        "open('own.txt', 'w').write('mine')\n"
        "print(open('own.txt').read())")
    assert wrote.output == "mine"
    for path in writes:
      assert not os.path.exists(path), f"the sandbox wrote {path} on the host"
  finally:
    for leftover in shared_dir.iterdir():
      leftover.unlink()
    shared_dir.rmdir()


def test_working_dir_is_fresh_and_private(sandbox, report, contained):
  first = sandbox.run("import os\nopen('mark.txt', 'w').write('1')\nprint(os.getcwd())")
  second = sandbox.run("import os\nprint(os.getcwd(), sorted(os.listdir('.')))")
  assert first.error is None and second.error is None
  assert first.output != second.output.split()[0]
  assert second.output.endswith("[]")
  if report["private_root"]:
    # The host's work tree (this very file) is not visible at all.
    seen = sandbox.run(f"import os\nos.path.exists({__file__!r})")
    assert seen.output == "False"


def test_loopback_server_unreachable(sandbox, contained):
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    result = sandbox.run(
        "import socket\n"
        f"conn = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "conn.sendall(b'stolen')\n"
        "print('connected')")
    assert "connected" not in result.output
    assert result.error is not None and result.error.startswith("OSError")
    with pytest.raises(socket.timeout):
      server.accept()


def test_kill_parent_process(sandbox, contained):
  host_pid = os.getpid()
  result = sandbox.run(
      "import os, signal\n"
      "outcomes = []\n"
      f"for target in (os.getppid(), 1, {host_pid}, -1):\n"
      "  try:\n"
      "    os.kill(target, signal.SIGKILL)\n"
      "    outcomes.append('sent')\n"
      "  except OSError as exc:\n"
      "    outcomes.append(type(exc).__name__)\n"
      "print(outcomes)")
  assert result.error is None
  # The worker (parent, and init of the namespace) refuses; the host pid is not visible.
  assert result.output.startswith("['PermissionError', 'PermissionError'")
  os.kill(host_pid, 0)  # still here


def test_input_is_an_error(sandbox, contained):
  result = sandbox.run("name = input('who? ')\nprint(name)")
  assert result.error == "RuntimeError: input() is not supported in the sandbox"
  stdin = sandbox.run("import sys\nprint(repr(sys.stdin.read()))")
  assert stdin.output == "''"


def test_dead_worker_is_replaced():
  with PythonSandbox(timeout=TIMEOUT_S, num_workers=1) as box:
    assert box.run("print(3)").output == "3"
    (first,) = box.worker_pids()
    killer = threading.Timer(0.5, lambda: os.killpg(first, 9))
    killer.start()
    broken = box.run("import time\ntime.sleep(600)")
    killer.join()
    assert broken.error is not None and broken.output == ""
    assert box.run("print(4)").output == "4"
    assert box.worker_pids() != [first]
  assert box.worker_pids() == []
  with pytest.raises(ProcessLookupError):
    os.kill(first, 0)


def test_nothing_carries_over_in_tmp(sandbox, report, contained):
  if not report["private_root"]:
    pytest.skip("without a private root /tmp is the host's own")
  planted = sandbox.run_batch(["open('/tmp/residue.txt', 'w').write('left for later')"] * 2)
  assert all(r.error is None for r in planted)
  own_dir_only = "import os\nsorted(os.listdir('/tmp')) == [os.path.basename(os.getcwd())]"
  checks = sandbox.run_batch([own_dir_only] * 2)
  assert [r.output for r in checks] == ["True", "True"]


def test_ipc_objects_cannot_outlive_a_program(sandbox, report, contained):
  """SysV shared memory, message queues and semaphores and POSIX message queues outlive their
  processes: they would hand data to the next program of the worker and hold memory outside
  RLIMIT_AS. Inside the worker's IPC namespace none can be made."""
  if not report["pid_namespace"]:
    pytest.skip("no IPC namespace on this host")
  assert report["no_lasting_ipc"]
  libc = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
          "libc.shmat.restype = ctypes.c_void_p\n")
  plant = sandbox.run(
      libc + "sid = libc.shmget(4242, 1 << 20, 0o1666)\n"
      "if sid >= 0:\n"
      "  ctypes.memmove(libc.shmat(sid, None, 0), b'left for later', 14)\n"
      "queue = libc.mq_open(b'/left', os.O_CREAT | os.O_RDWR, 0o666, None)\n"
      "if queue >= 0:\n"
      "  libc.mq_send(queue, b'left for later', 14, 0)\n"
      "print(sid, libc.msgget(4243, 0o1666), libc.semget(4244, 1, 0o1666), queue)")
  assert plant.output == "-1 -1 -1 -1", plant
  read = sandbox.run(
      libc + "sid = libc.shmget(4242, 0, 0)\n"
      "print(ctypes.string_at(libc.shmat(sid, None, 0), 14) if sid >= 0 else sid,\n"
      "      libc.mq_open(b'/left', os.O_RDWR))")
  assert read.output == "-1 -1"


def test_kernel_keyrings_are_closed(sandbox, report, contained):
  """The kernel keyring is not namespaced: a key added to the program user's keyring stayed
  there for every later program of that user, on every worker and sandbox of the host."""
  if not report["no_keyring"]:
    pytest.skip(f"no seccomp keyring filter for {os.uname().machine}")
  syscalls = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[os.uname().machine]
  libc = (f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
          f"add_key, request_key, keyctl = {syscalls}\n")
  plant = sandbox.run(
      libc + "key = libc.syscall(add_key, b'user', b'qmath-left', b'left for later', 14, -4)\n"
      "print(key, ctypes.get_errno())")
  assert plant.output == "-1 1", plant   # EPERM
  read = sandbox.run_batch([
      libc + "print(libc.syscall(request_key, b'user', b'qmath-left', None, 0),\n"
      "      libc.syscall(keyctl, 0, -4, 0))"] * 2)   # KEYCTL_GET_KEYRING_ID
  assert [r.output for r in read] == ["-1 -1"] * 2


def test_without_namespaces_escaped_processes_still_end():
  # The fallback for hosts without namespaces: the worker is a child subreaper and kills
  # generation by generation, so even children that left the process group with setsid() end.
  baseline = _uid_processes(65534)
  with PythonSandbox(timeout=1.0, num_workers=1, namespaces=False) as box:
    report = box.isolation_report()
    assert not report["pid_namespace"] and not report["private_root"]
    result = box.run(
        "import os, time\n"
        "for _ in range(3):\n"
        "  if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "      time.sleep(600)\n"
        "    time.sleep(600)\n"
        "while True:\n"
        "  pass")
    assert result.timed_out
    if os.geteuid() == 0:
      assert _uid_processes(65534) - baseline == set()
    (worker_pid,) = box.worker_pids()
    assert _descendants(worker_pid) == set()
    assert box.run("print(7)").output == "7"
