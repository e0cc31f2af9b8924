"""Where the benchmark and training jsonl files live.

Order: an explicit argument (a config value), then the ``QMATH_DATA_DIR`` environment variable,
then ``../shared/data`` next to the current directory or next to the repository root.
"""

import os
import pathlib

ENV_VAR = "QMATH_DATA_DIR"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_CANDIDATES = (
    pathlib.Path.cwd() / ".." / "shared" / "data",
    _REPO_ROOT / ".." / "shared" / "data",
)


def find_data_dir(explicit: str | os.PathLike | None = None) -> pathlib.Path | None:
  """Returns the data directory, or None when no candidate exists."""
  if explicit:
    path = pathlib.Path(explicit).expanduser()
    if not path.is_dir():
      raise FileNotFoundError(f"data_dir {str(path)!r} is not a directory")
    return path.resolve()
  if os.environ.get(ENV_VAR):
    path = pathlib.Path(os.environ[ENV_VAR]).expanduser()
    if not path.is_dir():
      raise FileNotFoundError(f"${ENV_VAR}={str(path)!r} is not a directory")
    return path.resolve()
  for path in _CANDIDATES:
    if path.is_dir():
      return path.resolve()
  return None


def require_data_dir(explicit: str | os.PathLike | None = None) -> pathlib.Path:
  """Like find_data_dir, but raises a clear error when nothing is found."""
  found = find_data_dir(explicit)
  if found is None:
    raise FileNotFoundError(
        f"no data directory: pass data_dir, set ${ENV_VAR}, or place the benchmark files in "
        "../shared/data (see README: 'Benchmark data')")
  return found
