r"""Trains AT-net or VG-net (the stage is chosen by the config).

  python -m launch.train --config=configs/atnet.py:synthetic --workdir=/tmp/atnet
  python -m launch.train --config=configs/vgnet.py:synthetic --workdir=/tmp/vgnet \
      --config.optim.learning_rate=1e-4

Running the same command again resumes from the newest checkpoint in the
workdir (a corrupt newest checkpoint is reported and the previous one used). A
second trainer on the same workdir is refused while the first one lives. The
workdir receives checkpoints/, tensorboard/ (view with
`tensorboard --logdir=WORKDIR`), config.json and landmark_pca.npz. Config
variants and their commands are in the docstrings of configs/atnet.py and
configs/vgnet.py. The config file, the workdir and the config's data paths
may be relative to the current directory or start with `~`; the workdir may
be a gs:// URL.

The dataset of `config.data` is prepared here (a missing synthetic corpus is
built first: `data_pipelines.build.prepare_dataset`) and handed to the trainer,
`hcmtfg.train.trainer.train`.

Several processes (hosts): on a Cloud TPU VM slice or under Slurm/Open MPI the
processes find each other automatically (`--jax_distributed` forces or, with
`--nojax_distributed`, disables that); elsewhere give every process
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`
(launch/gpu_train.sh does so for several processes on one machine).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from data_pipelines import build
from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.runtime import compile_cache
from hcmtfg.runtime import sharding
from hcmtfg.train import checkpoints as checkpoints_lib
from hcmtfg.train import summaries
from hcmtfg.train import trainer as trainer_lib
from hcmtfg.train import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config, e.g. configs/vgnet.py:synthetic.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Output directory (local path or gs://bucket/path).')
_JAX_DISTRIBUTED = flags.DEFINE_bool(
    'jax_distributed', None, 'Start jax.distributed (multi-host). Default: '
    'only when the environment describes a multi-process job (TPU pod slice, '
    'Slurm, Open MPI, JAX_COORDINATOR_ADDRESS) or --coordinator_address is '
    'given.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0, for multi-process '
    'runs outside auto-detected clusters.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes (with --coordinator_address).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process, 0..num_processes-1 (with '
    '--coordinator_address).')
_CACHE = compile_cache.define_flag()


def expand_config_path(argv: list[str]) -> list[str]:
  """`argv` with `~` expanded in `--config=~/...:VARIANT`.

  The shell expands `~` at the start of a word only, and config_flags loads
  the file as given.
  """
  prefix = '--config='
  return [prefix + os.path.expanduser(arg[len(prefix):])
          if arg.startswith(prefix + '~') else arg for arg in argv]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  summaries.quiet_library_logs()
  if _COORDINATOR.value and _JAX_DISTRIBUTED.value is not False:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  else:
    sharding.initialize_distributed(_JAX_DISTRIBUTED.value)
  compile_cache.enable(_CACHE.value)
  logging.info('process %d of %d, %d local devices', jax.process_index(),
               jax.process_count(), jax.local_device_count())
  try:
    config, workdir = _CONFIG.value, paths.user_path(_WORKDIR.value)
    workdir_lib.check_writable(workdir)  # before a dataset build, which is long
    builder = build.prepare_dataset(config.data)  # built here if missing
    trainer_lib.train(config, workdir, builder)
  except (InputError, checkpoints_lib.CheckpointError) as e:
    # Bad input, a second trainer on the workdir, no restorable checkpoint,
    # a failed save (disk full): one clear line, exit code 1.
    raise SystemExit(f'error: {e}') from e


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  sys.argv = expand_config_path(sys.argv)  # config_flags reads sys.argv too
  app.run(main)
