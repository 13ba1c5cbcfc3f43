"""The trainer: one training run of either stage, as `launch.train` starts it.

`train(config, workdir, builder)` trains `config.stage` ('atnet' or 'vgnet')
on the prepared TFDS dataset `builder`, resuming from the newest checkpoint in
`workdir`. The caller prepares the dataset (`launch.train`, the demo and the
learning study use `data_pipelines.build.prepare_dataset`, which builds a
missing synthetic corpus); this module only reads it.

The module reads in the order of a run, one labelled section each:

  set-up       the stage's step module (`atnet_steps` / `vgnet_steps`), the
               data's landmark PCA, `<workdir>/config.json` and
               `<workdir>/landmark_pca.npz` (atomic, `hcmtfg.train.workdir`), the
               mesh over every device of every host, the input pipelines;
  state        the jitted initialiser (random, or `config.init_from` weights;
               the pytrees are `hcmtfg.train.train_state`'s) and a check that a local
               workdir has room for two checkpoints of it;
  loop         `run_train_loop`: step n+1 dispatched before step n's metrics
               are fetched, NaN/Inf checks, summaries, checkpoints at their
               interval, evaluations, save-and-exit on preemption;
  evaluation   `evaluate`: mean eval metrics over the eval split, and image
               grids of the first eval clips at every evaluation;
  checkpoints  the newest restorable checkpoint and the input's position (or
               a fresh state), in `<workdir>/checkpoints`.

`train` ties them together after checking that `workdir` (local or gs://) is
writable and locking it against a second trainer (`hcmtfg.train.locking`).
TensorBoard summaries go to `<workdir>/tensorboard`: train and eval metrics,
learning rate, steps/s, examples/s and the image grids (`hcmtfg.train.visualize`).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from hcmtfg.train import atnet_steps
from hcmtfg.train import checkpoints as checkpoints_lib
from hcmtfg.runtime import faults
from hcmtfg.train import init_from
from hcmtfg.data import input_pipeline
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.train import locking
from hcmtfg import paths
from hcmtfg.train import preemption as preemption_lib
from hcmtfg.runtime import sharding
from hcmtfg.train import summaries
from hcmtfg.train import train_state as ts
from hcmtfg.train import vgnet_steps
from hcmtfg.train import visualize
from hcmtfg.train import workdir as workdir_lib
from hcmtfg.errors import InputError

HostBatch = Mapping[str, np.ndarray]
MetricsSink = Callable[[int, dict[str, float]], None]


# ----------------------------------------------------------------------------
# Set-up: the stage, the data's PCA, what the input pipelines are given.
# ----------------------------------------------------------------------------


def _stage(config: ml_collections.ConfigDict):
  """(step module, predict fn, host fn: (outputs, pca) -> image dict)."""
  s = config.summaries
  if config.stage == 'atnet':
    return atnet_steps, _atnet_predict, lambda out, pca: visualize.atnet_grids(
        out['pred_coef'], out, pca, s.num_frames, s.image_size)
  if config.stage == 'vgnet':
    return vgnet_steps, _vgnet_predict, lambda out, pca: visualize.vgnet_grids(
        out, out, s.num_frames)
  raise ValueError(f"config.stage must be 'atnet' or 'vgnet', got "
                   f'{config.stage!r}')


def resolve_pca(data: ml_collections.ConfigDict,
                builder: tfds.core.DatasetBuilder) -> landmarks_lib.Pca | None:
  """`config.data.pca_path` if set, else the dataset's PCA (None if absent)."""
  if data.get('pca_path'):
    from hcmtfg.weights import checkpoint_io  # pylint: disable=g-import-not-at-top
    return checkpoint_io.load_pca_from(data.pca_path)
  path = input_pipeline.dataset_pca_path(builder)
  if not tf.io.gfile.exists(path):
    return None
  return input_pipeline.load_dataset_pca(builder)


def _pipeline_args(config: ml_collections.ConfigDict,
                   pca: landmarks_lib.Pca | None) -> dict[str, Any]:
  image_size = config.data.get('image_size')
  return dict(seed=config.seed,
              num_target_frames=config.data.num_target_frames, pca=pca,
              image_size=None if image_size in (None, 128) else image_size,
              skip_corrupt_shards=bool(config.data.get('skip_corrupt_shards',
                                                       False)))


