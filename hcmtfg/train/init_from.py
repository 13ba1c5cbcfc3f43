"""Starting a training run from converted release weights (`config.init_from`).

`config.init_from` names a directory written by `launch.convert_checkpoint`
(`hcmtfg.weights.checkpoint_io.save_converted`): `<dir>/atnet`, `<dir>/vgnet`,
`<dir>/discriminator`. `InitFrom` wraps a state initialiser so that a fresh
run's networks take those parameters and BatchNorm statistics instead of random
ones (optimiser moments start at zero, as for a fresh run); a run that resumes
from its own checkpoint never reads them. Every parameter must exist with the
same shape in the network the config builds, or an `InputError` lists the
differences.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

from absl import logging
from flax import traverse_util
import jax
import numpy as np

from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.runtime import sharding
from hcmtfg.train import train_state as ts
from hcmtfg.weights import checkpoint_io

PyTree = Any

# Train-state network -> converted checkpoint item, per stage; the items after
# the first are optional (a missing discriminator starts from random weights).
NETWORKS = {'atnet': (('g', 'atnet'),),
            'vgnet': (('g', 'vgnet'), ('d', 'discriminator'))}
_COLLECTIONS = ('params', 'batch_stats')


def load_variables(directory: str | os.PathLike, stage: str
                   ) -> dict[str, dict[str, PyTree]]:
  """The converted variables of a stage's networks found in `directory`.

  Args:
    directory: a `launch.convert_checkpoint` output directory.
    stage: 'atnet' | 'vgnet'.

  Returns:
    train-state network name ('g', 'd') -> {'params', 'batch_stats'} numpy
    trees; the required network is always present.

  Raises:
    InputError: the directory or the required network is missing.
  """
  root = pathlib.Path(paths.user_path(directory))
  if not root.is_dir():
    raise InputError(root, 'init_from directory not found')
  found = {}
  for i, (net, item) in enumerate(NETWORKS[stage]):
    if not (root / item).is_dir():
      if i == 0:
        raise InputError(root, f'has no converted {item}/ checkpoint (write '
                         'one with python -m launch.convert_checkpoint)')
      logging.info('init_from: no %s/ in %s; it starts from random weights',
                   item, root)
      continue
    variables, _ = checkpoint_io.load_converted(root, item)
    found[net] = {c: variables.get(c, {}) for c in _COLLECTIONS}
  return found


def _check_shapes(path: pathlib.Path, loaded: PyTree, abstract: PyTree) -> None:
  """Raises InputError unless both trees have the same leaves and shapes."""
  got = traverse_util.flatten_dict(loaded, sep='/')
  want = traverse_util.flatten_dict(abstract, sep='/')
  problems = []
  mismatched = [f'{k}: {tuple(np.shape(got[k]))} in the checkpoint, '
                f'{tuple(want[k].shape)} in the config'
                for k in sorted(set(got) & set(want))
                if tuple(np.shape(got[k])) != tuple(want[k].shape)]
  if mismatched:
    problems.append(f'{len(mismatched)} shape mismatches: '
                    + '; '.join(mismatched[:4]))
  missing = sorted(set(want) - set(got))
  if missing:
    problems.append(f'{len(missing)} missing from the checkpoint: {missing[:4]}')
  extra = sorted(set(got) - set(want))
  if extra:
    problems.append(f'{len(extra)} not in the configured network: {extra[:4]}')
  if problems:
    raise InputError(path, 'does not fit the network of this config '
                     '(config.model must match the converted weights): '
                     + ' | '.join(problems))


def _replicate(values: PyTree, like: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """Host numpy leaves as global arrays replicated on `mesh`, dtypes of `like`."""
  replicated = sharding.replicated(mesh)

  def put(value, target):
    value = np.asarray(value, target.dtype)
    return jax.make_array_from_callback(value.shape, replicated,
                                        lambda index: value[index])
  return jax.tree.map(put, values, like)


class InitFrom:
  """A state initialiser whose networks start from converted weights.

  Drop-in for `hcmtfg.train.train_state.Initializer` (callable, `eval_shape()`).
  """

  def __init__(self, initializer: ts.Initializer, directory: str | os.PathLike,
               stage: str, mesh: jax.sharding.Mesh):
    self._initializer = initializer
    self._directory = pathlib.Path(directory)
    self._stage = stage
    self._mesh = mesh

  def eval_shape(self) -> ts.TrainState:
    return self._initializer.eval_shape()

  def __call__(self) -> ts.TrainState:
    loaded = load_variables(self._directory, self._stage)
    abstract = self.eval_shape()
    for net, variables in loaded.items():
      target = getattr(abstract, net)
      item = dict(NETWORKS[self._stage])[net]
      for collection in _COLLECTIONS:
        _check_shapes(self._directory / item, variables[collection],
                      getattr(target, collection))
    state = self._initializer()
    for net, variables in loaded.items():
      current = getattr(state, net)
      updated = current.replace(**{
          c: _replicate(variables[c], getattr(current, c), self._mesh)
          for c in _COLLECTIONS})
      state = state.replace(**{net: updated})
      logging.info('init_from: %s starts from %s', net,
                   self._directory / dict(NETWORKS[self._stage])[net])
    return state


def maybe_wrap(initializer: ts.Initializer, config: Mapping[str, Any] | Any,
               mesh: jax.sharding.Mesh):
  """`InitFrom(initializer, ...)` if `config.init_from` is set, else as is."""
  directory = config.init_from
  if not directory:
    return initializer
  return InitFrom(initializer, paths.user_path(directory), config.stage,
                  mesh)
