"""Frames as the speech arrives: incremental MFCC windows and chunked networks.

`MfccStream` turns speech pushed in pieces of any size (a microphone's
blocks, a file read progressively) into the per-frame 28x12 MFCC windows of
`hcmtfg.features.audio`, exactly as `audio.speech_features` computes them on the whole
signal. An MFCC row needs its 25 ms frame complete, and the window of video
frame t spans rows 4t .. 4t+27 of the signal padded with 0.12 s in front, so
frame t is ready once (t + 1) x 40 ms + 135 ms of speech have arrived: the
method's own look-ahead. `finish()` adds the release's 0.12 s of trailing
zeros and returns the last windows.

`FrameStream` runs AT-net and VG-net on windows pushed in any amounts, in
chunks following a schedule (a small first chunk gets the first frames out
quickly; the rest run at the throughput chunk length). The LSTM and ConvGRU
states are carried across chunks (`hcmtfg.inference.chunked`), so the frames equal
`generate.generate`'s for the same speech, whatever the schedule. Each chunk
length has one compiled AT-net and one VG-net executable
(`generate.atnet_step` / `generate.vgnet_step`), shared with the batch path
and kept in the persistent compilation cache (`hcmtfg.runtime.compile_cache`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import jax.numpy as jnp
import numpy as np

from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import generate
from hcmtfg.features import landmarks as landmarks_lib

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


def chunk_schedule(chunk_frames: int, first_chunk_frames: int | None = None
                   ) -> tuple[int, ...]:
  """The chunk lengths a FrameStream uses: (first, then every other)."""
  if chunk_frames < 1 or (first_chunk_frames is not None
                          and first_chunk_frames < 1):
    raise ValueError("chunk lengths must be >= 1")
  first = chunk_frames if first_chunk_frames is None else first_chunk_frames
  return (first, chunk_frames)


class FrameStream:
  """AT-net + VG-net on MFCC windows pushed in any amounts (one utterance).

  Args:
    generator: the networks (`generate.load_generator_networks`).
    photo: the prepared photo (its image must be generator.image_size).
    chunk_frames: frames per network call after the first chunk.
    first_chunk_frames: frames of the first call (None: chunk_frames); a
      small one gets the first frames out sooner.
    release_coef_scaling: None = the generator's default.
  """

  def __init__(self, generator: generate.Generator,
               photo: generate.PreparedPhoto, *, chunk_frames: int = 32,
               first_chunk_frames: int | None = None,
               release_coef_scaling: bool | None = None):
    s = generator.image_size
    if photo.image.shape != (s, s, 3):
      raise ValueError(f"the photo was prepared at {photo.image.shape[:2]}, "
                       f"the VG-net makes {s}x{s} frames")
    self._gen = generator
    self._photo = photo
    self._first, self._chunk = chunk_schedule(chunk_frames, first_chunk_frames)
    scaling = (generator.release_coef_scaling if release_coef_scaling is None
               else release_coef_scaling)
    k = generator.pca.num_components
    self._gain = np.ones(k, np.float32)
    if scaling:
      self._gain[1:6] = generate.RELEASE_COEF_GAIN[:max(min(k, 6) - 1, 0)]
    pca = generator.pca
    self._example_coef = landmarks_lib.project(
        pca, photo.landmarks).astype(np.float32)[None]
    self._image = jnp.asarray(photo.image[None])
    self._example = jnp.asarray(generate.vgnet_example_landmark(
        generator, photo)[None])
    self._at_carry, self._vg_carry = generator.initial_carries()
    self._pending = np.zeros((0, audio_lib.WINDOW_ROWS,
                              audio_lib.NUM_CEPS - 1), np.float32)
    self._start = 0  # index of the next frame to generate
    self._finished = False

  @property
  def frames_done(self) -> int:
    """Frames generated so far."""
    return self._start

  def _next_length(self) -> int:
    return self._first if self._start == 0 else self._chunk

  def push(self, windows_Nx28x12: np.ndarray) -> Iterator[generate.FrameChunk]:
    """Adds windows; yields the chunks they complete (dispatching each chunk
    before fetching the previous one, so host and device work overlap)."""
    if self._finished:
      raise ValueError("the stream is finished")
    self._pending = np.concatenate(
        [self._pending, np.asarray(windows_Nx28x12, np.float32)])
    yield from self._run(final=False)

  def finish(self) -> Iterator[generate.FrameChunk]:
    """Yields the chunks of the remaining windows (the last one padded)."""
    if self._finished:
      raise ValueError("the stream is finished")
    self._finished = True
    yield from self._run(final=True)

  def _run(self, final: bool) -> Iterator[generate.FrameChunk]:
    previous = None
    while self._pending.shape[0] >= self._next_length() or (
        final and self._pending.shape[0]):
      length = self._next_length()
      windows, self._pending = (self._pending[:length],
                                self._pending[length:])
      dispatched = self._dispatch(windows, length)
      if previous is not None:
        yield _fetch(*previous)
      previous = dispatched
    if previous is not None:
      yield _fetch(*previous)

  def _dispatch(self, windows: np.ndarray, length: int):
    gen, n = self._gen, windows.shape[0]
    if n < length:  # the last chunk: pad by repeating the last window
      windows = np.concatenate([windows, np.repeat(windows[-1:], length - n,
                                                   axis=0)])
    coefs, self._at_carry = generate.atnet_step(
        gen.atnet, gen.atnet_variables, self._at_carry, self._example_coef,
        windows[None])
    coefs = np.asarray(coefs)[0] * self._gain
    frames, attention, colour, self._vg_carry = generate.vgnet_step(
        gen.vgnet, gen.vgnet_variables, self._vg_carry, self._image,
        jnp.asarray(coefs[None]), self._example, gen.pca_components,
        gen.pca_mean)
    lmarks = landmarks_lib.reconstruct(gen.pca, coefs[:n]).astype(np.float32)
    start = self._start
    self._start += n
    return start, n, frames, attention, colour, lmarks


def _fetch(start, n, frames, attention, colour, lmarks) -> generate.FrameChunk:
  return generate.FrameChunk(start, np.asarray(frames)[:n],
                             np.asarray(attention)[:n],
                             np.asarray(colour)[:n], lmarks)


def warm_up(generator: generate.Generator, lengths: Sequence[int]) -> None:
  """Compiles (or loads from the persistent cache) the chunk executables."""
  s = generator.image_size
  at_carry, vg_carry = generator.initial_carries()
  for length in sorted(set(lengths)):
    coefs, _ = generate.atnet_step(
        generator.atnet, generator.atnet_variables, at_carry,
        np.zeros((1, generator.pca.num_components), np.float32),
        np.zeros((1, length, audio_lib.WINDOW_ROWS, audio_lib.NUM_CEPS - 1),
                 np.float32))
    out = generate.vgnet_step(
        generator.vgnet, generator.vgnet_variables, vg_carry,
        jnp.zeros((1, s, s, 3), jnp.float32),
        jnp.asarray(np.asarray(coefs)), jnp.zeros((1, 136), jnp.float32),
        generator.pca_components, generator.pca_mean)
    np.asarray(out[0])
