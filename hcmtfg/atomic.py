"""Temporary files beside their final path, for write-then-rename outputs.

`tempfile.mkstemp` creates files readable by their owner only; outputs people
share (videos, PNGs, metrics) should get the usual permissions instead, as if
created with `open(path, 'w')` under the process's umask.
"""

from __future__ import annotations

import os
import tempfile


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
