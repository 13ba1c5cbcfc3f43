"""Tests of the training core: train steps, sharding, checkpoints, resume, NaNs.

Tiny networks (image 32x32, base width 8, one ResNet block, T=4, B=8 so the
batch splits over 2 of conftest's fake CPU devices for AT-net, over all 8 for
VG-net's sharded step). Compiled step functions are shared through
module-scoped fixtures to keep compile time down.
"""

import glob
import os
import pathlib
import signal

import conftest
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import atnet as atnet_configs
from configs import vgnet as vgnet_configs
from data_pipelines import build
from hcmtfg import paths
from hcmtfg.runtime import sharding
from hcmtfg.train import atnet_steps
from hcmtfg.train import checkpoints as checkpoints_lib
from hcmtfg.train import image_metrics
from hcmtfg.train import loop
from hcmtfg.train import preemption as preemption_lib
from hcmtfg.train import summaries
from hcmtfg.train import train_state as ts
from hcmtfg.train import trainer as trainer_lib
from hcmtfg.train import vgnet_steps
from tests import mutations

C = ml_collections.ConfigDict
B, T, S = 8, 4, 32

VG_TRAIN_KEYS = {
    'train/d_loss', 'train/d_real', 'train/d_fake', 'train/d_lmark',
    'train/g_adv', 'train/g_lmark', 'train/g_pixel', 'train/g_loss',
    'train/g_grad_norm', 'train/d_grad_norm', 'train/d_prob_real',
    'train/d_prob_fake', 'train/d_lmark_real', 'train/d_lmark_fake',
    'train/g_grad_norm_colour', 'train/g_grad_norm_attention'}
# Only with the regression discriminator.
VG_REGRESSION_KEYS = {'train/d_lmark', 'train/g_lmark', 'train/d_lmark_real',
                      'train/d_lmark_fake'}


def _loop_fields(c: C) -> C:
  # The loop's fields, as the trainer reads them; equal configs share compiled
  # steps, so every test that drives the loop uses the same config.
  c.num_train_steps = 2
  c.log_every_steps = 1
  c.eval_every_steps = 2
  c.checkpoint_every_steps = 2
  c.keep_checkpoints = 3
  # XLA without LLVM optimisation compiles these steps faster; the tests check
  # semantics, not code generation.
  c.fast_compile = True
  return c


def atnet_config(**overrides) -> C:
  c = C()
  c.seed = 0
  c.compute_dtype = 'float32'
  c.model = C(dict(base_width=8, lmark_features=(16, 32),
                   audio_features=(32, 16), lstm_features=16, lstm_layers=1))
  # Larger than the release's 2e-4, so that the learning test learns its
  # mapping in a few dozen steps.
  c.optim = C(dict(learning_rate=3e-3, b1=0.5, b2=0.999))
  _loop_fields(c)
  c.update(overrides)
  return atnet_steps.STAGE.with_defaults(c)


def vgnet_config(**loss_overrides) -> C:
  c = C()
  c.seed = 0
  c.compute_dtype = 'float32'
  c.model = C(dict(
      generator=C(dict(image_size=S, base_width=8, bottleneck_features=8,
                       convgru_features=16, num_res_blocks=1)),
      discriminator=C(dict(image_size=S, base_width=8, img_features=16,
                           lmark_features=(16, 16), lstm_features=16,
                           lstm_layers=1)),
      regress_landmarks=True))
  c.loss = C(dict(pixel='dynamic', pixel_weight=10.0, mouth_weight=100.0,
                  release_detached_gan=False))
  c.loss.update(loss_overrides)
  c.optim = C(dict(learning_rate=2e-4, b1=0.5, b2=0.999))
  _loop_fields(c)
  return vgnet_steps.STAGE.with_defaults(c)


# A learnable audio -> landmark relation: per frame, 3 latent "articulation"
# values set both the MFCC window (fixed random patterns, plus noise) and the
# landmark motion (a fixed linear map), so target - example is predictable from
# the audio, and only from it (it is independent of the example, with mean 0).
_MAPPING = np.random.RandomState(1234)
AUDIO_PATTERNS_3x28x12 = _MAPPING.randn(3, 28, 12).astype(np.float32)
MOTION_3x6 = (_MAPPING.randn(3, 6) / np.sqrt(3)).astype(np.float32)
del _MAPPING


def atnet_batch(index: int) -> dict[str, np.ndarray]:
  """Batch `index` of the learnable mapping (each index draws new examples)."""
  rs = np.random.RandomState(index)
  z_BxTx3 = rs.randn(B, T, 3).astype(np.float32)
  example = 0.3 * rs.randn(B, 6).astype(np.float32)
  mfcc = (np.einsum('btk,khw->bthw', z_BxTx3, AUDIO_PATTERNS_3x28x12)
          + 0.5 * rs.randn(B, T, 28, 12))
  return {'example_coef': example,
          'mfcc': mfcc.astype(np.float32),
          'target_coef': example[:, None] + z_BxTx3 @ MOTION_3x6}


