"""The trainer: one training run of either stage, as `launch.train` starts it.

`train(config, workdir, builder)` trains `config.stage` ('atnet' or 'vgnet')
on the prepared TFDS dataset `builder`, resuming from the newest checkpoint in
`workdir`. The caller prepares the dataset (`launch.train`, the demo and the
learning study use `data_pipelines.build.prepare_dataset`, which builds a
missing synthetic corpus); this module only reads it.

The trainer is the same for both stages: what differs is a stage's
`hcmtfg.train.stage.Stage` (`atnet_steps.STAGE`, `vgnet_steps.STAGE`), and
the trainer uses nothing of a stage but that. The module reads in the order
of a run, one labelled section each:

  set-up       the stage (its config defaults fill the fields a config
               lacks), the data's landmark PCA, `<workdir>/config.json` and
               `<workdir>/landmark_pca.npz` (atomic, `hcmtfg.train.workdir`),
               the mesh over every device of every host, the input pipelines;
  state        the stage's jitted initialiser (random, or `config.init_from`
               weights; the pytrees are `hcmtfg.train.train_state`'s) and a
               check that a local workdir has room for two checkpoints of it;
  checkpoints  the newest restorable checkpoint and the input's position (or
               a fresh state), in `<workdir>/checkpoints`;
  the run      `train`: the eval split's metrics and image grids
               (`hcmtfg.train.loop.evaluate`, `EvalWithImages`) and the loop
               (`hcmtfg.train.loop.run_train_loop`).

`train` checks that `workdir` (local or gs://) is writable and locks it
against a second trainer (`hcmtfg.train.locking`) first. TensorBoard
summaries go to `<workdir>/tensorboard`: train and eval metrics, learning
rate, steps/s, examples/s and the image grids (`hcmtfg.train.visualize`).
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from hcmtfg import paths
from hcmtfg.data import input_pipeline
from hcmtfg.errors import InputError
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.runtime import sharding
from hcmtfg.train import atnet_steps
from hcmtfg.train import checkpoints as checkpoints_lib
from hcmtfg.train import init_from
from hcmtfg.train import locking
from hcmtfg.train import loop
from hcmtfg.train import preemption as preemption_lib
from hcmtfg.train import stage as stage_lib
from hcmtfg.train import summaries
from hcmtfg.train import train_state as ts
from hcmtfg.train import vgnet_steps
from hcmtfg.train import workdir as workdir_lib

STAGES = {stage.name: stage for stage in (atnet_steps.STAGE,
                                          vgnet_steps.STAGE)}


# ----------------------------------------------------------------------------
# Set-up: the stage, the data's PCA, what the input pipelines are given.
# ----------------------------------------------------------------------------


def stage_of(config: ml_collections.ConfigDict) -> stage_lib.Stage:
  """The stage `config.stage` names."""
  stage = STAGES.get(config.stage)
  if stage is None:
    raise ValueError(f'config.stage must be one of {sorted(STAGES)}, got '
                     f'{config.stage!r}')
  return stage


def resolve_pca(data: ml_collections.ConfigDict,
                builder: tfds.core.DatasetBuilder) -> landmarks_lib.Pca | None:
  """`config.data.pca_path` if set, else the dataset's PCA (None if absent)."""
  if data.pca_path:
    from hcmtfg.weights import checkpoint_io  # pylint: disable=g-import-not-at-top
    return checkpoint_io.load_pca_from(data.pca_path)
  path = input_pipeline.dataset_pca_path(builder)
  if not tf.io.gfile.exists(path):
    return None
  return input_pipeline.load_dataset_pca(builder)


def _pipeline_args(config: ml_collections.ConfigDict,
                   pca: landmarks_lib.Pca | None) -> dict[str, Any]:
  # Only stages that read frames have data.image_size (128: as stored).
  image_size = config.data.get('image_size')
  return dict(seed=config.seed,
              num_target_frames=config.data.num_target_frames, pca=pca,
              image_size=None if image_size in (None, 128) else image_size,
              skip_corrupt_shards=bool(config.data.skip_corrupt_shards))


# ----------------------------------------------------------------------------
# State: its initialiser is the stage's (`make_init_fn`), possibly wrapped by
# `init_from`; here only what the trainer checks before using it.
# ----------------------------------------------------------------------------


