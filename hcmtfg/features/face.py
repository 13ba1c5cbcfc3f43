"""Face detection, 68-point landmarks and landmark tracking with dlib.

Images are RGB uint8 arrays of shape (H, W, 3) (a 2-D grayscale array is accepted
too; `hcmtfg.media.image_io` reads photos and converts other pixel types); landmark
arrays are float32 (68, 2) pixel coordinates (x, y) in the dlib 68-point
(iBUG 300-W) order. Detection and landmark prediction run on the grayscale
image, as in the release demo, with dlib's HOG frontal-face detector and the 68-point
shape predictor shipped by the `face_recognition_models` package.

Video tracking (`FaceAnalyzer.track`) runs the detector only now and then and
otherwise predicts each frame's landmarks inside a box derived from the previous
frame's landmarks; see `track` for the rules and the gap policy.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import NamedTuple, Sequence

from absl import logging
import cv2
import dlib
import numpy as np

from hcmtfg.errors import InputError
from hcmtfg.media import image_io

PREDICTOR_FILENAME = "shape_predictor_68_face_landmarks.dat"
NUM_LANDMARKS = 68


def find_predictor_path(path: str | os.PathLike | None = None) -> str:
  """Returns the path of dlib's 68-point shape predictor file.

  Args:
    path: an explicit `.dat` file, or None to use the copy inside the installed
      `face_recognition_models` package (located without importing it, since its
      `__init__` pulls in the deprecated `pkg_resources`).

  Raises:
    InputError: the file cannot be found.
  """
  if path is not None:
    if not os.path.isfile(path):
      raise InputError(path, "dlib 68-point shape predictor file not found")
    return os.fspath(path)
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None:
    raise InputError(
        PREDICTOR_FILENAME,
        "package face_recognition_models is not installed "
        "(pip install face-recognition-models) and no predictor path was given")
  folders = list(spec.submodule_search_locations or [])
  if spec.origin:
    folders.append(os.path.dirname(spec.origin))
  for folder in folders:
    candidate = os.path.join(folder, "models", PREDICTOR_FILENAME)
    if os.path.isfile(candidate):
      return candidate
  raise InputError(
      PREDICTOR_FILENAME,
      f"not found in face_recognition_models (searched {folders})")


@dataclasses.dataclass(frozen=True)
class Box:
  """A face box in pixel coordinates, with dlib's corner values.

  `width`/`height` follow the release (`right - left`, `bottom - top`), not dlib's
  inclusive `right - left + 1`. `score` is the detector's confidence (None for a
  box derived from landmarks).
  """
  left: float
  top: float
  right: float
  bottom: float
  score: float | None = None

  @property
  def width(self) -> float:
    return self.right - self.left

  @property
  def height(self) -> float:
    return self.bottom - self.top

  @property
  def area(self) -> float:
    return max(self.width, 0.0) * max(self.height, 0.0)

  @property
  def center(self) -> tuple[float, float]:
    return (0.5 * (self.left + self.right), 0.5 * (self.top + self.bottom))

  def as_array(self) -> np.ndarray:
    """(4,) float32 [left, top, right, bottom]."""
    return np.array([self.left, self.top, self.right, self.bottom], np.float32)

  @classmethod
  def from_array(cls, ltrb: Sequence[float]) -> Box:
    return cls(*(float(v) for v in ltrb[:4]))

  def to_dlib(self) -> dlib.rectangle:
    return dlib.rectangle(int(round(self.left)), int(round(self.top)),
                          int(round(self.right)), int(round(self.bottom)))

  def iou(self, other: Box) -> float:
    """Intersection over union with another box, in [0, 1]."""
    w = min(self.right, other.right) - max(self.left, other.left)
    h = min(self.bottom, other.bottom) - max(self.top, other.top)
    inter = max(w, 0.0) * max(h, 0.0)
    union = self.area + other.area - inter
    return inter / union if union > 0 else 0.0


class Face(NamedTuple):
  """One detected face: its detector box and (68, 2) float32 landmarks (x, y)."""
  box: Box
  landmarks: np.ndarray


class FaceAnalyzer:
  """dlib HOG face detector + 68-point shape predictor.

  Attributes:
    upsample: how many times the detector upsamples the image (the release uses 1;
      finds faces down to ~40 px, at several times the cost of 0).
    num_detector_calls: detector runs so far (for benchmarks and tests).
  """

  def __init__(self, predictor_path: str | os.PathLike | None = None,
               upsample: int = 1):
    self.upsample = int(upsample)
    self.num_detector_calls = 0
    self._detector = dlib.get_frontal_face_detector()
    self._predictor = dlib.shape_predictor(find_predictor_path(predictor_path))

  def detect_all(self, image: np.ndarray) -> list[Box]:
    """All faces in an (H, W, 3) RGB or (H, W) gray uint8 image, best score first."""
    self.num_detector_calls += 1
    rects, scores, _ = self._detector.run(image_io.to_gray(image),
                                          self.upsample, 0.0)
    boxes = [Box(r.left(), r.top(), r.right(), r.bottom(), float(s))
             for r, s in zip(rects, scores)]
    return sorted(boxes, key=lambda b: -b.score)

  def detect(self, image: np.ndarray,
             source: str | os.PathLike | None = None) -> Box:
    """The face box of an image; the largest one when there are several.

    Args:
      image: (H, W, 3) RGB or (H, W) gray uint8.
      source: file name used in log lines and error messages.

    Raises:
      InputError: no face was found.
    """
    boxes = self.detect_all(image)
    if not boxes:
      raise InputError(source, "no face found in the image")
    best = max(boxes, key=lambda b: (b.area, b.score))
    if len(boxes) > 1:
      logging.info(
          "%s: %d faces found; using the largest (%.0fx%.0f px at %.0f,%.0f)",
          source if source is not None else "image", len(boxes), best.width,
          best.height, best.left, best.top)
    return best

  def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
    """(68, 2) float32 landmark (x, y) pixel positions predicted inside `box`."""
    shape = self._predictor(image_io.to_gray(image), box.to_dlib())
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)

  def detect_landmarks(self, image: np.ndarray,
                       source: str | os.PathLike | None = None) -> Face:
    """Detects the (largest) face and its 68 landmarks; InputError if none."""
    gray = image_io.to_gray(image)
    box = self.detect(gray, source=source)
    return Face(box, self.landmarks(gray, box))

  def track(self, frames: np.ndarray | Sequence[np.ndarray], *,
            redetect_every: int = 25, drift_threshold: float = 0.25,
            min_patch_correlation: float = 0.6,
            max_missing_fraction: float = 0.2, max_gap: int = 5,
            source: str | os.PathLike | None = None) -> TrackResult:
    """Landmarks of every frame of a clip, running the detector only when needed.

    The detector runs on the first frame, every `redetect_every` frames, after a
    frame without a face, and whenever tracking looks unreliable. Other frames
    predict landmarks inside a box placed on the previous frame's landmarks, with
    the landmark-to-box offset and size taken at the last detection (one shape
    predictor call, far cheaper than a detector run).
    Tracking looks unreliable, and the frame is re-detected, when the box placed on
    the new landmarks has moved from the last detection box by more than
    `drift_threshold` x that box's width or changed size by more than that
    fraction, or when the grey-level patch inside it correlates with the previous
    frame's patch by less than `min_patch_correlation` (the face left, the shot cut).

    Gap policy: frames where the detector finds no face are reported in `missing`
    and filled by linear interpolation of the neighbouring frames (edges copy the
    nearest frame) when they are at most `max_missing_fraction` of the clip and no
    run of them is longer than `max_gap` frames (0.2 s at 25 fps by default);
    otherwise the clip is rejected with InputError.

    Args:
      frames: (T, H, W, 3) RGB uint8 frames (or a sequence of them); 2-D gray ok.
      redetect_every: maximum frames between detector runs; 1 = detect every frame.
      drift_threshold: see above (fraction of the detection box width / size).
      min_patch_correlation: see above, in [-1, 1].
      max_missing_fraction: largest tolerated fraction of frames without a face.
      max_gap: longest tolerated run of consecutive frames without a face.
      source: file name for log lines and errors.

    Returns:
      A TrackResult.

    Raises:
      InputError: empty clip, or too many / too long runs of frames without a face.
    """
    num_frames = len(frames)
    if num_frames == 0:
      raise InputError(source, "the video has no frames")
    lmarks_Tx68x2 = np.zeros((num_frames, NUM_LANDMARKS, 2), np.float32)
    boxes_Tx4 = np.zeros((num_frames, 4), np.float32)
    detected_T = np.zeros(num_frames, bool)
    found_T = np.zeros(num_frames, bool)
    calls_before = self.num_detector_calls
    prev_lm = prev_patch = relation = ref_box = None
    last_detection = -num_frames
    for t in range(num_frames):
      gray = image_io.to_gray(np.asarray(frames[t]))
      lm = None
      if prev_lm is not None and t - last_detection < redetect_every:
        lm = self.landmarks(gray, _box_from_landmarks(prev_lm, relation))
        box = _box_from_landmarks(lm, relation)
        patch = _patch(gray, box)
        if (_drifted(box, ref_box, drift_threshold) or patch is None or
            prev_patch is None or
            float(np.mean(patch * prev_patch)) < min_patch_correlation):
          lm = None
      if lm is None:
        boxes = self.detect_all(gray)
        if not boxes:
          prev_lm = prev_patch = None
          continue
        guess = (_box_from_landmarks(prev_lm, relation)
                 if prev_lm is not None else None)
        box = _pick_box(boxes, guess)
        lm = self.landmarks(gray, box)
        relation = _landmark_box_relation(lm, box)
        ref_box, last_detection, detected_T[t] = box, t, True
        patch = _patch(gray, box)
      lmarks_Tx68x2[t], boxes_Tx4[t], found_T[t] = lm, box.as_array(), True
      prev_lm, prev_patch = lm, patch
    missing = np.flatnonzero(~found_T)
    if missing.size:
      _check_gaps(found_T, max_missing_fraction, max_gap, source)
      logging.info("%s: no face in %d of %d frames %s; interpolated",
                   source if source is not None else "video", missing.size,
                   num_frames, missing.tolist()[:20])
      lmarks_Tx68x2 = _interpolate(lmarks_Tx68x2, found_T)
      boxes_Tx4 = _interpolate(boxes_Tx4, found_T)
    return TrackResult(lmarks_Tx68x2, boxes_Tx4, detected_T, missing,
                       self.num_detector_calls - calls_before)


@dataclasses.dataclass(frozen=True)
class TrackResult:
  """Per-frame faces of a clip of T frames.

  Attributes:
    landmarks: (T, 68, 2) float32 (x, y) pixels; missing frames interpolated.
    boxes: (T, 4) float32 [left, top, right, bottom]: the detector's box on frames
      where it ran, else the box placed on the frame's landmarks.
    detected: (T,) bool, True where the detector ran and found the face.
    missing: (M,) int64 indices of the frames where no face was found.
    num_detector_calls: how many times the detector ran on this clip.
  """
  landmarks: np.ndarray
  boxes: np.ndarray
  detected: np.ndarray
  missing: np.ndarray
  num_detector_calls: int


def _center_and_scale(lm_68x2: np.ndarray) -> tuple[np.ndarray, float]:
  """Landmark centroid (2,) and RMS distance from it (pixels)."""
  center = lm_68x2.mean(axis=0)
  return center, float(np.sqrt(np.mean(np.sum((lm_68x2 - center)**2, -1))))


def _landmark_box_relation(lm_68x2: np.ndarray, box: Box) -> np.ndarray:
  """(4,) box centre offset and size in units of the landmarks' RMS radius."""
  center, scale = _center_and_scale(lm_68x2.astype(np.float64))
  bx, by = box.center
  return np.array([(bx - center[0]) / scale, (by - center[1]) / scale,
                   box.width / scale, box.height / scale])


