"""Batch evaluation of AT-net + VG-net on a dataset split (the paper's metrics).

For every clip of the split (T frames, the stored landmarks and MFCC):

* example: frame 0 of the clip -- its image (area-resized to VG-net's S) and
  its landmarks; scored frames: 1 .. T-1 (the example itself is never scored),
  which is also how AT-net is trained (targets follow the example frame);
* cascade: AT-net predicts the PCA coefficients of frames 1 .. T-1 from their
  MFCC windows (`audio.mfcc_windows` of the stored MFCC) and frame 0's
  coefficients; VG-net renders them with the example landmark passed through
  the PCA, as `hcmtfg.inference.generate` does for a photo;
* gt_landmarks: VG-net renders the ground-truth normalised landmarks of frames
  1 .. T-1 with the raw example landmark (VG-net's training inputs), which
  isolates VG-net from AT-net's errors;
* copy_example: the example image repeated (at S), the baseline to beat.

`evaluate(paths=...)` runs a subset: without 'cascade' AT-net is not needed
(a VG-net-only `networks.Generator`) and the atnet/* metrics are left out;
e.g. the learning study scores ('gt_landmarks',) at each checkpoint and
('copy_example',) once.

Metrics (`hcmtfg.evaluation.metrics`), per clip as frame means, then mean and
standard deviation over clips:

* release/ssim, release/psnr: the release's conventions (RGB SSIM after a
  256x256 INTER_AREA resize; grayscale uint8 PSNR with its wraparound), plus
  release/psnr_true_mse; computed on the 128x128 frames (generated frames of a
  smaller S are resized to 128 bicubically first);
* plain/ssim, plain/psnr: RGB at VG-net's S (real frames area-resized to S);
* lmd: the release's landmark distance (dlib mouth points on the 128x128 real
  and generated frames, each centred, summed over the 20 points, mean over
  frames). When dlib's detector misses the face in a frame, the predictor runs
  in the real frame's box instead (aligned crops: the face is in the same
  place); lmd_detected is the fraction of generated frames the detector found;
* cpbd: sharpness of the generated frames at 128x128 (real/cpbd: the real's);
* atnet/pca_mse, atnet/pixels_mean, atnet/pixels_mouth: AT-net's error (raw
  prediction, before any release scaling) in PCA coefficients and in 128x128
  crop pixels (all 68 points / mouth);
* mouth motion (`mouth_metrics`, from the same dlib points as LMD):
  aperture_std, the standard deviation over a clip's frames of the inner-lip
  aperture on the generated frames (inter-ocular units); aperture_r, its
  Pearson r with the aperture of the landmarks that drove them (AT-net's for
  the cascade, the true ones otherwise; NaN for the still copy_example), and
  driving_aperture_std; real/...: the same for dlib on the real frames vs the
  true landmarks (the ceiling); atnet/aperture_r: AT-net's vs the true one;
* sync proxy (a weights-free stand-in for LSE, not LSE): sync_r, r of the
  aperture with the speech's RMS envelope at 25 fps at lag 0, and
  sync_peak_r / sync_peak_lag, the largest r within +-5 frames and its lag
  (> 0: the mouth after the sound); the envelope: the stored MFCC's c0
  (`speech_envelope.mfcc_envelope`, about the waveform's RMS).

The networks run through the inference engine (`engine.FrameStream`),
`batch_size` clips at a time in chunks of `chunk_frames` frames, compiled
once; a batch is dispatched before the previous one is scored on the host.
Converted release VG-nets (`convgru_over_batch_axis`) recur over the batch
axis, so they are evaluated one clip at a time.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import queue
from typing import Any, Iterable, Iterator, Sequence

from absl import logging
import cv2
import numpy as np

from hcmtfg.errors import InputError
from hcmtfg.evaluation import metrics as metrics_lib
from hcmtfg.evaluation import mouth_metrics
from hcmtfg.evaluation import speech_envelope
from hcmtfg.features import audio as audio_lib
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.inference import engine

NETWORK_PATHS = ("cascade", "gt_landmarks")
PATHS = NETWORK_PATHS + ("copy_example",)
PATH_TITLES = {"cascade": "AT-net → VG-net", "gt_landmarks": "VG-net, true landmarks",
               "copy_example": "example frame repeated"}


@dataclasses.dataclass(frozen=True)
class Clip:
  """One dataset clip: frames (T, 128, 128, 3) uint8, landmarks (T, 68, 2)
  crop pixels, normalized (T, 136) unscaled, mfcc (M, 13)."""
  clip_id: str
  frames: np.ndarray
  landmarks: np.ndarray
  normalized: np.ndarray
  mfcc: np.ndarray


def split_size(builder, split: str) -> int:
  """How many clips the TFDS `split` holds (also 'test[:8]', 'validation+test').

  Raises:
    InputError: the dataset has no such split.
  """
  known = builder.info.splits
  names = [part.split("[")[0].strip() for part in split.split("+")]
  if not all(name in known for name in names):
    raise InputError(builder.data_dir, f"the dataset has no split {split!r} "
                     f"(it has: {', '.join(known)})")
  return known[split].num_examples


def read_clips(builder, split: str, max_clips: int | None = None
               ) -> Iterator[Clip]:
  """The clips of a TFDS split (the first `max_clips`, or all of them when the
  split has fewer), in file order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split_size(builder, split)  # a clear error for an unknown split
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if max_clips:
    ds = ds.take(int(max_clips))
  for ex in tfds.as_numpy(ds):
    clip_id = ex["clip_id"]
    yield Clip(clip_id.decode() if isinstance(clip_id, bytes) else str(clip_id),
               ex["frames"], ex["landmarks"], ex["normalized_landmarks"],
               ex["mfcc"])


