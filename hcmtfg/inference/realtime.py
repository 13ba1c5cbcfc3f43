"""Streaming generation: speech in as it comes, frames out as soon as they can.

`run` feeds speech to `mfcc_stream.MfccStream` in blocks (like a sound card's
callbacks; `realtime=True` releases each block only when a live microphone
would have delivered it), runs the networks chunk by chunk
(`engine.FrameStream`), renders the frames (`compose.Renderer`) and
hands them to a sink as soon as each chunk is done:

* `FragmentedMp4Writer`: H.264 (+ the speech as AAC) in a fragmented mp4,
  to a file (written under a hidden name, renamed when complete) or to
  stdout, where `ffplay -` plays it while it is being made;
* `RawWriter`: rgb24 frames on a byte stream (`ffplay -f rawvideo ...`).

Latency of frame t = when it was handed to the sink - when the last sample
of its 40 ms of speech arrived. It includes the method's look-ahead (the
MFCC window of frame t reaches 135 ms past its end), waiting for a chunk to
fill, both networks, rendering and the write into the encoder.
"""

from __future__ import annotations

import dataclasses
import time
from typing import BinaryIO, Callable

import numpy as np

from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import compose
from hcmtfg.inference import mfcc_stream
from hcmtfg.inference import photo as photo_lib
from hcmtfg.inference import warm as warm_lib
from hcmtfg.media import video_writer

_FRAME_SAMPLES = audio_lib.SAMPLE_RATE // audio_lib.VIDEO_FPS


class RawWriter:
  """rgb24 frames, one after the other, on a binary stream."""

  def __init__(self, stream: BinaryIO):
    self._stream = stream
    self.num_frames = 0
    self.shape: tuple[int, int] | None = None

  def write(self, frames: np.ndarray) -> None:
    frames = np.ascontiguousarray(frames, np.uint8)
    if self.shape is None:
      self.shape = frames.shape[1:3]
    self._stream.write(frames.tobytes())
    self._stream.flush()
    self.num_frames += frames.shape[0]

  def close(self) -> None:
    self._stream.flush()

  def abort(self) -> None:
    pass


class FragmentedMp4Writer(video_writer.VideoWriter):
  """H.264 (+ AAC) fragmented mp4, playable while it is being written.

  `video_writer.VideoWriter(..., fragmented=True)` with the live defaults (fragments
  every 200 ms, x264 `zerolatency`, a fast preset).

  Args:
    target: a file name, or '-' for stdout.
    fps: frame rate.
    audio: (N,) or (N, C) float in [-1, 1] to mux in, or None.
    audio_sample_rate: Hz of `audio`.
    preset, crf: x264 speed and quality.
  """

  def __init__(self, target: str, *, fps: float = 25.0,
               audio: np.ndarray | None = None,
               audio_sample_rate: int = audio_lib.SAMPLE_RATE,
               preset: str = video_writer.FAST_PRESET, crf: int = 20):
    super().__init__(target, fps=fps, audio=audio,
                     audio_sample_rate=audio_sample_rate, crf=crf,
                     preset=preset, fragmented=True)


@dataclasses.dataclass(frozen=True)
class Report:
  """What a streaming run measured (seconds unless said otherwise).

  Attributes:
    frames: frames written.
    speech_seconds: speech duration.
    wall_seconds: from the first block to the last frame written.
    busy_seconds: time spent computing (features, networks, rendering,
      writing), i.e. not waiting for speech to arrive.
    first_frame_seconds: from the first block to the first frame written.
    sustained_fps: frames per second after the first chunk came out (frames
      after it / time from it to the last frame): 25 when a real-time run
      keeps up.
    latency: {'p50', 'p95', 'max', 'mean', 'first_quarter_p50',
      'last_quarter_p50'} of audio in -> frame out.
    realtime: whether the input was paced like a live microphone.
  """
  frames: int
  speech_seconds: float
  wall_seconds: float
  busy_seconds: float
  first_frame_seconds: float
  sustained_fps: float
  latency: dict[str, float]
  realtime: bool

  @property
  def frames_per_second(self) -> float:
    """Frames out per second of wall time (<= 25 in real-time mode)."""
    return self.frames / max(self.wall_seconds, 1e-9)

  @property
  def capacity_fps(self) -> float:
    """Frames per second of busy time: the rate the machine could sustain."""
    return self.frames / max(self.busy_seconds, 1e-9)

  def as_dict(self) -> dict[str, float | int | bool | dict]:
    out = dataclasses.asdict(self)
    out["frames_per_second"] = round(self.frames_per_second, 2)
    out["capacity_fps"] = round(self.capacity_fps, 2)
    return out

  def summary(self) -> str:
    lat = self.latency
    mode = "real time" if self.realtime else "as fast as possible"
    return (f"{self.frames} frames ({self.speech_seconds:.1f} s of speech, "
            f"{mode}) in {self.wall_seconds:.2f} s: "
            f"{self.sustained_fps:.1f} frames/s sustained, capacity "
            f"{self.capacity_fps:.1f} frames/s; first frame after "
            f"{self.first_frame_seconds * 1000:.0f} ms; latency audio in -> "
            f"frame out p50 {lat['p50'] * 1000:.0f} ms, p95 "
            f"{lat['p95'] * 1000:.0f} ms, max {lat['max'] * 1000:.0f} ms "
            f"(first/last quarter p50 {lat['first_quarter_p50'] * 1000:.0f}/"
            f"{lat['last_quarter_p50'] * 1000:.0f} ms)")


