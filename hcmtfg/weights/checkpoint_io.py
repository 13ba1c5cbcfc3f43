"""AT-net / VG-net weights on disk: read for inference; converted ones written.

Two directory layouts are accepted for each network, detected from the files:

* a training workdir (`hcmtfg.train.atnet_steps` / `vgnet_steps`):
    <workdir>/config.json            the experiment ConfigDict as JSON; AT-net's
                                     `model` holds ATNet attributes, VG-net's
                                     `model.generator` holds VGNet attributes
    <workdir>/checkpoints/<step>/state   Orbax train state (TrainState pytree);
                                     the network is `g` (params, batch_stats)
    <workdir>/landmark_pca.npz       AT-net only: the PCA used in training
  The newest step is read (or a given one, `load_network(step=)`), and only
  `g.params` / `g.batch_stats` (partial restore into host numpy arrays: no
  optimiser structure, no device mesh).
  Training workdirs may be local or on GCS (gs://, via etils.epath). Local
  paths may be relative or start with `~` (`hcmtfg.paths.user_path`).
* a converted release checkpoint (`launch.convert_checkpoint`, which writes
  it with `save_converted`): `<dir>/atnet`, `<dir>/vgnet` (pass `<dir>` or
  `<dir>/atnet` itself), each one Orbax checkpoint with the items 'variables'
  (the Flax variables) and 'model_config' (JSON: the module's attributes). A
  PCA may sit beside them as `<dir>/landmark_pca.npz`; otherwise it must be
  given (release files `U_lrw1.npy` + `mean_lrw1.npy`, or a `save_pca` file).

Every problem is an `InputError` naming the file: missing directory, no step
saved, unreadable checkpoint, a config that does not build, and any parameter
whose shape differs from what the config implies (both shapes are given).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Any, Mapping

from absl import logging
from etils import epath
from flax import traverse_util
import jax
import numpy as np

from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.models import at_net
from hcmtfg.models import vg_net
from hcmtfg.runtime import exported

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
STATE_ITEM = "state"
PCA_FILE = "landmark_pca.npz"
CONVERTED_VARIABLES = "variables"
CONVERTED_CONFIG = "model_config"
_NETWORKS = {"atnet": at_net.ATNet, "vgnet": vg_net.VGNet}
_LABELS = {"atnet": "AT-net", "vgnet": "VG-net"}


@dataclasses.dataclass(frozen=True)
class LoadedNetwork:
  """One network's module and variables as found on disk.

  Attributes:
    module: the Flax module built from the stored config.
    variables: {'params', 'batch_stats'} nested dicts of float32 numpy arrays.
    layout: 'training' or 'converted'.
    path: the checkpoint directory the variables came from.
    step: training step (None for converted weights).
    pca: the landmark PCA found beside the weights, else None (training
      workdirs of both stages have one; converted folders may, for AT-net).
  """
  module: Any
  variables: dict
  layout: str
  path: str
  step: int | None = None
  pca: landmarks_lib.Pca | None = None


def load_network(directory: str | os.PathLike, name: str, *,
                 step: int | None = None) -> LoadedNetwork:
  """Loads 'atnet' or 'vgnet' from a training workdir or a converted checkpoint.

  Args:
    directory: the training workdir or converted-checkpoint folder.
    name: 'atnet' or 'vgnet'.
    step: a training workdir's checkpoint step to read (one of
      `saved_steps`); None = the newest. Converted checkpoints have no steps.

  Raises:
    InputError: see the module docstring; also a `step` that is not saved.
  """
  if name not in _NETWORKS:
    raise ValueError(f"name must be one of {sorted(_NETWORKS)}, got {name!r}")
  # Local (absolute: Orbax refuses relative paths), or gs:// for training
  # workdirs.
  root = epath.Path(paths.user_path(directory))
  if not root.exists():
    raise InputError(root, f"{_LABELS[name]} checkpoint directory not found")
  if not root.is_dir():
    raise InputError(root, f"{_LABELS[name]} checkpoint must be a directory")
  converted = ((root / name / CONVERTED_VARIABLES).is_dir()
               or (root / CONVERTED_VARIABLES).is_dir())
  if converted and step is not None:
    raise InputError(root, f"is a converted checkpoint: it has no training "
                     f"steps (asked for step {step})")
  if (root / name / CONVERTED_VARIABLES).is_dir():
    return _load_converted(root, name)
  if (root / CONVERTED_VARIABLES).is_dir():
    return _load_converted(root.parent, root.name, expected=name)
  # `root / CONFIG_FILE` may be remote: epath handles gs:// through tf.io.gfile.
  if (root / CONFIG_FILE).is_file() or (root / CHECKPOINTS_DIR).is_dir():
    return _load_training(root, name, step)
  raise InputError(
      root, f"not a {_LABELS[name]} checkpoint: neither a training workdir "
      f"({CONFIG_FILE} + {CHECKPOINTS_DIR}/) nor a converted checkpoint "
      f"({name}/ written by launch.convert_checkpoint)")


def load_pca_from(path: str | os.PathLike) -> landmarks_lib.Pca:
  """A `save_pca` .npz file, or a folder with the release's U_lrw1 / mean_lrw1."""
  path = epath.Path(paths.user_path(path))
  if path.is_dir():
    if (path / PCA_FILE).is_file():
      return _load_pca_file(path / PCA_FILE)
    return landmarks_lib.load_release_pca(path)
  if not path.exists():
    raise InputError(path, "landmark PCA file not found")
  return _load_pca_file(path)


