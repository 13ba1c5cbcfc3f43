"""Putting generated face crops back into the photo, and side-by-side views.

Paste-back inverts the crop of `hcmtfg.features.align` (square crop -> 163x163 area
resize -> similarity warp -> rows/cols 1..128) as one affine map from a
generated frame's pixels to the photo's pixels (pixel centres at integer
coordinates, the resize's half-pixel convention), warps each frame with it
(bilinear) and blends it in through a feathered mask: 1 inside the crop,
falling smoothly to 0 over `feather` of the crop size at its border and where
the crop came from outside the photo (those parts of a crop are black fill).
Only the photo's region under the crop is touched.

The intermediates view shows, per frame, four panels of the same size: the
aligned photo (dimmed) with the predicted landmarks drawn, the attention map
A (colour-mapped, 1 = generated pixels), the colour map C, and the result.

`Renderer` is what every output path uses to turn generated chunks into the
frames it shows: the crops, or the photo with the face pasted back, and when
asked the intermediates view.
"""

from __future__ import annotations

import cv2
import numpy as np

from hcmtfg.features import align
from hcmtfg.features.align import AlignTransform
from hcmtfg.inference import engine
from hcmtfg.inference import photo as photo_lib

FEATHER = 0.12  # fraction of the crop side over which the mask fades out
PANEL_MIN_SIZE = 128
PANEL_LABELS = ("landmarks", "attention", "colour", "result")

# dlib 68-point contours: (first, last, closed).
_CONTOURS = ((0, 16, False), (17, 21, False), (22, 26, False), (27, 30, False),
             (31, 35, False), (36, 41, True), (42, 47, True), (48, 59, True),
             (60, 67, True))


def frame_to_image_matrix(transform: AlignTransform, frame_size: int) -> np.ndarray:
  """(3, 3) affine taking (x, y) pixels of an S x S generated frame to the photo.

  Composes: S-frame -> 128 crop (centre-aligned rescale), +1 (the crop starts
  at row/col 1 of the 163 warp), the similarity `transform.matrix` (warp frame
  -> resized square), and the area resize back to the square's `size` pixels at
  (`left`, `top`).
  """
  k = align.OUT_SIZE / frame_size
  to_crop = np.array([[k, 0, 0.5 * k - 0.5 + 1.0],
                      [0, k, 0.5 * k - 0.5 + 1.0], [0, 0, 1]])
  s = transform.size / align.WARP_SIZE
  to_image = np.array([[s, 0, 0.5 * s - 0.5 + transform.left],
                       [0, s, 0.5 * s - 0.5 + transform.top], [0, 0, 1]])
  return to_image @ transform.matrix @ to_crop


