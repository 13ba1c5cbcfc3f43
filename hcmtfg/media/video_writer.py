"""H.264/AAC mp4 writing through ffmpeg, atomic, streamed frame chunks in.

Frames reach the encoder (the ffmpeg bundled with imageio-ffmpeg) as raw RGB24
bytes on a pipe, through `VideoWriter`: not `imageio_ffmpeg.write_frames`, which
neither reports ffmpeg's exit status nor keeps its messages (a failed encode ends
like a finished one, with an empty or truncated file) and cannot write to stdout.
Writing is atomic: the file is encoded under a hidden name in the target directory
and renamed once ffmpeg has succeeded, so a failed, aborted or killed write never
leaves a truncated file under the final name (a killed Python process may leave
the hidden `.NAME.*.partial.EXT` behind; `remove_partial_files` clears them).

`hcmtfg.media.video` (decoding) shares this module's `ffmpeg_exe`, `rate_string`
and `AUDIO_SAMPLE_RATE`, and re-exports its public names.
"""

from __future__ import annotations

import fractions
import os
import re
import subprocess
import sys
import tempfile
import uuid
from typing import Iterable

import imageio_ffmpeg
import numpy as np

AUDIO_SAMPLE_RATE = 16000
# x264's presets, fastest first: a slower one makes a smaller file of the same
# quality (crf). Generated videos use FAST_PRESET, which encodes faster than
# medium (x264's own default) without larger files on their smooth frames.
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast",
                "medium", "slow", "slower", "veryslow", "placebo")
FAST_PRESET = "veryfast"


def ffmpeg_exe() -> str:
  """Path of imageio-ffmpeg's bundled ffmpeg binary."""
  return imageio_ffmpeg.get_ffmpeg_exe()


def rate_string(fps: float) -> str:
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

  `fragmented=True` writes an mp4 that plays while it is being written: fragments
  are cut every 200 ms and x264 runs with `zerolatency` (no B-frames, no
  look-ahead), so a player sees frames about a fifth of a second after they were
  written; `path` may then be '-', stdout (e.g. piped into `ffplay -`).

  Args:
    path: output file; the muxer follows the extension (.mp4; .mkv/.mov also work).
    fps: frame rate.
    audio: (N,) or (N, C) float in [-1, 1] at audio_sample_rate, or None.
    audio_sample_rate: Hz of `audio`.
    crf, preset: x264 quality (lower crf = better) and speed.
    fragmented: a fragmented mp4 for streaming (see above).
  """

  def __init__(self, path: str | os.PathLike, fps: float = 25.0,
               audio: np.ndarray | None = None,
               audio_sample_rate: int = AUDIO_SAMPLE_RATE, crf: int = 18,
               preset: str = "medium", fragmented: bool = False):
    self.path = os.fspath(path)
    self._rate, self._gop = rate_string(fps), max(1, round(2 * fps))
    self._crf, self._preset, self._fragmented = int(crf), str(preset), fragmented
    self._audio_sample_rate = int(audio_sample_rate)
    self._audio = None if audio is None else np.asarray(audio, dtype=np.float32)
    if self._audio is not None and (self._audio.ndim not in (1, 2)
                                    or self._audio.shape[0] == 0):
      raise ValueError(f"audio must be (N,) or (N, C), N > 0, got {self._audio.shape}")
    if self.path == "-" and not fragmented:
      raise ValueError("only a fragmented mp4 can be written to stdout ('-')")
    directory, name = os.path.split(os.path.abspath(self.path))
    self._tmp_path = None if self.path == "-" else os.path.join(  # None: stdout
        directory, _partial_name(name, uuid.uuid4().hex[:8]))
    self._proc: subprocess.Popen | None = None
    self._size: tuple[int, int] | None = None  # (H, W)
    self._log = self._wav = None  # temporary files: ffmpeg's messages, the audio
    self.num_frames = 0
    self._done = False

  def __enter__(self) -> VideoWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.close() if exc_type is None else self.abort()

  def _start(self, height: int, width: int) -> None:
    self._log = tempfile.TemporaryFile()
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-video_size", f"{width}x{height}",
           "-framerate", self._rate, "-i", "pipe:0"]
    if self._audio is not None:
      import soundfile  # pylint: disable=g-import-not-at-top
      self._wav = tempfile.NamedTemporaryFile(prefix="hcmtfg_audio_", suffix=".wav")
      soundfile.write(self._wav.name, np.clip(self._audio, -1.0, 1.0),
                      self._audio_sample_rate, subtype="FLOAT")
      cmd += ["-i", self._wav.name, "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac",
              "-b:a", "128k"]
    if height % 2 or width % 2:
      cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
    cmd += ["-c:v", "libx264", "-preset", self._preset, "-crf", str(self._crf),
            "-pix_fmt", "yuv420p"]
    if self._fragmented:
      cmd += ["-tune", "zerolatency", "-g", str(self._gop), "-movflags",
              "+frag_keyframe+empty_moov+default_base_moof", "-frag_duration",
              "200000", "-flush_packets", "1", "-f", "mp4"]
    elif os.path.splitext(self._tmp_path)[1].lower() in (".mp4", ".mov", ".m4v"):
      cmd += ["-movflags", "+faststart"]
    cmd.append(self._tmp_path or "pipe:1")
    self._proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stderr=self._log,
        stdout=subprocess.DEVNULL if self._tmp_path else sys.stdout.buffer)
    self._size = (height, width)

  def _ffmpeg_log(self) -> str:
    self._log.seek(0)
    return self._log.read().decode("utf-8", "replace").strip()[-2000:]

  def write(self, frames: np.ndarray) -> None:
    """Appends one (H, W, 3) frame or a (N, H, W, 3) chunk, uint8 RGB."""
    if self._done:
      raise ValueError(f"{self.path}: the writer is already closed")
    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 3 else frames
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
      if self._fragmented:
        self._proc.stdin.flush()
    except (BrokenPipeError, OSError) as e:
      log = self._ffmpeg_log()
      self.abort()
      where = self.path if self._tmp_path else "stdout (is the player closed?)"
      raise RuntimeError(f"ffmpeg stopped while writing {where}: {log}") from e
    self.num_frames += frames.shape[0]

  def close(self) -> None:
    """Finishes the file and moves it to `path`; raises if ffmpeg failed."""
    if self._done:
      return
    if self._proc is None:
      self.abort()
      raise ValueError(f"{self.path}: no frames were written")
    self._proc.communicate()  # closes stdin (a broken pipe is fine), waits
    returncode = self._proc.returncode
    if returncode != 0 or (self._tmp_path and not os.path.exists(self._tmp_path)):
      log = self._ffmpeg_log()
      self.abort()
      raise RuntimeError(f"ffmpeg failed writing {self.path} (exit {returncode}): {log}")
    if self._tmp_path:
      os.replace(self._tmp_path, self.path)
    self._cleanup()

  def abort(self) -> None:
    """Stops ffmpeg and deletes the partial file; `path` is left untouched."""
    if self._proc is not None:
      if self._proc.poll() is None:
        self._proc.kill()
      self._proc.communicate()
    if self._tmp_path and os.path.exists(self._tmp_path):
      os.remove(self._tmp_path)
    self._cleanup()

  def _cleanup(self) -> None:
    self._done = True
    for temporary in (self._log, self._wav):
      if temporary is not None:
        temporary.close()  # which deletes it

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
    for chunk in [frames] if isinstance(frames, np.ndarray) else frames:
      writer.write(chunk)
  return os.fspath(path)
