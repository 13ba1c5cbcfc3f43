"""The photo's face found in a child process while the networks load.

dlib's models take about a second of one core to load (the HOG detector and
the 100 MB shape predictor), holding Python's GIL the whole time, so a thread
cannot overlap them with anything else in the process. A one-video command
(`launch.generate`) starts this module's child process first:

    analyzer = face_prefetch.PrefetchedAnalyzer(photo_path)   # starts it
    generator = ...load the networks...                       # meanwhile
    photo = prepare_photo(photo_path, analyzer)               # its answers
    analyzer.close()

The child loads the photo exactly as `image_io.load_image` does, runs the
detector and the shape predictor on every face, and prints them as JSON with
a hash of the grey image they came from. `PrefetchedAnalyzer` answers
`detect_all` / `landmarks` from that for the same grey image only; for
anything else, or when the child failed (an unreadable photo, a crash), it
loads its own `face.FaceAnalyzer` and behaves exactly like one. The answers
are the same numbers the in-process analyzer gives (same code, same models;
JSON keeps dlib's integers and the score's float exactly).

    python -m hcmtfg.inference.face_prefetch PHOTO    # the child: JSON on stdout
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from absl import logging
import numpy as np

from hcmtfg.media import image_io

# The repository root (above hcmtfg/), put on the child's import path.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _digest(gray: np.ndarray) -> str:
  gray = np.ascontiguousarray(gray)
  return hashlib.sha256(repr((gray.shape, str(gray.dtype))).encode()
                        + gray.tobytes()).hexdigest()


class PrefetchedAnalyzer:
  """A `face.FaceAnalyzer` whose work on one photo runs in a child process.

  Args:
    path: the photo file.
    timeout: seconds to wait for the child before doing the work here.
  """

  def __init__(self, path: str | os.PathLike, timeout: float = 120.0):
    self._timeout = timeout
    self._answer: dict | None = None
    self._analyzer = None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    try:
      self._proc = subprocess.Popen(
          [sys.executable, "-m", "hcmtfg.inference.face_prefetch", os.fspath(path)],
          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, env=env)
    except OSError as e:
      logging.info("face prefetch not started (%s); detecting in-process", e)
      self._proc = None

  def _wait(self) -> dict:
    """The child's answer ({} when it failed)."""
    if self._answer is None:
      self._answer = {}
      if self._proc is not None:
        try:
          out, err = self._proc.communicate(timeout=self._timeout)
          if self._proc.returncode == 0:
            self._answer = json.loads(out)
          else:
            logging.info("face prefetch failed (exit %d): %s",
                         self._proc.returncode, err.decode(errors="replace")
                         .strip()[-500:])
        except (subprocess.TimeoutExpired, ValueError) as e:
          logging.info("face prefetch unusable (%s); detecting in-process", e)
        self.close()
    return self._answer

  def _local(self):
    if self._analyzer is None:
      from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
      self._analyzer = face.FaceAnalyzer()
    return self._analyzer

  def _faces(self, gray: np.ndarray) -> list | None:
    """The child's faces if it analysed this very grey image, else None."""
    answer = self._wait()
    if (gray.dtype != np.uint8 or gray.ndim != 2
        or answer.get("gray_sha256") != _digest(gray)):
      return None
    return answer["faces"]

  def detect_all(self, image: np.ndarray) -> list:
    """As `FaceAnalyzer.detect_all`."""
    from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
    faces = self._faces(image_io.to_gray(image))
    if faces is None:
      return self._local().detect_all(image)
    return [face.Box(*f["box"]) for f in faces]

  def landmarks(self, image: np.ndarray, box) -> np.ndarray:
    """As `FaceAnalyzer.landmarks`."""
    from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
    faces = self._faces(image_io.to_gray(image))
    for f in faces or ():
      if face.Box(*f["box"]) == box:
        return np.asarray(f["landmarks"], np.float32)
    return self._local().landmarks(image, box)

  def close(self) -> None:
    """Stops the child if it still runs."""
    if self._proc is not None and self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def _child(path: str) -> int:
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
  image = image_io.load_image(path)  # InputError: the parent reports it itself
  gray = image_io.to_gray(image)
  analyzer = face.FaceAnalyzer()
  faces = []
  for box in analyzer.detect_all(gray):
    points = analyzer.landmarks(gray, box)
    faces.append({"box": [box.left, box.top, box.right, box.bottom,
                          box.score],
                  "landmarks": points.tolist()})
  json.dump({"gray_sha256": _digest(gray), "faces": faces}, sys.stdout)
  return 0


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python -m hcmtfg.inference.face_prefetch PHOTO")
  sys.exit(_child(sys.argv[1]))
