"""End-to-end tests of `python -m launch.train` and the cluster launchers.

The trainer runs as a subprocess on 8 fake CPU devices with the tiny configs,
on the tiny synthetic dataset (10 clips) that the dataset tests share under
pytest's base temp dir; the AT-net test lets the launcher build it when it is
not there yet (build on demand). TensorBoard event files are read back with
TensorFlow's own event reader.
"""

import glob
import json
import os
import pathlib
import subprocess
import sys

import conftest
import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import build
from hcmtfg.data import input_pipeline
from hcmtfg.errors import InputError
from hcmtfg.evaluation import evaluate
from hcmtfg.features import audio
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.train import workdir as workdir_lib
from hcmtfg.weights import checkpoint_io
from tests import mutations

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLIPS = 10  # as datasets_test.py / input_pipeline_test.py: one shared build


@pytest.fixture(scope='session')
def data_root(tmp_path_factory) -> pathlib.Path:
  """Where the shared tiny dataset lives (root/tfds, corpus in root/downloads)."""
  return tmp_path_factory.getbasetemp() / 'hcmtfg_datasets'


@pytest.fixture(scope='session')
def jax_cache(tmp_path_factory) -> pathlib.Path:
  """A persistent compilation cache shared by the launcher runs of a session
  (a resumed run reuses the first run's executables)."""
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='session')
def tiny_data(data_root) -> pathlib.Path:
  """The shared tiny dataset, built if no earlier test built it."""
  build.build_dataset('synthetic_talking_faces', data_root / 'tfds',
                      config='tiny', num_clips=NUM_CLIPS,
                      download_dir=data_root / 'downloads')
  return data_root


def run_train(config: str, workdir: pathlib.Path, data_root: pathlib.Path,
              cache: pathlib.Path, *overrides: str,
              mutation: str | None = None) -> str:
  """Runs the launcher; returns its log (stderr + stdout), failing on error.

  `mutation` names one of `tests.mutations.MUTATIONS` to run it under.
  """
  env = dict(os.environ, XLA_FLAGS=conftest.xla_flags(),
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             JAX_COMPILATION_CACHE_DIR=str(cache))
  main = ['launch.train'] if mutation is None else ['tests.mutations', mutation]
  cmd = [sys.executable, '-m', *main, f'--config={config}',
         f'--workdir={workdir}',
         f'--config.data.data_dir={data_root / "tfds"}',
         f'--config.data.download_dir={data_root / "downloads"}', *overrides]
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  log = proc.stderr + proc.stdout
  assert proc.returncode == 0, log[-4000:]
  return log


def read_events(workdir: pathlib.Path) -> dict[str, dict[int, object]]:
  """tag -> step -> float (scalars) or (H, W, 3) uint8 array (images)."""
  out = {}
  files = sorted(glob.glob(str(workdir / 'tensorboard' / 'events.out.*')))
  assert files, 'no event file written'
  for path in files:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        tensor = tf.make_ndarray(value.tensor)
        if plugin == 'scalars':
          item = float(tensor)
        elif plugin == 'images':
          width, height = int(tensor[0]), int(tensor[1])
          item = tf.io.decode_png(tensor[2]).numpy()
          assert item.shape == (height, width, 3), value.tag
        else:
          item = tensor
        out.setdefault(value.tag, {})[event.step] = item
  return out


def saved_input_position(workdir: pathlib.Path, step: int) -> dict:
  return json.loads((workdir / 'checkpoints' / str(step) / 'input' /
                     'metadata').read_text())


def atnet_windows(builder, split: str, pca, num_frames: int):
  """Every AT-net example of a split's clips, stacked (N, ...).

  As the input pipeline makes them, but for every example frame r that has
  num_frames (T) frames after it, not only r in [3, 7]: example coefficients
  (N, 6) of frame r, MFCC windows (N, T, 28, 12) and target coefficients
  (N, T, 6) of frames r+1 .. r+T.
  """
  examples, windows, targets = [], [], []
  for clip in evaluate.read_clips(builder, split):
    coefs = landmarks_lib.project(pca, clip.normalized)
    mfcc = audio.mfcc_windows(clip.mfcc, len(coefs))
    for r in range(len(coefs) - num_frames):
      examples.append(coefs[r])
      windows.append(mfcc[r + 1:r + 1 + num_frames])
      targets.append(coefs[r + 1:r + 1 + num_frames])
  return tuple(np.asarray(x, np.float32) for x in (examples, windows, targets))


