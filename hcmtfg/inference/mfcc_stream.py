"""Speech arriving in pieces -> the exact per-frame MFCC windows.

`MfccStream` turns speech pushed in pieces of any size (a microphone's
blocks, a file read progressively) into the per-frame 28x12 MFCC windows of
`hcmtfg.features.audio`, exactly as `audio.speech_features` computes them on
the whole signal. An MFCC row needs its 25 ms frame complete, and the window of video
frame t spans rows 4t .. 4t+27 of the signal padded with 0.12 s in front, so
frame t is ready once (t + 1) x 40 ms + 135 ms of speech have arrived: the
method's own look-ahead. `finish()` adds the release's 0.12 s of trailing
zeros and returns the last windows.

`engine.FrameStream` takes the windows in any amounts, so the frames of a
stream equal those of the whole file (`realtime.run`, `launch.stream`).
"""

from __future__ import annotations

import numpy as np

from hcmtfg.features import audio as audio_lib

_STEP = 160  # samples between MFCC rows at 16 kHz (10 ms)
_WINDOW = 400  # samples of one MFCC row's frame (25 ms)
_FRAME = audio_lib.SAMPLE_RATE // audio_lib.VIDEO_FPS  # 640 samples per frame
# Samples of speech needed beyond a frame's own end before its window is known.
LOOKAHEAD_SAMPLES = (_STEP * (audio_lib.WINDOW_ROWS - 1) + _WINDOW
                     - audio_lib.PAD_SAMPLES - _FRAME)  # 2160 (135 ms)


class MfccStream:
  """Per-frame MFCC windows (T, 28, 12) of 16 kHz speech arriving in pieces.

  The concatenated outputs of `push` and `finish` equal
  `audio.speech_features(whole_signal)[1]`.
  """

  def __init__(self):
    # The padded signal from sample `_offset` on (earlier samples are done).
    self._buffer = np.zeros(audio_lib.PAD_SAMPLES, np.float64)
    self._offset = 0
    self._rows = np.zeros((0, audio_lib.NUM_CEPS - 1), np.float32)
    self._rows_start = 0  # index of self._rows[0]
    self._next_row = 0  # first MFCC row not computed yet
    self._frames = 0  # windows returned so far
    self._samples = 0  # speech samples pushed so far
    self._finished = False

  @property
  def samples(self) -> int:
    """Speech samples pushed so far."""
    return self._samples

  @property
  def frames(self) -> int:
    """Windows returned so far."""
    return self._frames

  def push(self, samples: np.ndarray) -> np.ndarray:
    """Adds speech (N,) float in [-1, 1]; returns the windows now complete."""
    if self._finished:
      raise ValueError("the stream is finished")
    x = np.asarray(samples, np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
      raise ValueError("the speech contains NaN or infinite samples")
    self._samples += x.size
    self._buffer = np.concatenate([self._buffer, x])
    end = self._offset + self._buffer.size  # padded samples known
    rows = (end - _WINDOW) // _STEP + 1 if end >= _WINDOW else 0
    self._compute_rows(rows, to_end=False)
    # Frame t needs rows up to 4t + 27 (and exists: its samples have come).
    ready = (self._next_row - audio_lib.WINDOW_ROWS) // audio_lib.ROWS_PER_FRAME + 1
    return self._windows(max(ready, self._frames))

  def finish(self) -> np.ndarray:
    """Adds the trailing padding; returns every window not yet returned."""
    if self._finished:
      raise ValueError("the stream is finished")
    if self._samples < _FRAME:
      raise ValueError(f"speech must be at least one video frame ({_FRAME} "
                       f"samples), got {self._samples}")
    self._finished = True
    self._buffer = np.concatenate(
        [self._buffer, np.zeros(audio_lib.PAD_SAMPLES, np.float64)])
    end = self._offset + self._buffer.size
    rows = 1 + -(-(end - _WINDOW) // _STEP) if end > _WINDOW else 1
    self._compute_rows(rows, to_end=True)
    return self._windows(audio_lib.num_video_frames(self._samples))

  def _compute_rows(self, rows: int, to_end: bool) -> None:
    """MFCC rows [next_row, rows), each from its own 25 ms frame."""
    if rows <= self._next_row:
      return
    first = self._next_row
    # Start one row early so the first kept row's pre-emphasis sees the
    # sample before it; that extra row is dropped.
    start = max(first - 1, 0) * _STEP
    stop = None if to_end else (rows - 1) * _STEP + _WINDOW
    segment = self._buffer[start - self._offset:
                           None if stop is None else stop - self._offset]
    ceps = audio_lib.mfcc(segment)[(1 if first > 0 else 0):, 1:]
    if ceps.shape[0] != rows - first:
      raise AssertionError(f"expected {rows - first} MFCC rows, got "
                           f"{ceps.shape[0]}")
    self._rows = np.concatenate([self._rows, ceps])
    self._next_row = rows
    # Keep the samples the next row's frame (and pre-emphasis) needs.
    keep_from = max(self._next_row - 1, 0) * _STEP
    if keep_from > self._offset:
      self._buffer = self._buffer[keep_from - self._offset:]
      self._offset = keep_from

  def _windows(self, count: int) -> np.ndarray:
    """Windows [frames, count); rows past the MFCC's end are zeros."""
    first = self._frames
    if count <= first:
      return np.zeros((0, audio_lib.WINDOW_ROWS, audio_lib.NUM_CEPS - 1),
                      np.float32)
    needed = audio_lib.ROWS_PER_FRAME * (count - 1) + audio_lib.WINDOW_ROWS
    rows = self._rows
    if self._rows_start + rows.shape[0] < needed:  # only after finish()
      rows = np.concatenate([rows, np.zeros(
          (needed - self._rows_start - rows.shape[0], rows.shape[1]),
          np.float32)])
    index = (audio_lib.ROWS_PER_FRAME * np.arange(first, count)[:, None]
             + np.arange(audio_lib.WINDOW_ROWS)[None, :] - self._rows_start)
    windows = rows[index]
    self._frames = count
    # Rows before the next window's first row are no longer needed.
    drop = audio_lib.ROWS_PER_FRAME * count - self._rows_start
    if drop > 0:
      self._rows = self._rows[drop:]
      self._rows_start += drop
    return windows
