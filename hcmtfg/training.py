"""One training run of either stage, as `launch.train` starts it.

`train(config, workdir)` does, in order:
  1. checks that `workdir` (local or a gs:// path) is writable and locks it
     against a second trainer (`hcmtfg.locking`; local workdirs);
  2. finds the dataset (`config.data`), building it first when it is missing
     and `config.data.build_if_missing` (process 0 builds, the others wait and
     build only if they cannot see its result, e.g. on a per-host disk);
  3. writes `<workdir>/config.json` (the whole config) and
     `<workdir>/landmark_pca.npz` (the landmark PCA of the data), atomically
     (`hcmtfg.workdir`);
  4. builds the mesh over every device of every host, the state initialiser
     (from `config.init_from` weights when set; a local workdir must have room
     for two checkpoints of it), the jitted steps and the train/eval input
     pipelines (the train iterator resumes its position);
  5. runs `hcmtfg.train_state.fit` (restore or init, train, checkpoint, eval,
     preemption) with TensorBoard summaries in `<workdir>/tensorboard`: train
     and eval metrics, learning rate, steps/s, examples/s, and at every eval
     image grids of the first eval clips (`hcmtfg.visualize`).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow as tf

from hcmtfg import atnet_steps
from hcmtfg import init_from
from hcmtfg import input_pipeline
from hcmtfg import landmarks as landmarks_lib
from hcmtfg import locking
from hcmtfg import paths
from hcmtfg import sharding
from hcmtfg import summaries
from hcmtfg import train_state as ts
from hcmtfg import vgnet_steps
from hcmtfg import visualize
from hcmtfg import workdir as workdir_lib
from hcmtfg.errors import InputError

FAST_COMPILE = {'xla_backend_optimization_level': 0}


# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------


def _build_command(data: ml_collections.ConfigDict, data_dir: str) -> str:
  manual = f' --manual_dir={data.manual_dir or "CORPUS_DIR"}'
  return (f'python -m data_pipelines.build --dataset={data.name} '
          f'--config={data.config} --data_dir={data_dir}'
          + ('' if data.name == 'synthetic_talking_faces' else manual))


def prepare_dataset(data: ml_collections.ConfigDict):
  """The prepared TFDS builder of `config.data`, built first if allowed.

  Raises:
    InputError: the dataset is missing and may not (or cannot) be built here.
  """
  import data_pipelines  # pylint: disable=g-import-not-at-top,unused-import
  from data_pipelines import build  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = paths.user_path(data.data_dir)
  make = lambda: tfds.builder(data.name, data_dir=data_dir, config=data.config)
  builder = make()
  if builder.is_prepared():
    return builder
  where = os.path.join(data_dir, data.name, data.config)
  if not data.build_if_missing:
    raise InputError(where, f'dataset not built; build it with: '
                     f'{_build_command(data, data_dir)}')

  def build_here():
    logging.info('building dataset %s/%s in %s', data.name, data.config,
                 data_dir)
    try:
      build.build_dataset(
          data.name, data_dir, config=data.config, num_clips=data.num_clips,
          manual_dir=paths.user_path(data.manual_dir),
          download_dir=paths.user_path(data.download_dir))
    except (FileNotFoundError, AssertionError) as e:
      raise InputError(where, f'cannot build the dataset ({e}); build it '
                       f'with: {_build_command(data, data_dir)}') from e

  if jax.process_index() == 0:
    build_here()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('hcmtfg: dataset built')
    if not make().is_prepared():  # process 0 built it on its own disk
      build_here()
  return make()


def resolve_pca(data: ml_collections.ConfigDict,
                builder) -> landmarks_lib.Pca | None:
  """`config.data.pca_path` if set, else the dataset's PCA (None if absent)."""
  if data.get('pca_path'):
    from hcmtfg import checkpoint_io  # pylint: disable=g-import-not-at-top
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
# Per-stage pieces: the trainer module and what the image summaries show.
# ----------------------------------------------------------------------------


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


