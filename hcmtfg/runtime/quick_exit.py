"""Ends a finished command-line run without the interpreter's slow teardown.

After an inference command (`launch.generate`, `launch.stream`) has written
its outputs, a normal exit still tears the interpreter down: every module is
cleared and every object freed, among them JAX's backend, its loaded
executables and the gigabytes of memory `hcmtfg.runtime.allocator` keeps. That
is a visible part of a short command's wall time, and it does nothing a
finished process needs.

`run_then_exit(main)` wraps an absl `main`: when `main` returns, the
threads it left running are joined as in a normal exit, the `atexit`
handlers still run (logging's flush, temporary files, child
processes), standard output and error are flushed, and the process ends
with `os._exit(code)`. An exception (a usage error, a crash) leaves through
the normal path, so its traceback and exit code are unchanged.
HCMTFG_QUICK_EXIT=0 (or false/no/off) turns it off, e.g. to profile the
teardown.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
from typing import Callable

ENV_VAR = "HCMTFG_QUICK_EXIT"


def enabled() -> bool:
  """Whether quick exits are on (HCMTFG_QUICK_EXIT unset or true)."""
  return os.environ.get(ENV_VAR, "1").strip().lower() not in (
      "0", "false", "no", "off")


def exit_now(code: int | None) -> None:
  """Joins non-daemon threads, runs the atexit handlers, flushes stdio and
  ends the process with `code`."""
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and not thread.daemon:
      thread.join()
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # closed or broken pipe: nothing to keep
      pass
  os._exit(0 if code is None else int(code))  # pylint: disable=protected-access


def run_then_exit(main: Callable[[list[str]], int | None]
                  ) -> Callable[[list[str]], int | None]:
  """`main` for `absl.app.run` that ends the process quickly when it returns."""

  @functools.wraps(main)
  def wrapped(argv):
    code = main(argv)
    if enabled():
      exit_now(code)
    return code

  return wrapped