def vgnet_batch(index: int) -> dict[str, np.ndarray]:
  rs = np.random.RandomState(100 + index)
  return {'example_image': rs.uniform(-1, 1, (B, S, S, 3)).astype(np.float32),
          'example_lmark': 0.2 * rs.randn(B, 136).astype(np.float32),
          'target_image': rs.uniform(-1, 1, (B, T, S, S, 3)).astype(np.float32),
          'target_lmark': 0.2 * rs.randn(B, T, 136).astype(np.float32)}


class Batches:
  """A resumable iterator of numpy batches; `on_next(index)` is a test hook."""

  def __init__(self, make_batch, position=None, on_next=None):
    self.index = 0 if position is None else position['index']
    self.make_batch = make_batch
    self.on_next = on_next

  def __iter__(self):
    return self

  def __next__(self):
    batch = self.make_batch(self.index)
    if self.on_next is not None:
      self.on_next(self.index, batch)
    self.index += 1
    return batch

  def get_state(self):
    return {'index': self.index}


def host_copy(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_trees_identical(a, b):
  """Same leaf paths and bit-identical leaves (static fields not compared)."""
  leaves_a = jax.tree_util.tree_flatten_with_path(host_copy(a))[0]
  leaves_b = jax.tree_util.tree_flatten_with_path(host_copy(b))[0]
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    assert x.dtype == y.dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def assert_trees_close(a, b, **tolerances):
  leaves_a = jax.tree_util.tree_flatten_with_path(host_copy(a))[0]
  leaves_b = jax.tree_util.tree_flatten_with_path(host_copy(b))[0]
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(path),
                               **tolerances)


def on(mesh, batch):
  """A host batch as global arrays sharded over the mesh's 'data' axis."""
  return sharding.host_local_to_global(batch, mesh)


def to_mesh(host_tree, mesh):
  """Replicates a host pytree on `mesh` (instead of compiling another init)."""
  return jax.device_put(host_tree, sharding.replicated(mesh))


def assert_finite(metrics):
  for name, value in jax.device_get(metrics).items():
    assert np.isfinite(value), name


@pytest.fixture(scope='module')
def mesh8():
  assert jax.device_count() == 8, 'conftest should provide 8 fake CPU devices'
  return sharding.make_mesh()


@pytest.fixture(scope='module')
def mesh2():
  """Two of the devices: AT-net's data-parallel steps (see atnet_setup)."""
  return sharding.make_mesh(jax.devices()[:2])


@pytest.fixture(scope='module')
def mesh1():
  return sharding.make_mesh(jax.devices()[:1])


class TraceCounter:
  """Wraps a module's `train_step` to count how often JAX traces it."""

  def __init__(self, monkeypatch, module):
    self.count = 0
    original = module.train_step

    def counted(*args, **kwargs):
      self.count += 1
      return original(*args, **kwargs)

    monkeypatch.setattr(module, 'train_step', counted)


def test_sharding_helpers(mesh8, monkeypatch):
  batch = on(mesh8, {'x': np.arange(16, dtype=np.float32).reshape(8, 2)})
  assert batch['x'].shape == (8, 2)
  assert len(batch['x'].sharding.device_set) == 8
  assert batch['x'].addressable_shards[3].data.shape == (1, 2)
  with pytest.raises(ValueError, match=r"batch\['y'\] has shape \(6, 2\)"):
    on(mesh8, {'y': np.zeros((6, 2), np.float32)})
  for name in ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES',
               'MEGASCALE_COORDINATOR_ADDRESS', 'SLURM_NTASKS',
               'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(name, raising=False)
  assert not sharding._looks_multi_process()  # pylint: disable=protected-access
  assert not sharding.initialize_distributed(None)
  assert not sharding.initialize_distributed(False)
  monkeypatch.setenv('SLURM_NTASKS', '1')
  assert not sharding._looks_multi_process()  # pylint: disable=protected-access
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'host-a,host-b')
  assert sharding._looks_multi_process()  # pylint: disable=protected-access


# ------------------------------------------------------------------- AT-net


@pytest.fixture(scope='module')
def atnet_setup(mesh2):
  """(config, init_fn, jitted train step) on 2 devices, compiled once.

  Data-parallel over 2 devices, not 8: each step's all-reduce waits for every
  device's thread, and 8 of them on a loaded 2-core machine once deadlocked
  in XLA's rendezvous. The VG-net step is checked on all 8.
  """
  config = atnet_config()
  init_fn = atnet_steps.make_init_fn(config, jax.random.PRNGKey(0), mesh2)
  with pytest.MonkeyPatch.context() as mp:
    counter = TraceCounter(mp, atnet_steps)
    step_fn = atnet_steps.jit_train_step(config, mesh2)
    yield config, init_fn, step_fn, counter


LEARN_STEPS = 80
HELD_OUT = range(1000, 1004)  # Batch indices never trained on.
MAX_MSE_VS_BASELINE = 0.8