def _state_bytes(init_fn) -> int:
  """Bytes of the train state `init_fn` builds (traced, not run)."""
  eval_shape = getattr(init_fn, 'eval_shape', None)
  abstract = eval_shape() if eval_shape else jax.eval_shape(init_fn)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))


def _stage(config: ml_collections.ConfigDict):
  """(trainer module, predict fn, host fn: (outputs, pca) -> image dict)."""
  s = config.summaries
  if config.stage == 'atnet':
    return atnet_steps, _atnet_predict, lambda out, pca: visualize.atnet_grids(
        out['pred_coef'], out, pca, s.num_frames, s.image_size)
  if config.stage == 'vgnet':
    return vgnet_steps, _vgnet_predict, lambda out, pca: visualize.vgnet_grids(
        out, out, s.num_frames)
  raise ValueError(f"config.stage must be 'atnet' or 'vgnet', got "
                   f'{config.stage!r}')


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
# The run.
# ----------------------------------------------------------------------------


def train(config: ml_collections.ConfigDict,
          workdir: str | os.PathLike) -> ts.TrainState:
  """Trains `config.stage` in `workdir` (resuming if it holds a checkpoint).

  Args:
    config: a config of configs/atnet.py or configs/vgnet.py.
    workdir: output directory (local or gs://): checkpoints/, tensorboard/,
      config.json, landmark_pca.npz.

  Returns:
    The final train state.

  Raises:
    InputError: unwritable workdir, missing dataset, bad init_from weights.
  """
  workdir = paths.user_path(workdir)
  tf.config.set_visible_devices([], 'GPU')  # tf.data only; keep GPUs for JAX
  _stage(config)  # Fails early on a bad config.stage.
  workdir_lib.check_writable(workdir)
  lock = locking.lock_workdir(workdir, jax.process_index())
  try:
    return _train(config, workdir)
  finally:
    if lock is not None:
      lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str) -> ts.TrainState:
  """`train` once the workdir is checked and locked."""
  trainer, predict, make_images = _stage(config)
  builder = prepare_dataset(config.data)
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
  options = dict(compiler_options=FAST_COMPILE if config.fast_compile
                 else None)
  init_fn = init_from.maybe_wrap(
      trainer.make_init_fn(config, jax.random.PRNGKey(config.seed), mesh,
                           **options), config, mesh)
  workdir_lib.check_free_space(
      workdir, _state_bytes(init_fn),
      f'a checkpoint of this {config.stage} state')

  writer = summaries.SummaryWriter(workdir)
  writer.text(0, 'config', '```\n' + config.to_json_best_effort(indent=2)
              + '\n```')
  sink = summaries.MetricsSink(writer, num_steps=config.num_train_steps,
                               global_batch_size=config.batch_size,
                               learning_rate=ts.learning_rate_schedule(config.optim))
  eval_step = _EvalWithImages(
      trainer.jit_eval_step(config, mesh, **options),
      ts.jit_with_shardings(predict, config, mesh, donate_state=False,
                            **options),
      make_images, writer, pca)

  args = _pipeline_args(config, pca)
  view = config.stage

  def make_train_iter(position: dict[str, Any] | None) -> Iterator[Any]:
    return input_pipeline.make_train_iterator(
        builder, view, split=config.data.train_split,
        global_batch_size=config.batch_size,
        shuffle_buffer=config.data.shuffle_buffer, state=position or None,
        **args)

  eval_data = input_pipeline.make_eval_data(
      builder, view, split=config.data.eval_split,
      global_batch_size=config.eval_batch_size, **args)

  def eval_batches():
    start = time.monotonic()
    batches = iter(eval_data)
    if config.eval_max_batches:
      batches = itertools.islice(batches, config.eval_max_batches)
    yield from batches
    sink.exclude(time.monotonic() - start)

  try:
    return ts.fit(config, workdir, mesh=mesh, init_fn=init_fn,
                  train_step_fn=trainer.jit_train_step(config, mesh, **options),
                  eval_step_fn=eval_step, make_train_iter=make_train_iter,
                  eval_batches=eval_batches, write_metrics=sink)
  finally:
    writer.close()