def _state_bytes(init_fn) -> int:
  """Bytes of the train state `init_fn` builds (traced, not run)."""
  eval_shape = getattr(init_fn, 'eval_shape', None)
  abstract = eval_shape() if eval_shape else jax.eval_shape(init_fn)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))


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
    config: a config of configs/atnet.py or configs/vgnet.py (fields it lacks
      take the stage's defaults; `config` itself is not changed). Besides the
      step modules' fields it reads the loop fields num_train_steps,
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
  stage = stage_of(config)  # Fails early on a bad config.stage.
  config = stage.with_defaults(config)
  workdir_lib.check_writable(workdir)
  lock = locking.lock_workdir(workdir, jax.process_index())
  try:
    return _train(stage, config, workdir, builder)
  finally:
    if lock is not None:
      lock.release()


def _train(stage: stage_lib.Stage, config: ml_collections.ConfigDict,
           workdir: str, builder: tfds.core.DatasetBuilder) -> ts.TrainState:
  """`train` once the workdir is checked and locked."""
  # Set-up.
  pca = resolve_pca(config.data, builder)
  if stage.needs_pca and pca is None:
    raise InputError(input_pipeline.dataset_pca_path(builder),
                     f'{stage.name} training needs a landmark PCA; none found')
  if jax.process_index() == 0:
    workdir_lib.write_config(workdir, config)
    if pca is not None:
      workdir_lib.write_pca(workdir, pca)
  mesh = sharding.make_mesh()
  logging.info('training %s on %d devices (%d processes), global batch %d',
               stage.name, jax.device_count(), jax.process_count(),
               config.batch_size)

  # State. (The jitted functions take XLA options from the config:
  # `config.fast_compile` picks train_state.FAST_COMPILE_OPTIONS.)
  init_fn = init_from.maybe_wrap(
      stage.make_init_fn(config, jax.random.PRNGKey(config.seed), mesh),
      config, mesh)
  workdir_lib.check_free_space(
      workdir, _state_bytes(init_fn),
      f'a checkpoint of this {stage.name} state')

  writer = summaries.SummaryWriter(workdir)
  try:
    writer.text(0, 'config', '```\n' + config.to_json_best_effort(indent=2)
                + '\n```')
    progress = summaries.RunProgress(
        writer, num_steps=config.num_train_steps,
        global_batch_size=config.batch_size,
        learning_rate=ts.learning_rate_schedule(config.optim))

    # Evaluation: the eval split's mean metrics and, once per evaluation,
    # image grids of its first clips.
    eval_step = loop.EvalWithImages(
        stage.jit_eval_step(config, mesh),
        ts.jit_with_shardings(stage.predict, config, mesh, donate_state=False),
        lambda outputs: stage.summary_images(outputs, pca, config), writer)
    args = _pipeline_args(config, pca)
    eval_data = input_pipeline.make_eval_data(
        builder, stage.name, split=config.data.eval_split,
        global_batch_size=config.eval_batch_size, **args)

    def eval_fn(state: ts.TrainState) -> dict[str, float]:
      start = time.monotonic()
      batches = iter(eval_data)
      if config.eval_max_batches:
        batches = itertools.islice(batches, config.eval_max_batches)
      metrics = loop.evaluate(eval_step, state, batches, mesh)
      progress.exclude(time.monotonic() - start)
      return metrics

    # Checkpoints: resume from the newest restorable one (the train input
    # continues from its saved position), else initialise.
    checkpointer = _checkpointer(config, workdir)
    try:
      state, position = checkpoints_lib.restore_or_init(checkpointer, init_fn)
      train_iter = input_pipeline.make_train_iterator(
          builder, stage.name, split=config.data.train_split,
          global_batch_size=config.batch_size,
          shuffle_buffer=config.data.shuffle_buffer, state=position or None,
          **args)

      # Loop.
      with preemption_lib.PreemptionHandler() as preemption:
        return loop.run_train_loop(
            state=state, train_step_fn=stage.jit_train_step(config, mesh),
            train_iter=train_iter, mesh=mesh, checkpointer=checkpointer,
            num_steps=config.num_train_steps,
            log_every=config.log_every_steps, eval_fn=eval_fn,
            eval_every=config.eval_every_steps, write_metrics=progress,
            preemption=preemption)
    finally:
      checkpointer.close()
  finally:
    writer.close()
