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

import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import build
from hcmtfg import input_pipeline
from hcmtfg import landmarks as landmarks_lib
from hcmtfg import training
from hcmtfg import workdir as workdir_lib
from hcmtfg.errors import InputError

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
              cache: pathlib.Path, *overrides: str) -> str:
  """Runs the launcher; returns its log (stderr + stdout), failing on error."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             JAX_COMPILATION_CACHE_DIR=str(cache))
  cmd = [sys.executable, '-m', 'launch.train', f'--config={config}',
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


@pytest.mark.slow
def test_atnet_tiny_trains_writes_summaries_and_resumes(tmp_path, data_root,
                                                        jax_cache):
  workdir = tmp_path / 'atnet'
  log = run_train('configs/atnet.py:tiny', workdir, data_root, jax_cache)

  assert 'checkpoint: none found, initialising' in log
  assert 'progress: step 2/2 (100.0%)' in log and 'ETA' in log
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
  for tag in ('train/loss', 'train/grad_norm', 'train/learning_rate'):
    assert sorted(events[tag]) == [1, 2], tag
  assert np.isfinite([events['train/loss'][s] for s in (1, 2)]).all()
  assert events['train/learning_rate'][2] == pytest.approx(2e-4)
  # Rates need two writes: the first one only starts the clock.
  assert events['train/steps_per_sec'][2] > 0
  assert events['train/examples_per_sec'][2] == pytest.approx(
      8 * events['train/steps_per_sec'][2], rel=1e-5)
  assert {'eval/mse', 'eval/mae', 'eval/baseline_mse'} <= set(events)
  assert events['eval/baseline_mse'][2] > 0
  plot = events['images/landmarks'][2]
  assert plot.shape[0] > 48 and plot.shape[1] > 48
  red = (plot[..., 0] > 150) & (plot[..., 1] < 100)  # predicted landmarks
  green = (plot[..., 1] > 120) & (plot[..., 0] < 100)  # target landmarks
  assert red.sum() > 50 and (red | green).sum() < 0.5 * red.size
  assert saved_input_position(workdir, 2)['batches'] == 2

  # The same command with more steps resumes: no re-init, steps 3 and 4 only,
  # and the input iterator continues from its saved position.
  log = run_train('configs/atnet.py:tiny', workdir, data_root, jax_cache,
                  '--config.num_train_steps=4')
  assert 'checkpoint: resuming from step 2' in log
  assert 'initialising' not in log
  assert 'progress: step 3/4' in log and 'progress: step 1/' not in log
  events = read_events(workdir)
  assert sorted(events['train/loss']) == [1, 2, 3, 4]
  assert sorted(events['eval/mse']) == [2, 4]
  assert saved_input_position(workdir, 4)['batches'] == 4


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
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
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
  from hcmtfg import checkpoint_io  # pylint: disable=g-import-not-at-top
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
    training.prepare_dataset(config.data)
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
