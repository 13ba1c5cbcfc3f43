"""One talking-face clip -> the features every dataset and evaluation uses.

`extract_clip` runs the whole per-clip preprocessing of the project:

  read_video (25 fps, 16 kHz mono audio required; or audio from a separate file)
  -> FaceAnalyzer.track (68 dlib landmarks per frame, gaps interpolated)
  -> align_clip (one similarity transform for the clip, 128x128 RGB crops)
  -> crop-space landmarks (T, 68, 2) float32, (x, y) pixels of the crop
  -> Procrustes-normalised landmarks (T, 136) float32 (before the release's x5)
  -> MFCC (M, 13) float32 at 100 Hz of the 16 kHz audio padded by 0.12 s at both ends
     (`hcmtfg.features.audio`; the AT-net window of video frame t is mfcc[4t:4t+28, 1:]).

Mean shape. Normalisation (`hcmtfg.features.landmarks.normalize_landmarks`) aligns
every frame to `landmarks.default_mean_shape()`, our own face template; pass
`mean_shape=` (e.g. the release's `mean_shape_img.npy`) to use another one.
Normalised coordinates are roughly in [-0.2, 0.2] (unit Frobenius norm); the x5 of
the release's PCA convention is applied later (`Pca.scale`), never stored.

Failures (unreadable or corrupt file, no audio, too few frames, no face) raise
`ClipError`, an `InputError` with a machine-readable `reason`, so that dataset
builders can skip the clip and count it by reason.
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np

from hcmtfg.errors import InputError
from hcmtfg.features import align
from hcmtfg.features import audio as audio_lib
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.media import video as video_lib

FPS = 25.0
CROP_SIZE = align.OUT_SIZE  # 128
# Longest release sampling window: example frame r <= 7, then 16 targets r+1..r+16.
MIN_FRAMES = 24
JPEG_QUALITY = 95
IMAGE_FORMATS = ("jpeg", "png")

# Why a clip was rejected (ClipError.reason); builders count failures by these.
UNREADABLE = "unreadable"  # missing, corrupt or undecodable file / no video stream
NO_AUDIO = "no_audio"  # no (decodable) audio track or audio file
TOO_SHORT = "too_short"  # fewer than min_frames video frames or audio too short
NO_FACE = "no_face"  # no face, or too many frames without one
BAD_LANDMARKS = "bad_landmarks"  # degenerate landmarks or alignment
FAILURE_REASONS = (UNREADABLE, NO_AUDIO, TOO_SHORT, NO_FACE, BAD_LANDMARKS)


class ClipError(InputError):
  """A clip that cannot become a training example.

  Attributes:
    reason: one of FAILURE_REASONS.
  """

  def __init__(self, path, problem: str, reason: str):
    if reason not in FAILURE_REASONS:
      raise ValueError(f"unknown clip failure reason {reason!r}")
    self.reason = reason
    super().__init__(path, problem)


@dataclasses.dataclass(frozen=True)
class ClipExample:
  """The features of one clip.

  Attributes:
    frames: (T, 128, 128, 3) uint8 RGB aligned face crops.
    landmarks: (T, 68, 2) float32 (x, y) landmark pixels in the crop frame.
    normalized_landmarks: (T, 136) float32 Procrustes-normalised landmarks
      (x0, y0, x1, y1, ...), roughly in [-0.2, 0.2], NOT multiplied by 5.
    mfcc: (M, 13) float32 MFCC of the padded 16 kHz audio, 100 rows per second.
    encoded_frames: T JPEG or PNG byte strings of `frames`, or None.
    pca_coefs: (T, k) float32 landmark PCA coefficients (x5 convention), or None.
    num_missing_frames: frames without a detected face (interpolated).
  """
  frames: np.ndarray
  landmarks: np.ndarray
  normalized_landmarks: np.ndarray
  mfcc: np.ndarray
  encoded_frames: list[bytes] | None = None
  pca_coefs: np.ndarray | None = None
  num_missing_frames: int = 0

  @property
  def num_frames(self) -> int:
    return int(self.frames.shape[0])


def encode_frames(frames_TxHxWx3: np.ndarray, image_format: str = "jpeg",
                  jpeg_quality: int = JPEG_QUALITY) -> list[bytes]:
  """Encodes RGB uint8 frames as JPEG (quality `jpeg_quality`) or PNG bytes."""
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, "
                     f"got {image_format!r}")
  ext, params = ((".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
                 if image_format == "jpeg" else
                 (".png", [cv2.IMWRITE_PNG_COMPRESSION, 3]))
  encoded = []
  for frame in frames_TxHxWx3:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
    if not ok:
      raise RuntimeError(f"OpenCV failed to encode a {frame.shape} frame")
    encoded.append(buf.tobytes())
  return encoded


def _read(video_path: str, audio_path: str | None,
          fps: float) -> tuple[np.ndarray, np.ndarray]:
  """(T, H, W, 3) uint8 frames and (N,) float32 16 kHz audio, or ClipError."""
  try:
    decoded = video_lib.read_video(
        video_path, fps=fps, with_audio="required" if audio_path is None else False)
  except InputError as e:
    reason = NO_AUDIO if "audio" in e.problem else UNREADABLE
    raise ClipError(video_path, e.problem, reason) from e
  if audio_path is None:
    signal = decoded.audio
  else:
    try:
      signal = audio_lib.load_audio(audio_path)
    except InputError as e:
      raise ClipError(audio_path, e.problem, NO_AUDIO) from e
  if signal is None or signal.size == 0:
    raise ClipError(video_path, "the audio track has no samples", NO_AUDIO)
  if not np.all(np.isfinite(signal)):
    raise ClipError(video_path, "the audio has NaN or infinite samples", NO_AUDIO)
  return decoded.frames, np.clip(signal, -1.0, 1.0).astype(np.float32)


def extract_clip(video_path: str | os.PathLike, *, analyzer,
                 pca: landmarks_lib.Pca | None = None,
                 image_format: str | None = "jpeg",
                 min_frames: int = MIN_FRAMES,
                 max_frames: int | None = None,
                 audio_path: str | os.PathLike | None = None,
                 mean_shape: np.ndarray | None = None,
                 templates: align.Templates | None = None,
                 fps: float = FPS,
                 track_kwargs: dict | None = None) -> ClipExample:
  """Reads a talking-face video and computes its training features.

  Args:
    video_path: any video ffmpeg reads (mp4, mpg, ...), resampled to `fps`.
    analyzer: an `hcmtfg.features.face.FaceAnalyzer` (dlib models; reuse one per process).
    pca: when given, also fills `pca_coefs` (T, k).
    image_format: 'jpeg' or 'png' fills `encoded_frames`; None skips encoding.
    min_frames: fewer video frames than this -> ClipError(TOO_SHORT).
    max_frames: keep at most this many leading frames and their audio (None: all).
    audio_path: a separate audio file (GRID's .wav); None = the video's own track,
      which is then required.
    mean_shape: Procrustes target; None = `landmarks.default_mean_shape()`.
    templates: crop templates for `align_clip`; None = align's default.
    fps: video frame rate of the output (25 everywhere in this project).
    track_kwargs: extra keyword arguments of `FaceAnalyzer.track`.

  Returns:
    A ClipExample (see its attributes for shapes and ranges).

  Raises:
    ClipError: the clip cannot be used (reason in FAILURE_REASONS).
  """
  video_path = os.fspath(video_path)
  audio_path = None if audio_path is None else os.fspath(audio_path)
  if image_format is not None and image_format not in IMAGE_FORMATS:
    raise ValueError(f"image_format must be None or one of {IMAGE_FORMATS}")
  frames, signal = _read(video_path, audio_path, fps)
  if max_frames is not None and frames.shape[0] > max_frames:
    # Keep the audio of the kept frames only (later windows see the end padding).
    frames = frames[:max_frames]
    signal = signal[:int(round(max_frames * audio_lib.SAMPLE_RATE / fps))]
  num_frames = frames.shape[0]
  if num_frames < min_frames:
    raise ClipError(video_path, f"{num_frames} video frames, fewer than the "
                    f"{min_frames} required", TOO_SHORT)
  audio_frames = audio_lib.num_video_frames(signal.size, audio_lib.SAMPLE_RATE, fps)
  if audio_frames < min_frames:
    raise ClipError(video_path, f"the audio covers {audio_frames} video frames, "
                    f"fewer than the {min_frames} required", TOO_SHORT)
  try:
    track = analyzer.track(frames, source=video_path, **(track_kwargs or {}))
  except InputError as e:
    raise ClipError(video_path, e.problem, NO_FACE) from e
  try:
    # One transform for the clip, from its mean landmarks and box (steady crops).
    crops, crop_lm, _ = align.align_clip(frames, track.landmarks, track.boxes,
                                         templates, reference=None)
    normalized = landmarks_lib.normalize_landmarks(crop_lm, mean_shape)
  except ValueError as e:
    raise ClipError(video_path, f"cannot align the face: {e}", BAD_LANDMARKS) from e
  if not (np.all(np.isfinite(crop_lm)) and np.all(np.isfinite(normalized))):
    raise ClipError(video_path, "non-finite landmarks", BAD_LANDMARKS)
  mfcc_Mx13 = audio_lib.mfcc(audio_lib.pad_for_video(signal))
  return ClipExample(
      frames=crops,
      landmarks=crop_lm.astype(np.float32),
      normalized_landmarks=normalized,
      mfcc=mfcc_Mx13,
      encoded_frames=(None if image_format is None
                      else encode_frames(crops, image_format)),
      pca_coefs=(None if pca is None else
                 landmarks_lib.project(pca, normalized).astype(np.float32)),
      num_missing_frames=int(track.missing.size))