def assert_beats_baselines(mse, baselines):
  """Held-out MSE well below every trivial predictor's (see the test)."""
  best = min(baselines.values())
  named = ', '.join(f'{k} {v:.4g}' for k, v in baselines.items())
  assert mse < MAX_MSE_VS_BASELINE * best, (
      f'held-out MSE {mse:.4g} is not below {MAX_MSE_VS_BASELINE} x the best '
      f'trivial baseline ({named})')


@pytest.mark.parametrize('hearing', ['as_built', 'deaf'])
def test_atnet_steps_compile_once_and_learn(atnet_setup, mesh2, hearing,
                                            monkeypatch):
  """AT-net learns the audio -> landmark mapping of `atnet_batch`.

  It trains on fresh batches, then is scored on held-out batches against two
  predictors that ignore the audio: the example's coefficients for every frame
  ('eval/baseline_mse'), and the mean target of the training batches. As
  target - example is independent of the example and has mean 0, no network
  deaf to the audio can beat the first in expectation. The 'deaf' case
  (`mutations.deaf_atnet`: audio features zeroed) trains the same way and must
  fail the check; it does: "held-out MSE 1.023 is not below 0.8 x the best
  trivial baseline (copy the example 0.9463, train-set mean 1.034)". AT-net as
  built reaches 0.351, 0.37 x the baseline (0.533 when trained on 8 devices:
  rounding differences grow over the steps).
  """
  config, init_fn, step_fn, counter = atnet_setup
  if hearing == 'deaf':
    for name in ('train_step', 'eval_step'):
      monkeypatch.setattr(atnet_steps, name,
                          mutations.deafen(getattr(atnet_steps, name)))
    step_fn = atnet_steps.jit_train_step(config, mesh2)
  state = init_fn()
  assert state.d is None and int(state.step) == 0
  train_metrics, targets = [], []
  for i in range(LEARN_STEPS):
    host_batch = atnet_batch(i)
    targets.append(host_batch['target_coef'])
    batch = on(mesh2, host_batch)
    if i == 0:
      assert batch['mfcc'].sharding.spec == jax.sharding.PartitionSpec('data')
    state, metrics = step_fn(state, batch)
    train_metrics.append(metrics)
  for metrics in train_metrics:
    assert_finite(metrics)
  assert int(state.step) == LEARN_STEPS
  if hearing == 'as_built':
    assert counter.count == 1  # Traced once, on the first step.

  eval_fn = atnet_steps.jit_eval_step(config, mesh2)
  train_mean = np.mean(targets, axis=(0, 1, 2))
  mse, baselines = [], {'copy the example': [], 'train-set mean': []}
  for index in HELD_OUT:
    held_out = atnet_batch(index)
    metrics = jax.device_get(eval_fn(state, on(mesh2, held_out)))
    assert set(metrics) == {'eval/mse', 'eval/mae', 'eval/baseline_mse'}
    target, example = held_out['target_coef'], held_out['example_coef']
    np.testing.assert_allclose(metrics['eval/baseline_mse'],
                               np.mean((target - example[:, None]) ** 2),
                               rtol=1e-5)
    mse.append(metrics['eval/mse'])
    baselines['copy the example'].append(metrics['eval/baseline_mse'])
    baselines['train-set mean'].append(np.mean((target - train_mean) ** 2))
  mse = float(np.mean(mse))
  baselines = {k: float(np.mean(v)) for k, v in baselines.items()}
  if hearing == 'deaf':
    with pytest.raises(AssertionError, match='is not below'):
      assert_beats_baselines(mse, baselines)
    return
  # Training loss falls on the batches it trains on...
  losses = np.array([float(m['train/loss']) for m in train_metrics])
  assert losses[-10:].mean() < 0.7 * losses[:10].mean()
  # ...and the network predicts frames it never saw from their audio.
  assert_beats_baselines(mse, baselines)


# bfloat16 keeps 8 significant bits, so rounding an input, a weight or an
# activation moves it by up to 2^-8 of its size. Through the ten-odd layers of
# these networks such errors add up to a few 2^-8 of an output's RMS
# (measured: 0.2-1.2%, i.e. 0.6-3 x 2^-8). The tolerance, 2^-5 = 8 x 2^-8,
# leaves room for that; an output off by its own size, as a zeroed path is,
# is 32 times over it.
BF16_RMS_TOLERANCE = 2.0**-5


