"""Tests of hcmtfg.inference.face_prefetch: the child's answers equal the in-process ones."""

import numpy as np
from PIL import Image
import pytest
from skimage import data as sk_data

from hcmtfg.errors import InputError
from hcmtfg.features import face
from hcmtfg.inference import face_prefetch
from hcmtfg.inference import photo as photo_lib


@pytest.fixture(scope="module")
def astronaut_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("photo") / "astronaut.png"
  Image.fromarray(sk_data.astronaut()).save(path)
  return str(path)


def test_prepared_photo_is_identical(astronaut_file):
  expected = photo_lib.prepare_photo(astronaut_file, face.FaceAnalyzer())
  prefetch = face_prefetch.PrefetchedAnalyzer(astronaut_file)
  got = photo_lib.prepare_photo(astronaut_file, prefetch)
  assert prefetch._analyzer is None  # pylint: disable=protected-access
  assert prefetch._answer["faces"]  # pylint: disable=protected-access
  np.testing.assert_array_equal(got.image, expected.image)
  np.testing.assert_array_equal(got.crop, expected.crop)
  np.testing.assert_array_equal(got.crop_landmarks, expected.crop_landmarks)
  np.testing.assert_array_equal(got.landmarks, expected.landmarks)
  assert ((got.transform.left, got.transform.top, got.transform.size)
          == (expected.transform.left, expected.transform.top,
              expected.transform.size))
  np.testing.assert_array_equal(got.transform.matrix, expected.transform.matrix)


def test_another_image_is_analysed_in_process(astronaut_file):
  prefetch = face_prefetch.PrefetchedAnalyzer(astronaut_file)
  flipped = np.ascontiguousarray(sk_data.astronaut()[:, ::-1])
  got = photo_lib.prepare_photo(flipped, prefetch)
  expected = photo_lib.prepare_photo(flipped, face.FaceAnalyzer())
  assert prefetch._analyzer is not None  # pylint: disable=protected-access
  np.testing.assert_array_equal(got.landmarks, expected.landmarks)


def test_unreadable_photo_falls_back_to_the_same_error(tmp_path):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not an image")
  prefetch = face_prefetch.PrefetchedAnalyzer(str(bad))
  with pytest.raises(InputError, match="not an image"):
    photo_lib.prepare_photo(str(bad), prefetch)
  prefetch.close()
  assert prefetch._proc.poll() is not None  # pylint: disable=protected-access
  # Asked anyway (another caller), it detects in-process.
  assert prefetch.detect_all(np.zeros((64, 64), np.uint8)) == []
