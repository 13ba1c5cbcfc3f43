"""Tests of hcmtfg.features.face: detection, 68 landmarks, tracking (of loaded photos)."""

import logging
import subprocess
import sys

import cv2
import numpy as np
from PIL import Image
import pytest
from skimage import data as sk_data

from hcmtfg.errors import InputError
from hcmtfg.features import face
from hcmtfg.media import image_io


@pytest.fixture(scope="module")
def analyzer():
  return face.FaceAnalyzer()


@pytest.fixture(scope="module")
def astronaut_face(analyzer):
  photo = sk_data.astronaut()
  return photo, analyzer.detect_landmarks(photo)


def _moving_video(photo, center, num_frames, size=256, step=1.2):
  """A real face photo translated by `step` px and zoomed slightly per frame."""
  frames = []
  for t in range(num_frames):
    scale = 1.1 * (1.0 + 0.002 * t)
    dx, dy = step * t - 20.0, 0.5 * step * t - 10.0
    matrix = np.array([[scale, 0.0, size / 2 - scale * center[0] + dx],
                       [0.0, scale, size / 2 - scale * center[1] + dy]])
    frames.append(cv2.warpAffine(photo, matrix, (size, size),
                                 flags=cv2.INTER_AREA,
                                 borderMode=cv2.BORDER_REFLECT))
  return np.stack(frames)