def assert_bfloat16_close(got, want, name):
  """RMS of `got - want` within BF16_RMS_TOLERANCE of the RMS of `want`."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, name
  scale = np.sqrt(np.mean(want**2))
  assert scale > 0, name
  error = np.sqrt(np.mean((got - want)**2)) / scale
  assert error < BF16_RMS_TOLERANCE, (
      f'{name}: bfloat16 RMS error is {error:.3g} of the float32 RMS '
      f'(tolerance {BF16_RMS_TOLERANCE:.3g})')


def jit_atnet_predict(config):
  """Train-mode AT-net predictions (B, T, 6) float32, as the train step computes
  them (inputs and parameters cast to `config.compute_dtype`)."""

  def predict(state, batch):
    pred, _ = atnet_steps._forward(  # pylint: disable=protected-access
        atnet_steps.build_model(config), state.g, None, batch,
        ts.compute_dtype(config), train=True)
    return pred

  return jax.jit(predict, compiler_options=ts.FAST_COMPILE_OPTIONS)


def test_atnet_sharded_step_matches_single_device_and_bfloat16_is_close(
    atnet_setup, mesh2, mesh1):
  """2 devices match 1; bfloat16 predictions match float32 ones.

  A bfloat16 path returning zeros fails the comparison (checked below).
  """
  config, init_fn, _, _ = atnet_setup
  # The two programs compared compile with XLA's default CPU fusion emitters.
  # The classic ones the tests use round them differently, and Adam turns
  # rounding noise in gradients that are zero in exact arithmetic (biases
  # that feed BatchNorm) into updates of full size, lr.
  options = {**ts.FAST_COMPILE_OPTIONS, **conftest.DEFAULT_EMITTERS}
  step2 = atnet_steps.jit_train_step(config, mesh2, compiler_options=options)
  state2 = init_fn()
  host_state = host_copy(state2)
  state1 = to_mesh(host_state, mesh1)
  assert len(state1.g.params['lstm_fc']['kernel'].sharding.device_set) == 1
  assert len(state2.g.params['lstm_fc']['kernel'].sharding.device_set) == 2
  step1 = atnet_steps.jit_train_step(config, mesh1, compiler_options=options)
  bf16_config = atnet_config(compute_dtype='bfloat16')
  bf16_step = atnet_steps.jit_train_step(bf16_config, mesh1)
  state_bf16 = to_mesh(host_state, mesh1)
  for i in range(2):
    batch = on(mesh2, atnet_batch(i))
    assert len(batch['mfcc'].sharding.device_set) == 2
    state2, m2 = step2(state2, batch)
    state1, m1 = step1(state1, on(mesh1, atnet_batch(i)))
    state_bf16, m_bf16 = bf16_step(state_bf16, on(mesh1, atnet_batch(i)))
    np.testing.assert_allclose(m2['train/loss'], m1['train/loss'], rtol=1e-5)
    assert_finite(m_bf16)
  # Adam moves every parameter by ~lr per step whatever the gradient's size,
  # so an atol of lr / 100 catches any update whose sign differs.
  assert_trees_close(state2, state1, rtol=1e-4,
                     atol=0.01 * config.optim.learning_rate)
  # bfloat16 compute keeps float32 parameters, statistics and moments.
  for leaf in jax.tree.leaves(state_bf16):
    assert leaf.dtype in (np.float32, np.int32, np.uint32)
  # The same (trained) parameters predict the same coefficients in bfloat16.
  batch = on(mesh1, atnet_batch(2))
  want = np.asarray(jit_atnet_predict(config)(state1, batch))
  got = np.asarray(jit_atnet_predict(bf16_config)(state1, batch))
  assert_bfloat16_close(got, want, 'AT-net predictions')
  with pytest.raises(AssertionError, match='bfloat16 RMS error is 1 of'):
    assert_bfloat16_close(np.zeros_like(got), want, 'a zeroed bfloat16 path')


def run_loop(setup, mesh, workdir, num_steps, *, position=None, state=None,
             on_next=None, preemption=None, keep=3):
  """Runs the real loop from `workdir` (restoring if it holds a checkpoint)."""
  config, init_fn, step_fn, _ = setup
  ckpt = checkpoints_lib.Checkpointer(workdir, max_to_keep=keep,
                                    save_interval_steps=1)
  if state is None:
    state, position = checkpoints_lib.restore_or_init(ckpt, init_fn)
  batches = Batches(atnet_batch, position, on_next)
  try:
    state = loop.run_train_loop(state=state, train_step_fn=step_fn,
                                train_iter=batches, mesh=mesh,
                                checkpointer=ckpt, num_steps=num_steps,
                                log_every=2, preemption=preemption)
  finally:
    ckpt.close()
  return state, batches


@pytest.fixture(scope='module')
def uninterrupted(atnet_setup, mesh2, tmp_path_factory):
  """4 uninterrupted steps, saving every step (async) while training on."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  state, _ = run_loop(atnet_setup, mesh2, workdir, 4)
  return host_copy(state), workdir


