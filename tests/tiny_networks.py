"""Tiny random AT-net + VG-net workdirs (the configs' `tiny` variants) and
short media, shared by the serving tests (server, browser, streaming CLI)."""

import pathlib

import numpy as np
import soundfile

from configs import atnet as atnet_config
from configs import vgnet as vgnet_config
from hcmtfg import models
from hcmtfg.features import landmarks as landmarks_lib
from tests import generate_test


def write_workdirs(root: pathlib.Path, shared_data: pathlib.Path
                   ) -> tuple[str, str]:
  """(atnet workdir, vgnet workdir) of random tiny networks, training layout."""
  at_model = dict(atnet_config.get_config("tiny").model)
  vg_model = {k: (tuple(v) if isinstance(v, list) else v) for k, v in
              vgnet_config.get_config("tiny").model.generator.items()}
  atnet = models.ATNet.from_config(at_model)
  vgnet = models.VGNet.from_config(vg_model)
  pca = landmarks_lib.load_release_pca(shared_data / "atvgnet_basics")
  generate_test.write_training_workdir(
      root / "atnet", "atnet", generate_test.random_variables(atnet, 0),
      {"seed": 0, "model": atnet.to_config()}, pca)
  generate_test.write_training_workdir(
      root / "vgnet", "vgnet", generate_test.random_variables(vgnet, 1),
      {"seed": 0, "model": {"generator": vgnet.to_config(),
                            "discriminator": {}}})
  return str(root / "atnet"), str(root / "vgnet")


def warm_networks(root: pathlib.Path, shared_data: pathlib.Path,
                  lengths: tuple[int, ...] = (8,)):
  """Tiny workdirs under `root` loaded as `WarmNetworks`, these chunk lengths
  compiled (each one is a compilation); (warm, atnet workdir, vgnet workdir)."""
  from hcmtfg.inference import networks  # pylint: disable=g-import-not-at-top
  from hcmtfg.inference import warm as warm_lib  # pylint: disable=g-import-not-at-top
  atnet, vgnet = write_workdirs(root, shared_data)
  warm = warm_lib.WarmNetworks.load(networks.NetworkOptions(atnet, vgnet))
  warm.warm_up(lengths)
  return warm, atnet, vgnet


def write_speech(path: pathlib.Path, shared_data: pathlib.Path,
                 seconds: float) -> pathlib.Path:
  """The first `seconds` of a real recording (44.1 kHz wav)."""
  speech, rate = soundfile.read(shared_data / "speech" / "test.wav",
                                dtype="float32")
  soundfile.write(path, speech[:int(seconds * rate)], rate)
  return path


def write_no_face(path: pathlib.Path) -> pathlib.Path:
  """A smooth colourful picture without a face."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  noise = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.uint8)
  Image.fromarray(noise).resize((160, 160), Image.BICUBIC).save(path)
  return path


def write_truncated_jpeg(path: pathlib.Path, shared_data: pathlib.Path
                         ) -> pathlib.Path:
  """The first 40% of a real JPEG photo."""
  data = (shared_data / "faces" / "obama.jpg").read_bytes()
  path.write_bytes(data[:int(len(data) * 0.4)])
  return path
