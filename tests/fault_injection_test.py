"""Fault injection: kills, corruption, concurrent use and full disks.

Run alone with `pytest -m faults`. Processes are killed for real (SIGKILL) at
points chosen by a seeded random generator (HCMTFG_FAULT_SEED, default 0);
either from outside (a training step, a video being written) or by the child
itself at an exact point through `hcmtfg.runtime.faults` (the HCMTFG_FAULT
environment variable): before writing a checkpoint, between writing and
committing it, half-way through a dataset build. A full disk is simulated
with RLIMIT_FSIZE in the child (writes past the limit fail with EFBIG, as
ENOSPC on a full disk), since mounting a small file system needs privileges CI
does not have.

What each test covers (the issue's cases):
  1 kills during steps / checkpoint writes    test_training_survives_...
  2 corrupt latest checkpoint                 test_corrupt_..., and the e2e test
  3 two trainers on one workdir               test_workdir_lock_..., and e2e
  4 damaged TFRecord shard                    test_damaged_shard_...
  5 dataset build killed                      test_dataset_build_killed_...
  6 batch generation killed                   test_batch_generation_killed_...
  7 unwritable workdir / disk full            test_unwritable_..., and e2e
"""

import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import data_pipelines  # noqa: F401  (registers the builders)
from data_pipelines import build
from hcmtfg.data import input_pipeline
from hcmtfg.errors import InputError
from hcmtfg.train import checkpoints as checkpoints_lib
from hcmtfg.train import locking
from hcmtfg.train import workdir as workdir_lib

pytestmark = pytest.mark.faults

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLIPS = 10  # as the other dataset tests: one shared build per session
SEED = int(os.environ.get('HCMTFG_FAULT_SEED', '0'))
NUM_STEPS = 12
CHECKPOINT_EVERY = 3
SCHEDULE = [1] + list(range(CHECKPOINT_EVERY, NUM_STEPS + 1, CHECKPOINT_EVERY))


def _env(**extra: str) -> dict[str, str]:
  """A child's environment: 8 CPU devices, no inherited fault, `extra`."""
  env = {k: v for k, v in os.environ.items() if k != 'HCMTFG_FAULT'}
  env.update(XLA_FLAGS=conftest.xla_flags(), JAX_PLATFORMS='cpu',
             TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(REPO_ROOT), **extra)
  return env


@pytest.fixture(scope='session')
def data_root(tmp_path_factory) -> pathlib.Path:
  """Where the shared tiny dataset lives (root/tfds, corpus in root/downloads)."""
  return tmp_path_factory.getbasetemp() / 'hcmtfg_datasets'


@pytest.fixture(scope='session')
def tiny_data(data_root) -> tfds.core.DatasetBuilder:
  """The shared tiny dataset, built if no earlier test built it."""
  return build.build_dataset('synthetic_talking_faces', data_root / 'tfds',
                             config='tiny', num_clips=NUM_CLIPS,
                             download_dir=data_root / 'downloads')


# ----------------------------------------------------------------------------
# Checkpoints: corruption (case 2), failed writes.
# ----------------------------------------------------------------------------


def _tiny_init():
  return {'w': jnp.arange(4000, dtype=jnp.float32), 'b': jnp.ones((7,))}


def _save_steps(directory, steps) -> None:
  ckpt = checkpoints_lib.Checkpointer(directory, save_interval_steps=1,
                                    max_to_keep=None)
  state = _tiny_init()
  for step in steps:
    state = jax.tree.map(lambda x: x + 1, state)
    ckpt.save(step, state, {'batches': step})
  ckpt.close()


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / 'state').rglob('*')
           if p.is_file() and p.parent.name == 'd']
  return max(files, key=lambda p: p.stat().st_size)