def test_resume_is_bit_exact(atnet_setup, mesh2, tmp_path, uninterrupted):
  reference, reference_dir = uninterrupted
  _, first_init, step_fn, counter = atnet_setup
  traces = counter.count
  run_loop(atnet_setup, mesh2, tmp_path, 2)
  # A fresh process state: new manager, an init from another key (so a wrong
  # restore cannot pass), and the iterator rebuilt from the saved position.
  config = atnet_config()
  other_init = atnet_steps.make_init_fn(config, jax.random.PRNGKey(123),
                                        mesh2)
  ckpt = checkpoints_lib.Checkpointer(tmp_path, save_interval_steps=1)
  assert ckpt.latest_step() == 2
  state, position = checkpoints_lib.restore_or_init(ckpt, other_init)
  ckpt.close()
  assert position == {'index': 2}
  with pytest.raises(AssertionError):
    assert_trees_identical(other_init().g.params, first_init().g.params)
  final, _ = run_loop(atnet_setup, mesh2, tmp_path, 4, state=state,
                      position=position)
  assert_trees_identical(final, reference)
  assert counter.count == traces  # Restored arrays did not force a retrace.
  # Checkpoints written asynchronously while the next (donating) steps ran
  # hold the right values: step 2 of both runs agree.
  restored = {}
  for name, directory in (('continuous', reference_dir), ('stopped', tmp_path)):
    ckpt = checkpoints_lib.Checkpointer(directory)
    restored[name], _ = ckpt.restore(first_init.eval_shape(), step=2)
    ckpt.close()
  assert_trees_identical(restored['continuous'], restored['stopped'])
  ckpt = checkpoints_lib.Checkpointer(reference_dir)
  assert ckpt.all_steps() == [2, 3, 4]  # keep_checkpoints = 3
  ckpt.close()


def test_sigterm_saves_at_step_boundary_then_resumes_exactly(
    atnet_setup, mesh2, tmp_path, uninterrupted):
  reference, _ = uninterrupted

  def send_sigterm(index, _):
    if index == 1:  # While fetching the 2nd batch.
      os.kill(os.getpid(), signal.SIGTERM)

  previous_handler = signal.getsignal(signal.SIGTERM)
  with preemption_lib.PreemptionHandler() as preemption:
    with pytest.raises(SystemExit) as exit_info:
      run_loop(atnet_setup, mesh2, tmp_path, 4, on_next=send_sigterm,
               preemption=preemption)
  assert exit_info.value.code == 0
  assert signal.getsignal(signal.SIGTERM) is previous_handler
  ckpt = checkpoints_lib.Checkpointer(tmp_path)
  assert ckpt.latest_step() == 2
  ckpt.close()
  final, batches = run_loop(atnet_setup, mesh2, tmp_path, 4)
  assert batches.index == 4
  assert_trees_identical(final, reference)


def test_nan_loss_raises_naming_the_step(atnet_setup, mesh2, tmp_path):

  def poison(index, batch):
    if index == 2:
      batch['target_coef'][0, 0, 0] = np.nan

  with pytest.raises(checkpoints_lib.NonFiniteLossError,
                     match=r'step 3\b.*train/loss = nan'):
    run_loop(atnet_setup, mesh2, tmp_path, 4, on_next=poison)
  ckpt = checkpoints_lib.Checkpointer(tmp_path)
  assert ckpt.latest_step() == 2  # The non-finite step was never saved.
  ckpt.close()
  with pytest.raises(checkpoints_lib.NonFiniteLossError,
                     match='step 7: train/g_loss = inf'):
    checkpoints_lib.check_finite({'train/d_loss': 1.0, 'train/g_loss': np.inf},
                               7)


def test_train_runs_the_real_loop_on_the_tiny_config(tmp_path, tiny_data,
                                                    monkeypatch):
  """The trainer (`trainer_lib.train`) on configs/atnet.py:tiny for its 2 steps:
  a train write at steps 1 and 2, an evaluation at step 2 with the stage's
  image grid, checkpoints."""
  config = atnet_configs.get_config('tiny')
  config.data.data_dir = str(tiny_data)
  written = []
  write = summaries.RunProgress.__call__

  def record(progress, step, metrics):
    written.append((step, dict(metrics)))
    write(progress, step, metrics)

  monkeypatch.setattr(summaries.RunProgress, '__call__', record)
  state = trainer_lib.train(config, tmp_path, build.prepare_dataset(config.data))
  assert int(state.step) == 2
  assert [step for step, _ in written] == [1, 2, 2]
  assert 'train/loss' in written[1][1] and 'eval/baseline_mse' in written[2][1]
  assert os.listdir(tmp_path / 'checkpoints')
  images = [(event.step, value.tag)
            for path in glob.glob(f'{tmp_path}/tensorboard/events.out.*')
            for event in tf.compat.v1.train.summary_iterator(path)
            for value in event.summary.value
            if value.metadata.plugin_data.plugin_name == 'images']
  assert images == [(2, 'images/landmarks')]


