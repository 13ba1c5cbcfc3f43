"""TFDS builder `lrw`: Lip Reading in the Wild (BBC; manual download).

Layout expected under the manual directory (the official `lrw-v1` archive):
`<manual_dir>/lipread_mp4/<WORD>/{train,val,test}/<WORD>_<5-digit id>.mp4` (29
frames at 25 fps, 256x256, audio inside; the `.txt` metadata beside them is not
used). `<manual_dir>` may also be the `lipread_mp4` folder itself.
Splits: train, validation (val), test; label = the word.

  python -m data_pipelines.build --dataset=lrw --data_dir=DIR --manual_dir=DIR_OF_LRW
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from data_pipelines import common

SPLITS = {"train": "train", "val": "validation", "test": "test"}


def lrw_root(manual_dir: str | os.PathLike) -> str:
  """The `lipread_mp4` folder inside (or equal to) the manual directory."""
  manual_dir = os.fspath(manual_dir)
  inner = os.path.join(manual_dir, "lipread_mp4")
  return inner if os.path.isdir(inner) else manual_dir


class Lrw(common.TalkingFaceBuilder):
  """Lip Reading in the Wild: 500 words, ~1000 speakers, 29-frame BBC clips."""

  LABEL_DOC = "the word spoken in the middle of the clip (LRW class)"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Request access to LRW (Lip Reading in the Wild) from the Visual Geometry Group,
  University of Oxford (https://www.robots.ox.ac.uk/~vgg/data/lip_reading/lrw1.html),
  download and extract the archive so that
  `<manual_dir>/lipread_mp4/<WORD>/{train,val,test}/<WORD>_00001.mp4` exist,
  then pass `--manual_dir=<manual_dir>`.
  """
  BUILDER_CONFIGS = [
      common.ClipBuilderConfig(name="default", description="JPEG face crops."),
      common.ClipBuilderConfig(name="png", image_format="png",
                               description="PNG (lossless) face crops."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def _clip_sources(self, dl_manager: tfds.download.DownloadManager):
    root = lrw_root(dl_manager.manual_dir)
    sources = common.list_lrw_layout(root, SPLITS)
    if not any(sources.values()):
      raise FileNotFoundError(
          f"no LRW clips (<WORD>/<split>/*.mp4) under {root}\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return sources
