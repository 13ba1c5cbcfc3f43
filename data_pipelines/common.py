"""What every talking-face TFDS builder shares: features, generation, failures, PCA.

A concrete builder only lists its clips (`_clip_sources`: split name -> ClipSource
list, in a fixed order) and says what its label means. This base class then

* turns each clip into one example with `hcmtfg.features.clip_features.extract_clip`: face
  crops (T, 128, 128, 3) as JPEG or PNG frames (builder config), crop-space landmarks
  (T, 68, 2), normalised landmarks (T, 136), MFCC (M, 13), frame count, id, label;
* generates either with a plain Python generator (default), or, when the
  DownloadConfig carries Beam options or a runner (`python -m data_pipelines.build
  --beam`, or `tfds build --beam_pipeline_options=...`), as
  `beam.Create(sources) | beam.Reshuffle() | beam.FlatMap(ClipProcessor)`; both paths
  use the same keys and the same deterministic processing, so they write identical
  examples. The dlib models are loaded lazily, once per worker process;
* skips clips that raise `ClipError` (or any other exception, logged with its
  traceback) and counts them by reason: Python counters or Beam metrics, stored in
  the dataset's `metadata.json` as {'failed_clips': {split: {reason: n}}, ...};
* fits the landmark PCA (6 components, x5 convention) on the training split's
  normalised landmarks after the splits are written and saves it as
  `landmark_pca.npz` beside the TFRecords (`<data_dir>/<name>/<config>/<version>/`),
  where `hcmtfg.data.input_pipeline.load_dataset_pca` finds it.

TFDS writes everything into a temporary `*.incomplete*` directory and renames it
only when generation, metadata and PCA have all succeeded, so a killed build never
leaves a dataset that looks complete; rebuilding simply starts again.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
from typing import Any, Iterator

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from hcmtfg.features import clip_features
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.runtime import faults

VERSION = tfds.core.Version("1.0.0")
RELEASE_NOTES = {"1.0.0": "Initial release."}
METRICS_NAMESPACE = "hcmtfg"
UNEXPECTED = "unexpected_error"  # any exception other than ClipError
PCA_COMPONENTS = 6
PCA_MAX_EXAMPLES = 20000  # train clips read to fit the PCA (files are shuffled).

_ANALYZER = None  # this process's FaceAnalyzer, created on first use.
_CLIPS_DONE = 0  # clips this process has processed (fault-injection tests).


def worker_analyzer():
  """The FaceAnalyzer of this process (dlib models load once, never pickled)."""
  global _ANALYZER
  if _ANALYZER is None:
    from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
    logging.info("process %d: loading the dlib face models", os.getpid())
    _ANALYZER = face.FaceAnalyzer()
  return _ANALYZER


@dataclasses.dataclass(frozen=True)
class ClipSource:
  """One clip to process.

  Attributes:
    key: unique id, used as the TFDS example key and the `clip_id` feature
      (e.g. 'ABOUT/train/ABOUT_00001').
    video_path: the video file.
    label: word (LRW, synthetic) or speaker id (GRID, VoxCeleb2).
    audio_path: separate audio file, or None to use the video's own track.
  """
  key: str
  video_path: str
  label: str
  audio_path: str | None = None


@dataclasses.dataclass(eq=False)
class ClipBuilderConfig(tfds.core.BuilderConfig):
  """Options shared by the talking-face builders.

  Attributes:
    image_format: 'jpeg' (quality 95) or 'png' for the face crops.
    min_frames: clips with fewer 25-fps frames are skipped (counted 'too_short').
    max_frames: keep at most this many leading frames per clip (None: all).
  """
  image_format: str = "jpeg"
  min_frames: int = clip_features.MIN_FRAMES
  max_frames: int | None = None


def make_features(image_format: str) -> tfds.features.FeaturesDict:
  """The example spec shared by all builders (T frames, M MFCC rows per clip)."""
  size = clip_features.CROP_SIZE
  tensor = lambda shape, doc: tfds.features.Tensor(  # pylint: disable=g-long-lambda
      shape=shape, dtype=np.float32, encoding=tfds.features.Encoding.BYTES,
      doc=doc)
  return tfds.features.FeaturesDict({
      "clip_id": tfds.features.Text(doc="unique clip id (relative path)"),
      "label": tfds.features.Text(doc="word or speaker id"),
      "num_frames": tfds.features.Scalar(np.int32, doc="T, 25-fps frames"),
      "frames": tfds.features.Video(
          shape=(None, size, size, 3), encoding_format=image_format,
          doc="aligned RGB face crops, uint8"),
      "landmarks": tensor((None, 68, 2),
                          "(T, 68, 2) dlib landmarks (x, y), crop pixels"),
      "normalized_landmarks": tensor(
          (None, 136), "(T, 136) Procrustes-normalised landmarks, before x5"),
      "mfcc": tensor((None, 13), "(M, 13) MFCC of the 0.12 s-padded 16 kHz "
                     "audio, 100 Hz; frame t's window is rows 4t..4t+27"),
  })


def to_example(clip: clip_features.ClipExample, source: ClipSource
               ) -> dict[str, Any]:
  """The TFDS example dict of one processed clip."""
  frames = (clip.encoded_frames if clip.encoded_frames is not None
            else clip.frames)
  return {
      "clip_id": source.key,
      "label": source.label,
      "num_frames": np.int32(clip.num_frames),
      "frames": frames,
      "landmarks": clip.landmarks,
      "normalized_landmarks": clip.normalized_landmarks,
      "mfcc": clip.mfcc,
  }


class ClipProcessor:
  """Picklable callable: ClipSource -> zero or one (key, example) pair.

  Counts failures in `self.counts` (this process only) and, when `beam_metrics`,
  in Beam counters named '<split>/failed/<reason>' and '<split>/ok'.
  """

  def __init__(self, split: str, config: ClipBuilderConfig,
               beam_metrics: bool = False):
    self.split = split
    self.image_format = config.image_format
    self.min_frames = config.min_frames
    self.max_frames = config.max_frames
    self.beam_metrics = beam_metrics
    self.counts: collections.Counter[str] = collections.Counter()

  def _count(self, name: str) -> None:
    self.counts[name] += 1
    if self.beam_metrics:
      import apache_beam as beam  # pylint: disable=g-import-not-at-top
      beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                   f"{self.split}/{name}").inc()

  def __call__(self, source: ClipSource) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
      clip = clip_features.extract_clip(
          source.video_path, analyzer=worker_analyzer(),
          image_format=self.image_format, min_frames=self.min_frames,
          max_frames=self.max_frames, audio_path=source.audio_path)
    except clip_features.ClipError as e:
      logging.warning("skipping clip %s (%s): %s", source.key, e.reason, e)
      self._count(f"failed/{e.reason}")
      return
    except Exception:  # pylint: disable=broad-except
      # One odd file must not end a build of hundreds of thousands of clips.
      logging.exception("skipping clip %s: unexpected error", source.key)
      self._count(f"failed/{UNEXPECTED}")
      return
    self._count("ok")
    global _CLIPS_DONE
    _CLIPS_DONE += 1
    faults.at("build_clip", _CLIPS_DONE)  # Tests only: a kill mid-build.
    yield source.key, to_example(clip, source)


def _nested_counts(flat: dict[str, int]) -> dict[str, Any]:
  """{'train/failed/no_face': 2, 'train/ok': 9} -> metadata dict."""
  failed: dict[str, dict[str, int]] = {}
  ok: dict[str, int] = {}
  for name, value in sorted(flat.items()):
    split, _, rest = name.partition("/")
    if rest == "ok":
      ok[split] = int(value)
    elif rest.startswith("failed/"):
      failed.setdefault(split, {})[rest[len("failed/"):]] = int(value)
  return {"failed_clips": failed, "processed_clips": ok,
          "num_failed_clips": int(sum(sum(d.values()) for d in failed.values()))}


def list_lrw_layout(root: str, split_names: dict[str, str]
                    ) -> dict[str, list[ClipSource]]:
  """`<root>/<WORD>/<split>/*.mp4` -> {tfds split: sorted ClipSources}.

  Keys are '<WORD>/<split>/<stem>', labels the word.
  """
  sources: dict[str, list[ClipSource]] = {s: [] for s in split_names.values()}
  for path in sorted(glob.glob(os.path.join(glob.escape(root), "*", "*", "*.mp4"))):
    rel = os.path.relpath(path, root)
    word, split, name = rel.split(os.sep)
    if split not in split_names:
      continue
    key = f"{word}/{split}/{os.path.splitext(name)[0]}"
    sources[split_names[split]].append(ClipSource(key, path, word))
  return sources


class TalkingFaceBuilder(tfds.core.GeneratorBasedBuilder):
  """Base class; subclasses define BUILDER_CONFIGS and `_clip_sources`."""

  VERSION = VERSION
  RELEASE_NOTES = RELEASE_NOTES
  LABEL_DOC = "label"  # what `label` holds, for the description.
  TRAIN_SPLIT = "train"  # the split the landmark PCA is fitted on.

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=make_features(self.builder_config.image_format),
        metadata=tfds.core.MetadataDict(),
        description=f"{(self.__doc__ or '').strip()}\n\nlabel: {self.LABEL_DOC}",
    )

  def _clip_sources(self, dl_manager: tfds.download.DownloadManager
                    ) -> dict[str, list[ClipSource]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    sources = self._clip_sources(dl_manager)
    generators = {}
    for split, items in sources.items():
      keys = [s.key for s in items]
      if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate clip keys in split {split}")
      logging.info("%s/%s: %d clips to process", self.name, split, len(items))
      # TFDS cannot write a split without examples: process clips here, in
      # order, up to the first that works; a split whose clips all fail is left
      # out of the dataset (and its failures counted).
      processor = ClipProcessor(split, self.builder_config)
      self._processors.append(processor)
      for i, source in enumerate(items):
        first = list(processor(source))
        if first:
          generators[split] = self._generate_examples(
              split=split, first=first[0], sources=items[i + 1:],
              processor=processor)
          break
      else:
        if items:
          logging.warning("%s/%s: every clip failed; the split is left out",
                          self.name, split)
    return generators

  def _generate_examples(self, split: str, first: tuple[str, dict[str, Any]],
                         sources: list[ClipSource], processor: ClipProcessor):
    """`first` (an already processed example), then the examples of `sources`."""
    if not self._use_beam:
      return _iterate(first, processor, sources)
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    beam_processor = ClipProcessor(split, self.builder_config, beam_metrics=True)

    @beam.ptransform_fn
    def examples(pbegin):
      processed = (pbegin
                   | "Sources" >> beam.Create(sources)
                   | "Reshuffle" >> beam.Reshuffle()
                   | "Process" >> beam.FlatMap(beam_processor))
      head = pbegin | "First" >> beam.Create([first])
      return (processed, head) | "Merge" >> beam.Flatten()
    return examples()  # pylint: disable=no-value-for-parameter

  def _process_pipeline_result(self, pipeline_result) -> None:
    from apache_beam.metrics import metric  # pylint: disable=g-import-not-at-top
    query = metric.MetricsFilter().with_namespace(METRICS_NAMESPACE)
    counters = pipeline_result.metrics().query(query)["counters"]
    for result in counters:
      value = result.committed if result.committed is not None else result.attempted
      self._beam_counts[result.key.metric.name] += int(value or 0)

  def _download_and_prepare(self, dl_manager, download_config):
    self._use_beam = bool(download_config.beam_runner or
                          download_config.beam_options)
    self._processors: list[ClipProcessor] = []
    self._beam_counts: collections.Counter[str] = collections.Counter()
    super()._download_and_prepare(dl_manager=dl_manager,
                                  download_config=download_config)
    flat = collections.Counter(self._beam_counts)
    for processor in self._processors:
      flat.update({f"{processor.split}/{k}": v
                   for k, v in processor.counts.items()})
    summary = _nested_counts(flat)
    if summary["num_failed_clips"]:
      logging.warning("%s: skipped %d clips: %s", self.name,
                      summary["num_failed_clips"], summary["failed_clips"])
    self.info.metadata.update(summary)
    self.info.metadata["pca"] = fit_and_save_pca(self)


def _iterate(first, processor: ClipProcessor, sources: list[ClipSource]):
  yield first
  for source in sources:
    yield from processor(source)


def fit_and_save_pca(builder: tfds.core.DatasetBuilder,
                     split: str | None = None,
                     num_components: int = PCA_COMPONENTS,
                     max_examples: int | None = PCA_MAX_EXAMPLES
                     ) -> dict[str, Any]:
  """Fits the landmark PCA on a split and writes it beside the dataset files.

  Reads only the `normalized_landmarks` feature of (at most `max_examples`
  examples of) the split, accumulates the mean and covariance of every frame
  (streaming, constant memory) and keeps the top `num_components` components with
  the release's x5 scale -- the PCA `hcmtfg.features.landmarks.fit_pca` would fit to all
  those frames -- then saves it to `input_pipeline.dataset_pca_path(builder)`.

  Returns:
    A JSON-able summary for the metadata ({'file', 'split', 'num_frames', ...}),
    or {'error': ...} when the split has fewer than two frames.
  """
  split = split or getattr(builder, "TRAIN_SPLIT", "train")
  if split not in builder.info.splits:
    return {"error": f"no split {split!r} to fit the landmark PCA on"}
  ds = builder.as_dataset(
      split=split, decoders=tfds.decode.PartialDecoding(
          {"normalized_landmarks": True}))
  if max_examples is not None:
    ds = ds.take(max_examples)
  moments = _Moments(2 * landmarks_lib.NUM_POINTS)
  for example in tfds.as_numpy(ds):
    moments.add(example["normalized_landmarks"])
  if moments.count < 2:
    return {"error": f"split {split!r} has fewer than two frames"}
  pca = moments.pca(num_components, landmarks_lib.RELEASE_PCA_SCALE)
  from hcmtfg.data import input_pipeline  # pylint: disable=g-import-not-at-top
  path = input_pipeline.dataset_pca_path(builder)
  landmarks_lib.save_pca(path, pca)
  os.chmod(path, 0o644)
  explained = float(np.sum(pca.explained_variance)
                    / moments.total_variance(pca.scale))
  logging.info("landmark PCA fitted on %d frames of %s: %.1f%% of the variance",
               moments.count, split, 100 * explained)
  return {"file": os.path.basename(path), "split": split,
          "num_clips": moments.num_chunks, "num_frames": moments.count,
          "num_components": num_components, "scale": pca.scale,
          "explained_variance_fraction": explained}


class _Moments:
  """Streaming mean and covariance of D-dim rows (float64, shifted for accuracy)."""

  def __init__(self, dim: int):
    self.count = 0
    self.num_chunks = 0
    self._shift = None
    self._sum = np.zeros(dim)
    self._outer = np.zeros((dim, dim))

  def add(self, rows_NxD: np.ndarray) -> None:
    x = np.asarray(rows_NxD, np.float64).reshape(-1, self._sum.size)
    if self._shift is None:
      self._shift = x.mean(axis=0) if x.size else None
      if self._shift is None:
        return
    x = x - self._shift
    self.count += x.shape[0]
    self.num_chunks += 1
    self._sum += x.sum(axis=0)
    self._outer += x.T @ x

  def covariance(self) -> np.ndarray:
    mean = self._sum / self.count
    return (self._outer - self.count * np.outer(mean, mean)) / (self.count - 1)

  def total_variance(self, scale: float) -> float:
    return float(np.trace(self.covariance()) * scale**2)

  def pca(self, num_components: int, scale: float) -> landmarks_lib.Pca:
    """The PCA `landmarks.fit_pca` would fit to all rows (same sign convention)."""
    cov = self.covariance() * scale**2
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:num_components]
    components = eigvec[:, order]
    peak = components[np.argmax(np.abs(components), axis=0),
                      np.arange(num_components)]
    components = components * np.where(peak < 0, -1.0, 1.0)
    mean = (self._shift + self._sum / self.count) * scale
    return landmarks_lib.Pca(mean, components, np.maximum(eigval[order], 0.0),
                             float(scale))
