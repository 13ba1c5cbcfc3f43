"""What a request brings: the form, its limits, and checked photo and speech.

Uploads are parsed from multipart/form-data (`parse_form`), written under
fixed names in the job's own temporary folder (an uploaded file name is only
ever shown in messages, cleaned, never used as a path) and checked before
any network runs. Every problem is an `UploadError` with the HTTP status and
one sentence naming the field, the file as the user called it, and what is
wrong ("speech (talk.mp3): it is 2:00:00 long; at most 60 s are accepted").
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import math
import os
import unicodedata

import numpy as np

from hcmtfg.errors import InputError
from hcmtfg.features import audio as audio_lib
from hcmtfg.media import video as video_lib


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the server accepts.

  Attributes:
    max_upload_bytes: whole request body (photo + speech + fields).
    max_speech_seconds: longest speech accepted.
    max_photo_pixels: largest photo (width x height) decoded at all.
    max_photo_side: photos are downscaled so that their long side is at most
      this (the paste-back video has the photo's size).
    min_speech_peak: speech whose peak |sample| is below is called silent.
    max_queued: jobs waiting (not counting the running one) before the
      server answers 503.
  """
  max_upload_bytes: int = 25 * 1024 * 1024
  max_speech_seconds: float = 60.0
  max_photo_pixels: int = 40_000_000
  max_photo_side: int = 1024
  min_speech_peak: float = 1e-3
  max_queued: int = 8

  def describe(self) -> dict[str, float | int]:
    return dataclasses.asdict(self)


class UploadError(Exception):
  """A request the server refuses: HTTP status and a message for the user."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


@dataclasses.dataclass(frozen=True)
class Field:
  """One form field: a file (filename set) or a plain value."""
  name: str
  data: bytes
  filename: str | None = None


def display_name(filename: str | None, fallback: str) -> str:
  """A file name fit for messages: last path part, printable, <= 60 chars."""
  if not filename:
    return fallback
  name = filename.replace("\\", "/").rsplit("/", 1)[-1]
  name = "".join(c for c in name if unicodedata.category(c)[0] not in "CZ"
                 or c == " ").strip()
  if len(name) > 60:
    name = name[:28] + "..." + name[-28:]
  return name or fallback


def parse_form(content_type: str | None, body: bytes) -> dict[str, Field]:
  """multipart/form-data -> {name: Field} (the last of repeated names)."""
  if not content_type or not content_type.lower().startswith(
      "multipart/form-data"):
    raise UploadError(415, "send the photo and the speech as "
                      "multipart/form-data (fields 'image' and 'audio')")
  head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode(
      "latin-1", "replace")
  message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
      head + body)
  if not message.is_multipart():
    raise UploadError(400, "the form could not be read (malformed multipart "
                      "body)")
  fields = {}
  for part in message.iter_parts():
    name = part.get_param("name", header="content-disposition")
    if not name:
      continue
    data = part.get_payload(decode=True) or b""
    fields[str(name)] = Field(str(name), data, part.get_filename())
  return fields


def flag(fields: dict[str, Field], name: str) -> bool:
  """A checkbox-like field: '1', 'true', 'on', 'yes' are True."""
  field = fields.get(name)
  return field is not None and field.data.strip().lower() in (
      b"1", b"true", b"on", b"yes")


def file_field(fields: dict[str, Field], name: str, label: str) -> Field:
  field = fields.get(name)
  if field is None or (not field.data and not field.filename):
    raise UploadError(400, f"no {label} was sent (form field '{name}')")
  if not field.data:
    raise UploadError(400, f"{label} ({display_name(field.filename, name)}): "
                      "the file is empty")
  return field


def read_photo(path: str, label: str, limits: Limits) -> np.ndarray:
  """The photo as (H, W, 3) RGB uint8, long side <= max_photo_side.

  Raises:
    UploadError: not an image, corrupt or truncated, too many pixels.
  """
  import cv2  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from hcmtfg.media import image_io  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:  # reads the header only
      width, height = image.size
  except Exception:  # pylint: disable=broad-except  (image_io.load_image names it)
    width = height = 0
  if width * height > limits.max_photo_pixels:
    raise UploadError(400, f"{label}: the image is {width}x{height} pixels; at "
                      f"most {limits.max_photo_pixels / 1e6:.0f} megapixels "
                      "are accepted")
  try:
    image = image_io.load_image(path)
  except InputError as e:
    raise UploadError(400, f"{label}: {e.problem}") from e
  side = max(image.shape[:2])
  if side > limits.max_photo_side:
    scale = limits.max_photo_side / side
    size = (max(round(image.shape[1] * scale), 1),
            max(round(image.shape[0] * scale), 1))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
  return image


def _header_duration(path: str) -> float | None:
  """Seconds from the file's header (libsndfile, else ffmpeg), None if unknown."""
  import soundfile  # pylint: disable=g-import-not-at-top
  try:
    info = soundfile.info(path)
    if info.samplerate > 0 and info.frames > 0:
      return info.frames / info.samplerate
  except Exception:  # pylint: disable=broad-except  (not a libsndfile format)
    pass
  try:
    return video_lib.probe(path).duration
  except InputError:
    return None