@dataclasses.dataclass
class _Pending:
  """A dispatched batch: its clips and, per network path, its chunks in
  flight (`engine.Dispatched`) with the stream that made them."""
  clips: list[Clip]
  paths: tuple[str, ...]  # the evaluated paths (of PATHS)
  streams: dict[str, engine.FrameStream]
  chunks: dict[str, list[engine.Dispatched]]


def _pad_time(x: np.ndarray, length: int) -> np.ndarray:
  """Pads axis 0 to `length` by repeating the last row (a batch's clips to
  its longest; the engine pads the last chunk)."""
  return np.concatenate([x, np.repeat(x[-1:], length - x.shape[0], 0)])


def _example_image(clip: Clip, size: int) -> np.ndarray:
  """Frame 0 at VG-net's size, float32 in [-1, 1]."""
  frame0 = clip.frames[0] if size == clip.frames.shape[1] else cv2.resize(
      clip.frames[0], (size, size), interpolation=cv2.INTER_AREA)
  return frame0.astype(np.float32) / 127.5 - 1.0


def dispatch(generator, clips: Sequence[Clip], batch_size: int,
             chunk_frames: int, paths: Sequence[str] = PATHS,
             release_coef_scaling: bool | None = None) -> _Pending:
  """Runs the network `paths` on a batch of clips through the engine (rows
  padded to `batch_size` clips, clips to the longest); returns without
  waiting for the device."""
  n_max = max(c.frames.shape[0] - 1 for c in clips)
  rows = list(clips) + [clips[-1]] * (batch_size - len(clips))
  images = np.stack([_example_image(c, generator.image_size) for c in rows])
  examples = np.stack([c.normalized[0] for c in rows])
  inputs = {
      "cascade": lambda: np.stack([_pad_time(audio_lib.mfcc_windows(
          c.mfcc, c.frames.shape[0])[1:], n_max) for c in rows]),
      "gt_landmarks": lambda: np.stack([_pad_time(
          c.normalized[1:] * generator.pca.scale, n_max) for c in rows]),
  }
  streams, chunks = {}, {}
  for path in (p for p in NETWORK_PATHS if p in paths):
    streams[path] = engine.FrameStream(
        generator, images, examples, chunk_frames=chunk_frames,
        drive="speech" if path == "cascade" else "landmarks",
        release_coef_scaling=release_coef_scaling)
    chunks[path] = streams[path].dispatch(inputs[path]())
  return _Pending(list(clips), tuple(paths), streams, chunks)