def _box_from_landmarks(lm_68x2: np.ndarray, relation: np.ndarray) -> Box:
  """The detector-like box for landmarks, given `_landmark_box_relation`."""
  center, scale = _center_and_scale(lm_68x2.astype(np.float64))
  cx, cy = center + relation[:2] * scale
  w, h = relation[2:] * scale
  return Box(cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h)


def _drifted(box: Box, ref: Box, threshold: float) -> bool:
  """Whether `box` moved or resized relative to `ref` by more than `threshold`."""
  shift = np.hypot(box.center[0] - ref.center[0], box.center[1] - ref.center[1])
  size_ratio = max(box.width, 1e-6) / max(ref.width, 1e-6)
  return bool(shift > threshold * ref.width or
              abs(size_ratio - 1.0) > threshold)


def _patch(gray: np.ndarray, box: Box, size: int = 32) -> np.ndarray | None:
  """Zero-mean, unit-variance (size, size) patch inside `box`; None if off-image."""
  h, w = gray.shape
  left, top = max(int(box.left), 0), max(int(box.top), 0)
  right, bottom = min(int(box.right) + 1, w), min(int(box.bottom) + 1, h)
  if right - left < 8 or bottom - top < 8:
    return None
  patch = cv2.resize(gray[top:bottom, left:right], (size, size),
                     interpolation=cv2.INTER_AREA).astype(np.float32)
  return (patch - patch.mean()) / (patch.std() + 1e-3)