def _flip_bytes(path: pathlib.Path, count: int = 4) -> None:
  data = bytearray(path.read_bytes())
  for i in range(count):
    data[len(data) // 2 + 97 * i] ^= 0xFF
  path.write_bytes(bytes(data))


@pytest.mark.parametrize('damage', ['flip', 'truncate', 'delete'])
def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog,
                                                          damage):
  _save_steps(tmp_path / 'ckpt', [1, 2, 3])
  victim = _largest_array_file(tmp_path / 'ckpt' / '3')
  if damage == 'flip':  # Orbax itself restores flipped bytes silently.
    _flip_bytes(victim)
  elif damage == 'truncate':
    victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 3])
  else:
    victim.unlink()
  ckpt = checkpoints_lib.Checkpointer(tmp_path / 'ckpt', save_interval_steps=1)
  with caplog.at_level('WARNING'):
    state, position = checkpoints_lib.restore_or_init(ckpt, _tiny_init)
  assert position == {'batches': 2}
  np.testing.assert_array_equal(state['w'], np.arange(4000) + 2)
  assert f'step 3 ({tmp_path / "ckpt" / "3"}) cannot be restored' in caplog.text
  assert victim.name in caplog.text and 'falling back to step 2' in caplog.text
  # Set aside (not deleted), so that step 3 can be saved again.
  assert ckpt.all_steps() == [1, 2]
  aside = list((tmp_path / 'ckpt.corrupt').iterdir())
  assert len(aside) == 1 and aside[0].name.startswith('3-')
  assert ckpt.save(3, state, {'batches': 3})
  ckpt.close()


def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  _save_steps(tmp_path / 'ckpt', [1, 2])
  for step in (1, 2):
    _flip_bytes(_largest_array_file(tmp_path / 'ckpt' / str(step)))
  ckpt = checkpoints_lib.Checkpointer(tmp_path / 'ckpt')
  with pytest.raises(checkpoints_lib.CheckpointError,
                     match=r'(?s)no checkpoint in .* can be restored.*step 2: '
                     r'.*SHA-256 mismatch.*step 1: .*Refusing to start from '
                     r'scratch'):
    checkpoints_lib.restore_or_init(ckpt, _tiny_init)
  assert ckpt.all_steps() == [1, 2]  # Nothing moved when nothing restores.
  ckpt.close()


def test_checkpoints_carry_a_manifest_of_every_file(tmp_path):
  _save_steps(tmp_path, [5])
  manifest = json.loads((tmp_path / '5' / checkpoints_lib.MANIFEST_FILE
                         ).read_text())
  listed = set(manifest['files'])
  on_disk = {str(p.relative_to(tmp_path / '5'))
             for p in (tmp_path / '5').rglob('*') if p.is_file()}
  assert listed and listed <= on_disk
  assert {p for p in on_disk - listed
          if os.path.basename(p) not in ('_CHECKPOINT_METADATA',
                                         'commit_success.txt',
                                         checkpoints_lib.MANIFEST_FILE)} == set()
  assert checkpoints_lib.verify_manifest(tmp_path / '5')


# ----------------------------------------------------------------------------
# The workdir: lock (case 3), writability and space (case 7).
# ----------------------------------------------------------------------------

_HOLD_LOCK = '''
import sys, time
from hcmtfg.train import locking
locking.WorkdirLock(sys.argv[1]).acquire()
print('locked', flush=True)
time.sleep(300)
'''