def _decode_capped(path: str, seconds: float) -> np.ndarray:
  """16 kHz mono float32 of the first `seconds` of any file ffmpeg reads."""
  return video_lib.read_audio(path, audio_lib.SAMPLE_RATE, max_seconds=seconds)


def read_speech(path: str, label: str, limits: Limits) -> np.ndarray:
  """The speech as (N,) float32 16 kHz mono, checked.

  The duration is read from the header first, so a two-hour file is refused
  without decoding it; files that do not state their duration (a browser's
  recording) are decoded only up to the limit.

  Raises:
    UploadError: not audio, no audio track, shorter than a video frame,
      longer than max_speech_seconds, or silent.
  """
  limit = limits.max_speech_seconds
  duration = _header_duration(path)
  too_long = (f"{label}: it is {_clock(duration or limit)} long; at most "
              f"{limit:g} s of speech are accepted")
  if duration is not None and duration > limit + 0.05:
    raise UploadError(400, too_long)
  try:
    if duration is not None:
      signal = audio_lib.load_audio(path)
    else:
      signal = _decode_capped(path, limit + 1.0)
      if signal.size > (limit + 0.05) * audio_lib.SAMPLE_RATE:
        raise UploadError(400, f"{label}: it is longer than {limit:g} s; at "
                          f"most {limit:g} s of speech are accepted")
      if signal.size < audio_lib.SAMPLE_RATE // audio_lib.VIDEO_FPS:
        raise InputError(path, "the audio is shorter than one video frame "
                         "(0.04 s)")
      signal = np.clip(signal, -1.0, 1.0)
  except InputError as e:
    problem = e.problem
    if "not a readable media file" in problem:
      problem = "not an audio file ffmpeg can read"
    raise UploadError(400, f"{label}: {problem}") from e
  if signal.size > (limit + 0.05) * audio_lib.SAMPLE_RATE:
    raise UploadError(400, too_long)
  peak = float(np.max(np.abs(signal))) if signal.size else 0.0
  if peak < limits.min_speech_peak:
    level = "digital silence" if peak == 0 else (
        f"its loudest sample is {20 * math.log10(peak):.0f} dBFS")
    raise UploadError(400, f"{label}: the recording is silent ({level}); "
                      "nothing to lip-sync")
  return signal


def _clock(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.1f} s"
  s = int(round(seconds))
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def save(folder: str, name: str, data: bytes) -> str:
  """Writes an upload as `folder/name` (a fixed name) and returns the path."""
  path = os.path.join(folder, name)
  with open(path, "wb") as f:
    f.write(data)
  return path
