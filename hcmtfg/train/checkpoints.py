"""Checkpoints (Orbax), resuming, and the non-finite-loss check.

A checkpoint at step n holds two items:
  'state': the whole train-state pytree (step, RNG key, parameters, BatchNorm
           statistics and optimiser states of every network), saved with
           `ocp.args.StandardSave` and restored into an abstract state that
           carries the target shardings;
  'input': a JSON dict, the input iterator's position (opaque to this module).

Preemption: on a single host `hcmtfg.train.preemption.PreemptionHandler` turns
SIGTERM into a save-and-exit request; on multi-host jobs the loop asks JAX's
preemption sync point (`Checkpointer.reached_preemption`) instead, so that
every host stops at the same step.

Multi-host caveat: the 'input' JSON is written by the primary host only, so
the iterator position must mean the same on every host (e.g. a global step or
example index from which each host derives its own shard's position).

Integrity. Orbax writes a step into a temporary directory and renames it when
complete (on GCS: writes in place and commits with a marker file), so a killed
job never leaves a partial step under a final name; leftover temporary
directories are removed when the next run opens the directory. Before the
commit, the primary host adds `MANIFEST_FILE` to the step: the size and SHA-256
of every file in it. `restore_or_init` verifies the manifest and tries the
restore; a step that fails either (truncated or flipped bytes, a missing file)
is reported with a warning naming its directory and the problem, moved aside to
`<directory>.corrupt/`, and the previous step is used instead. If no step can be
restored, it raises `CheckpointError` rather than silently starting afresh.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from hcmtfg import paths
from hcmtfg.runtime import faults
from hcmtfg.train import manifest as manifest_lib

PyTree = Any

STATE_ITEM = 'state'
INPUT_ITEM = 'input'
# The step manifests (see `hcmtfg.train.manifest`), re-exported.
MANIFEST_FILE = manifest_lib.MANIFEST_FILE
CorruptCheckpointError = manifest_lib.CorruptCheckpointError
write_manifest = manifest_lib.write_manifest
verify_manifest = manifest_lib.verify_manifest
_TMP_MARK = '.orbax-checkpoint-tmp'


class CheckpointError(RuntimeError):
  """No checkpoint in a directory that holds some can be restored."""


class CheckpointWriteError(CheckpointError):
  """An asynchronous save failed (e.g. disk full); its step was not committed."""


class NonFiniteLossError(FloatingPointError):
  """A training loss or metric became NaN or infinite."""


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
  """Raises if any scalar metric is NaN or Inf.

  Args:
    metrics: name -> scalar (python float, numpy or jax scalar).
    step: the train step that produced them (1-based count of completed steps
      or the caller's own convention; it is only reported).

  Raises:
    NonFiniteLossError: naming the step and every non-finite metric.
  """
  bad = {}
  for name, value in metrics.items():
    value = np.asarray(jax.device_get(value))
    if value.size and not np.all(np.isfinite(value)):
      bad[name] = value.tolist()
  if bad:
    listing = ', '.join(f'{k} = {v}' for k, v in sorted(bad.items()))
    raise NonFiniteLossError(f'non-finite loss at step {step}: {listing}')


class Checkpointer:
  """An Orbax CheckpointManager for the train state plus the iterator position.

  Attributes:
    manager: the underlying `ocp.CheckpointManager`.
    directory: where the step folders are (absolute, or a URL).
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               save_interval_steps: int = 1000, async_save: bool = True):
    """Opens (or creates) a checkpoint directory.

    Args:
      directory: where step folders are written; created if missing.
        Temporary folders of unfinished saves (killed jobs) are removed.
      max_to_keep: keep only the newest N checkpoints (None keeps all).
      save_interval_steps: `save` writes only at multiples of it unless forced.
      async_save: write in a background thread (arrays are copied to host
        memory before `save` returns); if False, `save` returns once the step
        is committed.
    """
    self.directory = paths.user_path(directory)
    self._async = async_save
    self._saving_step = None
    self._failed_save_raised = False
    # Always Orbax's asynchronous checkpointer: its post-finalisation callback
    # runs after every file is written and before the commit, where the
    # manifest goes.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=True, create=True,
        cleanup_tmp_directories=True,
        async_options=ocp.AsyncOptions(
            post_finalization_callback=self._before_commit))
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=(STATE_ITEM, INPUT_ITEM))

  def latest_step(self) -> int | None:
    """The newest saved step, or None if there is none."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every step kept on disk, ascending."""
    return sorted(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` would write (interval reached, not saved)."""
    return self.manager.should_save(step)

  def step_dir(self, step: int) -> epath.Path:
    """The folder of a committed step."""
    return epath.Path(self.directory) / str(step)

  def _before_commit(self) -> None:
    """Orbax's finalise thread: every file of the step is written, the step
    is not committed yet. Writes the manifest (primary host)."""
    step = self._saving_step
    if step is None:
      return
    if jax.process_index() == 0:
      root = epath.Path(self.directory)
      tmp = sorted(p for p in root.iterdir()
                   if p.name.startswith(f'{step}{_TMP_MARK}'))
      write_manifest(tmp[-1] if tmp else root / str(step), step)
    faults.at('ckpt_commit', step)

  def save(self, step: int, state: PyTree,
           input_state: Mapping[str, Any] | None = None, *,
           force: bool = False) -> bool:
    """Saves state and iterator position at `step` if due (or if forced).

    Args:
      step: the number of completed train steps.
      state: the train-state pytree (jax.Arrays).
      input_state: JSON-serialisable iterator position, or None.
      force: save even off the interval.

    Returns:
      Whether a save was started (False if not due, or if `step` exists).

    Raises:
      CheckpointWriteError: the previous asynchronous save failed (e.g. the
        disk is full); its step was not committed.
    """
    self.wait_until_finished()
    if force and step in self.manager.all_steps():
      return False  # Already saved, e.g. by the interval.
    if not force and not self.manager.should_save(step):
      return False
    faults.at('ckpt_save', step)
    args = ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state),
        INPUT_ITEM: ocp.args.JsonSave(dict(input_state or {})),
    })
    self._saving_step = step
    saved = self.manager.save(step, args=args, force=force)
    if saved:
      logging.info('checkpoint: saving step %d to %s', step, self.directory)
      if not self._async:
        self.wait_until_finished()
    return saved

  def restore(self, abstract_state: PyTree, step: int | None = None
              ) -> tuple[PyTree, dict[str, Any]]:
    """Restores a saved step into the structure and shardings given.

    The step is first checked against its manifest.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct (with `.sharding`) of the
        same structure as the saved state, e.g. `Initializer.eval_shape()`.
      step: which step; default the latest.

    Returns:
      (state, input_state): the restored pytree and the saved iterator dict.

    Raises:
      FileNotFoundError: if there is no checkpoint.
      CorruptCheckpointError: the step does not match its manifest.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if not verify_manifest(self.step_dir(step)):
      logging.info('checkpoint: step %d has no manifest; not verified', step)
    restored = self.manager.restore(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardRestore(abstract_state),
        INPUT_ITEM: ocp.args.JsonRestore(),
    }))
    return restored[STATE_ITEM], dict(restored[INPUT_ITEM] or {})

  def set_aside(self, step: int) -> str:
    """Moves a step out of the directory (to `<directory>.corrupt/`).

    Returns:
      Where it went (primary host; the others only reload the step list).
    """
    target = epath.Path(f'{self.directory}.corrupt') / (
        f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      self.step_dir(step).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'hcmtfg: set aside step {step}')
    self.manager.reload()
    return str(target)

  def wait_until_finished(self) -> None:
    """Blocks until every pending asynchronous save is on disk.

    Raises:
      CheckpointWriteError: a save failed (e.g. the disk is full); its step
        was not committed, older steps are intact.
    """
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises many)
      already, self._failed_save_raised = self._failed_save_raised, True
      if already:
        raise CheckpointWriteError(f'an earlier save to {self.directory} '
                                   'failed') from e
      raise CheckpointWriteError(
          f'saving checkpoint step {self._saving_step} to {self.directory} '
          f'failed, so that step was not committed (is the disk full or the '
          f'directory unwritable?): {type(e).__name__}: {e}') from e

  def reached_preemption(self, step: int) -> bool:
    """JAX's multi-host preemption sync point (False on a single process).

    True on every host at the same step once any host has been sent SIGTERM
    (needs `jax.distributed.initialize()`, which starts the preemption
    service).
    """
    if jax.process_count() == 1:
      return False
    return self.manager.reached_preemption(step)

  def close(self) -> None:
    """Waits for pending saves and releases the manager.

    Raises:
      CheckpointWriteError: a save failed and that was not raised before.
    """
    try:
      self.wait_until_finished()
    except CheckpointWriteError:
      if not self._failed_save_raised:
        raise
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failed_save_raised:
          raise


def restore_or_init(checkpointer: Checkpointer, init_fn: Callable[[], PyTree]
                    ) -> tuple[PyTree, dict[str, Any] | None]:
  """Resumes from the newest restorable checkpoint, or initialises afresh.

  Steps are tried newest first. One that fails its manifest check or its
  restore is reported (a warning naming its folder and the problem); once an
  older step restores, the failed newer ones are moved to
  `<directory>.corrupt/` so that training can save those steps again.

  Args:
    checkpointer: where to look.
    init_fn: builds the initial state, typically a jitted function with
      `out_shardings` (e.g. `hcmtfg.train.train_state.Initializer`), so that its
      abstract output (`init_fn.eval_shape()` if it has that method, else
      `jax.eval_shape(init_fn)`) carries the shardings the restored arrays get.
      Only traced, not run, when resuming.

  Returns:
    (state, input_state): input_state is None for a fresh start, else the
    iterator position saved with the checkpoint.

  Raises:
    CheckpointError: there are checkpoints but none can be restored (listing
      each step's problem); nothing is moved then.
  """
  steps = checkpointer.all_steps()
  if not steps:
    logging.info('checkpoint: none found, initialising')
    return init_fn(), None
  eval_shape = getattr(init_fn, 'eval_shape', None)
  abstract = eval_shape() if eval_shape else jax.eval_shape(init_fn)
  failed = []
  for step in reversed(steps):
    try:
      state, position = checkpointer.restore(abstract, step)
    except Exception as e:  # pylint: disable=broad-except  (try the previous)
      problem = f'{type(e).__name__}: {e}'.strip()[:2000]
      logging.warning('checkpoint: step %d (%s) cannot be restored: %s',
                      step, checkpointer.step_dir(step), problem)
      failed.append((step, problem))
      continue
    for bad_step, _ in failed:
      where = checkpointer.set_aside(bad_step)
      logging.warning('checkpoint: moved unusable step %d to %s', bad_step,
                      where)
    if failed:
      logging.warning('checkpoint: falling back to step %d (newer step(s) %s '
                      'unusable)', step, [s for s, _ in failed])
    logging.info('checkpoint: resuming from step %d', step)
    return state, position
  listing = '\n'.join(f'  step {s}: {p}' for s, p in failed)
  raise CheckpointError(
      f'no checkpoint in {checkpointer.directory} can be restored:\n{listing}\n'
      'Refusing to start from scratch over them; fix the config (if it no '
      'longer matches) or move the directory away to start afresh.')