def test_the_trainer_knows_stages_only_by_their_contract():
  """The trainer's stages are the step modules' `STAGE`s; a config lacking
  fields gets them from its stage's defaults (configs/), unchanged itself."""
  assert trainer_lib.STAGES == {'atnet': atnet_steps.STAGE,
                                'vgnet': vgnet_steps.STAGE}
  partial = C(dict(stage='vgnet', loss=C(dict(pixel='l1', warmup_steps=5)),
                   model=C(dict(generator=C(dict(image_size=64))))))
  filled = trainer_lib.stage_of(partial).with_defaults(partial)
  defaults = vgnet_configs.defaults()
  assert (filled.loss.pixel, filled.loss.warmup_steps) == ('l1', 5)
  assert filled.model.generator.image_size == 64
  for name in ('colour_weight', 'colour_region', 'fused_gan_step'):
    assert filled.loss[name] == defaults.loss[name], name
  assert filled.optim == defaults.optim and filled.seed == defaults.seed
  assert set(partial.loss) == {'pixel', 'warmup_steps'}
  tiny = atnet_configs.get_config('tiny')
  assert atnet_steps.STAGE.with_defaults(tiny) == tiny
  with pytest.raises(ValueError, match=r"config.stage must be one of "
                     r"\['atnet', 'vgnet'\], got 'gan'"):
    trainer_lib.stage_of(C(dict(stage='gan')))


# ------------------------------------------------------------------- VG-net


@pytest.fixture(scope='module')
def vgnet_run(mesh1):
  """Two GAN steps on one device; keeps host copies of every state.

  One device because XLA compiles the GAN step for one device faster than for
  eight (the 8-device step is compiled only by the slow test).
  """
  config = vgnet_config()
  init_fn = vgnet_steps.make_init_fn(config, jax.random.PRNGKey(0), mesh1)
  with pytest.MonkeyPatch.context() as mp:
    counter = TraceCounter(mp, vgnet_steps)
    state = init_fn()
    step_fn = vgnet_steps.jit_train_step(config, mesh1)
    states, metrics = [host_copy(state)], []
    for i in range(2):
      state, m = step_fn(state, on(mesh1, vgnet_batch(i)))
      states.append(host_copy(state))
      metrics.append(jax.device_get(m))
  return dict(config=config, init_fn=init_fn, step_fn=step_fn, state=state,
              states=states, metrics=metrics, traces=counter.count)


def test_reconstruction_warmup_trains_g_alone_then_the_gan_takes_over(mesh1):
  """`loss.warmup_steps`: reconstruction steps (G only, pixel terms, the
  colour L1 and the mouth box weighted) then GAN steps; the switch follows
  the state's step, so a resumed run picks up where it was."""
  config = vgnet_config(warmup_steps=1, colour_weight=1.0,
                        mouth_pixel_weight=10.0)
  state = vgnet_steps.make_init_fn(config, jax.random.PRNGKey(0), mesh1)()
  before = host_copy(state)
  step_fn = vgnet_steps.jit_train_step(config, mesh1)
  assert isinstance(step_fn, vgnet_steps.WarmupThenGan)
  rs = np.random.RandomState(7)
  mouth = rs.uniform(8, 24, (B, T, 20, 2)).astype(np.float32)
  state, m = step_fn(state, on(mesh1, dict(vgnet_batch(0),
                                           target_mouth=mouth)))
  m = jax.device_get(m)
  assert set(m) == {'train/g_loss', 'train/g_pixel', 'train/g_colour',
                    'train/g_grad_norm', 'train/g_grad_norm_colour',
                    'train/g_grad_norm_attention', 'train/att_mouth',
                    'train/att_rest'}
  np.testing.assert_allclose(
      m['train/g_loss'], 10 * (m['train/g_pixel'] + m['train/g_colour']),
      rtol=1e-5)
  warm = host_copy(state)
  assert int(warm.step) == 1
  assert_trees_identical(warm.d, before.d)  # D untouched
  assert not np.array_equal(
      jax.tree.leaves(warm.g.params)[0], jax.tree.leaves(before.g.params)[0])
  # The switch follows the state's step, also for a dispatcher made when a
  # run resumes (stand-in step functions record which one ran).
  calls = []
  dispatch = lambda: vgnet_steps.WarmupThenGan(
      lambda s, b: (calls.append('warm'), s)[1],
      lambda s, b: (calls.append('gan'), s)[1], warmup_steps=2)
  fresh = dispatch()
  for _ in range(3):
    fresh(before, None)  # Counts from step 0.
  dispatch()(warm, None)  # Resumed at step 1: one more warm-up step.
  dispatch()(warm.replace(step=np.int32(2)), None)
  assert calls == ['warm', 'warm', 'gan', 'warm', 'gan']


def test_vgnet_gan_step_updates_both_networks(vgnet_run):
  assert vgnet_run['traces'] == 1
  for m in vgnet_run['metrics']:
    assert set(m) == VG_TRAIN_KEYS
    assert_finite(m)
    np.testing.assert_allclose(
        m['train/d_loss'],
        m['train/d_real'] + m['train/d_fake'] + m['train/d_lmark'], rtol=1e-5)
    np.testing.assert_allclose(
        m['train/d_lmark'], m['train/d_lmark_real'] + m['train/d_lmark_fake'],
        rtol=1e-5)
    np.testing.assert_allclose(
        m['train/g_loss'],
        m['train/g_adv'] + m['train/g_lmark'] + 10 * m['train/g_pixel'],
        rtol=1e-5)
    assert 0 < m['train/g_grad_norm_colour'] < m['train/g_grad_norm']
    assert 0 < m['train/g_grad_norm_attention'] < m['train/g_grad_norm']
  before, after = vgnet_run['states'][0], vgnet_run['states'][1]
  assert int(after.step) == 1
  for net in ('g', 'd'):
    for part in ('params', 'batch_stats'):
      changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                             getattr(getattr(before, net), part),
                             getattr(getattr(after, net), part))
      assert all(jax.tree.leaves(changed)), (net, part)
    mu = getattr(after, net).opt_state[0].mu  # Adam's first moment.
    assert all(np.any(x != 0) for x in jax.tree.leaves(mu)), net


