"""The one exception type for bad user input.

Every loader and extractor turns a problem with an input file into `InputError`
naming the file and what is wrong, instead of letting a traceback escape from deep
inside numpy, dlib, librosa or ffmpeg. Command-line entry points catch it, print its
message and exit non-zero. `check_readable_file` is the audio and video readers'
first check (missing, a directory, unreadable, empty).
"""

from __future__ import annotations

import os


class InputError(ValueError):
  """A user-supplied file (photo, speech, video, checkpoint) cannot be used.

  Attributes:
    path: the offending file, or None when the input was an in-memory array.
    problem: a short human-readable description of what is wrong.
  """

  def __init__(self, path: str | os.PathLike | None, problem: str):
    self.path = None if path is None else os.fspath(path)
    self.problem = problem
    where = f"{self.path}: " if self.path is not None else ""
    super().__init__(f"{where}{problem}")


def check_readable_file(path: str | os.PathLike, kind: str) -> None:
  """Raises InputError unless `path` is an existing, readable, non-empty file.

  Args:
    path: the file.
    kind: what it should be, with its article ("an audio file", "a media file"),
      for the message about a directory.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise InputError(path, "file not found")
  if os.path.isdir(path):
    raise InputError(path, f"is a directory, not {kind}")
  if not os.access(path, os.R_OK):
    raise InputError(path, "file is not readable (permission denied)")
  if os.path.getsize(path) == 0:
    raise InputError(path, "file is empty")
