"""The one inference engine: AT-net -> VG-net over chunks, state carried.

Every output path runs the networks through `FrameStream`: one video
(`generate.generate`, `batch_generate`), streaming and real time
(`realtime.run`), the server (`hcmtfg.server.jobs`) and evaluation
(`hcmtfg.evaluation.evaluate`, which drives B clips at once).

    stream = FrameStream.for_photo(generator, photo, chunk_frames=32)
    for chunk in stream.run(windows_Tx28x12):     # FrameChunks, in order
      ...

A stream takes MFCC windows (one 28x12 window per 25-fps frame, from
`audio.speech_features` or `mfcc_stream.MfccStream`) in any amounts, cuts
them into chunks following a schedule (a small first chunk gets the first
frames out quickly; the rest run at the throughput length), pads the last
chunk by repeating its last window, and runs AT-net and VG-net on each chunk
through steps jitted once per chunk length (stored as `jax.export`s when the
compilation cache is on: `hcmtfg.runtime.exported`). The LSTM and ConvGRU
states are carried from chunk to chunk (`hcmtfg.inference.chunked`), so the
frames equal a single pass over the whole sequence, whatever the schedule.

Dispatch is asynchronous. A stream runs AT-net one chunk ahead of VG-net (on
a device of its own when there are two: `networks.split_cpu_device`, so the
two compute side by side), and dispatches each VG-net chunk before fetching
the previous one, so the host renders and encodes one chunk while the next
computes. `dispatch` queues every chunk at once (evaluation's batches).

Driving signals: from speech (AT-net's PCA coefficients, optionally scaled by
the release demo's gain, back-projected to landmarks on the device) or, for
VG-net alone, given landmarks (`drive='landmarks'`, evaluation's true
landmarks). VG-net's example landmark is the photo's passed through the PCA
when driven by speech, as the release demo does, so that VG-net's target -
example difference is the predicted motion only; with given landmarks it is
the example's own.

The release demo scales coefficients 1..5 of AT-net's prediction by
2 x [1.1, 1.2, 1.3, 1.4, 1.5] before back-projection (hand-tuned to exaggerate
mouth motion); `release_coef_scaling` does the same, on by default for
converted release weights only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hcmtfg.features import audio as audio_lib
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.inference import chunked
from hcmtfg.inference import networks
from hcmtfg.inference import photo as photo_lib
from hcmtfg.models import at_net
from hcmtfg.runtime import exported

FPS = audio_lib.VIDEO_FPS
CHUNK_FRAMES = 32
RELEASE_COEF_GAIN = 2.0 * np.array([1.1, 1.2, 1.3, 1.4, 1.5], np.float32)
_WINDOW_SHAPE = (audio_lib.WINDOW_ROWS, audio_lib.NUM_CEPS - 1)


def coef_gain(num_components: int, release_scaling: bool) -> np.ndarray | None:
  """(k,) float32 factors of AT-net's coefficients: the release demo's gain
  on coefficients 1..5, or None (no scaling)."""
  if not release_scaling:
    return None
  gain = np.ones(num_components, np.float32)
  gain[1:6] = RELEASE_COEF_GAIN[:max(min(num_components, 6) - 1, 0)]
  return gain


def to_uint8(x: jax.Array) -> jax.Array:
  """Images in [-1, 1] -> uint8 [0, 255] (rounded, clipped), on the device."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _atnet_chunk(module, variables, carry, example_coef_Bxk, mfcc_BxCx28x12):
  return chunked.atnet_chunk(module, variables, carry, example_coef_Bxk,
                             mfcc_BxCx28x12)


def _vgnet_chunk(module, variables, carry, image_BxSxSx3, driving_BxCxD,
                 example_lmark_Bx136, basis_136xD, offset_136):
  """Frames (B, C, S, S, 3) uint8, attention (B, C, S, S), colour uint8, carry.

  The driving signal becomes landmarks (x scale) on the device: PCA
  coefficients with the PCA's components and mean, given landmarks with the
  identity and zeros (exact).
  """
  target = driving_BxCxD @ basis_136xD.T + offset_136
  out, carry = chunked.vgnet_chunk(module, variables, carry, image_BxSxSx3,
                                   target, example_lmark_Bx136)
  return (to_uint8(out.frames), out.attention[..., 0], to_uint8(out.colour),
          carry)


