"""Reading jsonl rows and accounting for the bad ones; writing files whole (temp name + rename).

A bad row (invalid JSON, a missing or empty field, an example longer than the sequence length)
is never dropped silently: it is counted in a ``BadRows`` report, with its file and line, or,
with ``strict=True``, raises ``BadRowError`` naming them.
"""

import collections
import dataclasses
import json
import os
import pathlib
import tempfile
from collections.abc import Iterator


class BadRowError(ValueError):
  """A row that cannot be used, raised in strict mode; the message names file and line."""


@dataclasses.dataclass
class BadRows:
  """Counts of skipped rows by reason, and the first few locations of each.

  Attributes:
    counts: reason -> number of rows skipped for it.
    examples: reason -> up to ``keep`` strings "file:line: detail".
    strict: raise ``BadRowError`` at the first bad row instead of counting it.
  """
  strict: bool = False
  keep: int = 5
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict = dataclasses.field(default_factory=dict)

  def add(self, reason: str, where: str, detail: str = "") -> None:
    message = f"{where}: {reason}" + (f" ({detail})" if detail else "")
    if self.strict:
      raise BadRowError(message)
    self.counts[reason] += 1
    kept = self.examples.setdefault(reason, [])
    if len(kept) < self.keep:
      kept.append(message)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def summary(self) -> str:
    """One line per reason: count and where the first ones were."""
    if not self.total:
      return "no bad rows"
    lines = [f"{self.total} bad rows skipped"]
    for reason, n in sorted(self.counts.items()):
      lines.append(f"  {reason}: {n}, e.g. " + "; ".join(self.examples[reason]))
    return "\n".join(lines)


def read_jsonl(path: str | os.PathLike, bad_rows: BadRows) -> Iterator[tuple[int, dict]]:
  """Yields (1-based line number, object) for each non-blank line that parses as a JSON object.

  Bytes that are not UTF-8 make their line a bad row ("invalid UTF-8") instead of stopping the
  read with no line to point at.
  """
  with open(path, encoding="utf-8", errors="surrogateescape") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        line.encode("utf-8")   # undecodable bytes came through as lone surrogates
      except UnicodeEncodeError as e:
        bad_rows.add("invalid UTF-8", where, f"at character {e.start} of the line")
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        bad_rows.add("invalid JSON", where, str(e))
        continue
      if not isinstance(row, dict):
        bad_rows.add("not a JSON object", where, type(row).__name__)
        continue
      yield line_no, row


def _umask() -> int:
  """The process umask, read without changing it where Linux shows it."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  umask = os.umask(0o022)
  os.umask(umask)
  return umask


def temp_dir_beside(target: pathlib.Path) -> pathlib.Path:
  """A new hidden directory next to `target`, to write into and then rename to `target`.

  It gets the mode `mkdir` would give (`tempfile.mkdtemp` makes it private, 0700, and a rename
  keeps that: nobody else could read the written checkpoint).
  """
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
  tmp.chmod(0o777 & ~_umask())
  return tmp


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes ``data`` to ``path`` through a temporary file in the same directory and a rename.

  A reader sees the old file or the whole new one, never half; on failure the temporary file
  is removed and the old file (if any) is left as it was.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename
    with os.fdopen(fd, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_jsonl(rows, path: str | os.PathLike) -> None:
  """Writes dicts one JSON object a line (UTF-8, not escaped), atomically."""
  write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
