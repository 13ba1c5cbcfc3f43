"""Reading photos, and pixel arrays of any common type as RGB or grey uint8.

No face detection here (no dlib): checking an upload or preparing a photo's
pixels does not load the face models (`hcmtfg.features.face`).
"""

from __future__ import annotations

import os
import pathlib

import cv2
import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from hcmtfg.errors import InputError


def _to_uint8(array: np.ndarray) -> np.ndarray:
  """Scales 16-bit / 32-bit integer or float pixel values to uint8."""
  if array.dtype == np.uint8:
    return array
  if array.dtype.kind == "f":
    scale = 255.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 1.0
    return np.clip(np.nan_to_num(array) * scale, 0, 255).round().astype(np.uint8)
  if array.dtype.kind in "iu":
    top = 255 if int(array.max(initial=0)) <= 255 else 65535
    return np.clip(array.astype(np.float64) * (255.0 / top), 0, 255).round(
    ).astype(np.uint8)
  raise ValueError(f"unsupported pixel type {array.dtype}")


def to_rgb_uint8(image: np.ndarray,
                 source: str | os.PathLike | None = None) -> np.ndarray:
  """Converts a grayscale / RGB / RGBA array of any integer or float type to RGB uint8.

  Args:
    image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array; uint8 in [0, 255],
      uint16 in [0, 65535], or float in [0, 1]. An alpha channel is dropped.
    source: file name for error messages.

  Returns:
    (H, W, 3) uint8 RGB array.
  """
  array = np.asarray(image)
  if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
    array = array[..., :3] if array.shape[-1] != 1 else array[..., 0]
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
    raise InputError(source, f"not an image array: shape {array.shape}")
  try:
    return np.ascontiguousarray(_to_uint8(array))
  except ValueError as e:
    raise InputError(source, str(e)) from e


def load_image(path: str | os.PathLike) -> np.ndarray:
  """Reads a photo as (H, W, 3) RGB uint8.

  Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted;
  the EXIF orientation is applied.

  Raises:
    InputError: the file is missing, is not an image, or is truncated/corrupt.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(path, "image file not found")
  try:
    with Image.open(path) as img:
      img.load()
      img = ImageOps.exif_transpose(img)
      if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(img)
        if img.mode.startswith("I;16"):
          array = array.astype(np.uint16)
        elif img.mode == "F":
          array = array.astype(np.float32)
      else:
        array = np.asarray(img.convert("RGB"))
  except UnidentifiedImageError as e:
    raise InputError(path, "not an image file (unrecognised format)") from e
  except (OSError, SyntaxError, ValueError) as e:
    raise InputError(path, f"corrupt or truncated image: {e}") from e
  return to_rgb_uint8(array, source=path)


def to_gray(image: np.ndarray) -> np.ndarray:
  """(H, W, 3) RGB uint8 -> (H, W) uint8 luma (a 2-D uint8 input is returned as is).

  Other inputs (RGBA, 16-bit, float) go through `to_rgb_uint8` first.
  """
  if image.dtype != np.uint8 or (image.ndim == 3 and image.shape[-1] != 3):
    image = to_rgb_uint8(image)
  if image.ndim == 2:
    return np.ascontiguousarray(image)
  return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
