"""TensorBoard summaries and the progress log of a training run.

`SummaryWriter` writes TensorBoard event files with `tf.summary` (scalars,
PNG images, markdown text; the `tensorboard` package provides those
functions). Only process 0 writes; on the other processes every method does
nothing.

`RunProgress` holds where a run stands (its last step and time, its length,
batch size and learning rate) and is the training loop's `(step, metrics)`
callback: it adds the learning rate, steps/s and examples/s to the train
metrics, logs a progress line with an ETA and forwards everything to the
writer.
"""

from __future__ import annotations

import logging as py_logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import jax
import numpy as np
import tensorflow as tf

SUMMARIES_DIR = 'tensorboard'


class SummaryWriter:
  """TensorBoard event files under `<workdir>/tensorboard` (process 0 only).

  Attributes:
    logdir: the event-file directory.
    active: whether this process writes (process 0).
  """

  def __init__(self, workdir: str | os.PathLike, *, active: bool | None = None):
    self.logdir = os.path.join(os.fspath(workdir), SUMMARIES_DIR)
    self.active = jax.process_index() == 0 if active is None else active
    self._writer = (tf.summary.create_file_writer(self.logdir)
                    if self.active else None)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """One float32 scalar per tag (e.g. 'train/loss')."""
    if not self.active:
      return
    with self._writer.as_default(step=int(step)):
      for tag, value in values.items():
        tf.summary.scalar(tag, float(value))

  def images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """One PNG image per tag.

    Args:
      step: the train step.
      images: tag -> (H, W, 3) uint8 RGB image.
    """
    if not self.active:
      return
    with self._writer.as_default(step=int(step)):
      for tag, image in images.items():
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
          raise ValueError(f'image {tag!r} must be (H, W, 3) uint8, got '
                           f'{image.shape} {image.dtype}')
        tf.summary.image(tag, image[None])

  def text(self, step: int, tag: str, text: str) -> None:
    """A (markdown) text summary."""
    if not self.active:
      return
    with self._writer.as_default(step=int(step)):
      tf.summary.text(tag, text)

  def flush(self) -> None:
    if self.active:
      self._writer.flush()

  def close(self) -> None:
    if self.active:
      self._writer.close()


class _DropInfoFrom:
  """A logging filter dropping INFO-and-below records of some source paths."""

  def __init__(self, path_parts: tuple[str, ...]):
    self._parts = path_parts

  def filter(self, record) -> bool:
    if record.levelno > py_logging.INFO:
      return True
    return not any(part in record.pathname for part in self._parts)


def quiet_library_logs(path_parts: tuple[str, ...] = ('/orbax/',)) -> None:
  """Hides the INFO lines of chatty libraries (Orbax logs every save step by
  step) from the absl log; their warnings and errors still show."""
  logging.get_absl_handler().addFilter(_DropInfoFrom(path_parts))


def format_duration(seconds: float) -> str:
  """'1h02m', '3m05s' or '42s'."""
  seconds = max(int(round(seconds)), 0)
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


class RunProgress:
  """A run's progress: rates, ETA log line, TensorBoard scalars.

  It is the `(step, metrics)` callback of `hcmtfg.train.loop.run_train_loop`.

  Train metrics ('train/...') get 'train/learning_rate', 'train/steps_per_sec'
  and 'train/examples_per_sec' added; the rates cover the steps since the
  previous train write and exclude time reported with `exclude`. Eval metrics
  ('eval/...') are written as they are.
  """

  def __init__(self, writer: SummaryWriter, *, num_steps: int,
               global_batch_size: int,
               learning_rate: float | Callable[[int], Any]):
    self._writer = writer
    self._num_steps = int(num_steps)
    self._batch = int(global_batch_size)
    self._learning_rate = learning_rate  # A constant or a schedule.
    self._last: tuple[int, float] | None = None  # (step, time)
    self._excluded = 0.0

  def exclude(self, seconds: float) -> None:
    """Time (evaluations) not to count in the next train rate."""
    self._excluded += float(seconds)

  def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
    values = dict(metrics)
    if any(name.startswith('train/') for name in values):
      values.update(self._train_extras(step, values))
    self._writer.scalars(step, values)
    self._writer.flush()

  def _train_extras(self, step: int, values: Mapping[str, float]
                    ) -> dict[str, float]:
    now = time.monotonic()
    rate = self._learning_rate
    extras = {'train/learning_rate': float(rate(step) if callable(rate)
                                           else rate)}
    line = f'progress: step {step}/{self._num_steps} ' \
           f'({100.0 * step / max(self._num_steps, 1):.1f}%)'
    if self._last is not None and step > self._last[0]:
      elapsed = max(now - self._last[1] - self._excluded, 1e-9)
      steps_per_sec = (step - self._last[0]) / elapsed
      extras['train/steps_per_sec'] = steps_per_sec
      extras['train/examples_per_sec'] = steps_per_sec * self._batch
      eta = (self._num_steps - step) / steps_per_sec
      line += (f', {steps_per_sec:.3g} steps/s, '
               f'{steps_per_sec * self._batch:.3g} examples/s, '
               f'ETA {format_duration(eta)}')
    losses = [f'{k.split("/", 1)[1]}={v:.4g}' for k, v in sorted(values.items())
              if 'loss' in k]
    if losses:
      line += '; ' + ', '.join(losses)
    logging.info('%s', line)
    self._last = (step, now)
    self._excluded = 0.0
    return extras
