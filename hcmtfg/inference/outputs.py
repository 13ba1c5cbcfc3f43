"""Generated frames -> mp4 files with the speech as their audio track.

`VideoOutputs` is the pair of videos one generation writes (the result and,
when asked, the intermediates view beside it), fed chunk by chunk through a
`compose.Renderer`; one video (`batch_generate`) and the server
(`hcmtfg.server.jobs`) use it. Files are written atomically
(`hcmtfg.media.video.VideoWriter`: a hidden partial file, renamed when
complete).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable

import numpy as np

from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import compose
from hcmtfg.inference import engine
from hcmtfg.media import video_writer

# Sample rates AAC (the mp4 audio track) supports; others are written at 16 kHz.
_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000,
              64000, 88200, 96000)


def intermediates_path(output: str) -> str:
  """Where the intermediates video of `output` goes (OUTPUT_intermediates.mp4)."""
  stem, ext = os.path.splitext(output)
  return f"{stem}_intermediates{ext or '.mp4'}"


def output_audio(path: str | os.PathLike, speech_16k: np.ndarray
                 ) -> tuple[np.ndarray, int]:
  """The audio track for the output: the file's own samples and rate when AAC
  can store them (any channel count), else the 16 kHz mono signal."""
  try:
    import soundfile  # pylint: disable=g-import-not-at-top
    data, rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
    if rate in _AAC_RATES and data.shape[0] > 0 and data.shape[1] <= 2 and np.all(
        np.isfinite(data)):
      return np.clip(data, -1.0, 1.0), int(rate)
  except Exception:  # pylint: disable=broad-except  (any unreadable file)
    pass
  return np.asarray(speech_16k, np.float32), audio_lib.SAMPLE_RATE


class VideoOutputs(contextlib.AbstractContextManager):
  """The result video and, with the renderer's intermediates, its side view.

  Args:
    path: the result's file; the side view goes to `intermediates_path(path)`
      unless `intermediates_file` names another.
    renderer: turns chunks into the frames written.
    audio, audio_sample_rate: the track muxed into both.
    preset: x264 speed preset.
    intermediates_file: where the side view goes.
  """

  def __init__(self, path: str, renderer: compose.Renderer, *,
               audio: np.ndarray, audio_sample_rate: int,
               preset: str = video_writer.FAST_PRESET,
               intermediates_file: str | None = None):
    self.renderer = renderer
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._stack = contextlib.ExitStack()
    open_video = lambda target: self._stack.enter_context(video_writer.VideoWriter(
        target, fps=engine.FPS, audio=audio,
        audio_sample_rate=audio_sample_rate, preset=preset))
    try:
      self._writer = open_video(path)
      self._side = (open_video(intermediates_file or intermediates_path(path))
                    if renderer.intermediates else None)
    except BaseException:
      self._stack.close()
      raise

  @property
  def num_frames(self) -> int:
    return self._writer.num_frames

  def write(self, chunk: engine.FrameChunk) -> np.ndarray:
    """Renders and writes one chunk; returns the result frames written."""
    frames, side = self.renderer(chunk)
    self._writer.write(frames)
    if self._side is not None:
      self._side.write(side)
    return frames

  def __exit__(self, *exc_info) -> bool | None:
    return self._stack.__exit__(*exc_info)


def write_result(path: str | os.PathLike,
                 frames: np.ndarray | Iterable[np.ndarray | engine.FrameChunk],
                 audio: np.ndarray, *, audio_sample_rate: int = audio_lib.SAMPLE_RATE,
                 fps: float = engine.FPS, crf: int = 18) -> int:
  """Streams frames (+ the speech) into an H.264/AAC mp4, written atomically.

  Args:
    path: output file.
    frames: (T, H, W, 3) uint8, or an iterable of (n, H, W, 3) arrays or
      FrameChunks (their `frames`).
    audio: (N,) or (N, C) float in [-1, 1] at audio_sample_rate.
    audio_sample_rate: Hz.
    fps: video frame rate (25).
    crf: x264 quality.

  Returns:
    The number of frames written.
  """
  folder = os.path.dirname(os.path.abspath(os.fspath(path)))
  os.makedirs(folder, exist_ok=True)
  with video_writer.VideoWriter(path, fps=fps, audio=audio,
                             audio_sample_rate=audio_sample_rate, crf=crf) as writer:
    if isinstance(frames, np.ndarray):
      writer.write(frames)
    else:
      for chunk in frames:
        writer.write(chunk.frames if isinstance(chunk, engine.FrameChunk) else chunk)
    return writer.num_frames
