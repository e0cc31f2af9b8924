"""worker.LineReader: the one deadline-bounded pipe reader of the sandbox and the sympy client."""

import os
import time

import pytest

from qmath_jax.sandbox import worker


@pytest.fixture
def pipe():
  read_fd, write_fd = os.pipe()
  yield read_fd, write_fd
  for fd in (read_fd, write_fd):
    try:
      os.close(fd)
    except OSError:
      pass


def test_lines_after_the_first_stay_buffered_for_the_next_call(pipe):
  read_fd, write_fd = pipe
  os.write(write_fd, b"first\nsecond\nthi")
  reader = worker.LineReader(read_fd)
  deadline = time.monotonic() + 5
  assert reader.read_line(deadline) == b"first"
  assert reader.read_line(deadline) == b"second"
  os.write(write_fd, b"rd\n")
  assert reader.read_line(deadline) == b"third"


def test_no_line_before_the_deadline_gives_none_and_keeps_the_partial_line(pipe):
  read_fd, write_fd = pipe
  os.write(write_fd, b"partial")
  reader = worker.LineReader(read_fd)
  start = time.monotonic()
  assert reader.read_line(start + 0.2) is None
  assert time.monotonic() - start >= 0.2
  os.write(write_fd, b" line\n")
  assert reader.read_line(time.monotonic() + 5) == b"partial line"


def test_end_of_file_without_a_newline_gives_none(pipe):
  read_fd, write_fd = pipe
  os.write(write_fd, b"no newline")
  os.close(write_fd)
  assert worker.LineReader(read_fd).read_line(time.monotonic() + 5) is None


def test_a_line_longer_than_the_limit_gives_none(pipe):
  read_fd, write_fd = pipe
  os.write(write_fd, b"x" * 64)
  reader = worker.LineReader(read_fd, limit=32)
  assert reader.read_line(time.monotonic() + 5) is None
  short = worker.LineReader(read_fd, limit=32)
  os.write(write_fd, b"ok\n")
  assert short.read_line(time.monotonic() + 5) == b"ok"