def test_workdir_lock_refuses_a_second_holder_until_the_first_dies(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', _HOLD_LOCK, str(tmp_path)],
                            env=_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(locking.WorkdirLockedError,
                       match=rf'another trainer is using this workdir \(pid '
                       rf'{holder.pid} on host .*, running since') as info:
      locking.lock_workdir(str(tmp_path))
    assert isinstance(info.value, InputError)
    assert info.value.path == str(tmp_path)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  lock = locking.lock_workdir(str(tmp_path))  # Not stuck after a SIGKILL.
  assert lock.held
  assert json.loads((tmp_path / locking.LOCK_FILE).read_text())['pid'] == (
      os.getpid())
  lock.release()
  assert locking.lock_workdir('gs://bucket/run') is None  # no flock there
  assert locking.lock_workdir(str(tmp_path), process_index=1) is None


def test_unwritable_workdir_or_full_disk_fails_before_training(tmp_path,
                                                               monkeypatch):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  with pytest.raises(InputError, match='workdir is not writable'):
    workdir_lib.check_writable(str(blocker / 'run'))
  workdir_lib.check_free_space(str(tmp_path), 1 << 20)  # room for 1 MiB
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(shutil, 'disk_usage', lambda _: usage._replace(
      free=100 << 20))
  with pytest.raises(InputError, match=r'only 100 MiB free.*a checkpoint of '
                     r'this vgnet state takes about 300 MiB') as info:
    workdir_lib.check_free_space(str(tmp_path), 300 << 20,
                                 'a checkpoint of this vgnet state')
  assert info.value.path == str(tmp_path)


# ----------------------------------------------------------------------------
# Damaged TFRecord shards (case 4).
# ----------------------------------------------------------------------------


def _copy_dataset(builder, root: pathlib.Path, num_shards: int):
  """A copy of the built dataset whose train split is split into shards."""
  source = pathlib.Path(os.fspath(builder.data_dir))
  target = root / source.relative_to(source.parents[2])
  shutil.copytree(source, target)
  info_path = target / 'dataset_info.json'
  info = json.loads(info_path.read_text())
  train = next(s for s in info['splits'] if s['name'] == 'train')
  old = target / 'synthetic_talking_faces-train.tfrecord-00000-of-00001'
  records = list(tf.data.TFRecordDataset(str(old)).as_numpy_iterator())
  old.unlink()
  parts = np.array_split(np.arange(len(records)), num_shards)
  for i, part in enumerate(parts):
    name = (f'synthetic_talking_faces-train.tfrecord-{i:05d}-of-'
            f'{num_shards:05d}')
    with tf.io.TFRecordWriter(str(target / name)) as writer:
      for j in part:
        writer.write(records[j])
  train['shardLengths'] = [str(len(p)) for p in parts]
  info_path.write_text(json.dumps(info))
  copy = tfds.builder('synthetic_talking_faces', config='tiny',
                      data_dir=str(root))
  return copy, target, [len(p) for p in parts]


def test_damaged_shard_is_named_or_skipped_with_a_count(tiny_data, tmp_path,
                                                        caplog):
  builder, folder, lengths = _copy_dataset(tiny_data, tmp_path, 2)
  shard = folder / 'synthetic_talking_faces-train.tfrecord-00001-of-00002'
  intact = {ex['clip_id'] for ex in tfds.as_numpy(builder.as_dataset(
      split='train[:4]', decoders=tfds.decode.PartialDecoding(
          {'clip_id': True})))}
  _flip_bytes(shard)
  args = dict(global_batch_size=2, num_target_frames=4, image_size=32,
              process_index=0, process_count=1, shuffle_buffer=4)
  for view in ('atnet', 'vgnet'):
    iterator = input_pipeline.make_train_iterator(builder, view, **args)
    with pytest.raises(InputError, match='damaged TFRecord shard') as info:
      for _ in range(8):
        next(iterator)
    assert info.value.path == str(shard), view
    assert 'skip_corrupt_shards' in str(info.value)
  with pytest.raises(InputError, match='damaged TFRecord shard'):
    list(input_pipeline.make_eval_data(builder, 'atnet', split='train',
                                       global_batch_size=2,
                                       num_target_frames=4))

  with caplog.at_level('WARNING'):
    iterator = input_pipeline.make_train_iterator(
        builder, 'atnet', with_ids=True, skip_corrupt_shards=True, **args)
    seen = {clip for _ in range(6) for clip in next(iterator)['clip_id']}
  assert seen == intact  # Only the intact shard's clips, over and over.
  assert (f'skipping damaged TFRecord shard {shard}' in caplog.text
          and f'{lengths[1]} records lost' in caplog.text)
  assert iterator.num_host_examples == lengths[0]
  position = iterator.get_state()
  assert position['batches'] == 6

  # A truncated shard: the same, through the eval view.
  truncated = folder / 'synthetic_talking_faces-train.tfrecord-00000-of-00002'
  truncated.write_bytes(truncated.read_bytes()[:-1000])
  with pytest.raises(InputError, match=r'damaged TFRecord shard \(truncated'):
    list(input_pipeline.make_eval_data(builder, 'atnet', split='train',
                                       global_batch_size=2,
                                       num_target_frames=4))


# ----------------------------------------------------------------------------
# Training killed at random points (cases 1, 2, 3 and 7 end to end).
# ----------------------------------------------------------------------------


def _train_cmd(workdir: pathlib.Path, data_root: pathlib.Path) -> list[str]:
  return [sys.executable, '-m', 'launch.train',
          '--config=configs/atnet.py:tiny', f'--workdir={workdir}',
          f'--config.data.data_dir={data_root / "tfds"}',
          f'--config.data.download_dir={data_root / "downloads"}',
          f'--config.num_train_steps={NUM_STEPS}',
          f'--config.checkpoint_every_steps={CHECKPOINT_EVERY}',
          '--config.keep_checkpoints=20', '--config.eval_every_steps=0']


class _Trainer:
  """One launcher process, its output collected by a thread.

  Through a pipe, not a file: a child under RLIMIT_FSIZE could not write a
  log file past the limit.
  """

  def __init__(self, workdir, data_root, cache, fault: str | None = None):
    # Cache every compilation, even the small ones of Orbax's first save.
    extra = {'JAX_COMPILATION_CACHE_DIR': str(cache),
             'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
    if fault:
      extra['HCMTFG_FAULT'] = fault
    self.proc = subprocess.Popen(_train_cmd(workdir, data_root),
                                 cwd=REPO_ROOT, env=_env(**extra),
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self._lines = []
    self._reader = threading.Thread(target=lambda: self._lines.extend(
        self.proc.stdout), daemon=True)
    self._reader.start()

  @property
  def log(self) -> str:
    return ''.join(self._lines)

  def wait(self, timeout: float = 300) -> tuple[int, str]:
    code = self.proc.wait(timeout)
    self._reader.join(timeout)
    return code, self.log

  def wait_for(self, text: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in self.log:
      assert self.proc.poll() is None, self.log[-3000:]
      assert time.monotonic() < deadline, f'no {text!r} in time'
      time.sleep(0.2)


def _committed(workdir: pathlib.Path) -> list[int]:
  folder = workdir / 'checkpoints'
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _final_params(workdir: pathlib.Path) -> dict:
  path = workdir / 'checkpoints' / str(NUM_STEPS) / 'state'
  with ocp.StandardCheckpointer() as checkpointer:
    return jax.tree.map(np.asarray, checkpointer.restore(path))


def _resumed_from(log: str) -> int | None:
  found = re.findall(r'checkpoint: resuming from step (\d+)', log)
  return int(found[-1]) if found else None


@pytest.mark.slow
def test_training_survives_kills_corruption_a_second_trainer_and_full_disk(
    tiny_data, data_root, tmp_path):
  del tiny_data  # built
  cache = tmp_path / 'jax_cache'
  rng = random.Random(SEED)
  # The uninterrupted run, with the same checkpoint schedule, alongside.
  reference = _Trainer(tmp_path / 'reference', data_root, cache)
  workdir = tmp_path / 'run'
  events = []

  # Kill 1, and case 3: while a trainer is paused before saving step n (the
  # steps before it trained and saved), a second trainer on the same workdir
  # is refused, naming the first; the first one, SIGKILLed from outside,
  # leaves no stuck lock (the next runs start).
  n = rng.choice(SCHEDULE[1:3])
  first = _Trainer(workdir, data_root, cache, f'pause:ckpt_save@{n}')
  first.wait_for(f'HCMTFG_FAULT: pause at ckpt_save@{n}')
  from configs import atnet  # pylint: disable=g-import-not-at-top
  from hcmtfg.train import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  config = atnet.get_config('tiny')
  config.data.data_dir = str(data_root / 'tfds')
  with pytest.raises(locking.WorkdirLockedError,
                     match=rf'another trainer is using this workdir \(pid '
                     rf'{first.proc.pid} on host '):
    trainer_lib.train(config, workdir, build.prepare_dataset(config.data))
  first.proc.send_signal(signal.SIGKILL)
  assert first.wait()[0] == -signal.SIGKILL
  events.append(f'external SIGKILL paused before saving step {n}')

  # Kills 2-5: while training (from outside, once step n is logged), before a
  # save, between writing and committing.
  kinds = ['training', 'ckpt_commit', 'ckpt_commit', 'ckpt_save']
  rng.shuffle(kinds)
  for kind in kinds:
    done = max(_committed(workdir), default=0)
    ahead = [s for s in SCHEDULE if s > done][:2]  # the next two saves
    if kind == 'training':
      # Killed after step n, before the save that follows it (the trainer
      # waits there at the latest), wherever the steps have got to by then.
      n = rng.randint(done + 1, min(ahead[-1], NUM_STEPS - 1))
      then = min(s for s in SCHEDULE if s > n)
      trainer = _Trainer(workdir, data_root, cache, f'pause:ckpt_save@{then}')
      trainer.wait_for(f'step {n}: train/')
      trainer.proc.send_signal(signal.SIGKILL)
      code, log = trainer.wait()
    else:
      n = rng.choice(ahead)
      code, log = _Trainer(workdir, data_root, cache,
                           f'kill:{kind}@{n}').wait()
    assert code == -signal.SIGKILL, log[-3000:]
    assert _resumed_from(log) == (done or None)  # the newest complete one
    if kind != 'training':
      assert n not in _committed(workdir)
      events.append(f'SIGKILL at {kind}@{n}')
    else:
      events.append(f'external SIGKILL after step {n}')
    if kind == 'ckpt_commit':  # written, never committed: not under `n`
      assert list((workdir / 'checkpoints').glob(f'{n}.orbax-checkpoint-tmp*'))

  # Case 7: the disk fills up while a checkpoint is written (RLIMIT_FSIZE).
  done = max(_committed(workdir), default=0)
  n = [s for s in SCHEDULE if s > done][:2][-1]  # one more commit before
  code, log = _Trainer(workdir, data_root, cache,
                       f'fsize=20000:ckpt_save@{n}').wait()
  assert code == 1, log[-3000:]
  assert re.search(rf'error: saving checkpoint step {n} to .* failed, so that '
                   r'step was not committed \(is the disk full', log), (
                       log[-3000:])
  assert 'File too large' in log
  assert n not in _committed(workdir)
  events.append(f'disk full while saving step {n}')

  # Case 2: the newest checkpoint is corrupted; the restart says so, falls
  # back to the one before and still ends with the reference's parameters.
  steps = _committed(workdir)
  assert len(steps) >= 2, (steps, events)
  _flip_bytes(_largest_array_file(workdir / 'checkpoints' / str(steps[-1])))
  code, log = _Trainer(workdir, data_root, cache).wait()
  assert code == 0, log[-3000:]
  assert (f'step {steps[-1]} ({workdir / "checkpoints" / str(steps[-1])}) '
          'cannot be restored: CorruptCheckpointError') in log
  assert _resumed_from(log) == steps[-2]
  assert list((workdir.parent / 'run' / 'checkpoints.corrupt').iterdir())
  assert _committed(workdir) == SCHEDULE
  assert not list((workdir / 'checkpoints').glob('*tmp*'))  # cleaned up

  code, log = reference.wait()
  assert code == 0, log[-3000:]
  assert _committed(tmp_path / 'reference') == SCHEDULE
  # Bit for bit: XLA on CPU is deterministic for the same program.
  jax.tree.map(np.testing.assert_array_equal, _final_params(workdir),
               _final_params(tmp_path / 'reference'))
  print('events:', events)


# ----------------------------------------------------------------------------
# Dataset build killed (case 5).
# ----------------------------------------------------------------------------


def _examples(builder) -> dict[str, list[dict]]:
  out = {}
  for split in builder.info.splits:
    ds = builder.as_dataset(split=split,
                            decoders={'frames': tfds.decode.SkipDecoding()})
    out[split] = sorted(tfds.as_numpy(ds), key=lambda ex: ex['clip_id'])
  return out


@pytest.mark.slow
def test_dataset_build_killed_midway_then_rerun_equals_clean_build(
    tiny_data, data_root, tmp_path):
  n = random.Random(SEED).randint(1, 7)  # of 10 clips
  cmd = [sys.executable, '-m', 'data_pipelines.build',
         '--dataset=synthetic_talking_faces', '--config=tiny',
         f'--num_clips={NUM_CLIPS}', f'--data_dir={tmp_path / "tfds"}',
         f'--download_dir={data_root / "downloads"}']
  proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                        env=_env(HCMTFG_FAULT=f'kill:build_clip@{n}'),
                        timeout=300, check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  config_dir = tmp_path / 'tfds' / 'synthetic_talking_faces' / 'tiny'
  assert not (config_dir / '1.0.0').exists()  # nothing looks complete
  rebuilt = build.build_dataset(
      'synthetic_talking_faces', tmp_path / 'tfds', config='tiny',
      num_clips=NUM_CLIPS, download_dir=data_root / 'downloads')
  assert rebuilt.is_prepared()
  assert not list(config_dir.glob('incomplete*'))  # the killed build's litter
  clean, again = _examples(tiny_data), _examples(rebuilt)
  assert {k: len(v) for k, v in clean.items()} == {
      k: len(v) for k, v in again.items()}
  for split in clean:
    for x, y in zip(clean[split], again[split]):
      assert sorted(x) == sorted(y)
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)
  for name in ('landmark_pca.npz',):
    a = np.load(os.path.join(os.fspath(tiny_data.data_dir), name))
    b = np.load(os.path.join(os.fspath(rebuilt.data_dir), name))
    for key in a.files:
      np.testing.assert_array_equal(a[key], b[key])


# ----------------------------------------------------------------------------
# Batch generation killed (case 6).
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def generation_setup(tmp_path_factory, shared_data):
  """Tiny random AT-net/VG-net workdirs and a 3-row pairs CSV."""
  import soundfile  # pylint: disable=g-import-not-at-top
  from hcmtfg.features import landmarks as landmarks_lib  # pylint: disable=g-import-not-at-top
  from hcmtfg import models  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO_ROOT / 'tests'))
  import generate_test  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('generation')
  atnet = models.ATNet.from_config(generate_test.ATNET)
  vgnet = models.VGNet.from_config(generate_test.VGNET)
  pca = landmarks_lib.load_release_pca(shared_data / 'atvgnet_basics')
  generate_test.write_training_workdir(
      root / 'atnet', 'atnet', generate_test.random_variables(atnet, 0),
      {'seed': 0, 'model': generate_test.ATNET}, pca)
  generate_test.write_training_workdir(
      root / 'vgnet', 'vgnet', generate_test.random_variables(vgnet, 1),
      {'seed': 0, 'model': {'generator': generate_test.VGNET,
                            'discriminator': {}}})
  speech, rate = soundfile.read(shared_data / 'speech' / 'test.wav',
                                dtype='float32')
  soundfile.write(root / 'speech.wav', speech[:rate], rate)
  rows = ['image,audio,output'] + [
      f'{shared_data / "faces" / face},speech.wav,out/{name}.mp4'
      for face, name in (('obama.jpg', 'a'), ('test1.jpg', 'b'),
                         ('obama.jpg', 'c'))]
  (root / 'pairs.csv').write_text('\n'.join(rows) + '\n')
  return root


@pytest.mark.slow
def test_batch_generation_killed_then_rerun_skips_finished_videos(
    generation_setup, capsys):
  from hcmtfg.media import video as video_lib  # pylint: disable=g-import-not-at-top
  from hcmtfg.inference import batch_generate as cli  # pylint: disable=g-import-not-at-top
  root = generation_setup
  out = root / 'out'
  n = random.Random(SEED).randint(2, 3)  # killed while writing video n
  cmd = [sys.executable, '-m', 'launch.generate', f'--pairs={root}/pairs.csv',
         f'--atnet_workdir={root}/atnet', f'--vgnet_workdir={root}/vgnet',
         '--chunk_frames=8']
  # Killed from outside, as a user's ^\ or the OOM killer would: as soon as
  # video n's hidden partial file has content.
  stem = 'abc'[n - 1]
  with subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env=_env()) as proc:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
      if any(p.stat().st_size > 0 for p in out.glob(f'.{stem}.*partial*')):
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.005)
    _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
  finished = sorted(p.name for p in out.glob('[!.]*.mp4'))
  assert finished == ['a.mp4', 'b.mp4'][:n - 1]
  for name in finished:  # nothing truncated under a final name
    info = video_lib.probe(out / name)
    assert info.has_video and info.has_audio
  assert len(list(out.glob('.*.partial.mp4'))) == 1  # the killed write
  mtimes = {name: (out / name).stat().st_mtime_ns for name in finished}

  options = cli.Options(atnet_workdir=str(root / 'atnet'),
                        vgnet_workdir=str(root / 'vgnet'),
                        pairs=str(root / 'pairs.csv'), chunk_frames=8,
                        progress=False)
  assert cli.run(options) == 0
  err = capsys.readouterr().err
  assert f'{4 - n} generated, {n - 1} already done, 0 failed' in err
  assert {name: (out / name).stat().st_mtime_ns for name in finished} == mtimes
  assert sorted(p.name for p in out.iterdir()) == ['a.mp4', 'b.mp4', 'c.mp4']
  for name in ('a.mp4', 'b.mp4', 'c.mp4'):
    info = video_lib.probe(out / name)
    assert info.has_video and info.has_audio
    assert abs(info.duration - 1.0) < 0.1
