"""Image grids for training summaries: frames, attention/colour maps, landmarks.

Everything here is host-side numpy (plus OpenCV for drawing) and returns
(H, W, 3) uint8 RGB images ready for `hcmtfg.train.summaries.SummaryWriter.images`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from hcmtfg.features import landmarks as landmarks_lib

# dlib's 68-point layout: (first, last, closed) polylines.
_CONTOURS = ((0, 16, False), (17, 21, False), (22, 26, False), (27, 30, False),
             (31, 35, False), (36, 41, True), (42, 47, True), (48, 59, True),
             (60, 67, True))
TARGET_COLOUR = (40, 170, 60)  # green
PREDICTED_COLOUR = (220, 40, 40)  # red
EXAMPLE_COLOUR = (160, 160, 160)  # grey
_BORDER = 2


def to_uint8(images: np.ndarray, low: float = -1.0,
             high: float = 1.0) -> np.ndarray:
  """Maps values in [low, high] to uint8 [0, 255] (clipped); 1 channel -> RGB."""
  x = (np.asarray(images, np.float32) - low) / (high - low)
  x = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return x


def heatmap(maps: np.ndarray, size: int | None = None) -> np.ndarray:
  """Attention maps (..., h, w, 1) in [0, 1] -> (..., S, S, 3) uint8 (JET).

  Args:
    maps: values in [0, 1] (1 = attended).
    size: output side S (nearest-neighbour resize); None keeps h, w.
  """
  maps = np.asarray(maps, np.float32)[..., 0]
  lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
  flat = to_uint8(maps.reshape((-1, h, w, 1)), 0.0, 1.0)[..., 0]
  out = []
  for m in flat:
    if size is not None and (h, w) != (size, size):
      m = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    out.append(cv2.cvtColor(cv2.applyColorMap(m, cv2.COLORMAP_JET),
                            cv2.COLOR_BGR2RGB))
  return np.stack(out).reshape(lead + out[0].shape)


def grid(rows: Sequence[np.ndarray], border: int = _BORDER) -> np.ndarray:
  """Tiles rows of equally sized images into one image with white borders.

  Args:
    rows: each (N, H, W, 3) uint8 (N columns); all with the same shape.

  Returns:
    (R*(H+border)+border, N*(W+border)+border, 3) uint8.
  """
  rows = [np.asarray(r) for r in rows]
  num, h, w, _ = rows[0].shape
  out = np.full((len(rows) * (h + border) + border,
                 num * (w + border) + border, 3), 255, np.uint8)
  for i, row in enumerate(rows):
    if row.shape != rows[0].shape:
      raise ValueError(f'row {i} has shape {row.shape}, row 0 {rows[0].shape}')
    for j in range(num):
      y, x = border + i * (h + border), border + j * (w + border)
      out[y:y + h, x:x + w] = row[j]
  return out


def _fit(points_Nx68x2: np.ndarray, size: int) -> np.ndarray:
  """One shared similarity mapping all point sets into a size x size canvas."""
  pts = points_Nx68x2.reshape(-1, 2)
  lo, hi = pts.min(axis=0), pts.max(axis=0)
  span = float(max((hi - lo).max(), 1e-6))
  scale = 0.84 * size / span
  centre = (lo + hi) / 2.0
  return (points_Nx68x2 - centre) * scale + size / 2.0


def draw_landmarks(canvas: np.ndarray, points_68x2: np.ndarray,
                   colour: tuple[int, int, int],
                   thickness: int = 1) -> np.ndarray:
  """Draws dlib's 68-point contours (pixel coordinates, y down) in place."""
  pts = np.round(points_68x2 * 4).astype(np.int32)  # 2 fractional bits
  for first, last, closed in _CONTOURS:
    cv2.polylines(canvas, [pts[first:last + 1]], closed, colour, thickness,
                  cv2.LINE_AA, shift=2)
  return canvas


