"""Files of the demo (`launch.demo`): a real photo, a WAV, a contact sheet.

* The photo is scikit-image's `astronaut()` (Eileen Collins, NASA; public
  domain), shipped inside the scikit-image package: nothing is downloaded.
* The WAV holds the demo's speech, a sentence of the synthetic corpus's
  pseudo-words (`data_pipelines.synthetic.sentence`).
* The contact sheet shows sampled frames of the generated video: one row per
  frame, [predicted landmarks | attention | colour | result | pasted back]
  (the last panel zoomed on the face in the full photo).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from hcmtfg import atomic
from hcmtfg.features import audio as audio_lib


def _atomic_path(path: str) -> tuple[int, str]:
  return atomic.temp_beside(path, suffix=os.path.splitext(path)[1])


def write_photo(path: str) -> str:
  """Writes scikit-image's astronaut photo (512x512 RGB) as a PNG."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  fd, tmp = _atomic_path(path)
  os.close(fd)
  if not cv2.imwrite(tmp, cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)):
    raise OSError(f"cannot write {path}")
  os.replace(tmp, path)
  return path


def write_wav(path: str, signal: np.ndarray,
              sample_rate: int = audio_lib.SAMPLE_RATE) -> str:
  """Writes 16-bit PCM WAV atomically."""
  import soundfile  # pylint: disable=g-import-not-at-top
  fd, tmp = _atomic_path(path)
  os.close(fd)
  soundfile.write(tmp, np.clip(signal, -1.0, 1.0), sample_rate, subtype="PCM_16",
                  format="WAV")
  os.replace(tmp, path)
  return path


def _label(image: np.ndarray, text: str) -> None:
  for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
    cv2.putText(image, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour,
                width, cv2.LINE_AA)


def face_square(photo: np.ndarray) -> tuple[int, int, int]:
  """(x, y, side) of a square around the photo's largest face (dlib), 1.8x the
  detection box; the whole photo if no face is found."""
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top  (dlib)
  h, w = photo.shape[:2]
  boxes = face.FaceAnalyzer().detect_all(photo)
  if not boxes:
    return 0, 0, min(h, w)
  box = max(boxes, key=lambda b: b.area)
  side = min(int(1.8 * max(box.width, box.height)), h, w)
  cx, cy = box.center
  x = int(np.clip(cx - side / 2, 0, w - side))
  y = int(np.clip(cy - side / 2, 0, h - side))
  return x, y, side


def contact_sheet(intermediates: np.ndarray, pasted: np.ndarray,
                  photo: np.ndarray, path: str, rows: int = 8,
                  fps: float = 25.0) -> str:
  """Writes a PNG: `rows` evenly spaced frames, one per row:
  [landmarks | attention | colour | result | the face pasted back].

  Args:
    intermediates: (T, P, 4P, 3) uint8 frames of the intermediates video.
    pasted: (T, H, W, 3) uint8 frames of the main (pasted-back) video.
    photo: (H, W, 3) uint8 the photo the face was pasted into (to find it).
    path: output PNG.
    rows: frames shown.
    fps: to label frames with their time.
  """
  total = min(intermediates.shape[0], pasted.shape[0])
  picks = np.unique(np.linspace(0, total - 1, rows).round().astype(int))
  p = intermediates.shape[1]
  x, y, side = face_square(photo)
  lines = []
  for t in picks:
    face = cv2.resize(pasted[t, y:y + side, x:x + side], (p, p),
                      interpolation=cv2.INTER_AREA if side > p
                      else cv2.INTER_CUBIC)
    strip = np.concatenate([intermediates[t], face], axis=1).copy()
    _label(strip, f"frame {t}  {t / fps:.2f} s")
    lines.append(strip)
  sheet = np.concatenate(lines, axis=0)
  fd, tmp = _atomic_path(path)
  os.close(fd)
  if not cv2.imwrite(tmp, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
    raise OSError(f"cannot write {path}")
  os.replace(tmp, path)
  return path
