"""Video decoding at a fixed frame rate and H.264/AAC mp4 writing, through ffmpeg.

Everything goes through the ffmpeg binary bundled with imageio-ffmpeg, driven with
subprocess pipes: frames leave ffmpeg as raw RGB24 bytes and enter it the same way
(never one image file per frame). Audio is decoded to 16 kHz mono float32.

Writing is atomic: the file is encoded under a hidden temporary name in the target
directory and renamed to its final name only once ffmpeg has succeeded, so a failed,
aborted or killed write never leaves a truncated file under the final name (a killed
Python process may leave the hidden `.NAME.*.partial.EXT` file behind).
"""

from __future__ import annotations

import dataclasses
import fractions
import os
import re
import subprocess
import tempfile
import uuid
from typing import Iterable

from absl import logging
import numpy as np

from hcmtfg import errors
from hcmtfg.errors import InputError

AUDIO_SAMPLE_RATE = 16000


@dataclasses.dataclass
class Video:
  """A decoded video.

  Attributes:
    frames: (T, H, W, 3) uint8 RGB.
    fps: frames per second of `frames`.
    audio: (N,) float32 mono in about [-1, 1], or None when not requested or absent.
    audio_sample_rate: Hz of `audio`.
  """
  frames: np.ndarray
  fps: float
  audio: np.ndarray | None
  audio_sample_rate: int = AUDIO_SAMPLE_RATE

  @property
  def num_frames(self) -> int:
    return int(self.frames.shape[0])

  @property
  def duration(self) -> float:
    """Seconds covered by the frames."""
    return self.num_frames / self.fps


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  """What `ffmpeg -i` says about a file (first non-cover-art video stream)."""
  has_video: bool
  has_audio: bool
  width: int | None  # displayed size, i.e. after the rotation metadata is applied
  height: int | None
  fps: float | None
  duration: float | None  # seconds of the container, None when unknown


def ffmpeg_exe() -> str:
  """Path of imageio-ffmpeg's bundled ffmpeg binary."""
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  return imageio_ffmpeg.get_ffmpeg_exe()


def _last_error_line(stderr: str) -> str:
  lines = [l.strip() for l in stderr.strip().splitlines() if l.strip()]
  lines = [l for l in lines if "At least one output file" not in l]
  return lines[-1] if lines else "unknown ffmpeg error"


_STREAM_RE = re.compile(r"^\s*Stream #\d+:\d+\S*: (Video|Audio): (.*)$", re.MULTILINE)
_SIZE_RE = re.compile(r", (\d+)x(\d+)[ ,\[]?")
_FPS_RE = re.compile(r", ([\d.]+) (?:fps|tbr)\b")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees")


def _parse_streams(section: str) -> tuple[tuple[int, int] | None, float | None, bool]:
  """(size, fps, has_audio) of the first real video stream in an ffmpeg section."""
  size, fps, has_audio = None, None, False
  for kind, details in _STREAM_RE.findall(section):
    if kind == "Audio":
      has_audio = True
    elif size is None and "(attached pic)" not in details:
      match = _SIZE_RE.search(details)
      if match and int(match.group(1)) > 0 and int(match.group(2)) > 0:
        size = (int(match.group(1)), int(match.group(2)))
        fps_match = _FPS_RE.search(details)
        fps = float(fps_match.group(1)) if fps_match else None
  return size, fps, has_audio


def probe(path: str | os.PathLike) -> MediaInfo:
  """Streams, displayed size, frame rate and duration of a media file.

  Raises:
    InputError: missing, empty or not decodable by ffmpeg.
  """
  path = os.fspath(path)
  errors.check_readable_file(path, "a media file")
  result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                          capture_output=True, check=False)
  stderr = result.stderr.decode("utf-8", "replace")
  if "Input #0" not in stderr:
    raise InputError(path, f"not a readable media file ({_last_error_line(stderr)})")
  input_section = stderr[stderr.index("Input #0"):]
  size, fps, has_audio = _parse_streams(input_section)
  rotation = _ROTATION_RE.search(input_section)
  if size is not None and rotation and round(abs(float(rotation.group(1)))) % 180 == 90:
    size = (size[1], size[0])
  duration = None
  match = _DURATION_RE.search(input_section)
  if match:
    h, m, s = match.groups()
    duration = int(h) * 3600 + int(m) * 60 + float(s)
  return MediaInfo(has_video=size is not None, has_audio=has_audio,
                   width=size[0] if size else None, height=size[1] if size else None,
                   fps=fps, duration=duration)


