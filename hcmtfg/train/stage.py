"""The contract between the generic trainer and a training stage.

A stage (AT-net, VG-net) is one `Stage` value, defined in its step module
next to the functions it names (`atnet_steps.STAGE`, `vgnet_steps.STAGE`).
The trainer (`hcmtfg.train.trainer`) picks the stage named by `config.stage`
and takes from it only what a `Stage` states below: it never reaches into a
step module.

Every step function of a stage has the form `fn(state, batch, config)`:
`state` is the stage's `hcmtfg.train.train_state.TrainState`, `batch` a dict of
arrays whose leading axis is the batch (sharded over the mesh's 'data' axis),
and `config` the run's config, static under `jax.jit` (it is read at trace
time only). The `jit_*` factories return them jitted for a mesh, with the
config bound: `(state, batch) -> ...`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from configs import common as configs_common
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.train import train_state as ts

Config = ml_collections.ConfigDict
Metrics = Mapping[str, jax.Array]
# A jitted step with the config bound: (state, global batch) -> ...
TrainStepFn = Callable[[ts.TrainState, Any], tuple[ts.TrainState, Metrics]]
EvalStepFn = Callable[[ts.TrainState, Any], Metrics]


@dataclasses.dataclass(frozen=True)
class Stage:
  """What a training stage provides the trainer.

  Attributes:
    name: the `config.stage` that selects this stage ('atnet', 'vgnet').
    config_defaults: `() -> config`, every field of the stage's config at its
      default (`configs/<name>.py`'s `defaults`); see `with_defaults`.
    needs_pca: whether training needs the data's landmark PCA (the trainer
      refuses to start without one).
    make_init_fn: `(config, rng, mesh) -> Initializer`, the jitted initial
      state, every leaf replicated on `mesh`; its `eval_shape()` is what
      checkpoints are restored into.
    jit_train_step: `(config, mesh) -> (state, batch) -> (state, metrics)`,
      one training step, the state donated; metrics named 'train/...'.
    jit_eval_step: `(config, mesh) -> (state, batch) -> metrics`, the eval
      metrics of one batch, named 'eval/...' (the trainer averages them over
      the eval split).
    predict: `(state, batch, config) -> outputs`, eval-mode outputs for the
      first `config.summaries.num_examples` clips of a batch, with the batch
      fields that `summary_images` draws (the trainer jits it).
    summary_images: `(outputs, pca, config) -> {tag: image}`, the image grids
      of `predict`'s outputs (host numpy; (H, W, 3) uint8 images).
  """
  name: str
  config_defaults: Callable[[], Config]
  needs_pca: bool
  make_init_fn: Callable[[Config, jax.Array, jax.sharding.Mesh],
                         ts.Initializer]
  jit_train_step: Callable[[Config, jax.sharding.Mesh], TrainStepFn]
  jit_eval_step: Callable[[Config, jax.sharding.Mesh], EvalStepFn]
  predict: Callable[[ts.TrainState, Any, Config], dict[str, jax.Array]]
  summary_images: Callable[
      [Mapping[str, np.ndarray], landmarks_lib.Pca | None, Config],
      dict[str, np.ndarray]]

  def with_defaults(self, config: Config) -> Config:
    """A copy of `config` with the fields it lacks at the stage's defaults."""
    return configs_common.fill_missing(config, self.config_defaults())
