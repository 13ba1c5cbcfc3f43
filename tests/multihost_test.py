"""Multi-host training: two processes on 127.0.0.1 train one model together.

Each process is `launch.train`'s main (flags --coordinator_address,
--num_processes, --process_id) with 2 fake CPU devices, so the mesh spans 4
devices of 2 "hosts"; each host reads its own half of the training split and
feeds its half of every global batch (CPU collectives: gloo). A small driver
wraps `hcmtfg.training.train` to dump the final parameters each process
holds: they must be bit-identical (a process that trained alone on its own
data would end elsewhere).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from data_pipelines import build

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLIPS = 10  # the tiny dataset shared with the other dataset tests

_DRIVER = textwrap.dedent('''
    import functools
    import sys

    from absl import app
    from flax import traverse_util
    import jax
    import numpy as np

    from hcmtfg import training
    from launch import train as launcher


    def train_and_dump(config, workdir, *, train, dump_path):
      state = train(config, workdir)
      params = jax.tree.map(np.asarray, jax.device_get(state.g.params))
      np.savez(dump_path, step=int(jax.device_get(state.step)),
               process_count=jax.process_count(),
               device_count=jax.device_count(),
               local_device_count=jax.local_device_count(),
               **traverse_util.flatten_dict(params, sep='/'))
      return state


    if __name__ == '__main__':
      training.train = functools.partial(
          train_and_dump, train=training.train, dump_path=sys.argv.pop(1))
      app.run(launcher.main)
''')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.getbasetemp() / 'hcmtfg_datasets'
  build.build_dataset('synthetic_talking_faces', root / 'tfds', config='tiny',
                      num_clips=NUM_CLIPS, download_dir=root / 'downloads')
  return root


@pytest.mark.slow
def test_two_processes_train_to_identical_parameters(tmp_path, tiny_data):
  driver = tmp_path / 'driver.py'
  driver.write_text(_DRIVER)
  workdir = tmp_path / 'workdir'
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join(
                 [str(REPO_ROOT)] + [p for p in os.environ.get(
                     'PYTHONPATH', '').split(os.pathsep) if p]))
  procs = []
  for i in range(2):
    cmd = [sys.executable, str(driver), str(tmp_path / f'params_{i}.npz'),
           '--config=configs/atnet.py:tiny', f'--workdir={workdir}',
           f'--config.data.data_dir={tiny_data / "tfds"}',
           # Validation has 1 clip: one host would get none. Evaluate on the
           # training split, which splits 4 + 4.
           '--config.data.eval_split=train',
           f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
           f'--process_id={i}']
    procs.append(subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  logs = []
  try:
    for proc in procs:
      logs.append(proc.communicate(timeout=240)[0])
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
    tails = [proc.communicate()[0][-3000:] for proc in procs]
    pytest.fail('the two processes did not finish in 240 s:\n'
                + '\n-----\n'.join(tails))
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]
  assert 'training atnet on 4 devices (2 processes)' in logs[0]

  dumps = [dict(np.load(tmp_path / f'params_{i}.npz')) for i in range(2)]
  for dump in dumps:
    assert int(dump.pop('step')) == 2
    assert int(dump.pop('process_count')) == 2
    assert int(dump.pop('device_count')) == 4
    assert int(dump.pop('local_device_count')) == 2
  assert dumps[0].keys() == dumps[1].keys() and len(dumps[0]) > 5
  for name, value in dumps[0].items():
    assert np.isfinite(value).all(), name
    np.testing.assert_array_equal(value, dumps[1][name], err_msg=name)
  # One checkpoint and one config for the job, written by process 0.
  assert (workdir / 'checkpoints' / '2').is_dir()
  assert json.loads((workdir / 'config.json').read_text())['stage'] == 'atnet'
  assert len(list((workdir / 'tensorboard').iterdir())) == 1
