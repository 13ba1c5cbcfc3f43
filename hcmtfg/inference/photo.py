"""One face photo -> the example inputs of the networks (and its crop transform).

`prepare_photo` detects the face (the largest one when there are several),
crops and aligns it to the release's 128x128 frame (`hcmtfg.features.align`) and
normalises its landmarks exactly as the datasets do
(`landmarks.normalize_landmarks`), or with the release demo's `normLmarks`
when the release's shape model is given. The crop transform is kept for
pasting generated frames back into the photo (`hcmtfg.inference.compose`).
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging
import cv2
import numpy as np

from hcmtfg.errors import InputError
from hcmtfg.features import align
from hcmtfg.features import face as face_lib
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.media import image_io

MIN_FACE_SIZE = 48  # px, detection box height; smaller faces give blurry crops


@dataclasses.dataclass(frozen=True)
class PreparedPhoto:
  """The example photo, ready for the networks.

  Attributes:
    image: (S, S, 3) float32 in [-1, 1], VG-net's example image.
    crop: (128, 128, 3) uint8 aligned crop (the release's frame).
    crop_landmarks: (68, 2) float32 (x, y) landmarks in `crop` pixels.
    landmarks: (136,) float32 normalised landmarks (x0, y0, ...), roughly in
      [-0.2, 0.2], NOT multiplied by the PCA scale (generate applies it).
    transform: where the crop came from in `source_image` (for paste-back).
    source_image: (H, W, 3) uint8 the full photo.
    source: file name, or None for an in-memory image.
  """
  image: np.ndarray
  crop: np.ndarray
  crop_landmarks: np.ndarray
  landmarks: np.ndarray
  transform: align.AlignTransform
  source_image: np.ndarray
  source: str | None = None

  def landmarks_to_crop(self, lmark_Nx136: np.ndarray) -> np.ndarray:
    """Normalised landmarks (N, 136) -> (N, 68, 2) pixels of `crop`.

    Uses the similarity that takes this photo's normalised landmarks to its crop
    landmarks (normalisation is a similarity fit, so this inverts it).
    """
    matrix = align.estimate_similarity(self.landmarks.reshape(68, 2),
                                       self.crop_landmarks)
    points = np.asarray(lmark_Nx136, np.float64).reshape(-1, 68, 2)
    return (points @ matrix[:2, :2].T + matrix[:2, 2]).astype(np.float32)


def prepare_photo(path_or_image: str | os.PathLike | np.ndarray,
                  analyzer: face_lib.FaceAnalyzer,
                  templates: align.Templates | None = None, *,
                  image_size: int = align.OUT_SIZE,
                  shape_model: landmarks_lib.ReleaseShapeModel | None = None,
                  min_face_size: float = MIN_FACE_SIZE) -> PreparedPhoto:
  """Detects, aligns and normalises the face of a photo.

  The largest face is used when there are several (logged as a warning).

  Args:
    path_or_image: image file, or an (H, W, 3) RGB uint8 array.
    analyzer: dlib detector + landmark predictor.
    templates: crop templates (None: `align.default_templates()`, as the
      datasets; pass the release's for release weights).
    image_size: S of VG-net; the 128 crop is area-resized to it (as the input
      pipeline does for smaller configs).
    shape_model: None normalises like the datasets
      (`landmarks.normalize_landmarks`); the release's artefacts apply its
      `normLmarks` instead (a fixed canonical shape, as the release demo).
    min_face_size: smallest accepted face box height in pixels.

  Raises:
    InputError: not an image, no face, or a face smaller than min_face_size.
  """
  if isinstance(path_or_image, np.ndarray):
    source, image = None, image_io.to_rgb_uint8(path_or_image)
  else:
    source = os.fspath(path_or_image)
    image = image_io.load_image(source)
  gray = image_io.to_gray(image)
  boxes = analyzer.detect_all(gray)
  if not boxes:
    raise InputError(source, "no face found in the image (faces smaller than "
                     "about 40 px are not detected)")
  box = max(boxes, key=lambda b: (b.area, b.score))
  if len(boxes) > 1:
    logging.warning("%s: %d faces found; using the largest (%.0fx%.0f px at "
                    "%.0f,%.0f)", source or "image", len(boxes), box.width,
                    box.height, box.left, box.top)
  if box.height < min_face_size:
    raise InputError(source, f"the face is too small ({box.height:.0f} px high; "
                     f"at least {min_face_size:.0f} px needed)")
  points = analyzer.landmarks(gray, box)
  try:
    aligned = align.align_face(image, points, box, templates)
    if shape_model is None:
      normalised = landmarks_lib.normalize_landmarks(aligned.landmarks)[0]
    else:
      normalised = landmarks_lib.release_normalise(aligned.landmarks,
                                                   shape_model)[0]
  except (ValueError, np.linalg.LinAlgError) as e:
    raise InputError(source, f"cannot align the face: {e}") from e
  crop = aligned.crop
  resized = crop if image_size == crop.shape[0] else cv2.resize(
      crop, (image_size, image_size), interpolation=cv2.INTER_AREA)
  return PreparedPhoto(
      image=(resized.astype(np.float32) / 127.5 - 1.0),
      crop=crop, crop_landmarks=aligned.landmarks.astype(np.float32),
      landmarks=np.asarray(normalised, np.float32), transform=aligned.transform,
      source_image=image, source=source)
