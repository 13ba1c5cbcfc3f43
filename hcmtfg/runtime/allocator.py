"""Keeps freed memory in the process, so XLA's buffers stop page-faulting.

On CPU, every executable run allocates its output and temporary buffers
(tens to hundreds of MB for a chunk of VG-net frames) and frees them at the
end. glibc's malloc serves blocks that large with a fresh `mmap` and gives
them back with `munmap` when freed, so the kernel zeroes every page again on
the next chunk: every chunk pays page faults and system time for memory the
previous chunk already had. The paste-back's and the encoder pipe's
per-chunk arrays do the same on the main thread.

`keep_freed_memory` sets glibc's malloc (through `mallopt`) to serve every
size from its heap, one arena for all threads, and never to trim the heap,
so the second chunk reuses the first chunk's pages: the faults drop to none
after the first chunk. The process keeps its peak memory until it exits,
which suits the inference entry points (generate, stream, serve). Results
are unchanged (only where memory comes from changes).

Call it early (before the networks run): threads that already have their own
arena keep it. A no-op where the C library is not glibc, and when the
environment variable HCMTFG_MALLOC is `default` (or any of glibc's own
MALLOC_* tunables is set, which then win).
"""

from __future__ import annotations

import ctypes
import os

ENV_VAR = "HCMTFG_MALLOC"
# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1),
             (_M_ARENA_MAX, 1))
_GLIBC_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
               "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")

_applied = None


def keep_freed_memory() -> bool:
  """Tunes glibc's malloc as the module docstring says; True if it did."""
  global _applied
  if _applied is not None:
    return _applied
  _applied = False
  if os.environ.get(ENV_VAR, "").strip().lower() == "default" or any(
      name in os.environ for name in _GLIBC_VARS):
    return False
  try:
    process = ctypes.CDLL(None)  # the C library this process runs on
    process.gnu_get_libc_version  # pylint: disable=pointless-statement  (glibc?)
    mallopt = process.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  _applied = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
  return _applied