def run(warm: warm_lib.WarmNetworks, photo: photo_lib.PreparedPhoto,
        speech_16k: np.ndarray, sink, *, chunk_frames: int = 8,
        first_chunk_frames: int | None = None, paste_back: bool = False,
        realtime: bool = False, block_ms: float = 20.0,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep) -> Report:
  """Streams one utterance through the networks into `sink`.

  Args:
    warm: warm networks (call `warm.warm_up` with the chunk lengths
      first, or the first chunk's latency includes compiling).
    photo: the prepared photo.
    speech_16k: (N,) float32 16 kHz mono.
    sink: has write(frames (n, H, W, 3) uint8) and close().
    chunk_frames, first_chunk_frames: the chunk schedule.
    paste_back: composite the faces into the photo.
    realtime: release each block of speech when a microphone would.
    block_ms: block size of the speech input.
    clock, sleep: time sources (tests).

  Returns:
    The Report.
  """
  signal = np.asarray(speech_16k, np.float32)
  block = max(int(round(block_ms * audio_lib.SAMPLE_RATE / 1000)), 1)
  mfcc = mfcc_stream.MfccStream()
  stream = warm.frame_stream(photo, chunk_frames=chunk_frames,
                                 first_chunk_frames=first_chunk_frames)
  renderer = compose.Renderer(photo, warm.image_size, paste_back=paste_back)
  total = audio_lib.num_video_frames(signal.size)
  arrived = np.full(total, np.nan)  # when frame t's speech was complete
  out_times = np.full(total, np.nan)
  busy = 0.0
  start = clock()

  def emit(chunks) -> None:
    for chunk in chunks:
      frames, _ = renderer(chunk)
      sink.write(frames)
      out_times[chunk.start:chunk.start + frames.shape[0]] = clock()

  for begin in range(0, signal.size, block):
    end = min(begin + block, signal.size)
    if realtime:
      # A microphone delivers the block when its last sample is recorded; if
      # we are behind, the block waited for us and that counts as latency.
      due = start + end / audio_lib.SAMPLE_RATE
      wait = due - clock()
      if wait > 0:
        sleep(wait)
    now = clock()
    # Frames whose last sample came in this block are now fully heard.
    heard = total if end == signal.size else end // _FRAME_SAMPLES
    arrived[begin // _FRAME_SAMPLES:heard] = due if realtime else now
    emit(stream.push(mfcc.push(signal[begin:end])))
    busy += clock() - now
  now = clock()
  emit(stream.push(mfcc.finish()))
  emit(stream.finish())
  sink.close()
  end_time = clock()
  busy += end_time - now
  latency = out_times - arrived
  quarter = max(total // 4, 1)
  first_out, last_out = np.nanmin(out_times), np.nanmax(out_times)
  after_first = int(np.sum(out_times > first_out))
  return Report(
      frames=int(np.sum(~np.isnan(out_times))),
      speech_seconds=signal.size / audio_lib.SAMPLE_RATE,
      wall_seconds=float(np.nanmax(out_times) - start),
      busy_seconds=busy,
      first_frame_seconds=float(first_out - start),
      sustained_fps=(after_first / (last_out - first_out)
                     if last_out > first_out else float("nan")),
      latency={"p50": float(np.nanpercentile(latency, 50)),
               "p95": float(np.nanpercentile(latency, 95)),
               "max": float(np.nanmax(latency)),
               "mean": float(np.nanmean(latency)),
               "first_quarter_p50": float(np.nanmedian(latency[:quarter])),
               "last_quarter_p50": float(np.nanmedian(latency[-quarter:]))},
      realtime=realtime)
