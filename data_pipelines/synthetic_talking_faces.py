"""TFDS builder `synthetic_talking_faces`: a generated talking-face corpus.

The builder first generates its corpus with `data_pipelines.synthetic.
generate_corpus` (real photos animated by articulatory tracks, formant speech from
the same tracks; LRW's layout `<WORD>/<split>/<WORD>_<id>.mp4`, 29 frames at 25 fps)
into `<download_dir>/synthetic_corpus/n<num_clips>_seed<seed>/` (resumable: finished
clips are kept), then processes every clip like any real dataset.

  python -m data_pipelines.build --dataset=synthetic_talking_faces \
      --config=tiny --data_dir=/tmp/tfds
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from data_pipelines import common

# Corpus split names -> TFDS split names.
SPLITS = {"train": "train", "val": "validation", "test": "test"}


@dataclasses.dataclass(eq=False)
class SyntheticConfig(common.ClipBuilderConfig):
  """Attributes: num_clips (corpus size), seed (corpus seed), num_words."""
  num_clips: int = 200
  seed: int = 0
  num_words: int = 20


def corpus_dir(download_dir: str | os.PathLike, num_clips: int, seed: int) -> str:
  """Where the builder generates (or finds) the corpus of (num_clips, seed)."""
  return os.path.join(os.fspath(download_dir), "synthetic_corpus",
                      f"n{num_clips}_seed{seed}")


class SyntheticTalkingFaces(common.TalkingFaceBuilder):
  """Synthetic talking faces (generated corpus, LRW layout, words as labels)."""

  LABEL_DOC = "the spoken pseudo-word"
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", num_clips=200,
                      description="200 generated clips, seed 0, JPEG crops."),
      SyntheticConfig(name="tiny", num_clips=24,
                      description="24 generated clips, seed 0 (tests, demos)."),
      SyntheticConfig(name="default_png", num_clips=200, image_format="png",
                      description="200 generated clips, PNG crops."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def __init__(self, *, num_clips: int | None = None, **kwargs):
    """Args: num_clips: overrides the config's corpus size (build only; the
    dataset keeps the config's name, the count is in metadata['corpus']);
    **kwargs: `tfds.core.GeneratorBasedBuilder` arguments."""
    self._num_clips = num_clips
    super().__init__(**kwargs)

  @property
  def num_clips(self) -> int:
    """Clips this builder generates (the override, else the config's)."""
    if self._num_clips is not None:
      return int(self._num_clips)
    return self.builder_config.num_clips

  def _clip_sources(self, dl_manager: tfds.download.DownloadManager):
    from data_pipelines.synthetic import corpus  # pylint: disable=g-import-not-at-top
    config = self.builder_config
    root = corpus_dir(dl_manager.download_dir, self.num_clips, config.seed)
    result = corpus.generate_corpus(root, self.num_clips, config.seed,
                                    num_words=config.num_words)
    self._corpus_summary = {"num_clips": self.num_clips, "seed": config.seed,
                            "num_words": config.num_words, "root": root,
                            "generated_now": len(result.built)}
    return common.list_lrw_layout(root, SPLITS)

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    self.info.metadata["corpus"] = self._corpus_summary