def atnet_chunk_step(generator: networks.Generator):
  """AT-net's chunk step: (carry, example coefs (B, k), windows (B, C, 28,
  12)) -> (coefficients (B, C, k), carry); one executable per shape."""
  return exported.module_step("atnet_chunk", _atnet_chunk, generator.atnet,
                              at_net.compiler_options())


def vgnet_chunk_step(generator: networks.Generator):
  """VG-net's chunk step: (carry, image, driving, example, basis, offset) ->
  (frames, attention, colour, carry); one executable per shape."""
  return exported.module_step("vgnet_chunk", _vgnet_chunk, generator.vgnet)


@dataclasses.dataclass(frozen=True)
class FrameChunk:
  """Consecutive generated frames [start, start + n) of one sequence.

  Attributes:
    start: index of the first frame.
    frames: (n, S, S, 3) uint8 RGB.
    attention: (n, S, S) float32 in [0, 1] (1 = generated colour).
    colour: (n, S, S, 3) uint8 colour map C.
    landmarks: (n, 136) float32 normalised landmarks given to VG-net (/ scale).
  """
  start: int
  frames: np.ndarray
  attention: np.ndarray
  colour: np.ndarray
  landmarks: np.ndarray


@dataclasses.dataclass(frozen=True)
class Dispatched:
  """One chunk in flight for B sequences: frames [start, start + n), device
  arrays padded to the chunk length (fetch with `np.asarray`).

  Attributes:
    raw_coefs: (B, C, k) AT-net's prediction (None when driven by landmarks).
    driving: (B, C, D) what VG-net was given: the coefficients after the gain,
      or the landmarks (x scale).
    frames, attention, colour: VG-net's outputs (B, C, ...), or None for an
      AT-net-only chunk (`FrameStream.predict`).
  """
  start: int
  n: int
  raw_coefs: Any
  driving: Any
  frames: Any = None
  attention: Any = None
  colour: Any = None


