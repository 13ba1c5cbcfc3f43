"""Animating a face photo: landmark motion, piecewise-affine warp, mouth interior.

A `Stage` is one clip's version of an identity photo: the photo cropped into the
256x256 frame (face ~40-50% of the width, random scale/rotation/shift/mirror, colour
jitter), its 68 dlib landmarks in that frame, a halo of anchors below the jaw line
(spreads the jaw drop over the neck), a ring of anchors around the head (moves with
the head) and anchors on the frame border (fixed). The landmarks are moved per
frame by `animate_rest` (jaw drop, lip opening, rounding/spreading, blinks, 3-D head
rotation with a depth template, translation), and `render` warps the photo
with a piecewise-affine map over a Delaunay triangulation of all those points: one
triangle-index raster per frame (cv2.fillConvexPoly), one affine per triangle, one
vectorised backward map and one cv2.remap. The open mouth is painted (mouth.py).

Coordinates are (x, y) pixels in the 256x256 frame; images are RGB uint8.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import scipy.spatial

from data_pipelines.synthetic import mouth

FRAME_SIZE = 256
# Mirror permutation of the 68-point scheme (left <-> right).
MIRROR_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30]
    + [35, 34, 33, 32, 31] + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])
# Depth of each landmark in face widths, in front of the ear-to-ear plane
# (written for the image-left half, then made left-right symmetric).
_DEPTH_HALF = np.concatenate([
    0.35 * np.sin(np.pi * np.arange(17) / 16) ** 1.5,  # jaw line
    [0.25, 0.32, 0.37, 0.40, 0.42, 0.42, 0.40, 0.37, 0.32, 0.25],  # brows
    [0.42, 0.47, 0.53, 0.60],  # nose bridge
    [0.45, 0.50, 0.53, 0.50, 0.45],  # nostrils
    [0.25, 0.30, 0.31, 0.32, 0.30, 0.29], [0.0] * 6,  # left eye; right = mirror
    [0.38, 0.43, 0.46, 0.47, 0.46, 0.43, 0.38, 0.43, 0.46, 0.47, 0.46, 0.43],
    [0.39, 0.44, 0.45, 0.44, 0.39, 0.44, 0.45, 0.44],
])
_DEPTH_68 = np.where(np.arange(68) == MIRROR_68, _DEPTH_HALF,
                     np.maximum(_DEPTH_HALF, _DEPTH_HALF[MIRROR_68]))
MAX_GAP = 0.45  # inner-lip gap at lip_open = 1, in eye distances.
_PIVOT_DEPTH = -0.5  # head rotation pivot, face widths behind the ear plane.
_INNER_UPPER, _INNER_LOWER = [61, 62, 63], [67, 66, 65]
_BORDER = np.linspace(-1.0, FRAME_SIZE, 5)


@dataclasses.dataclass(frozen=True)
class Appearance:
  """Per-clip identity augmentation."""
  face_width: float  # fraction of the frame width covered by the jaw line.
  rotation_deg: float
  shift_px: tuple[float, float]
  mirror: bool
  gamma: float
  contrast: float
  brightness: float
  channel_gains: tuple[float, float, float]
  saturation: float


def random_appearance(rng: np.random.Generator) -> Appearance:
  """Face 40-50% of the frame width, +-4 deg, +-8 px, mirrored half the time, colour."""
  return Appearance(
      face_width=float(rng.uniform(0.40, 0.50)),
      rotation_deg=float(rng.uniform(-4, 4)),
      shift_px=(float(rng.uniform(-8, 8)), float(rng.uniform(-6, 6))),
      mirror=bool(rng.random() < 0.5),
      gamma=float(rng.uniform(0.85, 1.15)),
      contrast=float(rng.uniform(0.85, 1.15)),
      brightness=float(rng.uniform(-0.06, 0.06)),
      channel_gains=tuple(float(g) for g in rng.uniform(0.92, 1.08, 3)),
      saturation=float(rng.uniform(0.75, 1.2)))


def _similarity(landmarks: np.ndarray, appearance: Appearance) -> np.ndarray:
  """2x3 affine: photo -> frame, eye line level (+ jitter), face centred."""
  eye_l, eye_r = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
  angle = np.arctan2(*(eye_r - eye_l)[::-1]) - np.deg2rad(appearance.rotation_deg)
  scale = appearance.face_width * FRAME_SIZE / np.linalg.norm(landmarks[16] - landmarks[0])
  c, s = np.cos(-angle) * scale, np.sin(-angle) * scale
  lin = np.array([[c, -s], [s, c]])
  if appearance.mirror:
    lin = np.diag([-1.0, 1.0]) @ lin
  centre = 0.5 * (landmarks.min(0) + landmarks.max(0))
  target = np.array([FRAME_SIZE / 2 + appearance.shift_px[0],
                     FRAME_SIZE / 2 + 6 + appearance.shift_px[1]])
  return np.concatenate([lin, (target - lin @ centre)[:, None]], axis=1)


def _colour(image: np.ndarray, a: Appearance) -> np.ndarray:
  """Gamma, saturation, contrast, brightness and white balance of a uint8 image."""
  x = image.astype(np.float32) / 255.0
  x = x ** a.gamma
  grey = x.mean(axis=2, keepdims=True)
  x = grey + a.saturation * (x - grey)
  x = (x - 0.5) * a.contrast + 0.5 + a.brightness
  x = x * np.asarray(a.channel_gains, np.float32)
  return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def face_axes(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """Unit vectors along the eye line (ex) and down the face (ey), eye distance (px)."""
  ex = lm[42:48].mean(0) - lm[36:42].mean(0)
  unit = float(np.linalg.norm(ex))
  ex = ex / unit
  return ex, np.array([-ex[1], ex[0]]), unit


def close_mouth(lm: np.ndarray) -> np.ndarray:
  """Rest shape: the inner lips meet halfway; the outer lips follow."""
  rest = lm.copy()
  _, ey, _ = face_axes(lm)
  gap = ((lm[_INNER_LOWER] - lm[_INNER_UPPER]) @ ey).clip(min=0)
  mid = 0.5 * (lm[_INNER_LOWER] + lm[_INNER_UPPER])
  rest[_INNER_UPPER] = mid
  rest[_INNER_LOWER] = mid
  rest[49:54] += np.outer(0.5 * gap[[0, 0, 1, 2, 2]] * [0.6, 0.9, 1, 0.9, 0.6], ey)
  rest[55:60] -= np.outer(0.5 * gap[[2, 2, 1, 0, 0]] * [0.6, 0.9, 1, 0.9, 0.6], ey)
  return rest


@dataclasses.dataclass
class Stage:
  """One clip's photo, landmarks and warp mesh (see module docstring).

  Attributes:
    image: (256, 256, 3) uint8 source frame.
    src_points: (P, 2) landmarks (68) + head ring + border anchors in the source.
    rest: (68, 2) landmarks of the neutral, closed-mouth face (frame coordinates).
    anchors: (13 + R, 2) at rest: halo below the jaw line, then the head ring.
    triangles: (N, 3) int indices into the points.
    mouth_style: colours of the mouth interior.
  """
  image: np.ndarray
  src_points: np.ndarray
  rest: np.ndarray
  anchors: np.ndarray
  triangles: np.ndarray
  mouth_style: mouth.MouthStyle


_HALO_JAW = np.arange(2, 15)  # jaw points that get a halo anchor below/outside.


def _halo(rest: np.ndarray) -> np.ndarray:
  """(13, 2) anchors just outside jaw points 2..14 (spread the jaw drop smoothly)."""
  centre = rest[27:36].mean(0)
  out = rest[_HALO_JAW] - centre
  out /= np.linalg.norm(out, axis=1, keepdims=True)
  return rest[_HALO_JAW] + 0.22 * np.linalg.norm(rest[16] - rest[0]) * out


def _ring(rest: np.ndarray) -> np.ndarray:
  """(R, 2) anchors on an ellipse around the head (hair, neck), inside the frame."""
  lo, hi = rest.min(0), rest.max(0)
  centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
  angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
  ring = centre + np.stack([1.55 * half[0] * np.cos(angles),
                            1.5 * half[1] * np.sin(angles) - 0.1 * half[1]], 1)
  inside = np.all((ring > 10) & (ring < FRAME_SIZE - 11), axis=1)
  return ring[inside]


def _border() -> np.ndarray:
  """(16, 2) fixed anchors along the frame border, just outside the pixel grid."""
  b = _BORDER
  pts = [(x, b[0]) for x in b] + [(x, b[-1]) for x in b]
  pts += [(b[0], y) for y in b[1:-1]] + [(b[-1], y) for y in b[1:-1]]
  return np.array(pts, np.float64)


def make_stage(photo: np.ndarray, landmarks: np.ndarray,
               appearance: Appearance) -> Stage:
  """Crops and augments a prepared photo into one clip's stage.

  Args:
    photo: (H, W, 3) uint8 RGB photo.
    landmarks: (68, 2) dlib landmarks of the photo.
    appearance: the clip's augmentation.
  """
  affine = _similarity(landmarks, appearance)
  size = (FRAME_SIZE, FRAME_SIZE)
  # Where the frame reaches past the photo, replicated edge pixels are blurred (an
  # out-of-focus continuation) rather than left as streaks or mirrored copies.
  inside = cv2.warpAffine(np.full(photo.shape[:2], 255, np.uint8), affine, size,
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
  inside = cv2.GaussianBlur(cv2.erode(inside, np.ones((5, 5), np.uint8)), (0, 0), 2.0)
  inside = inside.astype(np.float32)[..., None] / 255

  image = cv2.warpAffine(photo, affine, size, flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
  if inside.min() < 1:
    blurred = cv2.GaussianBlur(image, (0, 0), 8.0).astype(np.float32)
    image = (blurred + inside * (image - blurred) + 0.5).astype(np.uint8)
  image = _colour(image, appearance)
  lm = landmarks @ affine[:, :2].T + affine[:, 2]
  if appearance.mirror:
    lm = lm[MIRROR_68]
  rest = close_mouth(lm)
  anchors = np.concatenate([_halo(rest), _ring(rest)])
  border = _border()
  # Mesh topology from an open-mouthed version, so no triangle crosses the lips.
  open_pose = np.zeros((1, 6))
  open_pose[:, 5] = 1
  template = animate_rest(rest, anchors, jaw_T=np.array([0.8]), lip_open_T=np.array([0.8]),
                          rounding_T=np.zeros(1), blink_T=np.zeros(1),
                          pose_Tx6=open_pose)[0]
  triangles = scipy.spatial.Delaunay(np.concatenate([template, border])).simplices
  return Stage(image=image, src_points=np.concatenate([lm, anchors, border]), rest=rest,
               anchors=anchors,
               triangles=triangles.astype(np.int32),
               mouth_style=mouth.style_from_photo(image, lm))


def animate_rest(rest: np.ndarray, anchors: np.ndarray, jaw_T: np.ndarray,
                 lip_open_T: np.ndarray, rounding_T: np.ndarray, blink_T: np.ndarray,
                 pose_Tx6: np.ndarray) -> np.ndarray:
  """Moves the rest landmarks (and the jaw halo and head ring) frame by frame.

  Args:
    rest: (68, 2) neutral closed-mouth landmarks.
    anchors: (13 + R, 2) jaw halo and head ring anchors at rest.
    jaw_T, lip_open_T: (T,) in [0, 1]; inner-lip gap = lip_open * MAX_GAP eye distances.
    rounding_T: (T,) in [-1, 1]; blink_T: (T,) in [0, 1].
    pose_Tx6: (T, 6) yaw, pitch, roll (degrees), tx, ty (pixels), scale.

  Returns:
    (T, 68 + 13 + R, 2) float64 moved landmarks followed by the moved anchors.
  """
  ex, ey, unit = face_axes(rest)
  num = jaw_T.shape[0]
  dx = np.zeros((num, 68))
  dy = np.zeros((num, 68))
  gap = MAX_GAP * unit * lip_open_T
  up, down = 0.25 * gap, 0.75 * gap
  jaw = np.maximum(0.3 * unit * jaw_T, down)
  dy[:, [61, 62, 63]] -= np.outer(up, [1.0, 1.0, 1.0])
  dy[:, [65, 66, 67]] += np.outer(down, [0.9, 1.0, 0.9])
  dy[:, 49:54] -= np.outer(up, [0.6, 0.95, 1, 0.95, 0.6])
  dy[:, 55:60] += np.outer(down, [0.6, 0.9, 1, 0.9, 0.6])
  dy[:, [48, 54, 60, 64]] += 0.15 * down[:, None]
  dy[:, 3:14] += np.outer(jaw, [0.05, 0.2, 0.45, 0.7, 0.9, 1, 0.9, 0.7, 0.45, 0.2, 0.05])
  # Rounding narrows the mouth, flattens a smile and pushes the lips out;
  # spreading widens it.
  lips = np.arange(48, 68)
  rel_x = (rest[lips] - rest[lips].mean(0)) @ ex  # (20,)
  half_width = 0.5 * float((rest[54] - rest[48]) @ ex)
  smile = float((rest[62] - 0.5 * (rest[60] + rest[64])) @ ey)  # > 0: corners up.
  rnd, spr = np.maximum(rounding_T, 0), np.maximum(-rounding_T, 0)
  dx[:, lips] += np.outer(-0.28 * rnd + 0.08 * spr, rel_x)
  dy[:, lips] += np.outer(0.6 * max(smile, 0.0) * rnd, (rel_x / half_width) ** 2)
  dy[:, [48, 54]] -= (0.04 * unit * spr)[:, None]
  dy[:, 49:54] -= (0.04 * unit * rnd)[:, None]
  dy[:, 55:60] += (0.04 * unit * rnd)[:, None]
  # Blinks: the upper lids come down onto the lower lids.
  for upper, lower in (([37, 38], [41, 40]), ([43, 44], [47, 46])):
    lid = (rest[lower] - rest[upper]) @ ey
    dy[:, upper] += 0.94 * np.outer(blink_T, lid)
    dy[:, lower] -= 0.05 * np.outer(blink_T, lid)
  moved = rest[None] + dx[..., None] * ex + dy[..., None] * ey
  # Head pose: rotate (face axes, depth template) about a pivot behind the face.
  face_width = float(np.linalg.norm(rest[16] - rest[0]))
  centre = 0.5 * (rest.min(0) + rest.max(0))
  halo = anchors[None, :len(_HALO_JAW)] + 0.15 * dy[:, _HALO_JAW, None] * ey
  ring = np.broadcast_to(anchors[len(_HALO_JAW):], (num, anchors.shape[0] - len(_HALO_JAW), 2))
  points = np.concatenate([moved, halo, ring], axis=1)
  depth = np.concatenate([_DEPTH_68, 0.7 * _DEPTH_68[_HALO_JAW],
                          np.zeros(ring.shape[1])]) - _PIVOT_DEPTH
  rel = points - centre
  local = np.stack([rel @ ex, rel @ ey, np.broadcast_to(depth * face_width,
                                                        rel.shape[:2])], axis=-1)
  rotated = local @ np.transpose(_rotations(pose_Tx6), (0, 2, 1))
  flat = rotated[..., :1] * ex + rotated[..., 1:2] * ey  # orthographic projection.
  scale = pose_Tx6[:, 5][:, None, None]
  return centre + scale * flat + pose_Tx6[:, None, 3:5]


def _rotations(pose_Tx6: np.ndarray) -> np.ndarray:
  """(T, 3, 3) rotation matrices R = Rz(roll) Ry(yaw) Rx(pitch), in face axes."""
  yaw, pitch, roll = (np.deg2rad(pose_Tx6[:, i]) for i in range(3))
  def rot(a, i, j):
    m = np.tile(np.eye(3), (a.shape[0], 1, 1))
    m[:, i, i], m[:, j, j] = np.cos(a), np.cos(a)
    m[:, i, j], m[:, j, i] = -np.sin(a), np.sin(a)
    return m
  return rot(roll, 0, 1) @ rot(yaw, 0, 2) @ rot(pitch, 2, 1)


def _backward_maps(dst_Px2: np.ndarray, src_Px2: np.ndarray,
                   triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Piecewise-affine backward map (map_x, map_y), each (256, 256) float32."""
  dst_tri = dst_Px2[triangles]  # (N, 3, 2)
  src_tri = src_Px2[triangles]
  d = np.concatenate([dst_tri, np.ones(dst_tri.shape[:2] + (1,))], axis=2)  # (N,3,3)
  area2 = np.linalg.det(d)
  usable = np.abs(area2) > 0.05
  d[~usable] = np.eye(3)
  # Solve d @ A^T = src for each triangle: A (2x3) maps [x, y, 1] -> source (x, y).
  coef = np.linalg.solve(d, src_tri)  # (N, 3, 2)
  index = np.full((FRAME_SIZE, FRAME_SIZE), len(triangles), np.int32)
  fixed = np.round(dst_tri * 16).astype(np.int32)
  # A rasterised triangle also claims pixels its edges merely touch, where its
  # affine extrapolates; for a squeezed triangle (a closing eye) that extrapolation
  # samples far away. Drawing the thinnest first lets neighbours claim those pixels.
  for i in np.argsort(np.abs(area2)):
    if usable[i]:
      cv2.fillConvexPoly(index, fixed[i], int(i), lineType=cv2.LINE_8, shift=4)
  coef = np.concatenate([coef, np.array([[[1, 0], [0, 1], [0, 0]]], np.float64)])
  coef = coef.astype(np.float32)
  ys, xs = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE].astype(np.float32)
  c = coef[index]  # (H, W, 3, 2)
  map_x = c[..., 0, 0] * xs + c[..., 1, 0] * ys + c[..., 2, 0]
  map_y = c[..., 0, 1] * xs + c[..., 1, 1] * ys + c[..., 2, 1]
  return map_x, map_y


def render(stage: Stage, points_TxPx2: np.ndarray) -> np.ndarray:
  """Frames of the clip.

  Args:
    stage: from `make_stage`.
    points_TxPx2: (T, 68 + A, 2) moved landmarks and anchors, from `animate_rest`.

  Returns:
    (T, 256, 256, 3) uint8 RGB frames.
  """
  border = stage.src_points[points_TxPx2.shape[1]:]
  _, _, unit = face_axes(stage.rest)
  frames = np.empty((points_TxPx2.shape[0], FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
  for t, points in enumerate(points_TxPx2):
    dst = np.concatenate([points, border])
    map_x, map_y = _backward_maps(dst, stage.src_points, stage.triangles)
    frame = cv2.remap(stage.image, map_x, map_y, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REFLECT101)
    mouth.paint(frame, points[60:68], unit, stage.mouth_style)
    frames[t] = frame
  return frames
