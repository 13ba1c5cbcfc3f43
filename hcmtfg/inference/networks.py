"""AT-net + VG-net with their weights and landmark PCA, ready to run.

    generator = networks.load_generator_networks("runs/atnet", "runs/vgnet")
    generator = networks.load_generator(NetworkOptions("runs/atnet", "runs/vgnet",
                                                       release_basics_dir="basics"))

`Generator` holds the two modules, their variables on the devices they run on
(with the Winograd kernel transforms of their fixed weights precomputed) and
the PCA AT-net's coefficients live in. `hcmtfg.inference.engine` runs it.

Device placement: with two CPU devices (`split_cpu_device`, called by the
inference entry points before JAX starts) AT-net lives on the second. A device
runs its computations one at a time, so AT-net's next chunk then computes
beside VG-net's current one.
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from hcmtfg.errors import InputError
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.inference import chunked
from hcmtfg.inference import photo as photo_lib
from hcmtfg.runtime import exported
from hcmtfg.weights import checkpoint_io


@dataclasses.dataclass(frozen=True)
class NetworkOptions:
  """Where the weights are and how to use them (`launch.generate`'s flags).

  Attributes:
    atnet_workdir, vgnet_workdir: training workdirs or converted folders.
    pca: landmark PCA when none is stored beside the AT-net weights.
    release_basics_dir: the release's artefacts: crop and normalise photos
      exactly as the release demo (converted release weights); its PCA is
      used when neither `pca` nor a stored one is there.
    release_coef_scaling: None = on for converted release weights.
    min_face_size: smallest face box height accepted, pixels.
  """
  atnet_workdir: str
  vgnet_workdir: str
  pca: str | None = None
  release_basics_dir: str | None = None
  release_coef_scaling: bool | None = None
  min_face_size: int = photo_lib.MIN_FACE_SIZE


def split_cpu_device() -> bool:
  """Gives JAX's CPU backend two devices; True if it did.

  `Generator` then puts AT-net on the second (same executables, same numbers;
  both devices share the CPU's threads). For the inference entry points: call
  before any JAX computation. Does nothing when the device count is already
  set (JAX_NUM_CPU_DEVICES, or XLA_FLAGS' --xla_force_host_platform_device_count)
  or JAX has started.
  """
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or jax.config.jax_num_cpu_devices != -1):
    return False
  try:
    jax.config.update("jax_num_cpu_devices", 2)
  except RuntimeError:  # too late: the backend is up
    return False
  return True


def _atnet_device() -> jax.Device | None:
  """The second CPU device when the CPU backend has several, else None."""
  if jax.default_backend() != "cpu" or len(jax.local_devices()) < 2:
    return None
  return jax.local_devices()[1]


class Generator:
  """AT-net + VG-net with their weights and the landmark PCA.

  Attributes:
    atnet, vgnet: the modules; atnet may be None for a VG-net-only generator
      that renders given landmarks (`load_vgnet_generator`).
    atnet_variables, vgnet_variables: their variables on the devices they run
      on, plus the Winograd kernel transforms of their weights
      (`hcmtfg.models.winograd.with_transformed_kernels`).
    atnet_device: where AT-net runs (None: the default device).
    vgnet_device: where VG-net runs.
    pca: the landmark PCA AT-net's coefficients live in.
    pca_components, pca_mean: the PCA on VG-net's device, float32.
    release_coef_scaling: whether AT-net's coefficients get the release
      demo's gain by default (True for converted release AT-net weights).
    sources: {'atnet': path, 'vgnet': path} the weights came from.
  """

  def __init__(self, atnet, atnet_variables, vgnet, vgnet_variables,
               pca: landmarks_lib.Pca, *, release_coef_scaling: bool = False,
               sources: dict[str, str] | None = None):
    if atnet is not None and pca.num_components != atnet.pca_dim:
      raise ValueError(f"the PCA has {pca.num_components} components, AT-net "
                       f"predicts {atnet.pca_dim}")
    self.atnet, self.vgnet, self.pca = atnet, vgnet, pca
    self.atnet_device = _atnet_device()
    # Fixed weights: the Winograd convolutions' kernel transforms are
    # computed once here instead of in every chunk step.
    self.atnet_variables = None if atnet is None else jax.device_put(
        exported.with_transformed_kernels(atnet, atnet_variables),
        self.atnet_device)
    self.vgnet_variables = jax.device_put(
        exported.with_transformed_kernels(vgnet, vgnet_variables))
    self.vgnet_device = next(iter(
        jax.tree.leaves(self.vgnet_variables)[0].devices()))
    self.release_coef_scaling = bool(release_coef_scaling)
    self.sources = dict(sources or {})
    self.pca_components = jnp.asarray(pca.components, jnp.float32)
    self.pca_mean = jnp.asarray(pca.mean, jnp.float32)

  @property
  def image_size(self) -> int:
    """Side S of the generated frames."""
    return self.vgnet.image_size

  def initial_carries(self, batch: int = 1):
    """Zero (LSTM, ConvGRU) states of `batch` sequences on the networks'
    devices: committed like the states the chunk steps return, so that the
    first chunk and the later ones share one executable."""
    atnet = None if self.atnet is None else jax.device_put(
        chunked.atnet_initial_carry(self.atnet, batch),
        self.atnet_device or self.vgnet_device)
    return atnet, jax.device_put(chunked.vgnet_initial_carry(self.vgnet, batch),
                                 self.vgnet_device)


def _no_pca(where, beside: str) -> InputError:
  return InputError(where, f"no landmark PCA found beside the {beside} weights "
                    f"({checkpoint_io.PCA_FILE}); pass one (--pca=FILE or a "
                    "folder with the release's U_lrw1.npy/mean_lrw1.npy)")


def load_generator_networks(atnet_workdir: str | os.PathLike,
                            vgnet_workdir: str | os.PathLike, *,
                            pca_path: str | os.PathLike | None = None,
                            fallback_pca_path: str | os.PathLike | None = None
                            ) -> Generator:
  """Loads both networks (training workdirs or converted release checkpoints).

  Args:
    atnet_workdir: AT-net training workdir, or a converted checkpoint folder
      (`<dir>` holding `atnet/`, or `<dir>/atnet`).
    vgnet_workdir: the same for VG-net (may be the same converted folder).
    pca_path: landmark PCA overriding the one stored beside the AT-net weights
      (`landmark_pca.npz`): a `save_pca` file or a folder holding the
      release's U_lrw1.npy / mean_lrw1.npy.
    fallback_pca_path: the same, used only when no PCA is stored.

  Raises:
    InputError: missing or unreadable checkpoint, config/weights mismatch
      (naming the file, the parameter and both shapes), no PCA.
  """
  atnet = checkpoint_io.load_network(atnet_workdir, "atnet")
  vgnet = checkpoint_io.load_network(vgnet_workdir, "vgnet")
  pca_path = pca_path or (fallback_pca_path if atnet.pca is None else None)
  pca = checkpoint_io.load_pca_from(pca_path) if pca_path else atnet.pca
  if pca is None:
    raise _no_pca(atnet_workdir, "AT-net")
  if (vgnet.pca is not None and not pca_path and (
      vgnet.pca.scale != pca.scale or vgnet.pca.mean.shape != pca.mean.shape
      or not np.allclose(vgnet.pca.mean, pca.mean, atol=1e-6))):
    logging.warning("the VG-net workdir's landmark PCA differs from the AT-net "
                    "one (%s); using the AT-net's", atnet_workdir)
  if pca.num_components != atnet.module.pca_dim:
    raise InputError(pca_path or atnet_workdir, f"the landmark PCA has "
                     f"{pca.num_components} components but AT-net predicts "
                     f"{atnet.module.pca_dim}")
  logging.info("AT-net: %s (%s%s); VG-net: %s (%s%s)", atnet.path, atnet.layout,
               f", step {atnet.step}" if atnet.step is not None else "",
               vgnet.path, vgnet.layout,
               f", step {vgnet.step}" if vgnet.step is not None else "")
  return Generator(atnet.module, atnet.variables, vgnet.module, vgnet.variables,
                   pca, release_coef_scaling=atnet.layout == "converted",
                   sources={"atnet": atnet.path, "vgnet": vgnet.path})


def load_generator(options: NetworkOptions) -> Generator:
  """The networks `options` name (with the release artefacts' PCA when no
  other is given or stored)."""
  return load_generator_networks(options.atnet_workdir, options.vgnet_workdir,
                                 pca_path=options.pca,
                                 fallback_pca_path=options.release_basics_dir)


def load_vgnet_generator(vgnet_workdir: str | os.PathLike, *,
                         step: int | None = None,
                         pca_path: str | os.PathLike | None = None
                         ) -> Generator:
  """A VG-net-only `Generator` (atnet None): renders given landmarks, e.g.
  `evaluate.evaluate(paths=('gt_landmarks',))`.

  Args:
    vgnet_workdir: VG-net training workdir or converted checkpoint folder.
    step: the training checkpoint step to read (None: the newest).
    pca_path: landmark PCA when none sits beside the weights (its scale is the
      landmark convention); as `load_generator_networks`.

  Raises:
    InputError: missing or unreadable checkpoint or step, no PCA.
  """
  vgnet = checkpoint_io.load_network(vgnet_workdir, "vgnet", step=step)
  pca = checkpoint_io.load_pca_from(pca_path) if pca_path else vgnet.pca
  if pca is None:
    raise _no_pca(vgnet_workdir, "VG-net")
  return Generator(None, None, vgnet.module, vgnet.variables, pca,
                   sources={"vgnet": vgnet.path})