def landmark_plots(drawings: Sequence[tuple[Any, ...]],
                   size: int) -> np.ndarray:
  """Overlaid landmark drawings, one canvas per frame.

  Args:
    drawings: (landmarks (F, 136) normalised x/y-interleaved vectors, colour)
      or (landmarks, colour, line thickness), drawn in order onto the same F
      canvases; all share one mapping to pixels, so their differences are
      visible.
    size: canvas side in pixels.

  Returns:
    (F, size, size, 3) uint8, white background.
  """
  sets = [np.asarray(d[0], np.float32).reshape(-1, 68, 2) for d in drawings]
  fitted = _fit(np.stack(sets), size)
  num = sets[0].shape[0]
  canvases = np.full((num, size, size, 3), 255, np.uint8)
  for k, drawing in enumerate(drawings):
    colour, thickness = drawing[1], (drawing[2] if len(drawing) > 2 else 1)
    for f in range(num):
      draw_landmarks(canvases[f], fitted[k, f], colour, thickness)
  return canvases


def frame_indices(num_frames: int, wanted: int) -> np.ndarray:
  """`wanted` frame indices spread evenly over [0, num_frames)."""
  wanted = max(1, min(int(wanted), num_frames))
  return np.round(np.linspace(0, num_frames - 1, wanted)).astype(int)


def vgnet_grids(outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray],
                num_frames: int) -> dict[str, np.ndarray]:
  """VG-net summary images, one row per clip (or pair of rows), F columns.

  Args:
    outputs: for K clips: 'frames' (K, T, S, S, 3) in [-1, 1], 'attention'
      (K, T, S, S, 1) in [0, 1], 'colour' (K, T, S, S, 3) in [-1, 1],
      'lmark_attention' (K, T, S/4, S/4, 1) in [0, 1].
    batch: for the same clips: 'target_image' (K, T, S, S, 3) in [-1, 1],
      'target_lmark' (K, T, 136), 'example_lmark' (K, 136) (both x5).
    num_frames: columns F, frames spread over T.

  Returns:
    'images/real_vs_generated' (rows: real, generated per clip),
    'images/attention', 'images/colour', 'images/landmark_attention',
    'images/landmarks' (target landmarks in green over the example's in grey).
  """
  t = frame_indices(outputs['frames'].shape[1], num_frames)
  size = outputs['frames'].shape[2]
  real = to_uint8(batch['target_image'][:, t])
  fake = to_uint8(outputs['frames'][:, t])
  pairs = [row for k in range(len(real)) for row in (real[k], fake[k])]
  num = len(real)
  plots = []
  for k in range(num):
    example = np.broadcast_to(batch['example_lmark'][k], (len(t), 136))
    plots.append(landmark_plots(
        [(example, EXAMPLE_COLOUR), (batch['target_lmark'][k, t],
                                     TARGET_COLOUR)], size))
  return {
      'images/real_vs_generated': grid(pairs),
      'images/attention': grid([heatmap(outputs['attention'][k, t])
                                for k in range(num)]),
      'images/colour': grid([to_uint8(outputs['colour'][k, t])
                             for k in range(num)]),
      'images/landmark_attention': grid(
          [heatmap(outputs['lmark_attention'][k, t], size)
           for k in range(num)]),
      'images/landmarks': grid(plots),
  }


def atnet_grids(pred_coef: np.ndarray, batch: dict[str, np.ndarray],
                pca: landmarks_lib.Pca, num_frames: int,
                size: int) -> dict[str, np.ndarray]:
  """AT-net summary image: predicted (red) over target (green, wider) landmarks.

  Args:
    pred_coef: (K, T, k) predicted PCA coefficients.
    batch: 'target_coef' (K, T, k), 'example_coef' (K, k) for the same clips.
    pca: the landmark PCA of the coefficients.
    num_frames: columns F, frames spread over T.
    size: side of each plot in pixels.

  Returns:
    {'images/landmarks': one row per clip, F columns; the example landmark is
    drawn in grey beneath}.
  """
  t = frame_indices(pred_coef.shape[1], num_frames)
  rows = []
  for k in range(pred_coef.shape[0]):
    example = landmarks_lib.reconstruct(pca, batch['example_coef'][k])
    rows.append(landmark_plots([
        (np.broadcast_to(example, (len(t), 136)), EXAMPLE_COLOUR),
        (landmarks_lib.reconstruct(pca, batch['target_coef'][k, t]),
         TARGET_COLOUR, 2),
        (landmarks_lib.reconstruct(pca, pred_coef[k, t]), PREDICTED_COLOUR),
    ], size))
  return {'images/landmarks': grid(rows)}
