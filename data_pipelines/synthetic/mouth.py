"""Painting a plausible open-mouth interior inside the inner-lip polygon.

The warp stretches the lips apart; what shows between them is painted: a dark
red-brown cavity (darkest at the back), a hint of tongue at the bottom, upper teeth
under the upper lip and, when wide open, lower teeth. Colours derive from the
photo's lip colour so the interior matches skin tone and the clip's colour jitter.
Edges are anti-aliased by rasterising at 4x and area-averaging.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

_SUPERSAMPLE = 4
_SHIFT = 4  # fixed-point bits for cv2 polygon vertices.


@dataclasses.dataclass(frozen=True)
class MouthStyle:
  """RGB colours (float, 0-255) of the mouth interior."""
  edge: np.ndarray
  cavity: np.ndarray
  tongue: np.ndarray
  teeth: np.ndarray


def style_from_photo(image: np.ndarray, landmarks: np.ndarray) -> MouthStyle:
  """Mouth colours from the lip colour of a (256, 256, 3) frame with (68, 2) landmarks."""
  mask = np.zeros(image.shape[:2], np.uint8)
  cv2.fillPoly(mask, [np.round(landmarks[48:60]).astype(np.int32)], 1)
  cv2.fillPoly(mask, [np.round(landmarks[60:68]).astype(np.int32)], 0)
  pixels = image[mask > 0].astype(np.float32)
  lip = np.median(pixels, axis=0) if len(pixels) > 10 else np.array([170., 90., 90.])
  brightness = float(np.clip(lip.mean() / 120.0, 0.6, 1.1))
  return MouthStyle(edge=0.42 * lip, cavity=0.12 * lip + np.array([5., 2., 2.]),
                    tongue=0.8 * lip + np.array([10., 0., 0.]),
                    teeth=np.array([190., 184., 170.]) * brightness)


def _raster(points_Nx2: np.ndarray, origin: np.ndarray, shape: tuple[int, int]
            ) -> np.ndarray:
  """Anti-aliased coverage in [0, 1] of a polygon over a (h, w) window."""
  h, w = shape
  big = np.zeros((h * _SUPERSAMPLE, w * _SUPERSAMPLE), np.uint8)
  pts = np.round((points_Nx2 - origin + 0.5) * _SUPERSAMPLE * (1 << _SHIFT)
                 - 0.5 * (1 << _SHIFT)).astype(np.int32)
  cv2.fillPoly(big, [pts], 255, lineType=cv2.LINE_8, shift=_SHIFT)
  return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def paint(frame: np.ndarray, inner_8x2: np.ndarray, unit: float,
          style: MouthStyle) -> None:
  """Paints the mouth interior into `frame` in place.

  Args:
    frame: (H, W, 3) uint8 RGB.
    inner_8x2: inner-lip landmarks 60..67 (corner, upper 61-63, corner, lower 65-67).
    unit: eye distance in pixels (sets teeth size).
    style: colours.
  """
  x, y = inner_8x2[:, 0], inner_8x2[:, 1]
  area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
  if area < 2.0:
    return
  upper, lower = inner_8x2[[0, 1, 2, 3, 4]], inner_8x2[[4, 5, 6, 7, 0]]
  outline = _closed_catmull_rom(inner_8x2)
  height, width = frame.shape[:2]
  x0, y0 = np.maximum(np.floor(outline.min(0)).astype(int) - 2, 0)
  x1, y1 = np.minimum(np.ceil(outline.max(0)).astype(int) + 3, [width, height])
  if x1 <= x0 or y1 <= y0:
    return
  origin = np.array([x0, y0], np.float64)
  alpha = _raster(outline, origin, (y1 - y0, x1 - x0))
  gap = float(np.mean(lower[[3, 2, 1], 1] - upper[1:4, 1]))
  centre = inner_8x2.mean(0)
  half = np.maximum(0.5 * (inner_8x2.max(0) - inner_8x2.min(0)), 1.0)
  gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
  rho = np.sqrt(((gx - centre[0]) / half[0]) ** 2 + ((gy - centre[1]) / half[1]) ** 2)
  depth = np.clip(rho, 0, 1)[..., None] ** 3
  colour = style.cavity + (style.edge - style.cavity) * depth
  openness = float(np.clip(gap / (0.35 * unit), 0, 1))
  tongue = (np.clip((gy - centre[1]) / half[1], 0, 1) * 0.25 * openness)[..., None]
  colour = colour + (style.tongue * 0.5 - colour) * tongue
  # Upper teeth: a band under a parabola fitted to the upper lip (smooth even when
  # the lip has a cupid's bow), narrower than the mouth, shaded to the sides.
  band = min(0.2 * gap, 0.07 * unit)
  if band > 0.6:
    mid_x = 0.5 * (upper[0, 0] + upper[-1, 0])
    half_teeth = 0.4 * abs(upper[-1, 0] - upper[0, 0])
    top = np.polyval(np.polyfit(upper[:, 0] - mid_x, upper[:, 1], 2), gx - mid_x)
    lateral = np.abs(gx - mid_x) / max(half_teeth, 1.0)
    cover = (np.clip(top + band - gy + 0.5, 0, 1) * np.clip(gy - top - 0.3, 0, 1)
             * np.clip(1.5 * (1 - lateral), 0, 1))
    tooth = 0.09 * unit
    seams = 1 - 0.18 * np.exp(-0.5 * ((((gx - mid_x) / tooth) % 1 - 0.5) * tooth / 0.6) ** 2)
    shade = (1.0 - 0.35 * np.clip(lateral, 0, 1) ** 2) * seams
    colour = colour + (style.teeth * shade[..., None] - colour) * (0.8 * cover)[..., None]
  roi = frame[y0:y1, x0:x1].astype(np.float32)
  a = alpha[..., None]
  frame[y0:y1, x0:x1] = np.clip(roi + a * (colour - roi) + 0.5, 0, 255).astype(np.uint8)


def _closed_catmull_rom(points_Nx2: np.ndarray, samples: int = 6) -> np.ndarray:
  """(N * samples, 2) points along a closed Catmull-Rom spline through the points."""
  p0, p1 = np.roll(points_Nx2, 1, axis=0), points_Nx2
  p2, p3 = np.roll(points_Nx2, -1, axis=0), np.roll(points_Nx2, -2, axis=0)
  t = np.linspace(0, 1, samples, endpoint=False)[None, :, None]
  p0, p1, p2, p3 = (p[:, None, :] for p in (p0, p1, p2, p3))
  curve = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                 + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3)
  return curve.reshape(-1, 2)