def resize_frames(frames: np.ndarray, size: int,
                  interpolation: int = cv2.INTER_AREA) -> np.ndarray:
  """(T, H, W, 3) frames resized to (T, size, size, 3) (unchanged if equal):
  cv2.INTER_AREA to shrink real frames to VG-net's S, cv2.INTER_CUBIC to
  enlarge generated ones to 128 for dlib."""
  if frames.shape[1] == size:
    return frames
  return np.stack([cv2.resize(f, (size, size), interpolation=interpolation)
                   for f in frames])


def _landmark_boxes(landmarks_Tx68x2: np.ndarray) -> list[Any]:
  """Square boxes around stored landmarks (for frames dlib cannot detect)."""
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top  (dlib)
  boxes = []
  for lm in landmarks_Tx68x2:
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    half = 0.5 * max(x1 - x0, y1 - y0)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    boxes.append(face.Box(cx - half, cy - half, cx + half, cy + half, 0.0))
  return boxes


def real_reference(clip: Clip, analyzer) -> dict[str, Any]:
  """What every path compares with: the real scored frames (1 .. T-1) at 128,
  their dlib points and boxes, their CPBD, the inner-lip aperture of the dlib
  points ('aperture') and of the true landmarks ('true_aperture'), and the
  speech envelope of those frames."""
  real = clip.frames[1:]
  points, _, boxes = mouth_metrics.frame_landmarks(
      real, analyzer, _landmark_boxes(clip.landmarks[1:]))
  n = clip.frames.shape[0]
  return {"frames": real, "points": points, "boxes": boxes,
          "cpbd": float(np.mean(metrics_lib.cpbd(real))),
          "aperture": mouth_metrics.inner_lip_aperture(points),
          "true_aperture": mouth_metrics.inner_lip_aperture(clip.normalized[1:]),
          "envelope": speech_envelope.mfcc_envelope(clip.mfcc, n)[1:]}


def frame_scores(reference: dict[str, Any], fake: np.ndarray, analyzer,
                 driving_aperture: np.ndarray | None = None) -> dict[str, float]:
  """Metrics of generated frames (n, S, S, 3) uint8 against `real_reference`.

  A perfect generator (fake = the real frames) gives SSIM 1, LMD 0, and the
  real frames' aperture r and sync proxy. `driving_aperture`: (n,) aperture of
  the landmarks the frames were made from (for aperture_r). When all frames
  are identical (the still baseline) the aperture is constant by definition:
  where dlib finds no face its points would move with the fallback boxes only.
  """
  real = reference["frames"]
  fake128 = resize_frames(fake, real.shape[1], cv2.INTER_CUBIC)
  real_s = resize_frames(real, fake.shape[1], cv2.INTER_AREA)
  mean = lambda x: float(np.mean(x))
  scores = {
      "release/ssim": mean(metrics_lib.release_ssim(real, fake128)),
      "release/psnr": mean(metrics_lib.release_psnr(real, fake128)),
      "release/psnr_true_mse": mean(metrics_lib.release_psnr(
          real, fake128, uint8_wraparound=False)),
      "plain/ssim": mean(metrics_lib.plain_ssim(real_s, fake)),
      "plain/psnr": mean(metrics_lib.plain_psnr(real_s, fake)),
  }
  points, found, _ = mouth_metrics.frame_landmarks(fake128, analyzer,
                                                   reference["boxes"])
  scores["lmd"] = metrics_lib.lmd(reference["points"], points)
  scores["lmd_detected"] = float(found.mean())
  scores["cpbd"] = float(np.mean(metrics_lib.cpbd(fake128)))
  aperture = mouth_metrics.inner_lip_aperture(points)
  if np.all(fake == fake[:1]):
    aperture = np.full_like(aperture, aperture[0])
  scores.update(mouth_metrics.sequence_metrics(aperture, driving_aperture,
                                               reference["envelope"]))
  return scores


