"""TFDS builder `voxceleb2`: VoxCeleb2 talking-head clips (manual download).

Layout (the official `vox2_dev_mp4` / `vox2_test_mp4` archives, extracted):
`<manual_dir>/dev/mp4/<speaker id>/<YouTube id>/<clip>.mp4` and
`<manual_dir>/test/mp4/<speaker id>/<YouTube id>/<clip>.mp4` (25 fps, 224x224, AAC
audio inside). Splits: train (dev) and test; label = speaker id ('id00012'); clip id
'<speaker>/<video>/<clip>'. Clips run up to ~20 s; `max_frames` in the config limits
how many leading frames are stored.
"""

from __future__ import annotations

import glob
import os

import tensorflow_datasets as tfds

from data_pipelines import common

SPLITS = {"dev": "train", "test": "test"}


def list_voxceleb2(root: str) -> dict[str, list[common.ClipSource]]:
  """{tfds split: sorted ClipSources} from `<root>/{dev,test}/mp4/*/*/*.mp4`."""
  sources: dict[str, list[common.ClipSource]] = {s: [] for s in SPLITS.values()}
  for folder, split in SPLITS.items():
    base = os.path.join(root, folder, "mp4")
    for path in sorted(glob.glob(os.path.join(glob.escape(base), "*", "*", "*.mp4"))):
      speaker, video, name = os.path.relpath(path, base).split(os.sep)
      key = f"{speaker}/{video}/{os.path.splitext(name)[0]}"
      sources[split].append(common.ClipSource(key, path, speaker))
  return sources


class Voxceleb2(common.TalkingFaceBuilder):
  """VoxCeleb2: ~6000 celebrities, ~1M YouTube utterances, faces tracked."""

  LABEL_DOC = "the VoxCeleb2 speaker id, e.g. 'id00012'"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Request VoxCeleb2 from https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox2.html,
  download `vox2_dev_mp4` and `vox2_test_mp4`, concatenate the parts and extract
  them so that `<manual_dir>/dev/mp4/id*/*/*.mp4` and `<manual_dir>/test/mp4/...`
  exist, then pass `--manual_dir=<manual_dir>`.
  """
  BUILDER_CONFIGS = [
      common.ClipBuilderConfig(name="default", description="JPEG crops, whole clips."),
      common.ClipBuilderConfig(
          name="first_3s", max_frames=75,
          description="JPEG crops, at most the first 75 frames (3 s) per clip."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def _clip_sources(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    sources = list_voxceleb2(root)
    if not any(sources.values()):
      raise FileNotFoundError(f"no VoxCeleb2 clips ({{dev,test}}/mp4/*/*/*.mp4) "
                              f"under {root}\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return sources
