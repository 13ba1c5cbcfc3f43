"""Crop and align a face to the 128x128 frame of the release demo.

The release demo's recipe, step by step, for an (H, W, 3) uint8 image, its
dlib box and (68, 2) landmarks:
  1. Square crop of side 2r, r = int(0.64 * box height), whose corner is
     (cx - r, cy - r) with cx = left + int(0.5 * width), cy = top + int(0.5 * height)
     (width = right - left, height = bottom - top); resized to 163x163 with
     INTER_AREA; landmarks become (landmarks - corner) * 163 / (2r). The release
     slices the array, which breaks when the square leaves the image; here the parts
     outside the image are black (zeros), like the warp's fill.
  2. A similarity transform (least squares, Umeyama) mapping the template's points
     27..44 (nose and eyes) onto the cropped landmarks' points 27..44. The template
     is the "open" one when the eyes are open by the release's test (upper lids 37, 38
     more than 9 px in total above lower lids 40, 41, in 163-px units), else the
     "closed" one.
  3. Bilinear warp (skimage, black fill) to 163x163, scaled to 0..255 and truncated
     to uint8, then rows/cols 1..128 -> the 128x128 crop.

Templates: the release's `base_68.npy` / `base_68_close.npy` are not ours to ship, so
`load_release_templates(basics_dir)` reads them from a user-supplied folder (use them
to reproduce the release crops and to feed converted release weights), and
`default_templates()` returns our own template (the same for open and closed eyes):
the generalised-Procrustes mean of dlib's 68 landmarks over the ten reference face
photos (our computation, `mean_template`, re-checked by align_test.py; no photo is
shipped), placed with the release's framing. Only points 27..44 enter the transform,
so the framing is 3 numbers measured from the release template: the nose-and-eyes
centroid (x, y) = FRAME_CENTER and their RMS radius FRAME_RADIUS (the two release
templates are identical on points 27..67). Crops made with it put the nose and eyes
within ~0.7 px of the release crops' (measured mean abs pixel difference to the
release crops 4-8 on 0..255); pass the release templates for exact release crops.

For video, `align_clip` uses one crop and one transform for the whole clip (from a
reference frame, or from the clip-mean landmarks and box), so the face does not jitter.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import cv2
import numpy as np
from skimage import transform as sk_transform

from hcmtfg.errors import InputError
from hcmtfg.features.face import Box

CROP_RADIUS_FACTOR = 0.64
WARP_SIZE = 163
OUT_SIZE = 128
ALIGN_POINTS = slice(27, 45)
EYE_OPEN_THRESHOLD = -9.0
# The release template's points 27..44: centroid (x, y) and RMS radius, in 163-px units.
FRAME_CENTER = (60.0556, 51.7222)
FRAME_RADIUS = 24.8736


@dataclasses.dataclass(frozen=True)
class Templates:
  """Two (68, 2) float64 landmark templates (x, y) in the 163x163 warp frame."""
  open: np.ndarray
  closed: np.ndarray


def load_release_templates(basics_dir: str | os.PathLike) -> Templates:
  """Reads the release's base_68.npy / base_68_close.npy from `basics_dir`."""
  arrays = []
  for name in ("base_68.npy", "base_68_close.npy"):
    path = os.path.join(basics_dir, name)
    try:
      array = np.load(path).astype(np.float64)
    except (OSError, ValueError) as e:
      raise InputError(path, f"cannot read the release template: {e}") from e
    if array.shape != (68, 2):
      raise InputError(path, f"expected a (68, 2) template, got {array.shape}")
    arrays.append(array)
  return Templates(*arrays)


def default_templates() -> Templates:
  """Our own template (see the module docstring), used for open and closed eyes."""
  template = _place(np.array(_MEAN_SHAPE, np.float64).reshape(68, 2))
  return Templates(template, template)