# ----------------------------------------------------------------------------
# State: its initialiser is the step module's (`make_init_fn`), possibly
# wrapped by `init_from`; here only what the trainer checks before using it.
# ----------------------------------------------------------------------------


def _state_bytes(init_fn) -> int:
  """Bytes of the train state `init_fn` builds (traced, not run)."""
  eval_shape = getattr(init_fn, 'eval_shape', None)
  abstract = eval_shape() if eval_shape else jax.eval_shape(init_fn)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))


# ----------------------------------------------------------------------------
# Loop.
# ----------------------------------------------------------------------------


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
    eval_every: int = 0, write_metrics: MetricsSink | None = None,
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
    faults.at('train_step', step)  # Tests only: a kill while the step runs.
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


# ----------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------


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


def _atnet_predict(state: ts.TrainState, batch, config) -> dict[str, jax.Array]:
  """Eval-mode predictions for the first `summaries.num_examples` clips."""
  k, compute = config.summaries.num_examples, ts.compute_dtype(config)
  dtype = compute or jnp.float32
  pred = atnet_steps.build_model(config).apply(
      state.g.variables(None, compute, train=False),
      batch['example_coef'][:k].astype(dtype), batch['mfcc'][:k].astype(dtype),
      train=False)
  return {'pred_coef': pred.astype(jnp.float32),
          'example_coef': batch['example_coef'][:k],
          'target_coef': batch['target_coef'][:k]}


def _vgnet_predict(state: ts.TrainState, batch, config) -> dict[str, jax.Array]:
  """Eval-mode generator outputs for the first `summaries.num_examples` clips."""
  k, compute = config.summaries.num_examples, ts.compute_dtype(config)
  dtype = compute or jnp.float32
  x = {name: batch[name][:k] for name in
       ('example_image', 'target_lmark', 'example_lmark', 'target_image')}
  out = vgnet_steps.build_generator(config).apply(
      state.g.variables(None, compute, train=False),
      x['example_image'].astype(dtype), x['target_lmark'].astype(dtype),
      x['example_lmark'].astype(dtype), train=False)
  fields = ('frames', 'attention', 'colour', 'lmark_attention')
  return {**{f: getattr(out, f).astype(jnp.float32) for f in fields}, **x}


class _EvalWithImages:
  """An eval step that also writes image grids once per evaluation.

  On the first eval batch of each step it runs `predict` (on every process:
  it is a collective computation) and process 0 writes the images.
  """

  def __init__(self, eval_step, predict, make_images, writer, pca):
    self._eval_step, self._predict = eval_step, predict
    self._make_images, self._writer, self._pca = make_images, writer, pca
    self._last_step = None

  def __call__(self, state: ts.TrainState, batch) -> dict[str, jax.Array]:
    metrics = self._eval_step(state, batch)
    step = int(jax.device_get(state.step))
    if step != self._last_step:
      self._last_step = step
      outputs = jax.tree.map(np.asarray,
                             jax.device_get(self._predict(state, batch)))
      if self._writer.active:
        self._writer.images(step, self._make_images(outputs, self._pca))
    return metrics


# ----------------------------------------------------------------------------
# Checkpoints: `hcmtfg.train.checkpoints` restores the newest good step (moving a
# corrupt one aside) with the input's position; the loop saves.
# ----------------------------------------------------------------------------


