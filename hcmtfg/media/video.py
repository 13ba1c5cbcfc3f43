"""Video decoding at a fixed frame rate and H.264/AAC mp4 writing, through ffmpeg.

All of it runs the ffmpeg bundled with imageio-ffmpeg. Frames, and what a file
holds (displayed size, frame rate, duration, audio track), come from its reader,
`imageio_ffmpeg.read_frames`; ffmpeg decodes the audio track to mono float32.

Frames reach the encoder as raw RGB24 bytes on a pipe, through `VideoWriter`:
not `imageio_ffmpeg.write_frames`, which neither reports ffmpeg's exit status nor
keeps its messages (a failed encode ends like a finished one, with an empty or
truncated file) and cannot write to stdout. Writing is atomic: the file is encoded
under a hidden name in the target directory and renamed once ffmpeg has succeeded,
so a failed, aborted or killed write never leaves a truncated file under the final
name (a killed Python process may leave the hidden `.NAME.*.partial.EXT` behind).
"""

from __future__ import annotations

import dataclasses
import fractions
import logging as std_logging
import os
import re
import subprocess
import sys
import tempfile
import uuid
from typing import Iterable

from absl import logging
import imageio_ffmpeg
import numpy as np

from hcmtfg import errors
from hcmtfg.errors import InputError

AUDIO_SAMPLE_RATE = 16000
# x264's presets, fastest first: a slower one makes a smaller file of the same
# quality (crf). Generated videos use FAST_PRESET: on a 10-s 512x512 paste-back
# video it takes 0.8 CPU-s against medium's 1.3 (x264's own default), and the
# files were smaller too (the frames are smooth).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast",
                "medium", "slow", "slower", "veryslow", "placebo")
FAST_PRESET = "veryfast"

# imageio-ffmpeg's reader puts ffmpeg in a process group of its own unless told
# not to, which takes a fork() that runs Python in the child: in a multithreaded
# process (JAX, TensorFlow, gRPC) the child can hang, and JAX warns about it. Its
# switch makes it start ffmpeg like every other subprocess here.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
# It also warns whenever the decoded size differs from the stored one, as it does
# for every video with rotation metadata; here that is expected.
std_logging.getLogger("imageio_ffmpeg").addFilter(
    lambda record: "different from the source frame size" not in record.getMessage())


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
  """What a media file holds (its first video stream that is not cover art).

  Without video, size and frame rate are None.
  """
  has_video: bool
  has_audio: bool
  width: int | None  # displayed size, i.e. after the rotation metadata is applied
  height: int | None
  fps: float | None
  duration: float | None  # seconds of the container, None when unknown


def ffmpeg_exe() -> str:
  """Path of imageio-ffmpeg's bundled ffmpeg binary."""
  return imageio_ffmpeg.get_ffmpeg_exe()


def _last_error_line(stderr: str) -> str:
  lines = [l.strip() for l in stderr.strip().splitlines() if l.strip()]
  lines = [l for l in lines if "At least one output file" not in l]
  return lines[-1] if lines else "unknown ffmpeg error"


def _open(path: str, output_params: list[str]):
  """(MediaInfo, generator of rgb24 frames as bytes) of the first video stream
  that is not cover art ('0:V:0'), read by imageio-ffmpeg; the generator is None
  when the file has no such stream.

  Raises:
    InputError: missing, empty or not media at all.
  """
  errors.check_readable_file(path, "a media file")
  reader = imageio_ffmpeg.read_frames(
      path, output_params=["-map", "0:V:0", *output_params])
  try:
    meta = next(reader)
  # OSError: ffmpeg opened no video stream; the others: a header that
  # imageio-ffmpeg's parser does not understand.
  except (OSError, RuntimeError, LookupError, AttributeError, ValueError):
    reader.close()
    return _info_without_video(path), None
  width, height = meta["size"]  # as decoded, so after rotation
  return MediaInfo(has_video=True, has_audio="audio_codec" in meta, width=width,
                   height=height, fps=meta["fps"] or None,
                   duration=meta["duration"] or None), reader


def _info_without_video(path: str) -> MediaInfo:
  """MediaInfo of a file with no video stream: audio only, or not media at all."""
  result = subprocess.run(
      [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path, "-map", "0:a:0",
       "-t", "0.04", "-f", "null", "-"], capture_output=True, check=False)
  log = result.stderr.decode("utf-8", "replace")
  if "Input #0" not in log:
    raise InputError(path, f"not a readable media file ({_last_error_line(log)})")
  # imageio-ffmpeg's reader says nothing without video: the container's
  # duration comes from ffmpeg's own header line.
  match = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", log)
  duration = (int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
              if match else None)
  return MediaInfo(has_video=False, has_audio="matches no streams" not in log,
                   width=None, height=None, fps=None, duration=duration or None)


def probe(path: str | os.PathLike) -> MediaInfo:
  """Streams, displayed size, frame rate and duration of a media file.

  Raises:
    InputError: missing, empty or not decodable by ffmpeg.
  """
  info, reader = _open(os.fspath(path), [])
  if reader is not None:
    reader.close()
  return info


def probe_duration(path: str | os.PathLike) -> float | None:
  """Container duration in seconds (None when ffmpeg does not know it)."""
  return probe(path).duration


def read_audio(path: str | os.PathLike, sample_rate: int = AUDIO_SAMPLE_RATE,
               max_seconds: float | None = None) -> np.ndarray:
  """The first audio track of any file ffmpeg reads, as (N,) float32 mono.

  Channels are downmixed and resampled by ffmpeg (-ac 1 -ar sample_rate).

  Args:
    path: any file with an audio track.
    sample_rate: Hz of the result.
    max_seconds: decode only the first `max_seconds` (None: all of it).

  Raises:
    InputError: unreadable file or no audio track.
  """
  path = os.fspath(path)
  errors.check_readable_file(path, "a media file")
  limit = [] if max_seconds is None else ["-t", f"{max_seconds:.3f}"]
  result = subprocess.run(
      [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", path,
       "-map", "0:a:0", "-vn", *limit, "-ac", "1", "-ar", str(sample_rate),
       "-c:a", "pcm_f32le", "-f", "f32le", "pipe:1"],
      capture_output=True, check=False)
  if result.returncode != 0:
    if not probe(path).has_audio:  # InputError when it is not media at all
      raise InputError(path, "has no audio track")
    raise InputError(path, "cannot decode the audio "
                     f"({_last_error_line(result.stderr.decode('utf-8', 'replace'))})")
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
  rate = [] if fps is None else ["-vf", f"fps={_rate_string(fps)}"]
  info, reader = _open(path, ["-an", "-sn", *rate])
  if reader is None:
    raise InputError(path, "has no video stream")
  try:
    if with_audio == "required" and not info.has_audio:
      raise InputError(path, "has no audio track (audio is required)")
    frames = [np.frombuffer(frame, np.uint8) for frame in reader]
  except RuntimeError as e:  # ffmpeg stopped in the middle of a frame
    raise InputError(path, f"cannot decode the video ({_last_error_line(str(e))})"
                     ) from e
  finally:
    reader.close()
  if not frames:
    raise InputError(path, f"decoded no complete {info.width}x{info.height} frame")
  frames = np.stack(frames).reshape(-1, info.height, info.width, 3)
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
    self._rate, self._gop = _rate_string(fps), max(1, round(2 * fps))
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