def mean_template(landmark_sets: Sequence[np.ndarray],
                  iterations: int = 10) -> np.ndarray:
  """Generalised-Procrustes mean of several faces' landmarks, in the warp frame.

  Args:
    landmark_sets: N arrays of (68, 2) landmarks (any pixel frame).
    iterations: rounds of aligning every face to the current mean.

  Returns:
    (68, 2) float64 mean shape placed with FRAME_CENTER / FRAME_RADIUS.
  """
  shapes = [_normalise_frame(np.asarray(s, np.float64)) for s in landmark_sets]
  mean = shapes[0]
  for _ in range(iterations):
    aligned = [apply_matrix(estimate_similarity(s[ALIGN_POINTS],
                                                mean[ALIGN_POINTS]), s)
               for s in shapes]
    mean = _normalise_frame(np.mean(aligned, axis=0))
  return _place(mean)


def _normalise_frame(shape_68x2: np.ndarray) -> np.ndarray:
  """Moves points 27..44 to centroid 0 and RMS radius 1."""
  pts = shape_68x2[ALIGN_POINTS]
  center = pts.mean(0)
  radius = np.sqrt(np.mean(np.sum((pts - center)**2, -1)))
  return (shape_68x2 - center) / radius


def _place(unit_shape_68x2: np.ndarray) -> np.ndarray:
  return _normalise_frame(unit_shape_68x2) * FRAME_RADIUS + np.array(FRAME_CENTER)


