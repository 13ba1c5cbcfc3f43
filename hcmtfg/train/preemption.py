"""Preemption: SIGTERM as a save-and-exit request, honoured at a step boundary.

`PreemptionHandler` records the signal; the training loop checks `requested`
at every step boundary, then saves, waits for the write to finish and exits
(`SystemExit`), as MaxText does. On multi-host jobs a signal reaches the hosts
at different times, so there the loop asks JAX's preemption sync point
(`hcmtfg.train.checkpoints.Checkpointer.reached_preemption`) instead, and every
host stops at the same step.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

from absl import logging

from hcmtfg.train import checkpoints


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

  def save_and_exit(self, checkpointer: checkpoints.Checkpointer, step: int,
                    state: checkpoints.PyTree,
                    input_state: Mapping[str, Any] | None = None):
    """Saves `state` at `step`, waits for the write, and exits the process."""
    checkpointer.save(step, state, input_state, force=True)
    checkpointer.wait_until_finished()
    logging.warning('preempted: saved step %d, exiting with code %d', step,
                    self.exit_code)
    sys.exit(self.exit_code)
