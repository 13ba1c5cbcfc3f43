"""Paths as users type them: relative, `~`, with spaces, or gs:// URLs.

Orbax refuses relative checkpoint paths, TFDS and tf.io.gfile do not expand
`~` (they would create a folder named `~`), and a relative path means
something else once a job changes directory. So every library function that
hands a user's path to Orbax or TFDS, and every entry point, passes it through
`user_path` first: local paths become absolute with `~` expanded, URLs
(gs://bucket/dir) are kept exactly as given.
"""

from __future__ import annotations

import os


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL (gs://...) rather than a local path."""
  return "://" in os.fspath(path)


def user_path(path: str | os.PathLike | None) -> str | None:
  """`path` as its user meant it, safe to hand to Orbax, TFDS or gfile.

  Local paths: `~` expanded, then made absolute against the current directory
  (spaces and symbolic links are kept as they are). URLs are returned
  unchanged. None and '' (an unset optional flag) are returned as they are.
  """
  if path is None:
    return None
  path = os.fspath(path)
  if not path or is_remote(path):
    return path
  return os.path.abspath(os.path.expanduser(path))
