"""Device mesh and data-parallel shardings (one mesh axis, 'data').

Training is pure data parallelism: parameters, batch statistics and optimiser
states are replicated, every batch is split along its leading axis over all
devices of all hosts. Each host feeds only its own slice of the global batch
(`host_local_to_global`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = 'data'

# Environment variables that mean "this process is one of several" on the
# clusters jax.distributed knows how to auto-detect (Cloud TPU pods, Slurm,
# Open MPI, or an explicit coordinator).
_CLUSTER_ENV_VARS = ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES',
                     'MEGASCALE_COORDINATOR_ADDRESS', 'SLURM_NTASKS',
                     'OMPI_COMM_WORLD_SIZE')


def _looks_multi_process() -> bool:
  """True if the environment describes a multi-process job."""
  for name in _CLUSTER_ENV_VARS:
    value = os.environ.get(name)
    if not value:
      continue
    if name == 'TPU_WORKER_HOSTNAMES':
      if len(value.split(',')) > 1:
        return True
    elif name in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
      if value.isdigit() and int(value) > 1:
        return True
    else:
      return True
  return False


def initialize_distributed(flag: bool | None = None) -> bool:
  """Starts jax.distributed for multi-host training when needed.

  Must run before anything touches a JAX backend (before `jax.devices()`).

  Args:
    flag: True forces `jax.distributed.initialize()` (cluster settings are then
      auto-detected, or read from JAX_COORDINATOR_ADDRESS etc.); False never
      initialises; None (auto) initialises when the environment describes a
      multi-process job (TPU pod, Slurm, Open MPI, explicit coordinator).

  Returns:
    Whether jax.distributed is initialised after the call.
  """
  if jax.distributed.is_initialized():
    return True
  wanted = _looks_multi_process() if flag is None else flag
  if wanted:
    jax.distributed.initialize()
    logging.info('jax.distributed: process %d of %d, %d local / %d devices',
                 jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
  return bool(wanted)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over all devices of all hosts.

  Args:
    devices: the devices to use; default `jax.devices()` (global).

  Returns:
    Mesh of shape (num_devices,) and axis name 'data'.
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', the other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the full array."""
  return NamedSharding(mesh, P())


def host_local_to_global(batch: Mapping[str, Any],
                         mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each host's numpy batch into global arrays sharded over 'data'.

  Args:
    batch: dict of host-local arrays, each (B_local, ...), where B_local is this
      host's share of the global batch and divisible by its local device count.
    mesh: the mesh from `make_mesh`.

  Returns:
    dict of jax.Arrays of shape (B_local · process_count, ...).

  Raises:
    ValueError: if a leading dimension does not split over the local devices.
  """
  sharding = data_sharding(mesh)
  num_local = len(mesh.local_devices)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] % num_local:
      raise ValueError(
          f'batch[{key!r}] has shape {value.shape}: its leading (batch) '
          f'axis must be divisible by the {num_local} local devices')
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out
