"""TFDS builder `grid`: the GRID audio-visual sentence corpus (manual download).

GRID (Cooke, Barker, Cunningham, Shao 2006; https://spandh.dcs.shef.ac.uk/gridcorpus/,
also Zenodo record 3625687): 34 speakers s1..s34 (no video for s21), 1000 three-second
sentences each, 25 fps video. Layouts accepted under the manual directory:

* video: `<manual_dir>/s<N>/*.mpg` (the per-speaker `s<N>.mpg_vcd.zip` or Zenodo
  `s<N>.zip`, extracted), or the same under `<manual_dir>/video/`;
* audio, first match wins for `<stem>`: `<manual_dir>/audio_25k/s<N>/<stem>.wav`
  (Zenodo's `audio_25k.zip`), `<manual_dir>/audio/s<N>/<stem>.wav`, or
  `<stem>.wav` beside the video (the per-speaker `s<N>.tar` extracted into the same
  folder); without any, the audio track of the .mpg is used.

Splits are builder configs: 'default' holds out speaker s29 as the test set (the
release's protocol, unseen speaker) and trains on all others; 'seen' keeps every
speaker and puts every 10th sentence (sorted by name) of each into test.
Label = speaker id ('s1'); the clip id is 's1/bbaf2n'.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

import tensorflow_datasets as tfds

from data_pipelines import common

_SPEAKER = re.compile(r"^s\d+$")


@dataclasses.dataclass(eq=False)
class GridConfig(common.ClipBuilderConfig):
  """Attributes: test_speakers (unseen speakers held out; empty for 'seen'),
  test_every (with no test speakers: every Nth sentence of each speaker is test)."""
  test_speakers: tuple[str, ...] = ("s29",)
  test_every: int = 10


def _find_audio(root: str, speaker: str, video_path: str) -> str | None:
  stem = os.path.splitext(os.path.basename(video_path))[0]
  for candidate in (os.path.join(root, "audio_25k", speaker, stem + ".wav"),
                    os.path.join(root, "audio", speaker, stem + ".wav"),
                    os.path.splitext(video_path)[0] + ".wav"):
    if os.path.isfile(candidate):
      return candidate
  return None


def list_grid(root: str) -> dict[str, list[common.ClipSource]]:
  """{speaker: sorted ClipSources} for every `s<N>/*.mpg` under root or root/video."""
  speakers: dict[str, list[common.ClipSource]] = {}
  for video_root in (root, os.path.join(root, "video")):
    if not os.path.isdir(video_root):
      continue
    for speaker in sorted(os.listdir(video_root)):
      folder = os.path.join(video_root, speaker)
      if not (_SPEAKER.match(speaker) and os.path.isdir(folder)):
        continue
      for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*.mpg"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        speakers.setdefault(speaker, []).append(common.ClipSource(
            f"{speaker}/{stem}", path, speaker, _find_audio(root, speaker, path)))
  return speakers


class Grid(common.TalkingFaceBuilder):
  """GRID audio-visual sentence corpus (34 speakers, 'put red at G9 now')."""

  LABEL_DOC = "the speaker id, e.g. 's1'"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download GRID from https://spandh.dcs.shef.ac.uk/gridcorpus/ (per speaker: the
  video `s<N>.mpg_vcd.zip` and the audio `s<N>.tar`) or from Zenodo record 3625687
  (`s<N>.zip` and `audio_25k.zip`), and extract them so that
  `<manual_dir>/s<N>/*.mpg` exist, with the audio either in
  `<manual_dir>/audio_25k/s<N>/*.wav` or beside the videos as `s<N>/*.wav`.
  """
  BUILDER_CONFIGS = [
      GridConfig(name="default", test_speakers=("s29",),
                 description="Unseen-speaker split: s29 is the test set."),
      GridConfig(name="seen", test_speakers=(),
                 description="Seen-speaker split: every 10th sentence is test."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def _clip_sources(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    speakers = list_grid(root)
    if not speakers:
      raise FileNotFoundError(f"no GRID videos (s<N>/*.mpg) under {root}\n"
                              f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    config = self.builder_config
    sources = {"train": [], "test": []}
    for speaker, items in sorted(speakers.items()):
      if config.test_speakers:
        sources["test" if speaker in config.test_speakers else "train"] += items
      else:
        for i, item in enumerate(items):
          is_test = (i % config.test_every) == config.test_every - 1
          sources["test" if is_test else "train"].append(item)
    return sources