def _load_pca_file(path: epath.Path) -> landmarks_lib.Pca:
  """`landmarks.load_pca`, through a local copy when the file is remote."""
  if not paths.is_remote(path):
    return landmarks_lib.load_pca(os.fspath(path))
  with tempfile.TemporaryDirectory() as local:
    copy = os.path.join(local, PCA_FILE)
    pathlib.Path(copy).write_bytes(path.read_bytes())
    try:
      return landmarks_lib.load_pca(copy)
    except InputError as e:
      raise InputError(path, e.problem) from e


@contextlib.contextmanager
def _quiet_orbax():
  """Silences Orbax's INFO/WARNING lines (absl) while reading a checkpoint."""
  previous = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(previous)


def _build(name: str, config: Any, config_path: epath.Path):
  if not isinstance(config, dict):
    raise InputError(config_path, f"the {_LABELS[name]} model config is not a "
                     f"mapping: {config!r}")
  try:
    return _NETWORKS[name].from_config(config)
  except (TypeError, ValueError) as e:
    raise InputError(config_path, f"cannot build the {_LABELS[name]} from its "
                     f"config: {e}") from e


def save_converted(output_dir: str | os.PathLike, name: str,
                   variables: Mapping[str, Any],
                   model_config: Mapping[str, Any]) -> pathlib.Path:
  """Writes `<output_dir>/<name>/` with the variables and the model config.

  One Orbax checkpoint (written to a temporary directory, then renamed) with
  two items: 'variables' (the Flax variables, e.g. from
  `hcmtfg.weights.convert_torch.convert_vgnet`) and 'model_config' (JSON, the
  attributes of the module that uses them, e.g. `VGNet().to_config()`).
  An existing `<output_dir>/<name>` is replaced. `output_dir` may be relative
  or start with `~`.

  Returns:
    The checkpoint directory.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(paths.user_path(output_dir)) / name
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(
        directory,
        ocp.args.Composite(**{
            CONVERTED_VARIABLES: ocp.args.StandardSave(
                jax.tree.map(np.asarray, dict(variables))),
            CONVERTED_CONFIG: ocp.args.JsonSave(dict(model_config)),
        }),
        force=True)
  return directory


def load_converted(output_dir: str | os.PathLike,
                   name: str) -> tuple[dict, dict[str, Any]]:
  """Reads what `save_converted` wrote: (variables as numpy arrays, config).

  Unlike `load_network`, builds no module and checks no shapes.

  Raises:
    InputError: `<output_dir>/<name>` is not such a checkpoint.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(paths.user_path(output_dir)) / name
  if not (directory / CONVERTED_VARIABLES).is_dir():
    raise InputError(directory, "is not a converted checkpoint (no "
                     f"'{CONVERTED_VARIABLES}' item)")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(
        directory,
        ocp.args.Composite(**{
            CONVERTED_VARIABLES: ocp.args.StandardRestore(),
            CONVERTED_CONFIG: ocp.args.JsonRestore(),
        }))
  variables = jax.tree.map(np.asarray, restored[CONVERTED_VARIABLES])
  return variables, dict(restored[CONVERTED_CONFIG])


def _load_converted(parent: epath.Path, item: str,
                    expected: str | None = None) -> LoadedNetwork:
  name = expected or item
  directory = parent / item
  try:
    with _quiet_orbax():
      variables, config = load_converted(parent, item)
  except InputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(directory, f"cannot read the converted checkpoint: "
                     f"{type(e).__name__}: {e}") from e
  module = _build(name, config, directory / CONVERTED_CONFIG)
  variables = _check_variables(module, variables, directory,
                               directory / CONVERTED_CONFIG)
  pca = (_load_pca_file(parent / PCA_FILE)
         if name == "atnet" and (parent / PCA_FILE).is_file() else None)
  return LoadedNetwork(module, variables, "converted", os.fspath(directory), None,
                       pca)


