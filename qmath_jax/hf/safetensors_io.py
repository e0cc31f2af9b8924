"""Safetensors read tensor by tensor from a memory map, and written as a stream.

No torch and no whole-file load: `SafetensorsFile.get(name)` returns a read-only numpy view
into the mapped file (bf16 through ml_dtypes), so a caller copies only what it keeps.
Format: 8-byte little-endian header length N, N bytes of JSON header, then the raw data.
"""

import json
import os
import pathlib
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER = 100 << 20


class SafetensorsError(ValueError):
  """A safetensors file that cannot be read as one."""


class SafetensorsFile:
  """A memory-mapped safetensors file. `names()`, `shape(name)`, `get(name) -> np.ndarray`."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    size = self.path.stat().st_size
    with open(self.path, "rb") as f:
      raw_len = f.read(8)
      if len(raw_len) < 8:
        raise SafetensorsError(f"{self.path}: unreadable safetensors header (file of {size} bytes)")
      (header_len,) = struct.unpack("<Q", raw_len)
      if header_len > min(_MAX_HEADER, size - 8):
        raise SafetensorsError(f"{self.path}: unreadable safetensors header (claims {header_len} "
                               f"header bytes in a file of {size})")
      try:
        header = json.loads(f.read(header_len))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{self.path}: unreadable safetensors header: {e}") from None
    if not isinstance(header, dict):
      raise SafetensorsError(f"{self.path}: unreadable safetensors header: not a JSON object")
    self.metadata = header.pop("__metadata__", None) or {}
    self._data_start = 8 + header_len
    data_len = size - self._data_start
    self._entries = {}
    for name, entry in header.items():
      try:
        dtype = _DTYPES[entry["dtype"]]
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
      except (KeyError, TypeError, ValueError) as e:
        raise SafetensorsError(f"{self.path}: bad header entry for tensor {name!r}: {e!r}") from None
      if not 0 <= begin <= end <= data_len or end - begin != dtype.itemsize * int(np.prod(shape)):
        raise SafetensorsError(f"{self.path}: tensor {name!r} has offsets [{begin}, {end}) that do "
                               f"not fit its shape {shape} x {entry['dtype']} or the file")
      self._entries[name] = (dtype, shape, begin)
    self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if size else None

  def names(self) -> list[str]:
    return list(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def shape(self, name: str) -> tuple[int, ...]:
    return self._entries[name][1]

  def get(self, name: str) -> np.ndarray:
    """A read-only view of tensor `name` (no copy)."""
    dtype, shape, begin = self._entries[name]
    return np.ndarray(shape, dtype, buffer=self._map, offset=self._data_start + begin)


def dtype_name(dtype) -> str:
  return _NAMES[np.dtype(dtype)]


def write(path: str | os.PathLike, tensors, metadata: dict | None = None) -> None:
  """Writes `tensors`, an iterable of (name, shape, dtype, produce) with `produce()` returning the
  array; each array is made and written one at a time, so only one is in memory at once."""
  tensors = list(tensors)
  header, offset = {}, 0
  for name, shape, dtype, _ in tensors:
    nbytes = np.dtype(dtype).itemsize * int(np.prod(shape))
    header[name] = {"dtype": dtype_name(dtype), "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  if metadata:
    header["__metadata__"] = metadata
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # keeps the data 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype, produce in tensors:
      array = np.ascontiguousarray(produce(), dtype=dtype)
      if array.shape != tuple(shape):
        raise ValueError(f"tensor {name!r}: produced shape {array.shape}, declared {tuple(shape)}")
      f.write(array.tobytes())