def probe_duration(path: str | os.PathLike) -> float | None:
  """Container duration in seconds (None when ffmpeg does not know it)."""
  return probe(path).duration


def read_audio(path: str | os.PathLike, sample_rate: int = AUDIO_SAMPLE_RATE
               ) -> np.ndarray:
  """The first audio track of any file ffmpeg reads, as (N,) float32 mono.

  Channels are downmixed and resampled by ffmpeg (-ac 1 -ar sample_rate).

  Raises:
    InputError: unreadable file or no audio track.
  """
  path = os.fspath(path)
  info = probe(path)
  if not info.has_audio:
    raise InputError(path, "has no audio track")
  cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", path,
         "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate),
         "-c:a", "pcm_f32le", "-f", "f32le", "pipe:1"]
  result = subprocess.run(cmd, capture_output=True, check=False)
  if result.returncode != 0:
    stderr = result.stderr.decode("utf-8", "replace")
    raise InputError(path, f"cannot decode the audio ({_last_error_line(stderr)})")
  return np.frombuffer(result.stdout, dtype="<f4").astype(np.float32)


def read_video(path: str | os.PathLike, fps: float | None = 25.0,
               with_audio: bool | str = True,
               audio_sample_rate: int = AUDIO_SAMPLE_RATE) -> Video:
  """Decodes a whole video to RGB frames at `fps` (and its audio track).

  Args:
    path: any container/codec ffmpeg reads (mp4, avi, mkv, mov, webm, ...).
    fps: output frame rate; ffmpeg's fps filter drops/duplicates frames when the
      source differs (also normalises variable frame rate). None keeps the source
      frames and reports the source's nominal rate.
    with_audio: True: decode the audio track, None when the file has none;
      False: don't decode audio (audio is None); "required": like True but a file
      without an audio track raises InputError.
    audio_sample_rate: Hz of the decoded mono audio.

  Returns:
    Video with frames (T, H, W, 3) uint8 RGB (displayed orientation), T >= 1.

  Raises:
    InputError: missing, empty, corrupt or unreadable file; no video stream; no
      decodable frame; no audio track when with_audio == "required".
  """
  if with_audio not in (True, False, "required"):
    raise ValueError(f"with_audio must be True, False or 'required', got {with_audio!r}")
  path = os.fspath(path)
  info = probe(path)
  if not info.has_video:
    raise InputError(path, "has no video stream")
  if with_audio == "required" and not info.has_audio:
    raise InputError(path, "has no audio track (audio is required)")
  cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path, "-map", "0:V:0",
         "-an", "-sn"]
  if fps is not None:
    cmd += ["-vf", f"fps={_rate_string(fps)}"]
  cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
  result = subprocess.run(cmd, capture_output=True, check=False)
  stderr = result.stderr.decode("utf-8", "replace")
  if result.returncode != 0:
    raise InputError(path, f"cannot decode the video ({_last_error_line(stderr)})")
  size = None
  if "Output #0" in stderr:  # the size after rotation and filters, as ffmpeg says
    size, _, _ = _parse_streams(stderr[stderr.index("Output #0"):])
  width, height = size if size else (info.width, info.height)
  frame_bytes = width * height * 3
  data = result.stdout
  if not data or len(data) % frame_bytes:
    raise InputError(path, f"decoded no complete {width}x{height} frame")
  frames = np.frombuffer(data, np.uint8).reshape(-1, height, width, 3).copy()
  if fps is not None and info.duration and frames.shape[0] < 0.5 * info.duration * fps:
    logging.warning("%s: decoded %d frames, expected about %d from its duration "
                    "(truncated file, or audio longer than video)", path,
                    frames.shape[0], round(info.duration * fps))
  audio = None
  if with_audio and info.has_audio:
    audio = read_audio(path, audio_sample_rate)
  out_fps = float(fps) if fps is not None else (info.fps or 25.0)
  return Video(frames=frames, fps=out_fps, audio=audio,
               audio_sample_rate=audio_sample_rate)