def estimate_similarity(src_Nx2: np.ndarray, dst_Nx2: np.ndarray) -> np.ndarray:
  """Least-squares similarity (rotation, uniform scale, shift) taking src to dst.

  Umeyama's closed form (no reflection). Returns a (3, 3) float64 matrix M with
  [x', y', 1] = M @ [x, y, 1].
  """
  src, dst = np.asarray(src_Nx2, np.float64), np.asarray(dst_Nx2, np.float64)
  src_mean, dst_mean = src.mean(0), dst.mean(0)
  src_c, dst_c = src - src_mean, dst - dst_mean
  cov = dst_c.T @ src_c / len(src)
  u, sing, vt = np.linalg.svd(cov)
  sign = np.eye(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[1, 1] = -1.0
  rotation = u @ sign @ vt
  scale = np.trace(np.diag(sing) @ sign) / np.mean(np.sum(src_c**2, -1))
  matrix = np.eye(3)
  matrix[:2, :2] = scale * rotation
  matrix[:2, 2] = dst_mean - scale * rotation @ src_mean
  return matrix


def apply_matrix(matrix_3x3: np.ndarray, points_Nx2: np.ndarray) -> np.ndarray:
  """Applies a (3, 3) homogeneous 2-D transform to (N, 2) points."""
  points = np.asarray(points_Nx2, np.float64)
  return points @ matrix_3x3[:2, :2].T + matrix_3x3[:2, 2]


def eyes_open(crop_landmarks_68x2: np.ndarray) -> bool:
  """The release's eye test on landmarks in the 163-px crop frame."""
  lm = np.asarray(crop_landmarks_68x2, np.float64)
  return bool(np.sum(lm[37:39, 1] - lm[40:42, 1]) < EYE_OPEN_THRESHOLD)


@dataclasses.dataclass(frozen=True)
class AlignTransform:
  """Where a face crop comes from.

  Attributes:
    left, top: integer corner of the square crop in the source image (may be < 0).
    size: its side 2r in source pixels.
    matrix: (3, 3) similarity taking 163-px warp-frame points (x, y) to 163-px
      cropped-and-resized points (the release's `tform`).
  """
  left: int
  top: int
  size: int
  matrix: np.ndarray

  def to_resized(self, points_Nx2: np.ndarray) -> np.ndarray:
    """Source-image points -> the 163x163 resized square crop (release scaling)."""
    scale = WARP_SIZE / self.size
    return (np.asarray(points_Nx2, np.float64) - [self.left, self.top]) * scale

  def points_to_crop(self, points_Nx2: np.ndarray) -> np.ndarray:
    """Source-image (x, y) points -> (x, y) in the 128x128 output crop."""
    inverse = np.linalg.inv(self.matrix)
    return apply_matrix(inverse, self.to_resized(points_Nx2)) - 1.0

  def warp(self, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 source image -> (128, 128, 3) uint8 aligned crop."""
    roi = _square_crop(image, self.left, self.top, self.size)
    roi = cv2.resize(roi, (WARP_SIZE, WARP_SIZE), interpolation=cv2.INTER_AREA)
    warped = sk_transform.warp(roi, self.matrix, output_shape=(WARP_SIZE,
                                                               WARP_SIZE))
    warped = (warped * 255).astype(np.uint8)
    return warped[1:OUT_SIZE + 1, 1:OUT_SIZE + 1]


def _square_crop(image: np.ndarray, left: int, top: int, size: int) -> np.ndarray:
  """image[top:top+size, left:left+size] with zeros where it leaves the image."""
  h, w = image.shape[:2]
  out = np.zeros((size, size) + image.shape[2:], image.dtype)
  y0, y1 = max(top, 0), min(top + size, h)
  x0, x1 = max(left, 0), min(left + size, w)
  if y1 > y0 and x1 > x0:
    out[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
  return out


def crop_square(box: Box) -> tuple[int, int, int]:
  """The release's square around a detection box: (left, top, side 2r)."""
  left, top = int(box.left), int(box.top)
  width, height = int(box.right) - left, int(box.bottom) - top
  radius = int(CROP_RADIUS_FACTOR * height)
  if radius < 1:
    raise ValueError(f"face box too small to crop: {box}")
  return (left + int(0.5 * width) - radius, top + int(0.5 * height) - radius,
          2 * radius)


def estimate_alignment(landmarks_68x2: np.ndarray, box: Box,
                       templates: Templates | None = None) -> AlignTransform:
  """The release's crop square and similarity for one face (see module docstring)."""
  templates = templates or default_templates()
  left, top, size = crop_square(box)
  crop = AlignTransform(left, top, size, np.eye(3))
  resized_lm = crop.to_resized(landmarks_68x2)
  template = templates.open if eyes_open(resized_lm) else templates.closed
  matrix = estimate_similarity(
      np.float32(template[ALIGN_POINTS]), np.float32(resized_lm[ALIGN_POINTS]))
  return dataclasses.replace(crop, matrix=matrix)


@dataclasses.dataclass(frozen=True)
class AlignedFace:
  """crop: (128, 128, 3) uint8; landmarks: (68, 2) float32 (x, y) in the crop."""
  crop: np.ndarray
  landmarks: np.ndarray
  transform: AlignTransform


def align_face(image: np.ndarray, landmarks_68x2: np.ndarray, box: Box,
               templates: Templates | None = None) -> AlignedFace:
  """Crops and aligns one face as the release demo does.

  Args:
    image: (H, W, 3) uint8 (RGB or BGR: channels are processed independently).
    landmarks_68x2: the face's dlib landmarks (x, y) in image pixels.
    box: its detection box.
    templates: alignment templates; None = `default_templates()`.
  """
  tform = estimate_alignment(landmarks_68x2, box, templates)
  return AlignedFace(tform.warp(image),
                     tform.points_to_crop(landmarks_68x2).astype(np.float32),
                     tform)


def align_clip(frames: np.ndarray | Sequence[np.ndarray],
               landmarks_Tx68x2: np.ndarray, boxes_Tx4: np.ndarray,
               templates: Templates | None = None,
               reference: int | None = 0
               ) -> tuple[np.ndarray, np.ndarray, AlignTransform]:
  """Crops and aligns every frame of a clip with ONE transform.

  Args:
    frames: (T, H, W, 3) uint8 frames.
    landmarks_Tx68x2: per-frame landmarks (e.g. `TrackResult.landmarks`).
    boxes_Tx4: per-frame [left, top, right, bottom] boxes (`TrackResult.boxes`).
    templates: alignment templates; None = `default_templates()`.
    reference: frame whose landmarks and box define the transform; None = the
      clip's mean landmarks and mean box (steadier when the head moves a little).

  Returns:
    crops (T, 128, 128, 3) uint8, crop landmarks (T, 68, 2) float32 (x, y), and
    the transform.
  """
  landmarks_Tx68x2 = np.asarray(landmarks_Tx68x2, np.float64)
  boxes_Tx4 = np.asarray(boxes_Tx4, np.float64)
  if len(frames) != len(landmarks_Tx68x2) or len(frames) != len(boxes_Tx4):
    raise ValueError(f"{len(frames)} frames but {len(landmarks_Tx68x2)} "
                     f"landmark sets and {len(boxes_Tx4)} boxes")
  if reference is None:
    ref_lm, ref_box = landmarks_Tx68x2.mean(0), boxes_Tx4.mean(0)
  else:
    ref_lm, ref_box = landmarks_Tx68x2[reference], boxes_Tx4[reference]
  tform = estimate_alignment(ref_lm, Box.from_array(ref_box), templates)
  crops = np.stack([tform.warp(np.asarray(frame)) for frame in frames])
  crop_lm = tform.points_to_crop(landmarks_Tx68x2.reshape(-1, 2))
  return crops, crop_lm.reshape(-1, 68, 2).astype(np.float32), tform


# Our template's unit shape: 68 (x, y) points, generalised-Procrustes mean of dlib
# landmarks over the ten photos in the reference data's faces/ folder, normalised so
# that points 27..44 have centroid 0 and RMS radius 1 (recomputed in align_test.py).
_MEAN_SHAPE = (
    -2.3772, -0.4849, -2.3685, 0.1706, -2.3212, 0.8197, -2.2193, 1.4593,
    -2.0121, 2.0615, -1.6649, 2.5842, -1.1698, 3.0259, -0.6143, 3.3695,
    0.0213, 3.4817, 0.6402, 3.4129, 1.1835, 3.0953, 1.6787, 2.6925, 2.0569,
    2.1880, 2.2918, 1.6028, 2.4331, 0.9795, 2.5423, 0.3558, 2.6083, -0.2637,
    -1.8029, -0.9975, -1.4862, -1.2659, -1.0469, -1.3724, -0.5858, -1.3243,
    -0.1588, -1.1403, 0.6803, -1.1041, 1.0924, -1.2641, 1.5341, -1.2933,
    1.9461, -1.1801, 2.2053, -0.8660, 0.2368, -0.6108, 0.2318, -0.2354,
    0.2228, 0.1312, 0.2161, 0.5159, -0.2878, 0.9097, -0.0600, 0.9746, 0.1752,
    1.0371, 0.4045, 1.0021, 0.6232, 0.9539, -1.3055, -0.5169, -1.0150,
    -0.6585, -0.6968, -0.6566, -0.4264, -0.4661, -0.7151, -0.3991, -1.0413,
    -0.4053, 0.8377, -0.4186, 1.1425, -0.5877, 1.4572, -0.5695, 1.6928,
    -0.4037, 1.4518, -0.3110, 1.1393, -0.3306, -0.7884, 1.8177, -0.4277,
    1.6320, -0.0810, 1.5321, 0.1446, 1.6051, 0.3768, 1.5545, 0.6934, 1.6877,
    1.0068, 1.8880, 0.6853, 2.1652, 0.3621, 2.2686, 0.1028, 2.2815, -0.1383,
    2.2505, -0.4708, 2.1130, -0.6350, 1.8205, -0.1016, 1.7577, 0.1332, 1.7983,
    0.3668, 1.7860, 0.8587, 1.8880, 0.3628, 1.9312, 0.1245, 1.9399, -0.1067,
    1.9048)