def _pick_box(boxes: list[Box], guess: Box | None) -> Box:
  """The box overlapping the tracked face most, else the largest."""
  if guess is not None:
    best = max(boxes, key=guess.iou)
    if guess.iou(best) > 0.3:
      return best
  return max(boxes, key=lambda b: (b.area, b.score))


def _check_gaps(found_T: np.ndarray, max_missing_fraction: float, max_gap: int,
                source) -> None:
  """Raises InputError when the frames without a face break the gap policy."""
  num_frames, num_missing = found_T.size, int(np.sum(~found_T))
  if num_missing == num_frames:
    raise InputError(source, f"no face found in any of the {num_frames} frames")
  longest = run = 0
  for ok in found_T:
    run = 0 if ok else run + 1
    longest = max(longest, run)
  if num_missing > max_missing_fraction * num_frames or longest > max_gap:
    raise InputError(
        source, f"no face in {num_missing} of {num_frames} frames (longest gap "
        f"{longest} frames; allowed: {max_missing_fraction:.0%} of the frames "
        f"and gaps of at most {max_gap} frames)")


def _interpolate(values_TxD: np.ndarray, found_T: np.ndarray) -> np.ndarray:
  """Linearly interpolates rows where `found_T` is False (edges copy the nearest)."""
  times = np.arange(found_T.size)
  flat = values_TxD.reshape(found_T.size, -1)
  filled = np.stack([np.interp(times, times[found_T], column[found_T])
                     for column in flat.T], axis=-1)
  return filled.reshape(values_TxD.shape).astype(values_TxD.dtype)