class PasteBack:
  """Composites S x S generated frames into a photo (see module docstring).

  Args:
    image: (H, W, 3) uint8 photo the crop was taken from.
    transform: the crop's `AlignTransform`.
    frame_size: S, side of the generated frames.
    feather: mask fade width as a fraction of S.
  """

  def __init__(self, image: np.ndarray, transform: AlignTransform,
               frame_size: int, feather: float = FEATHER):
    self.image = np.ascontiguousarray(image)
    height, width = image.shape[:2]
    size = int(frame_size)
    matrix = frame_to_image_matrix(transform, size)
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1],
                        [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
    mapped = corners @ matrix[:2].T
    x0 = int(np.clip(np.floor(mapped[:, 0].min()), 0, width))
    x1 = int(np.clip(np.ceil(mapped[:, 0].max()) + 1, 0, width))
    y0 = int(np.clip(np.floor(mapped[:, 1].min()), 0, height))
    y1 = int(np.clip(np.ceil(mapped[:, 1].max()) + 1, 0, height))
    self.roi = (y0, y1, x0, x1)
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    self._matrix = (shift @ matrix)[:2]
    self._size = size
    alpha = self._warp(_frame_mask(matrix, transform, size, height, width,
                                   feather))
    self._alpha = alpha[..., None].astype(np.float32)

  def _warp(self, frame: np.ndarray) -> np.ndarray:
    y0, y1, x0, x1 = self.roi
    if y1 <= y0 or x1 <= x0:
      return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)) + frame.shape[2:],
                      frame.dtype)
    return cv2.warpAffine(frame, self._matrix, (x1 - x0, y1 - y0),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) or (S, S, 3) uint8 -> (N, H, W, 3) or (H, W, 3) uint8."""
    frames = np.asarray(frames)
    single = frames.ndim == 3
    frames = frames[None] if single else frames
    if frames.shape[1:] != (self._size, self._size, 3) or frames.dtype != np.uint8:
      raise ValueError(f"expected uint8 frames of shape (N, {self._size}, "
                       f"{self._size}, 3), got {frames.dtype} {frames.shape}")
    out = np.repeat(self.image[None], frames.shape[0], axis=0)
    y0, y1, x0, x1 = self.roi
    base = self.image[y0:y1, x0:x1].astype(np.float32)
    for i, frame in enumerate(frames):
      warped = self._warp(np.ascontiguousarray(frame)).astype(np.float32)
      blended = self._alpha * warped + (1.0 - self._alpha) * base
      out[i, y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out[0] if single else out


def _frame_mask(matrix: np.ndarray, transform: AlignTransform, size: int,
                height: int, width: int, feather: float) -> np.ndarray:
  """(S, S) float32 in [0, 1]: feathered border x 'came from inside the photo'."""
  coords = np.arange(size, dtype=np.float64)
  xs, ys = np.meshgrid(coords, coords)
  border = np.minimum.reduce([xs + 0.5, ys + 0.5, size - 0.5 - xs, size - 0.5 - ys])
  ramp = np.clip(border / max(feather * size, 1e-6), 0.0, 1.0)
  ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep
  src_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
  src_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
  lo_x, lo_y = max(transform.left, 0), max(transform.top, 0)
  hi_x = min(transform.left + transform.size, width) - 1
  hi_y = min(transform.top + transform.size, height) - 1
  inside = ((src_x >= lo_x) & (src_x <= hi_x) & (src_y >= lo_y)
            & (src_y <= hi_y)).astype(np.float32)
  pixels = max(int(round(feather * size)), 1)
  inside = cv2.erode(inside, np.ones((3, 3), np.uint8), iterations=max(pixels // 2, 1))
  inside = cv2.blur(inside, (pixels, pixels)) if pixels > 1 else inside
  return (ramp * inside).astype(np.float32)


def draw_landmarks(image: np.ndarray, points_68x2: np.ndarray,
                   colour: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
  """A copy of an RGB uint8 image with dlib-68 contours and points drawn."""
  out = np.ascontiguousarray(image).copy()
  scale = 16  # sub-pixel drawing (cv2 'shift' bits = 4)
  pts = np.rint(np.asarray(points_68x2, np.float64) * scale).astype(np.int32)
  thickness = max(1, image.shape[0] // 128)
  for first, last, closed in _CONTOURS:
    cv2.polylines(out, [pts[first:last + 1]], closed, colour, thickness,
                  cv2.LINE_AA, shift=4)
  for p in pts:
    cv2.circle(out, tuple(int(v) for v in p), thickness * scale, (255, 255, 255),
               -1, cv2.LINE_AA, shift=4)
  return out


def _label(panel: np.ndarray, text: str) -> None:
  scale = panel.shape[0] / 320
  org = (3, panel.shape[0] - 5)
  cv2.putText(panel, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3,
              cv2.LINE_AA)
  cv2.putText(panel, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale,
              (255, 255, 255), 1, cv2.LINE_AA)


def intermediates_frames(crop: np.ndarray, landmarks_Nx68x2: np.ndarray,
                         attention_NxSxS: np.ndarray, colour_NxSxSx3: np.ndarray,
                         frames_NxSxSx3: np.ndarray) -> np.ndarray:
  """Side-by-side panels [landmarks | attention | colour | result].

  Args:
    crop: (128, 128, 3) uint8 aligned photo (background of the landmark panel).
    landmarks_Nx68x2: predicted landmarks (x, y) in pixels of `crop`.
    attention_NxSxS: attention A in [0, 1].
    colour_NxSxSx3: colour map C, uint8.
    frames_NxSxSx3: generated frames, uint8.

  Returns:
    (N, P, 4P, 3) uint8 with P = max(S, 128); small frames are enlarged
    (nearest neighbour) so that the panels stay readable.
  """
  n, s = frames_NxSxSx3.shape[:2]
  p = max(s, PANEL_MIN_SIZE)
  background = cv2.resize(crop, (p, p), interpolation=cv2.INTER_AREA
                          if p < crop.shape[0] else cv2.INTER_LINEAR)
  background = (background.astype(np.float32) * 0.6).astype(np.uint8)
  lm_scale = p / crop.shape[0]
  # Points are pixel centres: map centre-to-centre between the two sizes.
  lm = (np.asarray(landmarks_Nx68x2) + 0.5) * lm_scale - 0.5
  att = np.clip(np.rint(np.asarray(attention_NxSxS) * 255), 0, 255).astype(np.uint8)
  out = np.zeros((n, p, 4 * p, 3), np.uint8)

  def enlarge(x):
    return x if s == p else cv2.resize(x, (p, p), interpolation=cv2.INTER_NEAREST)

  for i in range(n):
    panels = [
        draw_landmarks(background, lm[i]),
        cv2.cvtColor(cv2.applyColorMap(enlarge(att[i]), cv2.COLORMAP_JET),
                     cv2.COLOR_BGR2RGB),
        enlarge(np.ascontiguousarray(colour_NxSxSx3[i])).copy(),
        enlarge(np.ascontiguousarray(frames_NxSxSx3[i])).copy(),
    ]
    for panel, text in zip(panels, PANEL_LABELS):
      _label(panel, text)
    out[i] = np.concatenate(panels, axis=1)
  return out


class Renderer:
  """Generated chunks -> output frames (and the intermediates view).

  Args:
    photo: the prepared photo.
    image_size: S of the generated frames.
    paste_back: composite the faces into the whole photo.
    intermediates: also make [landmarks | attention | colour | result].
  """

  def __init__(self, photo: photo_lib.PreparedPhoto, image_size: int, *,
               paste_back: bool = False, intermediates: bool = False):
    self.photo = photo
    self.intermediates = intermediates
    self._paster = (PasteBack(photo.source_image, photo.transform, image_size)
                    if paste_back else None)

  @property
  def frame_shape(self) -> tuple[int, int]:
    """(H, W) of the output frames."""
    if self._paster is not None:
      return tuple(self.photo.source_image.shape[:2])
    s = self.photo.image.shape[0]
    return (s, s)

  def __call__(self, chunk: engine.FrameChunk
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """(frames (n, H, W, 3) uint8, intermediates (n, P, 4P, 3) or None)."""
    frames = self._paster(chunk.frames) if self._paster else chunk.frames
    side = None
    if self.intermediates:
      side = intermediates_frames(
          self.photo.crop, self.photo.landmarks_to_crop(chunk.landmarks),
          chunk.attention, chunk.colour, chunk.frames)
    return frames, side
