"""Test-only fault injection, switched on by the HCMTFG_FAULT environment variable.

The fault-injection tests (tests/fault_injection_test.py) need a process to die
or stall at an exact point that an outside kill cannot hit reliably: just
before a checkpoint is written, between writing it and committing it, and
half-way through a dataset build. Production code calls `at(point, n)` at those
boundaries, never inside a step's or a video's loop (the tests kill those from
outside); with HCMTFG_FAULT unset (always, outside those tests) the call does
nothing.

  HCMTFG_FAULT="ACTION:POINT@N[,ACTION:POINT@N...]"

ACTION is one of
  kill       SIGKILL this process (as a preempted VM or the OOM killer would);
  pause      sleep until killed (e.g. to keep a workdir locked);
  fsize=B    limit the size of any file this process writes to B bytes
             (RLIMIT_FSIZE, SIGXFSZ ignored), so a write past it fails with
             EFBIG as a full disk fails with ENOSPC.
POINT@N names the place and its count:
  ckpt_save@N    checkpoint N is about to be written;
  ckpt_commit@N  every file of checkpoint N is written, not yet committed;
  build_clip@N   the N-th clip of a dataset build has been processed.
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import time

ENV_VAR = 'HCMTFG_FAULT'


@functools.cache
def _plan(spec: str) -> dict[tuple[str, int], str]:
  plan = {}
  for item in filter(None, (s.strip() for s in spec.split(','))):
    action, _, where = item.partition(':')
    point, _, count = where.partition('@')
    if not (action and point and count.isdigit()):
      raise ValueError(f'{ENV_VAR}: cannot parse {item!r} (ACTION:POINT@N)')
    plan[(point, int(count))] = action
  return plan


def at(point: str, count: int) -> None:
  """Acts if HCMTFG_FAULT names `point@count`; otherwise does nothing."""
  spec = os.environ.get(ENV_VAR)
  if not spec:
    return
  action = _plan(spec).get((point, int(count)))
  if action is None:
    return
  print(f'{ENV_VAR}: {action} at {point}@{count}', flush=True)
  if action == 'kill':
    os.kill(os.getpid(), signal.SIGKILL)
  elif action == 'pause':
    while True:
      time.sleep(60)
  elif action.startswith('fsize='):
    limit = int(action.partition('=')[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  else:
    raise ValueError(f'{ENV_VAR}: unknown action {action!r}')
