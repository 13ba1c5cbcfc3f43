"""The training loop and the evaluation it runs, for any stage.

`run_train_loop` steps a jitted train step over an input iterator, fetching
each step's metrics while the next step runs, checking them for NaN/Inf,
writing summaries, saving checkpoints at their interval and on preemption,
and evaluating at its interval. `evaluate` averages a jitted eval step over
an eval split; `EvalWithImages` makes that eval step also write image grids
once per evaluation. The trainer (`hcmtfg.train.trainer`) builds their
arguments from a config and a stage (`hcmtfg.train.stage`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from absl import logging
import jax
import numpy as np

from hcmtfg.runtime import sharding
from hcmtfg.train import checkpoints as checkpoints_lib
from hcmtfg.train import preemption as preemption_lib
from hcmtfg.train import summaries
from hcmtfg.train import train_state as ts

HostBatch = Mapping[str, np.ndarray]
# What the loop hands its metrics to: (step, {name: mean value}).
MetricsCallback = Callable[[int, dict[str, float]], None]


def _iterator_position(train_iter: Any) -> dict[str, Any] | None:
  """`train_iter.get_state()` if the iterator can report its position."""
  get_state = getattr(train_iter, 'get_state', None)
  return None if get_state is None else dict(get_state())


def run_train_loop(
    *, state: ts.TrainState,
    train_step_fn: Callable[[ts.TrainState, Any], tuple[ts.TrainState, Any]],
    train_iter: Iterator[HostBatch], mesh: jax.sharding.Mesh,
    checkpointer: checkpoints_lib.Checkpointer, num_steps: int,
    log_every: int = 100,
    eval_fn: Callable[[ts.TrainState], dict[str, float]] | None = None,
    eval_every: int = 0, write_metrics: MetricsCallback | None = None,
    preemption: preemption_lib.PreemptionHandler | None = None
) -> ts.TrainState:
  """Runs train steps until `num_steps`, checkpointing along the way.

  Step n+1 is dispatched before step n's metrics are fetched, so the host never
  waits for the device except at logs, saves and evals. Every metric is checked
  for NaN/Inf (raising `NonFiniteLossError` naming the step), and a step is
  verified finite before it is saved.

  Args:
    state: the state to continue from (its `step` is the start).
    train_step_fn: jitted `(state, global_batch) -> (state, metrics)`.
    train_iter: yields host-local numpy batch dicts; its `get_state()` (if any)
      is saved with every checkpoint.
    mesh: the device mesh (batches are sharded over 'data').
    checkpointer: saves at its interval, at the end and on preemption.
    num_steps: stop after this many completed steps.
    log_every: average and write train metrics every N steps.
    eval_fn: `state -> metrics`, run every `eval_every` steps (0 = never).
    eval_every: see eval_fn.
    write_metrics: `(step, metrics)`, called on process 0 only.
    preemption: a handler whose request makes the loop save and exit.

  Returns:
    The final state (also saved).
  """
  step = int(jax.device_get(state.step))
  # Per metric: running sum and count (warm-up and GAN steps of VG-net report
  # different metrics, so a log window may mix them).
  sums: dict[str, float] = {}
  counts: dict[str, int] = {}
  pending = None  # (step, device metrics) not yet fetched.

  def write(at_step: int, metrics: dict[str, float]) -> None:
    logging.info('step %d: %s', at_step,
                 ', '.join(f'{k}={v:.5g}' for k, v in sorted(metrics.items())))
    if write_metrics is not None and jax.process_index() == 0:
      write_metrics(at_step, metrics)

  def fetch() -> None:
    nonlocal pending
    if pending is None:
      return
    at_step, metrics = pending
    pending = None
    metrics = jax.device_get(metrics)
    checkpoints_lib.check_finite(metrics, at_step)
    for name, value in metrics.items():
      sums[name] = sums.get(name, 0.0) + float(value)
      counts[name] = counts.get(name, 0) + 1

  def preempted() -> bool:
    if preemption is None:
      return False
    if jax.process_count() > 1:  # Hosts must agree on the step.
      return checkpointer.reached_preemption(step)
    return preemption.requested

  while step < num_steps:
    if preempted():
      fetch()
      preemption.save_and_exit(checkpointer, step, state,
                               _iterator_position(train_iter))
    try:
      batch = next(train_iter)
    except StopIteration:
      logging.warning('training data exhausted at step %d', step)
      break
    state, metrics = train_step_fn(
        state, sharding.host_local_to_global(batch, mesh))
    fetch()  # The previous step's metrics, while this step runs.
    step += 1
    pending = (step, metrics)
    if step % log_every == 0 or step == num_steps:
      fetch()
      write(step, {k: v / counts[k] for k, v in sums.items()})
      sums.clear()
      counts.clear()
    if checkpointer.should_save(step):
      fetch()
      checkpointer.save(step, state, _iterator_position(train_iter))
    if eval_fn is not None and eval_every and step % eval_every == 0:
      write(step, eval_fn(state))
  fetch()
  checkpointer.save(step, state, _iterator_position(train_iter), force=True)
  checkpointer.wait_until_finished()
  return state


def evaluate(eval_step_fn: Callable[[ts.TrainState, Any], Mapping[str, Any]],
             state: ts.TrainState, batches: Iterable[HostBatch],
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Means of `eval_step_fn` metrics over host-local numpy batches."""
  totals, count = {}, 0
  for batch in batches:
    metrics = jax.device_get(
        eval_step_fn(state, sharding.host_local_to_global(batch, mesh)))
    for name, value in metrics.items():
      totals[name] = totals.get(name, 0.0) + float(value)
    count += 1
  return {name: total / max(count, 1) for name, total in totals.items()}


class EvalWithImages:
  """An eval step that also writes image grids once per evaluation.

  On the first eval batch of each step it runs `predict` (on every process:
  it is a collective computation) and process 0 writes
  `make_images(outputs)`, the outputs fetched as numpy arrays.
  """

  def __init__(self, eval_step: Callable[[ts.TrainState, Any], Any],
               predict: Callable[[ts.TrainState, Any], Mapping[str, Any]],
               make_images: Callable[[Mapping[str, np.ndarray]],
                                     Mapping[str, np.ndarray]],
               writer: summaries.SummaryWriter):
    self._eval_step, self._predict = eval_step, predict
    self._make_images, self._writer = make_images, writer
    self._last_step = None

  def __call__(self, state: ts.TrainState, batch) -> dict[str, jax.Array]:
    metrics = self._eval_step(state, batch)
    step = int(jax.device_get(state.step))
    if step != self._last_step:
      self._last_step = step
      outputs = jax.tree.map(np.asarray,
                             jax.device_get(self._predict(state, batch)))
      if self._writer.active:
        self._writer.images(step, self._make_images(outputs))
    return metrics