def assert_gradients_close(mu_a, mu_b):
  """Adam's first moments after one step are 0.5 * grad: compare gradients.

  Tolerances are relative to the largest gradient of the network, so that
  parameters whose gradient is pure rounding noise (biases feeding BatchNorm)
  do not fail the comparison.
  """
  leaves_a = jax.tree_util.tree_flatten_with_path(mu_a)[0]
  leaves_b = jax.tree_util.tree_flatten_with_path(mu_b)[0]
  scale = max(float(np.max(np.abs(b))) for _, b in leaves_b)
  assert scale > 0
  for (path, a), (_, b) in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_vgnet_sharded_step_matches_single_device(vgnet_run, mesh8):
  state = to_mesh(vgnet_run['states'][0], mesh8)
  step8 = vgnet_steps.jit_train_step(vgnet_run['config'], mesh8)
  state, m8 = step8(state, on(mesh8, vgnet_batch(0)))
  m1 = vgnet_run['metrics'][0]
  for name in VG_TRAIN_KEYS:
    np.testing.assert_allclose(m8[name], m1[name], rtol=2e-4, err_msg=name)
  state1 = vgnet_run['states'][1]
  state8 = host_copy(state)
  for net in ('g', 'd'):
    # Statistics of BatchNorm over the whole (sharded) batch, in call order.
    assert_trees_close(getattr(state1, net).batch_stats,
                       getattr(state8, net).batch_stats, rtol=1e-4, atol=1e-6)
    assert_gradients_close(getattr(state1, net).opt_state[0].mu,
                           getattr(state8, net).opt_state[0].mu)


def test_vgnet_checkpoint_restores_every_part_exactly(vgnet_run, mesh1,
                                                      tmp_path):
  state = vgnet_run['state']
  ckpt = checkpoints_lib.Checkpointer(tmp_path, save_interval_steps=1)
  ckpt.save(2, state, {'index': 2})
  ckpt.wait_until_finished()
  restored, position = ckpt.restore(vgnet_run['init_fn'].eval_shape())
  ckpt.close()
  assert position == {'index': 2}
  assert isinstance(restored, ts.TrainState) and restored.d is not None
  assert_trees_identical(restored, vgnet_run['states'][2])
  step_fn = vgnet_run['step_fn']
  batch = on(mesh1, vgnet_batch(2))
  a, ma = step_fn(state, batch)
  b, mb = step_fn(restored, batch)
  assert_trees_identical(a, b)
  assert_trees_identical(ma, mb)


def test_vgnet_eval_metrics(vgnet_run, mesh1):
  """The eval metrics of the model and of the copy-the-example baseline.

  The model's are checked against its frames, generated here in eval mode.
  Mutations tried, both failing on 'eval/l1': eval_step scoring zero frames
  (reported 0.5008 where the frames give 0.5420), or the example image
  instead of the frames (0.6662).
  """
  config = vgnet_run['config']
  state = to_mesh(vgnet_run['states'][2], mesh1)
  eval_fn = vgnet_steps.jit_eval_step(config, mesh1)
  batch = vgnet_batch(3)
  m = jax.device_get(eval_fn(state, on(mesh1, batch)))
  assert_finite(m)
  generator = vgnet_steps.build_generator(config)
  generate = jax.jit(
      lambda s, x: generator.apply(
          s.g.variables(None, train=False), x['example_image'],
          x['target_lmark'], x['example_lmark'], train=False).frames,
      compiler_options=ts.FAST_COMPILE_OPTIONS)
  real = batch['target_image']
  fake = np.asarray(generate(state, on(mesh1, batch)))
  copy = np.broadcast_to(batch['example_image'][:, None], real.shape)
  unit = lambda v: (np.clip(v, -1, 1) + 1) / 2
  for prefix, pred in (('eval/', fake), ('eval/baseline_', copy)):
    np.testing.assert_allclose(m[prefix + 'l1'], np.mean(np.abs(pred - real)),
                               rtol=1e-5, err_msg=prefix + 'l1')
    mse = np.mean((unit(pred) - unit(real))**2, axis=(2, 3, 4))
    np.testing.assert_allclose(m[prefix + 'psnr'],
                               np.mean(10 * np.log10(1 / mse)), rtol=1e-5,
                               err_msg=prefix + 'psnr')
    np.testing.assert_allclose(
        m[prefix + 'ssim'],
        np.mean(image_metrics.gaussian_ssim(unit(pred), unit(real))),
        rtol=1e-4, err_msg=prefix + 'ssim')
    assert -1 <= m[prefix + 'ssim'] <= 1 and 0 < m[prefix + 'psnr'] < 100


