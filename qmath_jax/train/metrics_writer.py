"""Where a run's numbers go: `metrics.jsonl`, TensorBoard events, a progress bar, log lines.

Only the main process (process 0) writes; other processes get a writer that does nothing, so
the loop calls it unconditionally. Each `metrics.jsonl` line is one JSON object
`{"step": int, "<name>": float, ...}`; a run resumed from step s first drops the lines of
steps after s (written before a crash, replayed now) so the file reads like a straight run.
"""

from collections.abc import Mapping
import json
import logging
import math
import os

import numpy as np
import tensorboardX
import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _to_float(value):
  value = np.asarray(value)
  if value.size != 1:
    raise ValueError(f"metric must be a scalar, got shape {value.shape}")
  return float(value.reshape(()))


def format_log_line(step: int, total_steps: int, metrics: Mapping[str, float]) -> str:
  """The one log line per logging step: step, loss, throughput, then the rest."""
  parts = [f"step {step}/{total_steps}"]
  for name, fmt in (("loss", "{:.5g}"), ("tokens_per_sec_per_device", "{:.1f}"),
                    ("tflops_per_device", "{:.3g}")):
    if name in metrics:
      label = {"tokens_per_sec_per_device": "tokens/s/device",
               "tflops_per_device": "TFLOP/s/device"}.get(name, name)
      parts.append(f"{label} {fmt.format(metrics[name])}")
  for name in sorted(metrics):
    if name not in ("loss", "tokens_per_sec_per_device", "tflops_per_device"):
      parts.append(f"{name} {metrics[name]:.5g}")
  return " | ".join(parts)


class MetricsWriter:
  """Writes scalars of one run under `workdir`.

  Args:
    workdir: the run directory.
    total_steps: for the progress bar and log lines.
    is_main: whether this process writes (process 0).
    show_progress: draw a tqdm progress bar with ETA (main process only).
  """

  def __init__(self, workdir: str | os.PathLike, total_steps: int, *, is_main: bool = True,
               show_progress: bool = True):
    self.workdir = os.fspath(workdir)
    self.total_steps = int(total_steps)
    self.is_main = is_main
    self.path = os.path.join(self.workdir, METRICS_FILE)
    self._tb = None
    self._bar = None
    self._show_progress = show_progress and is_main

  def start(self, start_step: int):
    """Opens the outputs for a run (re)starting at `start_step`."""
    if not self.is_main:
      return
    os.makedirs(self.workdir, exist_ok=True)
    self.drop_after(start_step)
    self._tb = tensorboardX.SummaryWriter(os.path.join(self.workdir, TENSORBOARD_DIR))
    if self._show_progress:
      self._bar = tqdm.tqdm(total=self.total_steps, initial=start_step, unit="step",
                            dynamic_ncols=True, desc="train")

  def drop_after(self, step: int):
    """Removes `metrics.jsonl` lines of steps after `step` (rewritten to a temp, renamed)."""
    if not self.is_main or not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line_number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          # A line cut short by a killed process: only the last line can be partial.
          logging.warning("%s:%d: dropping unreadable metrics line", self.path, line_number)
          continue
        if int(row["step"]) <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: Mapping[str, object], *, log: bool = True):
    """Appends one row of scalars for `step` and (optionally) the log line."""
    if not self.is_main:
      return
    row = {name: _to_float(value) for name, value in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **row}) + "\n")
    if self._tb is not None:
      for name, value in row.items():
        if math.isfinite(value):
          self._tb.add_scalar(name, value, int(step))
      self._tb.flush()
    if log:
      line = format_log_line(step, self.total_steps, row)
      logging.info("%s", line)

  def advance(self, step: int):
    """Moves the progress bar to `step`."""
    if self._bar is not None and step > self._bar.n:
      self._bar.update(step - self._bar.n)

  def close(self):
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The rows of a run's `metrics.jsonl`, in file order."""
  path = os.path.join(os.fspath(workdir), METRICS_FILE)
  rows = []
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{line_number}: not a JSON object: {e}") from e
  return rows
