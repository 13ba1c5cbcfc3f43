"""AT-net training: audio + example landmark → landmark PCA coefs (MSE on them).

`STAGE` is what the trainer takes from this module (`hcmtfg.train.stage`).

Config fields read here (an `ml_collections.ConfigDict`; their defaults and
meaning are in configs/atnet.py):
  seed, compute_dtype, fast_compile
  model.*               `hcmtfg.models.at_net.ATNet` attributes
  optim.*               Adam and its schedule (`train_state.make_optimizer`)
  summaries.num_examples, summaries.num_frames, summaries.image_size
  plus the loop fields of `hcmtfg.train.trainer.train` (num_train_steps, ...).

Batches are dicts of arrays with a leading batch axis B:
  'example_coef' (B, 6) float32, PCA coefficients of the example landmark;
  'mfcc'         (B, T, 28, 12) float32, per-frame MFCC windows;
  'target_coef'  (B, T, 6) float32, PCA coefficients of the T target frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import atnet as atnet_configs
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.models import at_net
from hcmtfg.train import losses
from hcmtfg.train import stage as stage_lib
from hcmtfg.train import train_state as ts
from hcmtfg.train import visualize

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def build_model(config: ml_collections.ConfigDict) -> at_net.ATNet:
  """ATNet from `config.model`."""
  return at_net.ATNet.from_config(config.model.to_dict())


def init_train_state(rng: jax.Array,
                     config: ml_collections.ConfigDict) -> ts.TrainState:
  """The initial state (trace it under jit: see `make_init_fn`)."""
  module = build_model(config)
  params_rng, state_rng = jax.random.split(rng)
  variables = module.init({'params': ts.parameter_init_key(params_rng)},
                          *module.dummy_inputs(), train=False)
  return ts.TrainState(step=jnp.zeros((), jnp.int32), rng=state_rng,
                       g=ts.NetState.create(ts.make_optimizer(config.optim),
                                            variables))


def make_init_fn(config: ml_collections.ConfigDict, rng: jax.Array,
                 mesh: jax.sharding.Mesh, *,
                 compiler_options: Mapping[str, Any] | None = None
                 ) -> ts.Initializer:
  """A jitted, argument-free initialiser whose outputs are replicated on `mesh`.

  Its `eval_shape()` gives the abstract state (with shardings) that
  checkpoints are restored into.
  """
  return ts.jit_init(init_train_state, config, rng, mesh,
                     compiler_options=compiler_options)


def _forward(module: at_net.ATNet, net: ts.NetState, params, batch: Batch,
             dtype, *, train: bool):
  """Runs AT-net; returns (pred (B, T, 6) float32, new batch_stats or None)."""
  example, mfcc = batch['example_coef'], batch['mfcc']
  if dtype is not None:
    example, mfcc = example.astype(dtype), mfcc.astype(dtype)
  variables = net.variables(params, dtype, train=train)
  if train:
    pred, updates = module.apply(variables, example, mfcc, train=True,
                                 mutable=['batch_stats'])
    return pred.astype(jnp.float32), updates['batch_stats']
  pred = module.apply(variables, example, mfcc, train=False)
  return pred.astype(jnp.float32), None


def train_step(state: ts.TrainState, batch: Batch,
               config: ml_collections.ConfigDict
               ) -> tuple[ts.TrainState, Metrics]:
  """One Adam step on the MSE of the predicted PCA coefficients.

  Returns:
    (new state, {'train/loss', 'train/grad_norm'}).
  """
  dtype = ts.compute_dtype(config)
  module, tx = build_model(config), ts.make_optimizer(config.optim)

  def loss_fn(params):
    pred, batch_stats = _forward(module, state.g, params, batch, dtype,
                                 train=True)
    return losses.mse_loss(pred, batch['target_coef']), batch_stats

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.g.params)
  new_state = state.replace(step=state.step + 1,
                            g=state.g.apply_gradients(tx, grads, batch_stats))
  return new_state, {'train/loss': loss,
                     'train/grad_norm': ts.global_norm(grads)}


def eval_step(state: ts.TrainState, batch: Batch,
              config: ml_collections.ConfigDict) -> Metrics:
  """Eval-mode errors on one batch, with the copy-the-example baseline.

  Returns:
    'eval/mse': MSE of the predicted coefficients;
    'eval/mae': their mean absolute error;
    'eval/baseline_mse': MSE of predicting the example's coefficients for every
      frame (a model that ignores the audio); learning shows as mse < baseline.
  """
  pred, _ = _forward(build_model(config), state.g, None, batch,
                     ts.compute_dtype(config), train=False)
  target = batch['target_coef'].astype(jnp.float32)
  baseline = jnp.broadcast_to(batch['example_coef'][:, None, :], target.shape)
  return {'eval/mse': losses.mse_loss(pred, target),
          'eval/mae': jnp.mean(jnp.abs(pred - target)),
          'eval/baseline_mse': losses.mse_loss(baseline, target)}


def predict(state: ts.TrainState, batch: Batch,
            config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Eval-mode predictions for the first `summaries.num_examples` clips."""
  k = config.summaries.num_examples
  clips = {name: batch[name][:k] for name in ('example_coef', 'mfcc',
                                              'target_coef')}
  pred, _ = _forward(build_model(config), state.g, None, clips,
                     ts.compute_dtype(config), train=False)
  return {'pred_coef': pred, 'example_coef': clips['example_coef'],
          'target_coef': clips['target_coef']}


def summary_images(outputs: Mapping[str, np.ndarray],
                   pca: landmarks_lib.Pca | None,
                   config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Predicted over target landmarks of `predict`'s clips."""
  return visualize.atnet_grids(outputs['pred_coef'], outputs, pca,
                               config.summaries.num_frames,
                               config.summaries.image_size)


def jit_train_step(config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh, *,
                   compiler_options: Mapping[str, Any] | None = None):
  """`train_step` jitted: state replicated and donated, batch over 'data'.

  Equal configs share one compiled executable (the config is static).
  """
  return ts.jit_with_shardings(train_step, config, mesh, donate_state=True,
                               compiler_options=_options(config,
                                                         compiler_options))


def jit_eval_step(config: ml_collections.ConfigDict,
                  mesh: jax.sharding.Mesh, *,
                  compiler_options: Mapping[str, Any] | None = None):
  """`eval_step` jitted with the same shardings (nothing donated)."""
  return ts.jit_with_shardings(eval_step, config, mesh, donate_state=False,
                               compiler_options=_options(config,
                                                         compiler_options))


def _options(config: ml_collections.ConfigDict,
             compiler_options: Mapping[str, Any] | None
             ) -> Mapping[str, Any] | None:
  """Explicit options, else AT-net's (`at_net.compiler_options`) unless
  `config.fast_compile` asks for the fast-compile ones."""
  if compiler_options is None and not config.fast_compile:
    return at_net.compiler_options()
  return compiler_options


STAGE = stage_lib.Stage(
    name='atnet', config_defaults=atnet_configs.defaults, needs_pca=True,
    make_init_fn=make_init_fn, jit_train_step=jit_train_step,
    jit_eval_step=jit_eval_step, predict=predict,
    summary_images=summary_images)
