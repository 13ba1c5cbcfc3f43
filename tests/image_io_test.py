"""Tests of hcmtfg.media.image_io: photos read as RGB uint8, clear errors, no dlib."""

import subprocess
import sys

import pytest

from hcmtfg.errors import InputError
from hcmtfg.media import image_io


def test_reading_photos_does_not_load_dlib():
  code = ("import sys; from hcmtfg.media import image_io; "
          "assert 'dlib' not in sys.modules, 'dlib imported'")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_files_raise_input_error(shared_data, tmp_path):
  with pytest.raises(InputError, match="not found"):
    image_io.load_image(tmp_path / "missing.jpg")
  text = tmp_path / "notes.jpg"
  text.write_text("this is not a picture\n" * 20)
  with pytest.raises(InputError, match="notes.jpg: not an image"):
    image_io.load_image(text)
  good = (shared_data / "faces" / "test14.jpg").read_bytes()
  corrupt = tmp_path / "corrupt.jpg"
  corrupt.write_bytes(good[:len(good) // 2])
  with pytest.raises(InputError, match="corrupt.jpg: corrupt or truncated"):
    image_io.load_image(corrupt)
