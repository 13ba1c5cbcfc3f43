"""Identity photos: loading and 68-point landmarks (dlib, once per photo).

The default identity is `skimage.data.astronaut()` (ships with scikit-image);
`faces_dir` adds every image of a folder. Landmarks are detected once per photo and
process (functools cache); `generate_corpus` detects them in the main process and
`preload`s the prepared photos into its workers, which never load dlib's model.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import cv2
import numpy as np

from hcmtfg.errors import InputError
from hcmtfg.features import face as face_lib
from hcmtfg.media import image_io

ASTRONAUT = "astronaut"  # name of the built-in identity.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_MAX_FACE_WIDTH = 240.0  # photos are shrunk so the face is at most this wide.


@dataclasses.dataclass(frozen=True)
class Identity:
  """A prepared photo.

  Attributes:
    name: "astronaut" or the photo's file stem.
    image: (H, W, 3) uint8 RGB photo (downscaled when the face is large).
    landmarks: (68, 2) float64 dlib landmarks of `image`.
  """
  name: str
  image: np.ndarray
  landmarks: np.ndarray


def list_faces(faces_dir: str | os.PathLike | None) -> list[str]:
  """Identity sources: "astronaut" plus the sorted image files of `faces_dir`."""
  sources = [ASTRONAUT]
  if faces_dir is None:
    return sources
  folder = pathlib.Path(faces_dir)
  if not folder.is_dir():
    raise InputError(folder, "--faces_dir is not a directory")
  photos = sorted(str(p) for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
  if not photos:
    raise InputError(folder, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
  return sources + photos


@functools.lru_cache(maxsize=1)
def _analyzer() -> face_lib.FaceAnalyzer:
  return face_lib.FaceAnalyzer()


_PRELOADED: dict[str, Identity] = {}


def preload(identities: dict[str, Identity]) -> None:
  """Makes `load_identity` return these (worker processes skip loading dlib)."""
  _PRELOADED.update(identities)


def load_identity(source: str) -> Identity:
  """One prepared identity photo (detected once per process, or preloaded).

  Args:
    source: "astronaut" or a path to a photo with one clearly visible face.

  Raises:
    InputError: unreadable photo or no face found.
  """
  if source in _PRELOADED:
    return _PRELOADED[source]
  return _prepare_identity(os.fspath(source))


@functools.lru_cache(maxsize=64)
def _prepare_identity(source: str) -> Identity:
  """Loads and prepares one identity photo (cached per process).

  Args:
    source: "astronaut" or a path to a photo with one clearly visible face.

  Raises:
    InputError: unreadable photo or no face found.
  """
  if source == ASTRONAUT:
    import skimage.data  # pylint: disable=g-import-not-at-top
    image, name = np.ascontiguousarray(skimage.data.astronaut()), ASTRONAUT
  else:
    image, name = image_io.load_image(source), pathlib.Path(source).stem
  landmarks = _analyzer().detect_landmarks(image, source=source).landmarks
  landmarks = np.asarray(landmarks, np.float64)
  face_width = float(np.linalg.norm(landmarks[16] - landmarks[0]))
  if face_width < 20:
    raise InputError(source, f"the face is too small ({face_width:.0f} px wide)")
  if face_width > _MAX_FACE_WIDTH:
    factor = _MAX_FACE_WIDTH / face_width
    size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    landmarks = landmarks * factor
  return Identity(name=name, image=image, landmarks=landmarks)
