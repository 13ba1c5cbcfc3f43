"""The files a training run keeps beside its checkpoints, written atomically.

  <workdir>/config.json        the whole experiment config (ConfigDict as JSON)
  <workdir>/landmark_pca.npz   the landmark PCA of the training data
                               (`hcmtfg.features.landmarks.save_pca` format)

and the checks before a run starts: the workdir is writable and (local disks)
has room for checkpoints.

Paths may be local or remote (gs://...): everything goes through tf.io.gfile,
written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable

import jax
import ml_collections
import tensorflow as tf

from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.features import landmarks as landmarks_lib

CONFIG_FILE = 'config.json'
PCA_FILE = 'landmark_pca.npz'


def check_writable(workdir: str) -> None:
  """Creates `workdir` if needed and proves it writable (a probe file).

  Raises:
    InputError: naming the workdir, if it cannot be created or written.
  """
  probe = os.path.join(workdir, f'.write_probe_{jax.process_index()}_'
                       f'{uuid.uuid4().hex[:8]}')
  try:
    tf.io.gfile.makedirs(workdir)
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('ok')
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    raise InputError(workdir, f'workdir is not writable: {e}') from e


def check_free_space(workdir: str, checkpoint_bytes: int,
                     what: str = 'a checkpoint') -> None:
  """Refuses to start when a local workdir cannot hold two more checkpoints.

  A save needs room for the new step beside the kept ones (the oldest is
  deleted only after the new one is committed); this asks for twice that,
  plus 64 MiB for summaries. Remote workdirs are not checked.

  Raises:
    InputError: naming the workdir, the free and the needed space.
  """
  if paths.is_remote(workdir):
    return
  free = shutil.disk_usage(workdir).free
  needed = 2 * int(checkpoint_bytes) + (64 << 20)
  if free < needed:
    raise InputError(workdir, f'only {free / 2**20:.0f} MiB free on its disk; '
                     f'{what} takes about {checkpoint_bytes / 2**20:.0f} MiB '
                     f'and training needs at least {needed / 2**20:.0f} MiB')


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
  """`write(tmp)` then rename tmp -> path (gfile: local or remote)."""
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    write(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes `<workdir>/config.json` (the whole config) atomically."""
  path = os.path.join(workdir, CONFIG_FILE)
  text = json.dumps(json.loads(config.to_json_best_effort()), indent=2,
                    sort_keys=True) + '\n'

  def write(tmp):
    with tf.io.gfile.GFile(tmp, 'w') as f:
      f.write(text)
  _write_atomically(path, write)
  return path


def write_pca(workdir: str, pca: landmarks_lib.Pca) -> str:
  """Writes `<workdir>/landmark_pca.npz` (`landmarks.save_pca` format)."""
  path = os.path.join(workdir, PCA_FILE)
  if not paths.is_remote(path):
    landmarks_lib.save_pca(path, pca)  # atomic itself
    return path
  with tempfile.TemporaryDirectory() as local:
    local_path = os.path.join(local, PCA_FILE)
    landmarks_lib.save_pca(local_path, pca)
    _write_atomically(path, lambda tmp: tf.io.gfile.copy(local_path, tmp,
                                                         overwrite=True))
  return path
