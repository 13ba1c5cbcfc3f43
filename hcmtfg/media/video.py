"""Video decoding at a fixed frame rate, with its audio track, through ffmpeg.

All of it runs the ffmpeg bundled with imageio-ffmpeg. Frames, and what a file
holds (displayed size, frame rate, duration, audio track), come from its reader,
`imageio_ffmpeg.read_frames`; ffmpeg decodes the audio track to mono float32.

Writing (`VideoWriter`, `write_video`, the x264 presets, `remove_partial_files`)
lives in `hcmtfg.media.video_writer`.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import re
import subprocess

from absl import logging
import imageio_ffmpeg
import numpy as np

from hcmtfg import errors
from hcmtfg.errors import InputError
from hcmtfg.media import video_writer
from hcmtfg.media.video_writer import AUDIO_SAMPLE_RATE
from hcmtfg.media.video_writer import ffmpeg_exe

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
  rate = [] if fps is None else ["-vf", f"fps={video_writer.rate_string(fps)}"]
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