def test_find_predictor_path_without_importing_package(tmp_path):
  code = ("import sys; from hcmtfg.features import face; "
          "p = face.find_predictor_path(); "
          "import os; assert os.path.getsize(p) > 50e6, p; "
          "assert 'face_recognition_models' not in sys.modules; print(p)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip().endswith(face.PREDICTOR_FILENAME)
  with pytest.raises(InputError, match="nowhere.dat"):
    face.find_predictor_path(tmp_path / "nowhere.dat")


def test_every_photo_has_a_plausible_face(analyzer, shared_data):
  paths = sorted((shared_data / "faces").glob("*.jpg"))
  assert len(paths) == 10
  for path in paths:
    image = image_io.load_image(path)
    box, lm = analyzer.detect_landmarks(image, source=path)
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    h, w = image.shape[:2]
    assert 0 <= box.left < box.right <= w and 0 <= box.top < box.bottom <= h
    margin = 0.15 * box.width
    inside = ((lm[:, 0] > box.left - margin) & (lm[:, 0] < box.right + margin) &
              (lm[:, 1] > box.top - margin) & (lm[:, 1] < box.bottom + margin))
    assert inside.mean() > 0.95, path.name
    left_eye, right_eye = lm[36:42].mean(0), lm[42:48].mean(0)
    mouth_y, nose_y, chin_y = lm[48:68, 1].mean(), lm[30, 1], lm[8, 1]
    assert max(left_eye[1], right_eye[1]) < nose_y < mouth_y < chin_y, path.name
    assert left_eye[0] < lm[30, 0] < right_eye[0], path.name
    eye_distance = np.linalg.norm(right_eye - left_eye)
    assert 0.25 * box.width < eye_distance < 0.6 * box.width, path.name


def test_largest_of_two_faces_is_chosen_and_logged(analyzer, shared_data,
                                                  caplog):
  big = image_io.load_image(shared_data / "faces" / "obama.jpg")  # 640x360
  small = cv2.resize(image_io.load_image(shared_data / "faces" / "test1.jpg"),
                     None, fx=0.9, fy=0.9, interpolation=cv2.INTER_AREA)
  canvas = np.full((400, 960, 3), 128, np.uint8)
  canvas[:360, :640] = big
  canvas[100:100 + small.shape[0], 660:660 + small.shape[1]] = small
  boxes = analyzer.detect_all(canvas)
  assert len(boxes) == 2
  caplog.set_level(logging.INFO, logger="absl")  # absl logs it
  best = analyzer.detect(canvas, source="two_faces.png")
  assert best.area == max(b.area for b in boxes)
  assert best.right < 640  # the Obama face, not the pasted one
  assert any("2 faces found; using the largest" in r.getMessage() and
             "two_faces.png" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["grey", "landscape"])
def test_no_face_raises(analyzer, kind):
  image = (np.full((240, 320, 3), 128, np.uint8) if kind == "grey"
           else sk_data.coffee())
  with pytest.raises(InputError, match=r"scene\.png: no face found"):
    analyzer.detect_landmarks(image, source="scene.png")


def test_image_formats_convert_to_rgb_uint8(analyzer, shared_data, tmp_path):
  rgb = image_io.load_image(shared_data / "faces" / "EzraMiller_00075.jpg")
  gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
  expected = analyzer.detect_landmarks(gray).landmarks
  files = {
      "gray8.png": lambda p: Image.fromarray(gray).save(p),
      "rgba.png": lambda p: Image.fromarray(
          np.dstack([rgb, np.full(gray.shape, 200, np.uint8)])).save(p),
      "gray16.png": lambda p: cv2.imwrite(str(p), gray.astype(np.uint16) * 257),
      "rgb16.png": lambda p: cv2.imwrite(
          str(p), rgb[..., ::-1].astype(np.uint16) * 257),
      "palette.png": lambda p: Image.fromarray(gray).convert("P").save(p),
  }
  for name, write in files.items():
    write(tmp_path / name)
    image = image_io.load_image(tmp_path / name)
    assert image.shape == rgb.shape and image.dtype == np.uint8, name
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(int)
    assert np.abs(luma - gray).mean() < 1.5, name
    lm = analyzer.detect_landmarks(image).landmarks
    assert np.abs(lm - expected).mean() < 1.0, name


def test_tracking_matches_detection_with_fewer_detector_calls(
    analyzer, astronaut_face):
  photo, found = astronaut_face
  frames = _moving_video(photo, found.box.center, num_frames=30)
  every = analyzer.track(frames, redetect_every=1)
  tracked = analyzer.track(frames, redetect_every=25)
  assert every.num_detector_calls == 30 and every.detected.all()
  assert tracked.num_detector_calls <= 6 and tracked.detected[0]
  assert tracked.missing.size == 0 and every.missing.size == 0
  dist = np.linalg.norm(tracked.landmarks - every.landmarks, axis=-1)
  assert dist.mean() < 1.0
  # The face really moves: tracking must follow it, not stay put.
  moved = np.linalg.norm(every.landmarks[-1] - every.landmarks[0], axis=-1)
  assert moved.mean() > 20.0


def test_tracking_reports_and_fills_short_gaps(analyzer, astronaut_face):
  photo, found = astronaut_face
  frames = _moving_video(photo, found.box.center, num_frames=24, step=0.5)
  frames[8:11] = 128  # the face disappears for 3 frames
  result = analyzer.track(frames, redetect_every=25)
  np.testing.assert_array_equal(result.missing, [8, 9, 10])
  assert result.detected[0] and result.detected[11]
  for t, w in zip((8, 9, 10), (0.25, 0.5, 0.75)):
    expected = (1 - w) * result.landmarks[7] + w * result.landmarks[11]
    np.testing.assert_allclose(result.landmarks[t], expected, atol=1e-3)


@pytest.mark.parametrize("blank", [slice(5, 12), slice(None, None, 4)],
                         ids=["long_gap", "too_many"])
def test_tracking_rejects_long_or_frequent_gaps(analyzer, astronaut_face,
                                               blank):
  photo, found = astronaut_face
  frames = _moving_video(photo, found.box.center, num_frames=24, step=0.5)
  frames[blank] = sk_data.coffee()[:256, :256]
  with pytest.raises(InputError, match=r"clip\.mp4: no face in \d+ of 24"):
    analyzer.track(frames, source="clip.mp4", max_gap=5,
                   max_missing_fraction=0.2)
  with pytest.raises(InputError, match="no face found in any"):
    analyzer.track(frames[:3] * 0)
