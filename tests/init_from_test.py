"""Tests of hcmtfg.train.init_from: fresh runs start from converted weights.

Tiny networks (the configs' `tiny` variants) with random, perturbed variables
are saved with `checkpoint_io.save_converted`, exactly as
`launch.convert_checkpoint` writes release weights.
"""

import jax
import numpy as np
import pytest

from configs import atnet
from configs import vgnet
from hcmtfg.errors import InputError
from hcmtfg.runtime import sharding
from hcmtfg.train import atnet_steps
from hcmtfg.train import init_from
from hcmtfg.train import train_state as ts
from hcmtfg.train import vgnet_steps
from hcmtfg.weights import checkpoint_io


def perturbed(net, seed: int) -> dict:
  """A network's {'params', 'batch_stats'} as numpy, every leaf perturbed.

  Starting from the trainer's own (jitted) initial values avoids a second
  compilation; the noise makes them differ from any fresh initialisation.
  """
  rs = np.random.RandomState(seed)
  variables = jax.device_get({'params': net.params,
                              'batch_stats': net.batch_stats})
  return jax.tree.map(
      lambda x: np.asarray(x) + 0.1 * rs.randn(*np.shape(x)).astype(np.float32),
      variables)


def assert_trees_equal(actual, expected):
  flat_a = jax.tree_util.tree_flatten_with_path(jax.device_get(actual))[0]
  flat_e = jax.tree_util.tree_flatten_with_path(expected)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_e]
  for (path, a), (_, e) in zip(flat_a, flat_e):
    np.testing.assert_array_equal(np.asarray(a), e,
                                  err_msg=jax.tree_util.keystr(path))


def initialisers(trainer, config):
  mesh = sharding.make_mesh()
  base = trainer.make_init_fn(config, jax.random.PRNGKey(config.seed), mesh,
                              compiler_options=ts.FAST_COMPILE_OPTIONS)
  return base, init_from.maybe_wrap(base, config, mesh), mesh


def test_atnet_starts_from_converted_weights(tmp_path):
  config = atnet.get_config('tiny')
  config.init_from = str(tmp_path)
  base, wrapped, mesh = initialisers(atnet_steps, config)
  assert isinstance(wrapped, init_from.InitFrom)
  fresh = base()
  variables = perturbed(fresh.g, seed=7)
  checkpoint_io.save_converted(tmp_path, 'atnet', variables,
                               atnet_steps.build_model(config).to_config())

  state = wrapped()
  assert_trees_equal(state.g.params, variables['params'])
  assert_trees_equal(state.g.batch_stats, variables['batch_stats'])
  assert int(state.step) == 0
  mu = state.g.opt_state[0].mu  # Adam moments start at zero
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(mu))
  leaf = jax.tree.leaves(state.g.params)[0]
  assert leaf.sharding.is_equivalent_to(sharding.replicated(mesh), leaf.ndim)
  assert not np.array_equal(np.asarray(jax.tree.leaves(fresh.g.params)[0]),
                            np.asarray(leaf))
  # The abstract state (for restoring checkpoints) is unchanged.
  assert jax.tree.structure(wrapped.eval_shape()) == jax.tree.structure(state)

  # Weights of another shape, or with parameters missing or extra, are refused.
  bad = jax.tree.map(np.copy, variables)
  first = sorted(bad['params'])[0]
  del bad['params'][first]
  bad['params']['extra_layer'] = {'kernel': np.zeros((2, 2), np.float32)}
  checkpoint_io.save_converted(tmp_path / 'bad', 'atnet', bad, {})
  config.init_from = str(tmp_path / 'bad')
  with pytest.raises(InputError, match='does not fit') as info:
    init_from.maybe_wrap(base, config, mesh)()
  message = str(info.value)
  assert str(tmp_path / 'bad' / 'atnet') in message
  assert 'missing from the checkpoint' in message and first in message
  assert 'not in the configured network' in message and 'extra_layer' in message


def test_vgnet_takes_generator_and_optional_discriminator(tmp_path):
  config = vgnet.get_config('tiny')
  config.init_from = str(tmp_path)
  base, wrapped, _ = initialisers(vgnet_steps, config)
  fresh = base()
  g_vars = perturbed(fresh.g, seed=3)
  checkpoint_io.save_converted(
      tmp_path, 'vgnet', g_vars,
      vgnet_steps.build_generator(config).to_config())
  state = wrapped()
  assert_trees_equal(state.g.params, g_vars['params'])
  assert_trees_equal(state.g.batch_stats, g_vars['batch_stats'])
  # No discriminator/ item: D keeps its random initialisation.
  assert_trees_equal(state.d.params, jax.device_get(fresh.d.params))

  d_vars = perturbed(fresh.d, seed=4)
  checkpoint_io.save_converted(
      tmp_path, 'discriminator', d_vars,
      vgnet_steps.build_discriminator(config).to_config())
  state = wrapped()
  assert_trees_equal(state.d.params, d_vars['params'])
  assert_trees_equal(state.g.params, g_vars['params'])


def test_shape_mismatch_and_missing_directories(tmp_path):
  config = atnet.get_config('tiny')
  mesh = sharding.make_mesh()
  abstract = atnet_steps.make_init_fn(config, jax.random.PRNGKey(0),
                                      mesh).eval_shape()
  variables = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                           {'params': abstract.g.params,
                            'batch_stats': abstract.g.batch_stats})
  kernel = variables['params']['lmark_encoder_0']['kernel']
  variables['params']['lmark_encoder_0']['kernel'] = np.zeros(
      (kernel.shape[0], kernel.shape[1] + 1), np.float32)
  with pytest.raises(InputError, match='shape mismatches') as info:
    init_from._check_shapes(tmp_path, variables['params'],  # pylint: disable=protected-access
                            abstract.g.params)
  assert f'lmark_encoder_0/kernel: {(6, kernel.shape[1] + 1)}' in str(
      info.value)

  with pytest.raises(InputError, match='no converted atnet/'):
    init_from.load_variables(tmp_path, 'atnet')
  with pytest.raises(InputError, match='not found'):
    init_from.load_variables(tmp_path / 'missing', 'atnet')