def _rate_string(fps: float) -> str:
  """'25' or '30000/1001': an exact rational ffmpeg accepts."""
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def _partial_name(name: str, tag: str) -> str:
  """The hidden name a `VideoWriter` writes `name` under until it is complete."""
  stem, ext = os.path.splitext(name)
  return f".{stem}.{tag}.partial{ext or '.mp4'}"


def remove_partial_files(path: str) -> list[str]:
  """Deletes the partial files killed `VideoWriter`s of `path` left behind.

  Returns:
    The files removed.
  """
  directory, name = os.path.split(os.path.abspath(path))
  if not os.path.isdir(directory):
    return []
  pattern = re.compile(re.escape(_partial_name(name, "@")).replace(
      "@", "[0-9a-f]{8}"))
  removed = []
  for entry in sorted(os.listdir(directory)):
    if pattern.fullmatch(entry):
      os.remove(os.path.join(directory, entry))
      removed.append(os.path.join(directory, entry))
  return removed


class VideoWriter:
  """Streams RGB frames into an H.264 (yuv420p) file, with an optional AAC track.

  Frames may come in any chunks; ffmpeg starts with the first one (which fixes the
  size). Odd widths/heights get one black column/row (yuv420p needs even sizes).
  The file appears under `path` only when `close()` succeeds; as a context manager,
  an exception in the block aborts the write and leaves nothing behind.

    with VideoWriter("out.mp4", fps=25, audio=speech) as writer:
      for chunk_NxHxWx3 in generate():
        writer.write(chunk_NxHxWx3)

  Args:
    path: output file; the muxer follows the extension (.mp4; .mkv/.mov also work).
    fps: frame rate.
    audio: (N,) or (N, C) float in [-1, 1] at audio_sample_rate, or None.
    audio_sample_rate: Hz of `audio`.
    crf, preset: x264 quality (lower crf = better) and speed.
  """

  def __init__(self, path: str | os.PathLike, fps: float = 25.0,
               audio: np.ndarray | None = None,
               audio_sample_rate: int = AUDIO_SAMPLE_RATE, crf: int = 18,
               preset: str = "medium"):
    self.path = os.fspath(path)
    self._rate = _rate_string(fps)
    self._crf, self._preset = int(crf), str(preset)
    self._audio_sample_rate = int(audio_sample_rate)
    self._audio = None if audio is None else np.asarray(audio, dtype=np.float32)
    if self._audio is not None and (self._audio.ndim not in (1, 2)
                                    or self._audio.shape[0] == 0):
      raise ValueError(f"audio must be (N,) or (N, C), N > 0, got {self._audio.shape}")
    directory, name = os.path.split(os.path.abspath(self.path))
    self._tmp_path = os.path.join(directory, _partial_name(name,
                                                           uuid.uuid4().hex[:8]))
    self._proc: subprocess.Popen | None = None
    self._tmpdir: tempfile.TemporaryDirectory | None = None
    self._log = None
    self._size: tuple[int, int] | None = None  # (H, W)
    self._num_frames = 0
    self._done = False

  def __enter__(self) -> VideoWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()

  @property
  def num_frames(self) -> int:
    return self._num_frames

  def _start(self, height: int, width: int) -> None:
    self._log = tempfile.TemporaryFile()
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-video_size", f"{width}x{height}",
           "-framerate", self._rate, "-i", "pipe:0"]
    if self._audio is not None:
      import soundfile  # pylint: disable=g-import-not-at-top
      self._tmpdir = tempfile.TemporaryDirectory(prefix="hcmtfg_audio_")
      wav = os.path.join(self._tmpdir.name, "audio.wav")
      soundfile.write(wav, np.clip(self._audio, -1.0, 1.0), self._audio_sample_rate,
                      subtype="FLOAT")
      cmd += ["-i", wav, "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac",
              "-b:a", "128k"]
    if height % 2 or width % 2:
      cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
    cmd += ["-c:v", "libx264", "-preset", self._preset, "-crf", str(self._crf),
            "-pix_fmt", "yuv420p"]
    if os.path.splitext(self._tmp_path)[1].lower() in (".mp4", ".mov", ".m4v"):
      cmd += ["-movflags", "+faststart"]
    cmd.append(self._tmp_path)
    self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=self._log)
    self._size = (height, width)

  def _ffmpeg_log(self) -> str:
    self._log.seek(0)
    return self._log.read().decode("utf-8", "replace").strip()[-2000:]

  def write(self, frames: np.ndarray) -> None:
    """Appends one (H, W, 3) frame or a (N, H, W, 3) chunk, uint8 RGB."""
    if self._done:
      raise ValueError(f"{self.path}: the writer is already closed")
    frames = np.asarray(frames)
    if frames.ndim == 3:
      frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise ValueError("frames must be uint8 RGB of shape (H, W, 3) or (N, H, W, 3), "
                       f"got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0:
      return
    if self._proc is None:
      self._start(frames.shape[1], frames.shape[2])
    if frames.shape[1:3] != self._size:
      self.abort()
      raise ValueError(f"frame size {frames.shape[1:3]} differs from the first "
                       f"frames' {self._size}")
    try:
      for start in range(0, frames.shape[0], 64):  # bounded copies for long arrays
        self._proc.stdin.write(np.ascontiguousarray(frames[start:start + 64]).tobytes())
    except (BrokenPipeError, OSError) as e:
      log = self._ffmpeg_log()
      self.abort()
      raise RuntimeError(f"ffmpeg stopped while writing {self.path}: {log}") from e
    self._num_frames += frames.shape[0]

  def close(self) -> None:
    """Finishes the file and moves it to `path`; raises if ffmpeg failed."""
    if self._done:
      return
    if self._proc is None:
      self.abort()
      raise ValueError(f"{self.path}: no frames were written")
    try:
      self._proc.stdin.close()
    except (BrokenPipeError, OSError):
      pass
    returncode = self._proc.wait()
    if returncode != 0 or not os.path.exists(self._tmp_path):
      log = self._ffmpeg_log()
      self.abort()
      raise RuntimeError(f"ffmpeg failed writing {self.path} (exit {returncode}): {log}")
    os.replace(self._tmp_path, self.path)
    self._cleanup()

  def abort(self) -> None:
    """Stops ffmpeg and deletes the partial file; `path` is left untouched."""
    if self._proc is not None:
      if self._proc.poll() is None:
        self._proc.kill()
        self._proc.wait()
      try:
        self._proc.stdin.close()
      except (BrokenPipeError, OSError):
        pass
    if os.path.exists(self._tmp_path):
      os.remove(self._tmp_path)
    self._cleanup()

  def _cleanup(self) -> None:
    self._done = True
    if self._tmpdir is not None:
      self._tmpdir.cleanup()
      self._tmpdir = None
    if self._log is not None:
      self._log.close()
      self._log = None

  def __del__(self):
    try:
      if not self._done:
        self.abort()
    except Exception:  # pylint: disable=broad-except
      pass


def write_video(path: str | os.PathLike,
                frames: np.ndarray | Iterable[np.ndarray], fps: float = 25.0,
                audio: np.ndarray | None = None,
                audio_sample_rate: int = AUDIO_SAMPLE_RATE, crf: int = 18,
                preset: str = "medium") -> str:
  """Writes frames (and audio) to an H.264/AAC mp4, atomically.

  Args:
    path: output file (.mp4).
    frames: (T, H, W, 3) uint8 RGB array, or an iterable of (H, W, 3) frames or
      (N, H, W, 3) chunks (streamed, never all in memory).
    fps: frame rate.
    audio: (N,) float32 mono (or (N, C)) in [-1, 1], or None for a silent video.
    audio_sample_rate: Hz of `audio`.
    crf, preset: x264 quality (lower crf = better) and speed.

  Returns:
    The path written.
  """
  with VideoWriter(path, fps=fps, audio=audio, audio_sample_rate=audio_sample_rate,
                   crf=crf, preset=preset) as writer:
    if isinstance(frames, np.ndarray):
      writer.write(frames)
    else:
      for chunk in frames:
        writer.write(chunk)
  return os.fspath(path)
