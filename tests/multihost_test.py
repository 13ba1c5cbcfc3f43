"""Multi-host training: two processes on 127.0.0.1 train one model together.

Each process is `launch.train`'s main (flags --coordinator_address,
--num_processes, --process_id) with 2 fake CPU devices, so the mesh spans 4
devices of 2 "hosts"; each host reads its own half of the training split and
feeds its half of every global batch (CPU collectives: gloo). A small driver
wraps `hcmtfg.train.trainer.train` to dump the final parameters each process
holds: they must be bit-identical, and differ from those of a control run,
one process training alone on process 0's data (the driver's --read_part
makes every process read a given part of the split).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import conftest
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
    import tensorflow_datasets as tfds

    from hcmtfg.data import input_pipeline
    from hcmtfg.train import trainer
    from launch import train as launcher


    def read_part(split, process_index, process_count, *, part):
      """Every process reads part (index, count) of the split."""
      del process_index, process_count
      return tfds.even_splits(split, n=part[1])[part[0]]


    def train_and_dump(config, workdir, *args, train, dump_path):
      state = train(config, workdir, *args)
      params = jax.tree.map(np.asarray, jax.device_get(state.g.params))
      np.savez(dump_path, step=int(jax.device_get(state.step)),
               process_count=jax.process_count(),
               device_count=jax.device_count(),
               local_device_count=jax.local_device_count(),
               **traverse_util.flatten_dict(params, sep='/'))
      return state


    if __name__ == '__main__':
      trainer.train = functools.partial(
          train_and_dump, train=trainer.train, dump_path=sys.argv.pop(1))
      if sys.argv[1].startswith('--read_part='):  # INDEX/COUNT
        index, count = sys.argv.pop(1).partition('=')[2].split('/')
        input_pipeline.host_split = functools.partial(
            read_part, part=(int(index), int(count)))
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


def _load_dump(path: pathlib.Path
               ) -> tuple[dict[str, int], dict[str, np.ndarray]]:
  """(run facts, flattened parameters) from a driver's dump."""
  dump = dict(np.load(path))
  facts = {k: int(dump.pop(k)) for k in ('step', 'process_count',
                                         'device_count', 'local_device_count')}
  return facts, dump


def fraction_moved(params_a, params_b, learning_rate: float) -> float:
  """The fraction of parameter entries that differ by more than lr / 10.

  Two steps of Adam move each entry by up to ~2 lr whatever its gradient, so
  training on other data moves most of them by about lr, while float
  rounding (e.g. another reduction order) moves a few, whose gradients are
  noise.
  """
  moved = sum(int((np.abs(a - params_b[k]) > learning_rate / 10).sum())
              for k, a in params_a.items())
  return moved / sum(v.size for v in params_a.values())


@pytest.mark.slow
def test_two_processes_train_to_identical_parameters(tmp_path, tiny_data):
  """Two hosts train one model; a host alone on its data ends elsewhere.

  The control runs at the same time: one process with 2 devices, half the
  global batch and process 0's half of the split (`--read_part=0/2`), i.e.
  what process 0 computes if the hosts do not combine their data. Mutation
  tried: both processes of the job read part 0/2 (the same data); the job
  then ends where the control does and the test fails: "the two-host job
  ends where process 0 alone does: 0.0% of the parameters moved".
  """
  driver = tmp_path / 'driver.py'
  driver.write_text(_DRIVER)
  workdir = tmp_path / 'workdir'
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS=conftest.xla_flags(2),
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join(
                 [str(REPO_ROOT)] + [p for p in os.environ.get(
                     'PYTHONPATH', '').split(os.pathsep) if p]))
  common = ['--config=configs/atnet.py:tiny',
            f'--config.data.data_dir={tiny_data / "tfds"}',
            # Validation has 1 clip: one host would get none. Evaluate on the
            # training split, which splits 4 + 4.
            '--config.data.eval_split=train']
  commands = {
      f'process {i}': [
          str(tmp_path / f'params_{i}.npz'), *common, f'--workdir={workdir}',
          f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
          f'--process_id={i}'] for i in range(2)}
  commands['control'] = [
      str(tmp_path / 'params_control.npz'), '--read_part=0/2', *common,
      f'--workdir={tmp_path / "control"}', '--config.batch_size=4']
  procs = {name: subprocess.Popen(
      [sys.executable, str(driver), *args], cwd=REPO_ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for name, args in commands.items()}
  logs = {}
  try:
    for name, proc in procs.items():
      logs[name] = proc.communicate(timeout=240)[0]
  except subprocess.TimeoutExpired:
    for proc in procs.values():
      proc.kill()
    tails = [f'{name}:\n{proc.communicate()[0][-3000:]}'
             for name, proc in procs.items()]
    pytest.fail('the processes did not finish in 240 s:\n'
                + '\n-----\n'.join(tails))
  for name, proc in procs.items():
    assert proc.returncode == 0, f'{name}:\n{logs[name][-4000:]}'
  assert 'training atnet on 4 devices (2 processes)' in logs['process 0']
  assert 'training atnet on 2 devices (1 processes)' in logs['control']

  dumps = []
  for i in range(2):
    facts, params = _load_dump(tmp_path / f'params_{i}.npz')
    assert facts == dict(step=2, process_count=2, device_count=4,
                         local_device_count=2)
    dumps.append(params)
  assert dumps[0].keys() == dumps[1].keys() and len(dumps[0]) > 5
  for name, value in dumps[0].items():
    assert np.isfinite(value).all(), name
    np.testing.assert_array_equal(value, dumps[1][name], err_msg=name)
  # One checkpoint and one config for the job, written by process 0.
  assert (workdir / 'checkpoints' / '2').is_dir()
  config = json.loads((workdir / 'config.json').read_text())
  assert config['stage'] == 'atnet'
  assert len(list((workdir / 'tensorboard').iterdir())) == 1

  facts, control = _load_dump(tmp_path / 'params_control.npz')
  assert facts == dict(step=2, process_count=1, device_count=2,
                       local_device_count=2)
  moved = fraction_moved(dumps[0], control, config['optim']['learning_rate'])
  assert moved > 0.2, ('the two-host job ends where process 0 alone does: '
                       f'{moved:.1%} of the parameters moved')
