"""One trainer per workdir (one build per dataset): locks that die with their holder.

`<workdir>/.hcmtfg.lock` is locked with `fcntl.flock` for as long as a trainer
runs. The kernel drops the lock when the holding process exits in any way
(SIGKILL, OOM, a crash), so a killed job never leaves the workdir locked;
the file itself stays and only records the last holder (pid, host, start time)
for the refusal message.

`data_pipelines.build` takes a blocking lock of the same kind on the dataset's
folder, so concurrent builds of one dataset run one after the other.

Limits: flock needs a local (or NFS) file system, so gs:// workdirs are not
locked (a log line says so); on multi-host jobs only process 0 takes the lock.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys

from absl import logging

from hcmtfg.errors import InputError

LOCK_FILE = '.hcmtfg.lock'


class WorkdirLockedError(InputError):
  """Another live process holds the workdir's lock."""


class WorkdirLock:
  """An exclusive, non-blocking lock on a workdir (context manager).

    with WorkdirLock(workdir):
      train(...)
  """

  def __init__(self, workdir: str | os.PathLike, *, blocking: bool = False,
               name: str = LOCK_FILE):
    """A lock on `workdir` (an existing local directory), not yet taken.

    Args:
      workdir: the directory.
      blocking: `acquire` waits for the holder to finish instead of raising.
      name: the lock file's name in `workdir`.
    """
    self.path = os.path.join(os.fspath(workdir), name)
    self._blocking = blocking
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> WorkdirLock:
    """Takes the lock, or raises naming the process that holds it.

    Raises:
      WorkdirLockedError: another process holds it (its pid, host, start).
    """
    if self._fd is not None:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      if self._blocking:
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          logging.info('waiting for %s (%s)', self.path,
                       _describe(os.pread(fd, 4096, 0)))
          fcntl.flock(fd, fcntl.LOCK_EX)
      else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _describe(os.pread(fd, 4096, 0))
      os.close(fd)
      raise WorkdirLockedError(
          os.path.dirname(self.path),
          f'another trainer is using this workdir ({holder}); stop it or '
          'choose another --workdir (the lock is released when that process '
          'exits, however it ends)') from None
    info = {'pid': os.getpid(), 'host': socket.gethostname(),
            'since': datetime.datetime.now().isoformat(timespec='seconds'),
            'command': ' '.join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    """Drops the lock (the file stays, with the last holder's details)."""
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()


def _describe(content: bytes) -> str:
  try:
    info = json.loads(content.decode())
    return (f"pid {info['pid']} on host {info['host']}, running since "
            f"{info['since']}: {info.get('command', '?')}")
  except (ValueError, KeyError, TypeError):
    return 'holder unknown'


def lock_workdir(workdir: str, process_index: int = 0) -> WorkdirLock | None:
  """The held lock of a local workdir, or None where no lock is taken.

  Args:
    workdir: an existing directory (local path or URL).
    process_index: this process; only process 0 locks.

  Raises:
    WorkdirLockedError: another live process holds the lock.
  """
  if process_index != 0:
    return None
  if '://' in workdir:
    logging.info('workdir %s is remote: no lock against a second trainer '
                 '(flock needs a local file system)', workdir)
    return None
  return WorkdirLock(workdir).acquire()
