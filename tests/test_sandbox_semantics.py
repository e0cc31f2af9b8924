"""What programs see and what comes back: Qwen executor semantics, truncation, preludes, the
pool, determinism and argument checking."""

import pytest

from qmath_jax.sandbox import PythonSandbox
from qmath_jax.sandbox import worker


def test_truncate_keeps_both_ends():
  assert worker.truncate("a" * 400) == "a" * 400
  long = "".join(chr(ord("a") + i % 26) for i in range(401))
  assert worker.truncate(long) == long[:200] + "..." + long[-200:]
  assert worker.truncate("  padded \n") == "padded"


def test_bounded_text_keeps_head_and_tail_only():
  stream = worker.BoundedText(keep=10)
  for i in range(10_000):
    stream.write(f"{i:05d}")
  value = stream.getvalue()
  assert value.startswith("0000000001")
  assert value.endswith("0999809999")
  assert len(value) <= 2 * 10 + 1


@pytest.mark.parametrize("code, output, error", [
    ("x = 6 * 7\nx", "42", None),
    ("print('shown once')", "shown once", None),
    ("print('a')\n'b'", "a\nb", None),
    ("def f():\n  return None\nf()", "", None),
    ("x = 1", "", None),
    ("print('before')\n1 / 0", "before", "ZeroDivisionError: division by zero"),
    ("undefined_name", "", "NameError: name 'undefined_name' is not defined"),
    ("def broken(:\n  pass", "", "SyntaxError: invalid syntax"),
    ("raise SystemExit(3)", "", "SystemExit: 3"),
    ("input()", "", "RuntimeError: input() is not supported in the sandbox"),
    ("'z' * 1000", "z" * 200 + "..." + "z" * 200, None),
])
def test_execute_follows_qwen_executor(code, output, error):
  result = worker.execute(code)
  assert result == {"output": output, "error": error, "timed_out": False}


def test_output_is_always_valid_utf8():
  """A lone surrogate a program prints comes back escaped: the transcript must encode (the
  tokenizer and the UTF-8 samples file refuse lone surrogates)."""
  result = worker.execute("print(chr(0xd800) + 'x')\nraise ValueError(chr(0xdfff))")
  assert result["output"] == "\\ud800x" and result["error"] == "ValueError: \\udfff"
  long = worker.truncate("\ud800" * 300)
  assert len(long) == 403 and long.startswith("\\ud800") and long.encode("utf-8")


def test_execute_restores_the_interpreter():
  import builtins
  import sys
  stdout, read_input = sys.stdout, builtins.input
  worker.execute("print('x')\ninput()")
  assert sys.stdout is stdout and builtins.input is read_input


def test_prelude_runs_first_with_output_discarded():
  result = worker.execute("print(total + 1)", ["total = 41\nprint('old output')"])
  assert result == {"output": "42", "error": None, "timed_out": False}
  failing = worker.execute("print(1)", ["import math\nmath.undefined"])
  assert failing["error"] == "AttributeError: module 'math' has no attribute 'undefined'"


@pytest.fixture(scope="module")
def sandbox():
  box = PythonSandbox(timeout=3.0, num_workers=2)
  yield box
  box.close()


def test_numpy_and_sympy_importable(sandbox):
  result = sandbox.run(
      "import numpy as np\nimport sympy as sp\n"
      "x = sp.symbols('x')\n"
      "print(int(np.arange(5).sum()), sp.solve(x**2 - 4, x))")
  assert result.output == "10 [-2, 2]" and result.error is None


def test_prelude_through_the_sandbox(sandbox):
  result = sandbox.run("f(5)", prelude=["def f(n):\n  return n * n", "print('hidden')"])
  assert result.output == "25"


def test_batch_keeps_order(sandbox):
  codes = [f"import time\ntime.sleep({0.3 * (3 - i)})\n{i}" for i in range(4)]
  results = sandbox.run_batch(codes)
  assert [r.output for r in results] == ["0", "1", "2", "3"]
  assert not any(r.timed_out for r in results)


def test_same_program_same_output_on_every_worker(sandbox):
  code = "print(hash('qmath'), list({'a', 'b', 'c', 'd'}))"
  outputs = {r.output for r in sandbox.run_batch([code] * 4)}
  assert len(outputs) == 1


def test_random_numbers_are_the_same_on_every_worker_and_run(sandbox):
  """A greedy TIR run is reproducible even when the model's program simulates with random,
  numpy.random or sympy's random helpers."""
  code = ("import random\nimport numpy as np\nimport sympy\n"
          "print(random.random(), np.random.rand(), np.random.default_rng().random() < 2,\n"
          "      sympy.randprime(1, 10**9))")
  outputs = [r.output for r in sandbox.run_batch([code] * 6)]
  assert len(set(outputs)) == 1 and "True" in outputs[0], outputs
  assert sandbox.run(code).output == outputs[0]


def test_cpu_limit_counts_as_a_timeout():
  """A program stopped by RLIMIT_CPU before the wall clock (threads that burn more than one
  core) is a timeout, as the Result says, not a crash."""
  with PythonSandbox(timeout=6.0, num_workers=1, preload=()) as box:
    box._config["rlimits"]["RLIMIT_CPU"] = 1  # pylint: disable=protected-access
    result = box.run("while True:\n  pass")
  assert (result.error, result.timed_out) == ("Timeout Error", True)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="timeout"):
    PythonSandbox(timeout=0)
  with pytest.raises(ValueError, match="memory_mb"):
    PythonSandbox(memory_mb=0)
  with pytest.raises(ValueError, match="no_such_user"):
    PythonSandbox(user="no_such_user")


def test_bad_inputs_to_run_are_named(sandbox):
  with pytest.raises(TypeError, match="code must be a str"):
    sandbox.run(b"print(1)")
  with pytest.raises(ValueError, match="preludes has 1 entries for 2 codes"):
    sandbox.run_batch(["1", "2"], preludes=[[]])


def test_waiting_caller_gets_a_new_worker_when_one_dies():
  import os
  import threading
  with PythonSandbox(timeout=3.0, num_workers=1) as box:
    box.run("0")
    (first,) = box.worker_pids()
    results = {}
    slow = threading.Thread(target=lambda: results.update(slow=box.run("import time\n"
                                                                       "time.sleep(600)")))
    quick = threading.Thread(target=lambda: results.update(quick=box.run("print(5)")))
    slow.start()
    threading.Event().wait(0.3)
    quick.start()       # waits: the only worker is busy
    threading.Event().wait(0.3)
    os.killpg(first, 9)
    slow.join(20)
    quick.join(20)
    assert not slow.is_alive() and not quick.is_alive()
    assert results["slow"].error is not None
    assert results["quick"].output == "5"
    assert box.worker_pids() != [first]


def test_program_that_exits_without_a_result(sandbox):
  exited = sandbox.run("import os\nprint('lost')\nos._exit(3)")
  assert exited.error == "Process exited with status 3 before reporting a result"
  assert exited.output == "" and not exited.timed_out
  killed = sandbox.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
  assert killed.error == "Process killed by signal SIGSEGV"