def score_clip(clip: Clip, raw_coefs: np.ndarray | None,
               frames: dict[str, np.ndarray], generator, analyzer,
               driving: dict[str, np.ndarray],
               paths: Sequence[str] = PATHS) -> dict[str, Any]:
  """Every metric of one clip on `paths`: raw_coefs (>= n, k) (None without
  'cascade'), frames[path] (>= n, S, S, 3) and driving[path] (>= n, 136)
  (the normalised landmarks VG-net was given) of its n = T - 1 scored
  frames."""
  n = clip.frames.shape[0] - 1
  reference = real_reference(clip, analyzer)
  truth = reference["true_aperture"]
  row: dict[str, Any] = {"clip_id": clip.clip_id, "frames": n,
                         "real/cpbd": reference["cpbd"]}
  for key, value in mouth_metrics.sequence_metrics(
      reference["aperture"], truth, reference["envelope"]).items():
    row[f"real/{key}"] = value
  apertures = {"copy_example": truth,  # not driven: no driving_aperture_std
               **{path: mouth_metrics.inner_lip_aperture(driving[path][:n])
                  for path in NETWORK_PATHS if path in paths}}
  s = generator.image_size
  example = cv2.resize(clip.frames[0], (s, s), interpolation=cv2.INTER_AREA)
  fakes = {"copy_example": np.repeat(example[None], n, axis=0),
           **{path: frames[path][:n] for path in NETWORK_PATHS if path in paths}}
  for path in (p for p in PATHS if p in paths):
    scores = frame_scores(reference, fakes[path], analyzer, apertures[path])
    if path == "copy_example":
      del scores["driving_aperture_std"]
    for key, value in scores.items():
      row[f"{path}/{key}"] = value
  if "cascade" in paths:
    target = landmarks_lib.project(generator.pca, clip.normalized[1:])
    errors = metrics_lib.atnet_errors(raw_coefs[:n], target, generator.pca,
                                      clip.landmarks[1:])
    row.update({f"atnet/{k.replace('/', '_')}": v for k, v in errors.items()})
    row["atnet/aperture_r"] = mouth_metrics.pearson(apertures["cascade"], truth)
  return row


def score_batch(pending: _Pending, generator, analyzers: Sequence[Any],
                executor: concurrent.futures.Executor | None = None
                ) -> list[dict[str, Any]]:
  """Per-clip metric dicts of a dispatched batch (waits for the device); clips
  are scored in parallel on `executor`, each task with an analyzer of its own
  (dlib objects are not shared between threads)."""
  raw = (engine.concatenated(pending.chunks["cascade"], "raw_coefs")
         if "cascade" in pending.chunks else None)
  frames = {p: engine.concatenated(c, "frames")
            for p, c in pending.chunks.items()}
  driving = {p: pending.streams[p].landmarks_of(
      engine.concatenated(c, "driving")) for p, c in pending.chunks.items()}
  idle = queue.Queue()
  for analyzer in analyzers:
    idle.put(analyzer)

  def task(b: int) -> dict[str, Any]:
    analyzer = idle.get()
    try:
      return score_clip(pending.clips[b], None if raw is None else raw[b],
                        {p: v[b] for p, v in frames.items()}, generator,
                        analyzer, {p: v[b] for p, v in driving.items()},
                        pending.paths)
    finally:
      idle.put(analyzer)

  indices = range(len(pending.clips))
  return list(executor.map(task, indices) if executor else map(task, indices))