def jit_vgnet_outputs(config):
  """Train-mode generator outputs and discriminator logits on the real frames,
  computed in `config.compute_dtype` (inputs and parameters cast, as the train
  step does), returned as float32: {'frames', 'attention', 'colour',
  'lmark_attention', 'd_logit'}."""
  dtype = ts.compute_dtype(config)
  generator = vgnet_steps.build_generator(config)
  discriminator = vgnet_steps.build_discriminator(config)

  def outputs(state, batch):
    x = {k: v if dtype is None else v.astype(dtype) for k, v in batch.items()}
    out, _ = generator.apply(
        state.g.variables(None, dtype), x['example_image'], x['target_lmark'],
        x['example_lmark'], train=True, rngs={'dropout': jax.random.key(0)},
        mutable=['batch_stats'])
    judged, _ = discriminator.apply(
        state.d.variables(None, dtype), x['target_image'], x['example_lmark'],
        train=True, mutable=['batch_stats'])
    fields = ('frames', 'attention', 'colour', 'lmark_attention')
    return {**{f: getattr(out, f).astype(jnp.float32) for f in fields},
            'd_logit': judged.logit.astype(jnp.float32)}

  return jax.jit(outputs, compiler_options=ts.FAST_COMPILE_OPTIONS)


def test_vgnet_ablations_l1_loss_plain_discriminator_bfloat16(vgnet_run, mesh1):
  """Ablations train; in bfloat16 every network output matches float32.

  A bfloat16 path returning zeros fails the comparison (checked below).
  """
  config = vgnet_config(pixel='l1')
  config.model.regress_landmarks = False
  config.compute_dtype = 'bfloat16'
  # The plain discriminator is the regression one without its landmark head:
  # derive its initial state instead of compiling another init.
  abstract = vgnet_steps.make_init_fn(config, jax.random.PRNGKey(0),
                                      mesh1).eval_shape()
  assert 'lstm_fc' not in abstract.d.params
  init = vgnet_run['states'][0]
  d_params = {k: v for k, v in init.d.params.items() if k != 'lstm_fc'}
  tx = ts.make_optimizer(config.optim)
  state = init.replace(d=ts.NetState.create(
      tx, {'params': d_params, 'batch_stats': init.d.batch_stats}))
  state = to_mesh(host_copy(state), mesh1)
  assert (jax.tree_util.tree_structure(state)
          == jax.tree_util.tree_structure(abstract))

  batch = on(mesh1, vgnet_batch(0))
  f32_config = ml_collections.ConfigDict(config.to_dict())
  f32_config.compute_dtype = 'float32'
  want = jax.device_get(jit_vgnet_outputs(f32_config)(state, batch))
  got = jax.device_get(jit_vgnet_outputs(config)(state, batch))
  for name, value in want.items():
    assert_bfloat16_close(got[name], value, name)
  with pytest.raises(AssertionError, match='bfloat16 RMS error is 1 of'):
    assert_bfloat16_close(np.zeros_like(got['frames']), want['frames'],
                          'frames of a zeroed bfloat16 path')
  # Same initial D minus its landmark head: on the real frames of batch 0 it
  # scores as the regression D did in the float32 run's first step.
  np.testing.assert_allclose(
      np.mean(1 / (1 + np.exp(-want['d_logit']))),
      vgnet_run['metrics'][0]['train/d_prob_real'], rtol=1e-5)

  step_fn = vgnet_steps.jit_train_step(config, mesh1)
  for i in range(2):
    state, m = step_fn(state, on(mesh1, vgnet_batch(i)))
    m = jax.device_get(m)
    assert set(m) == VG_TRAIN_KEYS - VG_REGRESSION_KEYS
    assert_finite(m)
    np.testing.assert_allclose(
        m['train/g_loss'], m['train/g_adv'] + 10 * m['train/g_pixel'],
        rtol=1e-5)
  for leaf in jax.tree.leaves(state):
    assert leaf.dtype in (np.float32, np.int32, np.uint32)


def test_checkpointer_keeps_cloud_paths_and_absolutises_local_ones(
    tmp_path, monkeypatch):
  """gs:// workdirs (Cloud TPU) must not become '<cwd>/gs:/bucket/...'; local
  ones become absolute (Orbax refuses relative paths)."""
  assert paths.user_path('gs://bucket/run/checkpoints') == (
      'gs://bucket/run/checkpoints')
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  for directory, expected in (('rel dir/ckpt', tmp_path / 'rel dir' / 'ckpt'),
                              ('~/ckpt', tmp_path / 'home' / 'ckpt')):
    checkpointer = checkpoints_lib.Checkpointer(directory, async_save=False)
    checkpointer.close()
    assert checkpointer.directory == str(expected)
    assert expected.is_dir()