def saved_steps(workdir: str | os.PathLike) -> list[int]:
  """The checkpoint steps of a training workdir, ascending ([] if none).

  Only committed steps count (Orbax writes a step under a temporary name and
  renames it when complete).
  """
  checkpoints = epath.Path(workdir) / CHECKPOINTS_DIR
  if not checkpoints.is_dir():
    return []
  return sorted(int(p.name) for p in checkpoints.iterdir()
                if p.name.isdigit() and (p / STATE_ITEM).is_dir())


def _load_training(root: epath.Path, name: str,
                   step: int | None = None) -> LoadedNetwork:
  config_path = root / CONFIG_FILE
  if not config_path.is_file():
    raise InputError(config_path, "missing: a training workdir needs the "
                     "experiment config beside its checkpoints")
  try:
    config = json.loads(config_path.read_text())
  except (OSError, ValueError) as e:
    raise InputError(config_path, f"cannot read the config JSON: {e}") from e
  model = config.get("model") if isinstance(config, dict) else None
  if not isinstance(model, dict):
    raise InputError(config_path, "has no 'model' section")
  is_vgnet = "generator" in model
  if name == "atnet" and is_vgnet:
    raise InputError(root, "is a VG-net training workdir (its config has "
                     "model.generator), but an AT-net one was expected")
  if name == "vgnet" and not is_vgnet:
    raise InputError(root, "is an AT-net training workdir (its config has no "
                     "model.generator), but a VG-net one was expected")
  module = _build(name, model["generator"] if is_vgnet else model, config_path)
  steps = saved_steps(root)
  if not steps:
    raise InputError(root / CHECKPOINTS_DIR, "no saved checkpoint step found")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise InputError(root / CHECKPOINTS_DIR, f"has no checkpoint of step "
                     f"{step} (saved: {', '.join(map(str, steps))})")
  state_dir = root / CHECKPOINTS_DIR / str(step) / STATE_ITEM
  variables = _restore_generator_variables(state_dir)
  variables = _check_variables(module, variables, state_dir, config_path)
  pca = _load_pca_file(root / PCA_FILE) if (root / PCA_FILE).is_file() else None
  return LoadedNetwork(module, variables, "training", os.fspath(state_dir), step,
                       pca)


def _restore_generator_variables(state_dir: epath.Path) -> dict:
  """`g.params` and `g.batch_stats` of a saved TrainState, as numpy arrays.

  Raises:
    InputError: naming `state_dir` and what Orbax could not read, or saying
      that the tree it holds has no 'g' network.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    with _quiet_orbax(), ocp.PyTreeCheckpointer() as checkpointer:
      # The handler raises what went wrong; the checkpointer's `metadata` would
      # log it and return no tree.
      handler = ocp.PyTreeCheckpointHandler()
      try:
        metadata = handler.metadata(state_dir)
      finally:
        handler.close()
      tree = getattr(metadata, "tree", metadata)
      if not isinstance(tree, dict) or not isinstance(tree.get("g"), dict):
        found = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise InputError(state_dir, "is not a train state: it holds no 'g' "
                         f"network (found {found})")
      item = {"g": {k: tree["g"][k] for k in ("params", "batch_stats")
                    if tree["g"].get(k) is not None}}
      restore_args = jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
      restored = checkpointer.restore(
          state_dir, args=ocp.args.PyTreeRestore(
              item=item, restore_args=restore_args, partial_restore=True))
  except InputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(state_dir, f"cannot read the train state: "
                     f"{type(e).__name__}: {e}") from e
  g = restored["g"]
  return {"params": g.get("params") or {}, "batch_stats": g.get("batch_stats") or {}}


def _check_variables(module: Any, variables: dict, weights_path: epath.Path,
                     config_path: epath.Path) -> dict:
  """Float32 numpy variables whose tree and shapes match `module.init`."""
  expected = exported.variable_shapes(module)  # {"params/...": shape, dtype}
  got = traverse_util.flatten_dict(
      {k: v for k, v in variables.items() if k in ("params", "batch_stats")},
      sep="/")
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  mismatched = [f"{key}: {tuple(np.shape(got[key]))} in the weights, "
                f"{tuple(expected[key].shape)} from the config"
                for key in sorted(set(expected) & set(got))
                if tuple(np.shape(got[key])) != tuple(expected[key].shape)]
  problems = []
  if mismatched:
    problems.append("shape mismatch " + "; ".join(mismatched[:5])
                    + (f" ... ({len(mismatched) - 5} more)"
                       if len(mismatched) > 5 else ""))
  if missing:
    problems.append(f"parameters missing from the weights: {missing[:5]}")
  if unexpected:
    problems.append(f"parameters the config does not have: {unexpected[:5]}")
  if problems:
    raise InputError(weights_path, "does not match the model config "
                     f"{config_path}: " + " | ".join(problems))
  flat = {key: np.asarray(value, np.float32) for key, value in got.items()}
  return traverse_util.unflatten_dict(flat, sep="/")