def aggregate(per_clip: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """{metric: {'mean', 'std', 'count'}} over clips (NaN values are skipped;
  std is the population standard deviation over clips)."""
  keys = [k for k in per_clip[0] if k not in ("clip_id", "frames")] if per_clip else []
  summary = {}
  for key in keys:
    values = np.array([row[key] for row in per_clip], np.float64)
    kept = values[~np.isnan(values)]
    mean = float(kept.mean()) if kept.size else math.nan
    finite = math.isfinite(mean)  # +inf: e.g. plain PSNR of identical frames
    summary[key] = {"mean": mean, "std": float(kept.std()) if finite else math.nan,
                    "count": int(kept.size)}
  return summary


def evaluate(generator, clips: Iterable[Clip], *, analyzers: Sequence[Any],
             batch_size: int = 4, chunk_frames: int = 32,
             release_coef_scaling: bool | None = None,
             progress=None, paths: Sequence[str] = PATHS) -> dict[str, Any]:
  """Evaluates `paths` on `clips`; returns {'metrics', 'per_clip', ...}.

  Args:
    generator: `networks.load_generator_networks(...)`, or a VG-net-only
      `networks.Generator` (atnet None) when `paths` has no 'cascade'.
    clips: e.g. `read_clips(builder, 'test')`; clips need >= 2 frames.
    analyzers: `face.FaceAnalyzer`s (LMD), one per scoring thread (numpy,
      SciPy and OpenCV release the GIL).
    batch_size: clips per network call.
    chunk_frames: frames per network call (the chunk is the shorter of this
      and the first batch's longest clip minus its example frame).
    release_coef_scaling: None = the generator's default.
    progress: a tqdm-like object (`update(n)`), or None.
    paths: the paths to evaluate, a non-empty subset of `PATHS` (all).
  """
  unknown = sorted(set(paths) - set(PATHS))
  if unknown or not paths:
    raise ValueError(f"paths must be a non-empty subset of {PATHS}, got "
                     f"{tuple(paths)}")
  paths = tuple(p for p in PATHS if p in paths)
  if "cascade" in paths and generator.atnet is None:
    raise ValueError("the 'cascade' path needs an AT-net; this generator has "
                     "none")
  if generator.vgnet.convgru_over_batch_axis and batch_size != 1:
    logging.info("release ConvGRU mode: evaluating one clip at a time")
    batch_size = 1
  scaling = (generator.release_coef_scaling if release_coef_scaling is None
             else release_coef_scaling)
  per_clip, pending, batch, chunk = [], None, [], None
  executor = (concurrent.futures.ThreadPoolExecutor(len(analyzers))
              if len(analyzers) > 1 else None)

  def score(done: _Pending | None) -> None:
    if done is not None:
      per_clip.extend(score_batch(done, generator, analyzers, executor))
      if progress is not None:
        progress.update(len(done.clips))

  def flush():
    nonlocal pending, batch, chunk
    if chunk is None:
      chunk = max(1, min(chunk_frames, max(c.frames.shape[0] - 1 for c in batch)))
    current = dispatch(generator, batch, batch_size, chunk, paths, scaling)
    score(pending)  # on the host, while the device runs `current`
    pending, batch = current, []

  try:
    for clip in clips:
      if clip.frames.shape[0] < 2:
        logging.warning("%s: fewer than 2 frames, skipped", clip.clip_id)
        continue
      batch.append(clip)
      if len(batch) == batch_size:
        flush()
    if batch:
      flush()
    score(pending)
  finally:
    if executor is not None:
      executor.shutdown()
  return {"num_clips": len(per_clip),
          "num_frames": int(sum(r["frames"] for r in per_clip)),
          "example_frame": 0, "image_size": generator.image_size,
          "release_coef_scaling": bool(scaling), "paths": list(paths),
          "metrics": aggregate(per_clip), "per_clip": per_clip}