class FrameStream:
  """The chunk driver: AT-net + VG-net on B sequences, windows pushed in any
  amounts, state carried across chunks.

  Args:
    generator: the networks (`networks.load_generator_networks`).
    images: (B, S, S, 3) float32 in [-1, 1], VG-net's example images.
    example_landmarks: (B, 136) the examples' normalised landmarks (not
      multiplied by the PCA scale).
    drive: 'speech' (AT-net from MFCC windows) or 'landmarks' (VG-net alone
      on given landmarks, x the PCA scale, pushed like windows).
    example_through_pca: VG-net's example landmark is the examples' passed
      through the PCA (None: when driven by speech).
    chunk_frames: frames per network call after the first chunk.
    first_chunk_frames: frames of the first call (None: chunk_frames).
    release_coef_scaling: None = the generator's default.
  """

  def __init__(self, generator: networks.Generator, images: np.ndarray,
               example_landmarks: np.ndarray, *, drive: str = "speech",
               example_through_pca: bool | None = None,
               chunk_frames: int = CHUNK_FRAMES,
               first_chunk_frames: int | None = None,
               release_coef_scaling: bool | None = None):
    images = np.asarray(images, np.float32)
    s = generator.image_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3):
      raise ValueError(f"the example images are {images.shape[1:3]}, the "
                       f"VG-net makes {s}x{s} frames (prepare_photo(image_size=))")
    if drive not in ("speech", "landmarks"):
      raise ValueError(f"drive must be 'speech' or 'landmarks', got {drive!r}")
    if drive == "speech" and generator.atnet is None:
      raise ValueError("this generator has no AT-net (VG-net only)")
    self.generator, self.drive = generator, drive
    self.batch = images.shape[0]
    self._first, self._chunk = chunk_schedule(chunk_frames, first_chunk_frames)
    pca = generator.pca
    lmarks = np.asarray(example_landmarks).reshape(self.batch, 136)
    # Row by row, in the landmarks' own dtype: a photo's numbers are the same
    # whether it streams alone or in a batch.
    coefs = [landmarks_lib.project(pca, row) for row in lmarks]
    self.example_coefs = np.stack(coefs).astype(np.float32)
    if example_through_pca is None:
      example_through_pca = drive == "speech"
    if example_through_pca:
      example = np.stack([c @ pca.components.T + pca.mean for c in coefs])
    else:
      example = lmarks * pca.scale
    if drive == "speech":
      self._basis, self._offset = generator.pca_components, generator.pca_mean
    else:  # exact: x @ I + 0 == x
      self._basis = jnp.eye(136, dtype=jnp.float32)
      self._offset = jnp.zeros(136, jnp.float32)
    self.example_landmarks = example.astype(np.float32)
    self._images = jnp.asarray(images)
    self._example = jnp.asarray(self.example_landmarks)
    scaling = (generator.release_coef_scaling if release_coef_scaling is None
               else release_coef_scaling)
    self.release_coef_scaling = bool(scaling) and drive == "speech"
    gain = coef_gain(pca.num_components, self.release_coef_scaling)
    self._gain = None if gain is None else jax.device_put(
        gain, generator.atnet_device or generator.vgnet_device)
    self._at_carry, self._vg_carry = generator.initial_carries(self.batch)
    self._pending = np.zeros((self.batch, 0) + self._width(), np.float32)
    self._queued: list[Dispatched] = []  # AT-net dispatched, VG-net not yet
    self._planned = 0  # frames cut into chunks so far
    self._start = 0  # frames given to VG-net so far
    self._finished = False

  @classmethod
  def for_photo(cls, generator: networks.Generator,
                photo: photo_lib.PreparedPhoto, **kwargs) -> FrameStream:
    """A one-sequence stream from a prepared photo (kwargs: as the class)."""
    return cls(generator, photo.image[None], photo.landmarks[None], **kwargs)

  @property
  def frames_done(self) -> int:
    """Frames given to VG-net so far."""
    return self._start

  def _next_length(self) -> int:
    return self._first if self._planned == 0 else self._chunk

  def _cut(self, final: bool) -> Iterator[tuple[np.ndarray, int]]:
    """Complete chunks of the pending input (all of it when final): (chunk
    padded to its length by repeating its last row, valid rows n)."""
    while self._pending.shape[1] >= self._next_length() or (
        final and self._pending.shape[1]):
      length = self._next_length()
      chunk = self._pending[:, :length]
      self._pending = self._pending[:, length:]
      n = chunk.shape[1]
      if n < length:
        chunk = np.concatenate(
            [chunk, np.repeat(chunk[:, -1:], length - n, axis=1)], axis=1)
      self._planned += n
      yield chunk, n

  def _plan(self, final: bool, limit: int | None = None) -> None:
    """Queues AT-net on every complete chunk, or the first `limit` (or takes
    given landmarks)."""
    step = atnet_chunk_step(self.generator) if self.drive == "speech" else None
    for count, (chunk, n) in enumerate(self._cut(final), start=1):
      start = self._planned - n
      if step is None:
        self._queued.append(Dispatched(start, n, None, jnp.asarray(chunk)))
      else:
        raw, self._at_carry = step(self.generator.atnet_variables,
                                   self._at_carry, self.example_coefs, chunk)
        coefs = raw if self._gain is None else raw * self._gain
        self._queued.append(Dispatched(start, n, raw, jax.device_put(
            coefs, self.generator.vgnet_device)))
      if count == limit:
        break

  def _render(self, queued: Dispatched) -> Dispatched:
    gen = self.generator
    frames, attention, colour, self._vg_carry = vgnet_chunk_step(gen)(
        gen.vgnet_variables, self._vg_carry, self._images, queued.driving,
        self._example, self._basis, self._offset)
    self._start = queued.start + queued.n
    return dataclasses.replace(queued, frames=frames, attention=attention,
                               colour=colour)

  def _input(self, values: np.ndarray, width: tuple[int, ...]) -> None:
    if self._finished:
      raise ValueError("the stream is finished")
    values = np.asarray(values, np.float32)
    if self.batch == 1 and values.shape[1:] == width:
      values = values[None]
    if values.shape[0] != self.batch or values.shape[2:] != width:
      raise ValueError(f"expected ({self.batch}, N) + {width} inputs, got "
                       f"{values.shape}")
    self._pending = np.concatenate([self._pending, values], axis=1)

  # -- Asynchronous use (B sequences): dispatch now, fetch later. --

  def dispatch(self, values: np.ndarray, *, final: bool = True
               ) -> list[Dispatched]:
    """Queues both networks on `values` ((B, N, 28, 12) windows, or (B, N,
    136) landmarks x scale with drive='landmarks'); returns the dispatched
    chunks without waiting for the device (`fetch` reads them)."""
    self._input(values, self._width())
    self._finished = final
    self._plan(final)
    done = [self._render(q) for q in self._queued]
    self._queued = []
    return done

  def predict(self, windows: np.ndarray) -> list[Dispatched]:
    """AT-net alone on all of `windows` (finishes the stream)."""
    self._input(windows, _WINDOW_SHAPE)
    self._finished = True
    self._plan(final=True)
    done, self._queued = self._queued, []
    return done

  def _width(self) -> tuple[int, ...]:
    return (136,) if self.drive == "landmarks" else _WINDOW_SHAPE

  # -- Streaming use (one sequence): chunks of frames, in order. --

  def push(self, windows: np.ndarray) -> Iterator[FrameChunk]:
    """Adds (N, 28, 12) windows (or (N, 136) landmarks); yields the chunks
    they complete (each dispatched before the previous one is fetched)."""
    self._input(windows, self._width())
    yield from self._stream(final=False)

  def finish(self) -> Iterator[FrameChunk]:
    """Yields the chunks of the remaining input (the last one padded)."""
    if self._finished:
      raise ValueError("the stream is finished")
    self._finished = True
    yield from self._stream(final=True)

  def run(self, windows: np.ndarray) -> Iterator[FrameChunk]:
    """All of a sequence's windows at once: `push` then `finish`."""
    yield from self.push(windows)
    yield from self.finish()

  def _stream(self, final: bool) -> Iterator[FrameChunk]:
    if self.batch != 1:
      raise ValueError("streaming takes one sequence; use dispatch for more")
    previous = None
    while True:
      if not self._queued:
        self._plan(final, limit=1)
      if not self._queued:
        break
      current = self._render(self._queued.pop(0))
      if previous is not None:
        yield self.fetch(previous)
      # AT-net on the next chunk computes beside VG-net on this one, once the
      # previous chunk is out: nothing runs further ahead to compete with it.
      self._plan(final, limit=1)
      previous = current
    if previous is not None:
      yield self.fetch(previous)

  def fetch(self, done: Dispatched, row: int = 0) -> FrameChunk:
    """One sequence's frames of a dispatched chunk (waits for the device)."""
    n = done.n
    return FrameChunk(done.start, np.asarray(done.frames)[row, :n],
                      np.asarray(done.attention)[row, :n],
                      np.asarray(done.colour)[row, :n],
                      self.landmarks_of(np.asarray(done.driving)[row, :n]))

  def landmarks_of(self, driving: np.ndarray) -> np.ndarray:
    """(..., 136) float32 normalised landmarks of what VG-net was given."""
    if self.drive == "speech":
      lmarks = landmarks_lib.reconstruct(self.generator.pca, driving)
    else:
      lmarks = driving / self.generator.pca.scale
    return lmarks.astype(np.float32)


def chunk_schedule(chunk_frames: int, first_chunk_frames: int | None = None
                   ) -> tuple[int, int]:
  """The chunk lengths a FrameStream uses: (first, then every other)."""
  if chunk_frames < 1 or (first_chunk_frames is not None
                          and first_chunk_frames < 1):
    raise ValueError("chunk lengths must be >= 1")
  first = chunk_frames if first_chunk_frames is None else first_chunk_frames
  return (first, chunk_frames)


def concatenated(done: Sequence[Dispatched], field: str) -> np.ndarray:
  """A field of dispatched chunks joined over time: (B, frames, ...)."""
  return np.concatenate([np.asarray(getattr(d, field))[:, :d.n] for d in done],
                        axis=1)


def warm_up(generator: networks.Generator, lengths: Sequence[int]) -> None:
  """Compiles (or loads from the persistent cache) the chunk executables of
  one-sequence streams of these chunk lengths."""
  s = generator.image_size
  for length in sorted(set(lengths)):
    stream = FrameStream(generator, np.zeros((1, s, s, 3), np.float32),
                         np.zeros((1, 136), np.float32), chunk_frames=length)
    for _ in stream.run(np.zeros((length,) + _WINDOW_SHAPE, np.float32)):
      pass
