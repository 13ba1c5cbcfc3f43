"""The one exception type for bad user input.

Every loader and extractor turns a problem with an input file into `InputError`
naming the file and what is wrong, instead of letting a traceback escape from deep
inside numpy, dlib, librosa or ffmpeg. Command-line entry points catch it, print its
message and exit non-zero.
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