def atnet_held_out_scores(workdir: pathlib.Path, data_root: pathlib.Path
                          ) -> tuple[float, dict[str, float]]:
  """(MSE of the trained AT-net, MSEs of audio-free predictors) on every
  example of the clips it did not train on (validation + test), with T as in
  training.

  The audio-free predictors: the example's coefficients for every frame; the
  mean target of the training clips; the least-squares affine map from the
  example's coefficients to the targets, fitted on the training clips (it
  beats the other two: part of the motion is predictable from the example).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('synthetic_talking_faces', config='tiny',
                         data_dir=str(data_root / 'tfds'))
  net = checkpoint_io.load_network(workdir, 'atnet')
  config = json.loads((workdir / 'config.json').read_text())
  num_frames = config['data']['num_target_frames']
  example, mfcc, target = atnet_windows(builder, 'train', net.pca, num_frames)
  with_bias = lambda e: np.concatenate([e, np.ones((len(e), 1))], axis=1)
  affine = np.linalg.lstsq(with_bias(example), target.reshape(len(target), -1),
                           rcond=None)[0]
  train_mean = target.mean(axis=0)
  example, mfcc, target = atnet_windows(builder, 'validation+test', net.pca,
                                        num_frames)
  assert len(example) >= 40  # 2 clips of 29 frames
  pred = np.asarray(net.module.apply(net.variables, example, mfcc,
                                     train=False))
  mse = lambda p: float(np.mean((p - target)**2))
  return mse(pred), {
      'copy the example': mse(example[:, None]),
      'train-set mean': mse(train_mean),
      'affine map of the example': mse(
          (with_bias(example) @ affine).reshape(target.shape))}


def assert_beats_audio_free_predictors(mse: float, baselines: dict[str, float]):
  best = min(baselines.values())
  named = ', '.join(f'{k} {v:.3g}' for k, v in baselines.items())
  assert mse < 0.8 * best, (f'held-out MSE {mse:.3g} is not below 0.8 x the '
                            f'best audio-free predictor\'s ({named})')


ATNET_STEPS = 200  # enough for the tiny network to learn the mapping


def atnet_overrides(num_steps: int, *, log_every: int,
                    eval_every: int) -> list[str]:
  return [f'--config.num_train_steps={num_steps}',
          '--config.optim.learning_rate=3e-3',
          f'--config.log_every_steps={log_every}',
          f'--config.eval_every_steps={eval_every}',
          f'--config.checkpoint_every_steps={eval_every}']


@pytest.mark.slow
@pytest.mark.parametrize('hearing', ['as_built', 'deaf'])
def test_atnet_tiny_trains_writes_summaries_and_resumes(tmp_path, data_root,
                                                        jax_cache, hearing):
  """The tiny AT-net learns the corpus's audio -> mouth relation, then resumes.

  After ATNET_STEPS steps it must predict the landmarks of clips it never saw
  better than any audio-free predictor (`atnet_held_out_scores`). The 'deaf'
  case trains the same way with the audio features zeroed
  (`tests.mutations`) and must fail that check; it does: "held-out MSE
  0.00601 is not below 0.8 x the best audio-free predictor's (copy the
  example 0.00794, train-set mean 0.00626, affine map of the example
  0.00467)". AT-net as built reaches 0.00288 (0.62 x).
  """
  workdir = tmp_path / 'atnet'
  args = atnet_overrides(ATNET_STEPS, log_every=ATNET_STEPS // 2,
                         eval_every=ATNET_STEPS // 2)
  if hearing == 'deaf':
    run_train('configs/atnet.py:tiny', workdir, data_root, jax_cache, *args,
              mutation='deaf_atnet')
    with mutations.deaf_atnet():  # The network as it was trained.
      scores = atnet_held_out_scores(workdir, data_root)
    with pytest.raises(AssertionError, match='is not below'):
      assert_beats_audio_free_predictors(*scores)
    return
  log = run_train('configs/atnet.py:tiny', workdir, data_root, jax_cache,
                  *args)

  assert 'checkpoint: none found, initialising' in log
  assert f'progress: step {ATNET_STEPS}/{ATNET_STEPS} (100.0%)' in log
  assert 'ETA' in log
  config = json.loads((workdir / 'config.json').read_text())
  assert config['stage'] == 'atnet' and config['model']['base_width'] == 4
  assert config['data']['data_dir'] == str(data_root / 'tfds')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('synthetic_talking_faces', config='tiny',
                         data_dir=str(data_root / 'tfds'))
  assert builder.is_prepared()  # built on demand if it was missing
  pca = landmarks_lib.load_pca(workdir / 'landmark_pca.npz')
  np.testing.assert_array_equal(
      pca.components, input_pipeline.load_dataset_pca(builder).components)

  events = read_events(workdir)
  half, last = ATNET_STEPS // 2, ATNET_STEPS
  for tag in ('train/loss', 'train/grad_norm', 'train/learning_rate'):
    assert sorted(events[tag]) == [half, last], tag
  assert np.isfinite([events['train/loss'][s] for s in (half, last)]).all()
  assert events['train/loss'][last] < events['train/loss'][half]
  assert events['train/learning_rate'][last] == pytest.approx(3e-3)
  # Rates need two writes: the first one only starts the clock.
  assert events['train/steps_per_sec'][last] > 0
  assert events['train/examples_per_sec'][last] == pytest.approx(
      8 * events['train/steps_per_sec'][last], rel=1e-5)
  assert {'eval/mse', 'eval/mae', 'eval/baseline_mse'} <= set(events)
  assert events['eval/baseline_mse'][last] > 0
  plot = events['images/landmarks'][last]
  assert plot.shape[0] > 48 and plot.shape[1] > 48
  red = (plot[..., 0] > 150) & (plot[..., 1] < 100)  # predicted landmarks
  green = (plot[..., 1] > 120) & (plot[..., 0] < 100)  # target landmarks
  assert red.sum() > 50 and (red | green).sum() < 0.5 * red.size
  assert saved_input_position(workdir, last)['batches'] == last
  assert_beats_audio_free_predictors(*atnet_held_out_scores(workdir,
                                                            data_root))

  # The same command with more steps resumes: no re-init, the 2 new steps
  # only, and the input iterator continues from its saved position.
  log = run_train('configs/atnet.py:tiny', workdir, data_root, jax_cache,
                  *atnet_overrides(last + 2, log_every=1, eval_every=2))
  assert f'checkpoint: resuming from step {last}' in log
  assert 'initialising' not in log
  assert f'progress: step {last + 1}/{last + 2}' in log
  assert 'progress: step 1/' not in log
  events = read_events(workdir)
  assert sorted(events['train/loss']) == [half, last, last + 1, last + 2]
  assert sorted(events['eval/mse']) == [half, last, last + 2]
  assert saved_input_position(workdir, last + 2)['batches'] == last + 2


@pytest.mark.slow
def test_vgnet_tiny_trains_and_writes_image_grids(tmp_path, tiny_data,
                                                  jax_cache):
  workdir = tmp_path / 'vgnet'
  run_train('configs/vgnet.py:tiny', workdir, tiny_data, jax_cache)

  config = json.loads((workdir / 'config.json').read_text())
  assert config['stage'] == 'vgnet'
  assert config['model']['generator']['image_size'] == 32
  assert config['data']['image_size'] == 32
  assert (workdir / 'landmark_pca.npz').is_file()
  events = read_events(workdir)
  for tag in ('train/g_loss', 'train/d_loss', 'train/g_pixel',
              'train/g_grad_norm', 'train/d_grad_norm', 'eval/l1',
              'eval/ssim', 'eval/baseline_l1'):
    assert all(np.isfinite(v) for v in events[tag].values()), tag
  s, frames, clips = 32, 2, 2  # image size, summaries.num_frames, num_examples
  step = 2
  pair = events['images/real_vs_generated'][step]
  assert pair.shape == (2 * clips * (s + 2) + 2, frames * (s + 2) + 2, 3)
  for tag in ('images/attention', 'images/colour', 'images/landmark_attention',
              'images/landmarks'):
    assert events[tag][step].shape == (clips * (s + 2) + 2,
                                       frames * (s + 2) + 2, 3), tag
  # Row 1 is a real frame, row 2 the generated one: both show a face.
  real, fake = pair[2:2 + s, 2:2 + s], pair[4 + s:4 + 2 * s, 2:2 + s]
  assert real.std() > 10 and fake.std() > 3


@pytest.mark.slow
def test_train_from_another_directory_with_relative_and_home_paths(
    tmp_path, tiny_data, jax_cache, monkeypatch):
  """The config file under `~`, the workdir and the dataset relative to the
  current directory, all with spaces; the workdir then loads for inference
  by the same relative path."""
  home, cwd = tmp_path / 'home', tmp_path / 'my work'
  home.mkdir()
  cwd.mkdir()
  (home / 'hcmtfg src').symlink_to(REPO_ROOT, target_is_directory=True)
  (cwd / 'data sets').symlink_to(tiny_data, target_is_directory=True)
  env = dict(os.environ, XLA_FLAGS=conftest.xla_flags(),
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             JAX_COMPILATION_CACHE_DIR=str(jax_cache), HOME=str(home),
             PYTHONPATH=str(REPO_ROOT))
  proc = subprocess.run(
      [sys.executable, '-m', 'launch.train',
       '--config=~/hcmtfg src/configs/atnet.py:tiny', '--workdir=runs/at net',
       '--config.data.data_dir=data sets/tfds',
       '--config.data.download_dir=data sets/downloads'],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, (proc.stderr + proc.stdout)[-4000:]
  workdir = cwd / 'runs' / 'at net'
  assert (workdir / 'checkpoints' / '2').is_dir()
  assert json.loads((workdir / 'config.json').read_text())['stage'] == 'atnet'
  assert sorted(os.listdir(cwd)) == ['data sets', 'runs']  # no folder '~'
  from hcmtfg.weights import checkpoint_io  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(cwd)
  loaded = checkpoint_io.load_network('runs/at net', 'atnet')
  assert loaded.step == 2 and loaded.pca is not None


def test_workdir_check_fails_clearly_when_not_writable(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(InputError, match='not writable') as info:
    workdir_lib.check_writable(str(blocker / 'run'))
  assert str(blocker / 'run') in str(info.value)
  workdir_lib.check_writable(str(tmp_path / 'fresh' / 'run'))  # creates it
  assert (tmp_path / 'fresh' / 'run').is_dir()
  assert not os.listdir(tmp_path / 'fresh' / 'run')  # probe removed


def test_missing_dataset_says_how_to_build_it(tmp_path):
  from configs import vgnet  # pylint: disable=g-import-not-at-top
  config = vgnet.get_config('lrw')
  config.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(InputError, match='python -m data_pipelines.build '
                     '--dataset=lrw') as info:
    build.prepare_dataset(config.data)
  assert '--manual_dir=' in str(info.value)


def test_config_variants_build_and_override():
  from configs import atnet, vgnet  # pylint: disable=g-import-not-at-top
  for module in (atnet, vgnet):
    for variant in module.VARIANTS:
      config = module.get_config(variant)
      assert config.stage in ('atnet', 'vgnet')
      assert config.batch_size > 0 and config.num_train_steps > 0
    with pytest.raises(ValueError, match='unknown'):
      module.get_config('nope')
  lrw = vgnet.get_config('lrw')
  assert (lrw.batch_size, lrw.data.num_target_frames, lrw.image_size) == (
      10, 16, 128)
  assert (lrw.optim.learning_rate, lrw.optim.b1, lrw.optim.b2) == (
      2e-4, 0.5, 0.999)
  assert atnet.get_config('lrw').batch_size == 16
  # One image size drives the data and both networks.
  config = vgnet.get_config('synthetic')
  config.image_size = 96
  assert (config.data.image_size, config.model.generator.image_size,
          config.model.discriminator.image_size) == (96, 96, 96)


def _dry_run(script: str, *args: str) -> str:
  proc = subprocess.run(['bash', f'launch/{script}', '--dry_run', *args],
                        cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def test_tpu_train_dry_run_prints_the_gcloud_commands():
  out = _dry_run('tpu_train.sh', '--name=hcm-pod', '--zone=us-central2-b',
                 '--accelerator_type=v4-16', '--config=configs/vgnet.py:lrw',
                 '--workdir=gs://bucket/runs/vg', '--',
                 '--config.batch_size=16')
  lines = out.strip().splitlines()
  create = [l for l in lines if 'tpu-vm create hcm-pod' in l]
  assert create and '--accelerator-type=v4-16' in create[0]
  assert '--zone=us-central2-b' in create[0]
  assert any('tpu-vm scp' in l and '--worker=all' in l for l in lines)
  ssh = [l for l in lines if 'tpu-vm ssh hcm-pod' in l]
  assert len(ssh) == 3 and all('--worker=all' in l for l in ssh)
  assert 'launch/setup_env.sh' in ssh[1] and 'jax[tpu]==' in ssh[1]
  train = ssh[2]
  for part in ('python -m launch.train', '--config=configs/vgnet.py:lrw',
               '--workdir=gs://bucket/runs/vg', '--jax_distributed',
               '--config.batch_size=16'):
    assert part in train, part


def test_tpu_train_requires_name_and_workdir():
  proc = subprocess.run(['bash', 'launch/tpu_train.sh', '--dry_run',
                         '--zone=z', '--config=configs/atnet.py:lrw'],
                        cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=60, check=False)
  assert proc.returncode == 2 and '--name is required' in proc.stderr


def test_gpu_train_dry_run_starts_one_process_per_gpu_group():
  out = _dry_run('gpu_train.sh', '--config=configs/vgnet.py:lrw',
                 '--workdir=/tmp/w', '--gpus=0,1,2,3', '--num_processes=2',
                 '--port=23456')
  lines = out.strip().splitlines()
  assert len(lines) == 2
  for i, gpus in enumerate(('0,1', '2,3')):
    assert lines[i].startswith(f'CUDA_VISIBLE_DEVICES={gpus} ')
    assert '--coordinator_address=127.0.0.1:23456' in lines[i]
    assert f'--num_processes=2 --process_id={i}' in lines[i]
  single = _dry_run('gpu_train.sh', '--config=configs/atnet.py:lrw',
                    '--workdir=/tmp/w', '--gpus=0,1')
  assert single.startswith('CUDA_VISIBLE_DEVICES=0,1 python -m launch.train')
  assert '--coordinator_address' not in single
