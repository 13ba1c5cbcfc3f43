"""Temporary files beside their final path, for write-then-rename outputs.

`tempfile.mkstemp` creates files readable by their owner only; outputs people
share (videos, PNGs, metrics) should get the usual permissions instead, as if
created with `open(path, 'w')` under the process's umask. `write_with`,
`write_text` and `write_json` write a whole file that way.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Callable

import numpy as np


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def temp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, str]:
  """(fd, name) of a new hidden file in `path`'s folder (created if missing).

  The file has mode 0o666 minus the umask; rename it onto `path` when it is
  complete (`os.replace`), so `path` never holds a partial file.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".", suffix=suffix, dir=folder)
  os.fchmod(fd, 0o666 & ~_umask())
  return fd, tmp


def write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
  """Calls `write(temporary name beside path)`, then renames it onto `path`.

  The temporary name keeps `path`'s extension (writers such as matplotlib pick
  the format from it); it is removed if `write` fails.
  """
  fd, tmp = temp_beside(path, suffix=os.path.splitext(path)[1] or ".tmp")
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """A UTF-8 text file, written atomically."""

  def write(tmp: str) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  write_with(path, write)


def json_safe(x: Any) -> Any:
  """`x` with numpy scalars as Python numbers and non-finite floats as None."""
  if isinstance(x, dict):
    return {k: json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def write_json(path: str | os.PathLike, data: Any) -> None:
  """`data` as indented JSON (non-finite numbers as null), atomically."""
  write_text(path, json.dumps(json_safe(data), indent=1, allow_nan=False)
             + "\n")