def _checkpointer(config: ml_collections.ConfigDict,
                  workdir: str) -> checkpoints_lib.Checkpointer:
  """`<workdir>/checkpoints`, every `checkpoint_every_steps`, the newest
  `keep_checkpoints` kept."""
  return checkpoints_lib.Checkpointer(
      os.path.join(workdir, 'checkpoints'),
      max_to_keep=config.keep_checkpoints,
      save_interval_steps=config.checkpoint_every_steps)


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
          builder: tfds.core.DatasetBuilder) -> ts.TrainState:
  """Trains `config.stage` in `workdir` (resuming if it holds a checkpoint).

  Args:
    config: a config of configs/atnet.py or configs/vgnet.py. Besides the step
      modules' fields it reads the loop fields num_train_steps,
      log_every_steps, eval_every_steps, eval_max_batches,
      checkpoint_every_steps, keep_checkpoints, and config.data's split,
      window and PCA fields.
    workdir: output directory (local or gs://): checkpoints/, tensorboard/,
      config.json, landmark_pca.npz.
    builder: the prepared TFDS dataset of `config.data`
      (`data_pipelines.build.prepare_dataset`).

  Returns:
    The final train state.

  Raises:
    InputError: unwritable workdir, no landmark PCA for AT-net, bad init_from
      weights.
  """
  workdir = paths.user_path(workdir)
  tf.config.set_visible_devices([], 'GPU')  # tf.data only; keep GPUs for JAX
  _stage(config)  # Fails early on a bad config.stage.
  workdir_lib.check_writable(workdir)
  lock = locking.lock_workdir(workdir, jax.process_index())
  try:
    return _train(config, workdir, builder)
  finally:
    if lock is not None:
      lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str,
           builder: tfds.core.DatasetBuilder) -> ts.TrainState:
  """`train` once the workdir is checked and locked."""
  # Set-up.
  steps, predict, make_images = _stage(config)
  pca = resolve_pca(config.data, builder)
  if config.stage == 'atnet' and pca is None:
    raise InputError(input_pipeline.dataset_pca_path(builder),
                     'AT-net needs a landmark PCA; none found')
  if jax.process_index() == 0:
    workdir_lib.write_config(workdir, config)
    if pca is not None:
      workdir_lib.write_pca(workdir, pca)
  mesh = sharding.make_mesh()
  logging.info('training %s on %d devices (%d processes), global batch %d',
               config.stage, jax.device_count(), jax.process_count(),
               config.batch_size)

  # State. (The jitted functions take XLA options from the config:
  # `config.fast_compile` picks train_state.FAST_COMPILE_OPTIONS.)
  init_fn = init_from.maybe_wrap(
      steps.make_init_fn(config, jax.random.PRNGKey(config.seed), mesh),
      config, mesh)
  workdir_lib.check_free_space(
      workdir, _state_bytes(init_fn),
      f'a checkpoint of this {config.stage} state')

  writer = summaries.SummaryWriter(workdir)
  try:
    writer.text(0, 'config', '```\n' + config.to_json_best_effort(indent=2)
                + '\n```')
    sink = summaries.MetricsSink(
        writer, num_steps=config.num_train_steps,
        global_batch_size=config.batch_size,
        learning_rate=ts.learning_rate_schedule(config.optim))

    # Evaluation: the eval split's mean metrics and, once per evaluation,
    # image grids of its first clips.
    eval_step = _EvalWithImages(
        steps.jit_eval_step(config, mesh),
        ts.jit_with_shardings(predict, config, mesh, donate_state=False),
        make_images, writer, pca)
    args = _pipeline_args(config, pca)
    eval_data = input_pipeline.make_eval_data(
        builder, config.stage, split=config.data.eval_split,
        global_batch_size=config.eval_batch_size, **args)

    def eval_fn(state: ts.TrainState) -> dict[str, float]:
      start = time.monotonic()
      batches = iter(eval_data)
      if config.eval_max_batches:
        batches = itertools.islice(batches, config.eval_max_batches)
      metrics = evaluate(eval_step, state, batches, mesh)
      sink.exclude(time.monotonic() - start)
      return metrics

    # Checkpoints: resume from the newest restorable one (the train input
    # continues from its saved position), else initialise.
    checkpointer = _checkpointer(config, workdir)
    try:
      state, position = checkpoints_lib.restore_or_init(checkpointer, init_fn)
      train_iter = input_pipeline.make_train_iterator(
          builder, config.stage, split=config.data.train_split,
          global_batch_size=config.batch_size,
          shuffle_buffer=config.data.shuffle_buffer, state=position or None,
          **args)

      # Loop.
      with preemption_lib.PreemptionHandler() as preemption:
        return run_train_loop(
            state=state, train_step_fn=steps.jit_train_step(config, mesh),
            train_iter=train_iter, mesh=mesh, checkpointer=checkpointer,
            num_steps=config.num_train_steps,
            log_every=config.log_every_steps, eval_fn=eval_fn,
            eval_every=config.eval_every_steps, write_metrics=sink,
            preemption=preemption)
    finally:
      checkpointer.close()
  finally:
    writer.close()
