"""Checkpoints (Orbax), resuming, preemption and the non-finite-loss check.

A checkpoint at step n holds two items:
  'state': the whole train-state pytree (step, RNG key, parameters, BatchNorm
           statistics and optimiser states of every network), saved with
           `ocp.args.StandardSave` and restored into an abstract state that
           carries the target shardings;
  'input': a JSON dict, the input iterator's position (opaque to this module).

Preemption: `PreemptionHandler` turns SIGTERM into a request; the training loop
checks it at every step boundary, saves, waits for the write to finish and exits
(`SystemExit`), as MaxText does. On multi-host jobs a signal reaches the hosts
at different times, so there the loop asks JAX's preemption sync point
(`Checkpointer.reached_preemption`) instead, and every host stops at the same
step.

Multi-host caveat: the 'input' JSON is written by the primary host only, so
the iterator position must mean the same on every host (e.g. a global step or
example index from which each host derives its own shard's position).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

STATE_ITEM = 'state'
INPUT_ITEM = 'input'


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


def _absolute(directory: str | os.PathLike) -> str:
  """An absolute local path; URLs such as gs://bucket/dir are kept as they are."""
  directory = os.fspath(directory)
  return directory if '://' in directory else os.path.abspath(directory)


class Checkpointer:
  """An Orbax CheckpointManager for the train state plus the iterator position.

  Attributes:
    manager: the underlying `ocp.CheckpointManager`.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               save_interval_steps: int = 1000, async_save: bool = True):
    """Opens (or creates) a checkpoint directory.

    Args:
      directory: where step folders are written; created if missing.
      max_to_keep: keep only the newest N checkpoints (None keeps all).
      save_interval_steps: `save` writes only at multiples of it unless forced.
      async_save: write in a background thread (arrays are copied to host
        memory before `save` returns).
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(
        _absolute(directory), options=options,
        item_names=(STATE_ITEM, INPUT_ITEM))

  def latest_step(self) -> int | None:
    """The newest saved step, or None if there is none."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every step kept on disk, ascending."""
    return sorted(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` would write (interval reached, not saved)."""
    return self.manager.should_save(step)

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
    """
    if force:
      self.manager.wait_until_finished()
      if step in self.manager.all_steps():
        return False  # Already saved, e.g. by the interval.
    args = ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state),
        INPUT_ITEM: ocp.args.JsonSave(dict(input_state or {})),
    })
    saved = self.manager.save(step, args=args, force=force)
    if saved:
      logging.info('checkpoint: saving step %d to %s', step,
                   self.manager.directory)
    return saved

  def restore(self, abstract_state: PyTree, step: int | None = None
              ) -> tuple[PyTree, dict[str, Any]]:
    """Restores a saved step into the structure and shardings given.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct (with `.sharding`) of the
        same structure as the saved state, e.g. `Initializer.eval_shape()`.
      step: which step; default the latest.

    Returns:
      (state, input_state): the restored pytree and the saved iterator dict.

    Raises:
      FileNotFoundError: if there is no checkpoint.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.manager.directory}')
    restored = self.manager.restore(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardRestore(abstract_state),
        INPUT_ITEM: ocp.args.JsonRestore(),
    }))
    return restored[STATE_ITEM], dict(restored[INPUT_ITEM] or {})

  def wait_until_finished(self) -> None:
    """Blocks until every pending asynchronous save is on disk."""
    self.manager.wait_until_finished()

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
    """Waits for pending saves and releases the manager."""
    self.manager.close()


def restore_or_init(checkpointer: Checkpointer, init_fn: Callable[[], PyTree]
                    ) -> tuple[PyTree, dict[str, Any] | None]:
  """Resumes from the latest checkpoint, or initialises a fresh state.

  Args:
    checkpointer: where to look.
    init_fn: builds the initial state, typically a jitted function with
      `out_shardings` (e.g. `hcmtfg.train_state.Initializer`), so that its
      abstract output (`init_fn.eval_shape()` if it has that method, else
      `jax.eval_shape(init_fn)`) carries the shardings the restored arrays get.
      Only traced, not run, when resuming.

  Returns:
    (state, input_state): input_state is None for a fresh start, else the
    iterator position saved with the checkpoint.
  """
  step = checkpointer.latest_step()
  if step is None:
    logging.info('checkpoint: none found, initialising')
    return init_fn(), None
  eval_shape = getattr(init_fn, 'eval_shape', None)
  abstract = eval_shape() if eval_shape else jax.eval_shape(init_fn)
  logging.info('checkpoint: resuming from step %d', step)
  return checkpointer.restore(abstract, step)


class PreemptionHandler:
  """Turns SIGTERM into a save-and-exit request honoured at a step boundary.

  Use as a context manager around the training loop; the previous handler is
  restored on exit. Only the main thread can install signal handlers; elsewhere
  the handler is inert (requests can still be made with `request()`).
  """

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,),
               exit_code: int = 0):
    self._signals = signals
    self._previous = {}
    self._event = threading.Event()
    self.exit_code = exit_code

  def __enter__(self) -> PreemptionHandler:
    if threading.current_thread() is threading.main_thread():
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self._on_signal)
    return self

  def __exit__(self, *exc_info) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _on_signal(self, signum, unused_frame) -> None:
    logging.warning('received signal %d: will save and exit at the next step',
                    signum)
    self._event.set()

  def request(self) -> None:
    """Asks for a save-and-exit at the next step boundary."""
    self._event.set()

  @property
  def requested(self) -> bool:
    """Whether a save-and-exit has been requested."""
    return self._event.is_set()

  def save_and_exit(self, checkpointer: Checkpointer, step: int, state: PyTree,
                    input_state: Mapping[str, Any] | None = None):
    """Saves `state` at `step`, waits for the write, and exits the process."""
    checkpointer.save(step, state, input_state, force=True)
    checkpointer.wait_until_finished()
    logging.warning('preempted: saved step %d, exiting with code %d', step,
                    self.exit_code)
    sys.exit(self.exit_code)

