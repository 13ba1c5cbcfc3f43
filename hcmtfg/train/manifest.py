"""Integrity manifests of checkpoint steps: size and SHA-256 of every file.

Orbax restores a file with flipped bytes without complaint, so
`hcmtfg.train.checkpoints` writes a manifest into each step before Orbax commits it
and checks it before restoring (`verify_manifest`).
"""

from __future__ import annotations

import hashlib
import json
import os

from etils import epath

MANIFEST_FILE = 'hcmtfg_manifest.json'
# Rewritten by Orbax after the manifest, when the step is committed.
_UNLISTED = frozenset({'_CHECKPOINT_METADATA', 'commit_success.txt',
                       MANIFEST_FILE})


class CorruptCheckpointError(RuntimeError):
  """A checkpoint step does not match its manifest (or cannot be read)."""


def _file_digest(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      digest.update(block)
  return digest.hexdigest()


def _listed_files(root: epath.Path) -> dict[str, epath.Path]:
  """Relative path -> file, for every file under `root` a manifest covers."""
  files, folders = {}, [root]
  while folders:
    for path in folders.pop().iterdir():
      if path.is_dir():
        folders.append(path)
      elif path.name not in _UNLISTED:
        files[str(path.relative_to(root))] = path
  return files


def write_manifest(step_dir: str | os.PathLike, step: int) -> None:
  """Writes `MANIFEST_FILE` (size and SHA-256 of each file) into a step."""
  root = epath.Path(step_dir)
  files = {rel: {'size': path.stat().length, 'sha256': _file_digest(path)}
           for rel, path in sorted(_listed_files(root).items())}
  text = json.dumps({'version': 1, 'step': step, 'files': files}, indent=1)
  (root / MANIFEST_FILE).write_text(text)


def verify_manifest(step_dir: str | os.PathLike) -> bool:
  """Checks a step against its manifest.

  Returns:
    True if verified, False if the step has no manifest (an older checkpoint,
    or a job killed between the commit and the manifest on file systems that
    commit in place).

  Raises:
    CorruptCheckpointError: naming the first missing, resized or changed file.
  """
  root = epath.Path(step_dir)
  manifest_path = root / MANIFEST_FILE
  if not manifest_path.exists():
    return False
  try:
    listed = json.loads(manifest_path.read_text())['files']
  except (ValueError, KeyError, TypeError) as e:
    raise CorruptCheckpointError(f'{manifest_path}: unreadable manifest '
                                 f'({e})') from e
  for rel, expected in sorted(listed.items()):
    path = root / rel
    if not path.exists():
      raise CorruptCheckpointError(f'{path}: file missing')
    size = path.stat().length
    if size != expected['size']:
      raise CorruptCheckpointError(
          f'{path}: {size} bytes, {expected["size"]} when written (truncated?)')
    if _file_digest(path) != expected['sha256']:
      raise CorruptCheckpointError(f'{path}: contents changed since written '
                                   '(SHA-256 mismatch)')
  return True
