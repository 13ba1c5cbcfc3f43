"""Photo + speech -> talking-face video: the ATVGnet inference path (library API).

    analyzer = face.FaceAnalyzer()
    generator = generate.load_generator_networks("runs/atnet", "runs/vgnet")
    photo = generate.prepare_photo("me.jpg", analyzer)
    speech = audio.load_audio("speech.wav")                 # 16 kHz mono
    result = generate.generate(generator, photo, speech)    # (T, S, S, 3) uint8
    generate.write_result("out.mp4", result.frames, speech)

Pipeline (the release demo's): the photo is aligned to the release's 128x128
crop and its landmarks normalised exactly as the datasets normalise theirs
(`clip_features.normalize_landmarks`, or the release's `normLmarks` when a
release shape model is given); the speech gives one 28x12 MFCC window per 25-fps
video frame of the whole file (T = ceil(duration x 25)); AT-net turns them into
landmark PCA coefficients, back-projected to landmarks (x `Pca.scale`);
VG-net turns the photo and the landmarks into frames (its example landmark is
the photo's, passed through the PCA as the release demo does).

Long inputs run in chunks of `chunk_frames` frames through functions jitted
once per chunk length (the last chunk is padded); the LSTM and ConvGRU states
are carried from chunk to chunk (`hcmtfg.inference.chunked`), so the result equals a
single pass over the whole sequence. Memory is bounded by the chunk, plus
O(T) for the MFCC windows and landmarks (~20 MB for 10 minutes) and the MFCC
of the whole file, computed at once (~0.5 GB transient for 10 minutes).

The release demo scales coefficients 1..5 of AT-net's prediction by
2 x [1.1, 1.2, 1.3, 1.4, 1.5] before back-projection (hand-tuned to exaggerate
mouth motion); `release_coef_scaling` does the same, on by default for converted
release weights only.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from typing import Iterable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from hcmtfg.features import audio as audio_lib
from hcmtfg.weights import checkpoint_io
from hcmtfg.runtime import compile_cache
from hcmtfg.runtime import exported
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.inference import photo as photo_lib
from hcmtfg.inference import chunked
from hcmtfg.media import video as video_lib
from hcmtfg.models import at_net
from hcmtfg.models import winograd
from hcmtfg.errors import InputError

# The photo step is part of this API (defined in hcmtfg.inference.photo).
PreparedPhoto = photo_lib.PreparedPhoto
prepare_photo = photo_lib.prepare_photo
MIN_FACE_SIZE = photo_lib.MIN_FACE_SIZE

FPS = audio_lib.VIDEO_FPS
CHUNK_FRAMES = 32
RELEASE_COEF_GAIN = 2.0 * np.array([1.1, 1.2, 1.3, 1.4, 1.5], np.float32)
# Sample rates AAC (the mp4 audio track) supports; others are written at 16 kHz.
_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000,
              64000, 88200, 96000)


def to_uint8(x: jax.Array) -> jax.Array:
  """Images in [-1, 1] -> uint8 [0, 255] (rounded, clipped), on the device."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _atnet_chunk(module, variables, carry, example_coef_1xk, mfcc_1xCx28x12):
  return chunked.atnet_chunk(module, variables, carry, example_coef_1xk,
                               mfcc_1xCx28x12)


@functools.cache
def _jitted_atnet_chunk():
  # Built on first use: the options depend on the backend.
  return jax.jit(_atnet_chunk, static_argnums=(0,),
                 compiler_options=at_net.compiler_options())


def atnet_step(module, variables, carry, example_coef_Bxk, mfcc_BxCx28x12):
  """AT-net on one chunk of B clips, jitted once per (module, shapes).

  With the compilation cache on, runs from a stored export of the step
  (`hcmtfg.runtime.exported`: no tracing after the first process).

  Returns `chunked.atnet_chunk`'s (coefficients (B, C, k), carry).
  """
  if compile_cache.STATS.directory is not None:
    step = exported.module_step("atnet_chunk", _atnet_chunk, module,
                                at_net.compiler_options())
    return step(variables, carry, example_coef_Bxk, mfcc_BxCx28x12)
  return _jitted_atnet_chunk()(module, variables, carry, example_coef_Bxk,
                               mfcc_BxCx28x12)


def _vgnet_chunk(module, variables, carry, image_1xSxSx3, coefs_1xCxk,
                 example_lmark_1x136, components_136xk, mean_136):
  """Frames (C, S, S, 3) uint8, attention (C, S, S), colour uint8, carry."""
  target = coefs_1xCxk @ components_136xk.T + mean_136  # landmarks x scale
  out, carry = chunked.vgnet_chunk(module, variables, carry, image_1xSxSx3,
                                     target, example_lmark_1x136)
  return (to_uint8(out.frames[0]), out.attention[0, ..., 0],
          to_uint8(out.colour[0]), carry)


_vgnet_step = jax.jit(_vgnet_chunk, static_argnums=(0,))


def vgnet_step(module, variables, carry, image_1xSxSx3, coefs_1xCxk,
               example_lmark_1x136, components_136xk, mean_136):
  """VG-net on one chunk of C frames, jitted once per (module, shapes).

  The coefficients are back-projected to landmarks on the device.

  Returns:
    (frames (C, S, S, 3) uint8, attention (C, S, S) float32, colour (C, S, S,
    3) uint8, carry), all on the device.
  """
  if compile_cache.STATS.directory is not None:
    step = exported.module_step("vgnet_chunk", _vgnet_chunk, module)
    return step(variables, carry, image_1xSxSx3, coefs_1xCxk,
                example_lmark_1x136, components_136xk, mean_136)
  return _vgnet_step(module, variables, carry, image_1xSxSx3, coefs_1xCxk,
                     example_lmark_1x136, components_136xk, mean_136)


class Generator:
  """AT-net + VG-net with their weights and the landmark PCA.

  The chunk steps are jitted once per (network config, chunk length) and
  process, and shared by every Generator with the same configs.

  Attributes:
    atnet, vgnet: the modules; atnet may be None for a VG-net-only generator
      that renders given landmarks (`evaluation.evaluate` without the
      'cascade' path); `generate` and `predict_landmarks` need AT-net.
    atnet_variables, vgnet_variables: their variables on the default device,
      plus the Winograd kernel transforms of their weights
      (`hcmtfg.models.winograd.with_transformed_kernels`).
    pca: the landmark PCA AT-net's coefficients live in.
    release_coef_scaling: default of `generate`'s option (True for converted
      release AT-net weights).
    sources: {'atnet': path, 'vgnet': path} the weights came from.
  """

  def __init__(self, atnet, atnet_variables, vgnet, vgnet_variables,
               pca: landmarks_lib.Pca, *, release_coef_scaling: bool = False,
               sources: dict[str, str] | None = None):
    if atnet is not None and pca.num_components != atnet.pca_dim:
      raise ValueError(f"the PCA has {pca.num_components} components, AT-net "
                       f"predicts {atnet.pca_dim}")
    self.atnet, self.vgnet, self.pca = atnet, vgnet, pca
    # With two CPU devices (`pipeline.split_cpu_device`) AT-net runs on the
    # second: a device runs its computations one at a time, so AT-net's next
    # chunk then computes beside VG-net's current one.
    self.atnet_device = _atnet_device()
    # Fixed weights: the Winograd convolutions' kernel transforms are
    # computed once here instead of in every chunk step.
    self.atnet_variables = None if atnet is None else jax.device_put(
        exported.with_transformed_kernels(atnet, atnet_variables),
        self.atnet_device)
    self.vgnet_variables = jax.device_put(
        exported.with_transformed_kernels(vgnet, vgnet_variables))
    self.release_coef_scaling = bool(release_coef_scaling)
    self.sources = dict(sources or {})
    self.pca_components = jnp.asarray(pca.components, jnp.float32)
    self.pca_mean = jnp.asarray(pca.mean, jnp.float32)

  @property
  def image_size(self) -> int:
    """Side S of the generated frames."""
    return self.vgnet.image_size

  def initial_carries(self):
    """Zero (LSTM, ConvGRU) states of one clip, on the weights' device:
    committed like the states the chunk steps return, so that the first
    chunk and the later ones share one executable."""
    device = next(iter(jax.tree.leaves(self.vgnet_variables)[0].devices()))
    return (jax.device_put(chunked.atnet_initial_carry(self.atnet),
                           self.atnet_device or device),
            jax.device_put(chunked.vgnet_initial_carry(self.vgnet), device))


def _atnet_device() -> jax.Device | None:
  """The second CPU device when the CPU backend has several, else None."""
  if jax.default_backend() != "cpu" or len(jax.local_devices()) < 2:
    return None
  return jax.local_devices()[1]


def load_generator_networks(atnet_workdir: str | os.PathLike,
                            vgnet_workdir: str | os.PathLike, *,
                            pca_path: str | os.PathLike | None = None
                            ) -> Generator:
  """Loads both networks (training workdirs or converted release checkpoints).

  Args:
    atnet_workdir: AT-net training workdir, or a converted checkpoint folder
      (`<dir>` holding `atnet/`, or `<dir>/atnet`).
    vgnet_workdir: the same for VG-net (may be the same converted folder).
    pca_path: landmark PCA when none sits beside the AT-net weights
      (`landmark_pca.npz`): a `save_pca` file or a folder holding the
      release's U_lrw1.npy / mean_lrw1.npy. Overrides the stored one.

  Raises:
    InputError: missing or unreadable checkpoint, config/weights mismatch
      (naming the file, the parameter and both shapes), no PCA.
  """
  atnet = checkpoint_io.load_network(atnet_workdir, "atnet")
  vgnet = checkpoint_io.load_network(vgnet_workdir, "vgnet")
  pca = checkpoint_io.load_pca_from(pca_path) if pca_path else atnet.pca
  if pca is None:
    raise InputError(atnet_workdir, "no landmark PCA found beside the AT-net "
                     f"weights ({checkpoint_io.PCA_FILE}); pass one (--pca=FILE "
                     "or a folder with the release's U_lrw1.npy/mean_lrw1.npy)")
  if (vgnet.pca is not None and not pca_path and (
      vgnet.pca.scale != pca.scale or vgnet.pca.mean.shape != pca.mean.shape
      or not np.allclose(vgnet.pca.mean, pca.mean, atol=1e-6))):
    logging.warning("the VG-net workdir's landmark PCA differs from the AT-net "
                    "one (%s); using the AT-net's", atnet_workdir)
  if pca.num_components != atnet.module.pca_dim:
    raise InputError(pca_path or atnet_workdir, f"the landmark PCA has "
                     f"{pca.num_components} components but AT-net predicts "
                     f"{atnet.module.pca_dim}")
  logging.info("AT-net: %s (%s%s); VG-net: %s (%s%s)", atnet.path, atnet.layout,
               f", step {atnet.step}" if atnet.step is not None else "",
               vgnet.path, vgnet.layout,
               f", step {vgnet.step}" if vgnet.step is not None else "")
  return Generator(atnet.module, atnet.variables, vgnet.module, vgnet.variables,
                   pca, release_coef_scaling=atnet.layout == "converted",
                   sources={"atnet": atnet.path, "vgnet": vgnet.path})


def load_vgnet_generator(vgnet_workdir: str | os.PathLike, *,
                         step: int | None = None,
                         pca_path: str | os.PathLike | None = None
                         ) -> Generator:
  """A VG-net-only `Generator` (atnet None): renders given landmarks, e.g.
  `evaluation.evaluate(paths=('gt_landmarks',))`.

  Args:
    vgnet_workdir: VG-net training workdir or converted checkpoint folder.
    step: the training checkpoint step to read (None: the newest).
    pca_path: landmark PCA when none sits beside the weights (its scale is the
      landmark convention); as `load_generator_networks`.

  Raises:
    InputError: missing or unreadable checkpoint or step, no PCA.
  """
  vgnet = checkpoint_io.load_network(vgnet_workdir, "vgnet", step=step)
  pca = checkpoint_io.load_pca_from(pca_path) if pca_path else vgnet.pca
  if pca is None:
    raise InputError(vgnet_workdir, "no landmark PCA found beside the VG-net "
                     f"weights ({checkpoint_io.PCA_FILE}); pass one")
  return Generator(None, None, vgnet.module, vgnet.variables, pca,
                   sources={"vgnet": vgnet.path})


@dataclasses.dataclass(frozen=True)
class FrameChunk:
  """Consecutive generated frames [start, start + n).

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
class Landmarks:
  """AT-net's prediction for every frame: raw coefs (T, k), coefs used after
  the optional release scaling (T, k), and normalised landmarks (T, 136)."""
  raw_coefs: np.ndarray
  coefs: np.ndarray
  landmarks: np.ndarray


def _padded_chunks(array: np.ndarray, size: int
                   ) -> Iterator[tuple[int, int, np.ndarray]]:
  """(start, n, chunk padded to `size` along axis 0 by repeating the last row)."""
  for start in range(0, array.shape[0], size):
    chunk = array[start:start + size]
    n = chunk.shape[0]
    if n < size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
    yield start, n, chunk


def predict_landmarks(generator: Generator, photo: PreparedPhoto,
                      speech_16k: np.ndarray, *, chunk_frames: int = CHUNK_FRAMES,
                      release_coef_scaling: bool | None = None) -> Landmarks:
  """AT-net on every 25-fps frame of the speech (16 kHz mono float32)."""
  dispatched = _dispatch_atnet(generator, photo, speech_16k, chunk_frames)
  return _landmarks(generator, dispatched, release_coef_scaling)


def _dispatch_atnet(generator: Generator, photo: PreparedPhoto,
                    speech_16k: np.ndarray, chunk_frames: int
                    ) -> list[tuple[int, jax.Array]]:
  """Queues AT-net on every chunk; [(frames n, coefficients (1, C, k))]."""
  signal = np.asarray(speech_16k, np.float32)
  if signal.ndim != 1 or signal.size < audio_lib.SAMPLE_RATE // FPS:
    raise InputError(None, f"speech must be a 1-D 16 kHz signal of at least one "
                     f"video frame ({audio_lib.SAMPLE_RATE // FPS} samples), got "
                     f"shape {signal.shape}")
  if chunk_frames < 1:
    raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
  if generator.atnet is None:
    raise ValueError("this generator has no AT-net (VG-net only)")
  _, windows_Tx28x12 = audio_lib.speech_features(signal)
  pca = generator.pca
  example_coef = landmarks_lib.project(pca, photo.landmarks).astype(np.float32)
  carry, _ = generator.initial_carries()
  outputs = []
  for _, n, chunk in _padded_chunks(windows_Tx28x12, chunk_frames):
    coefs, carry = atnet_step(generator.atnet, generator.atnet_variables, carry,
                               example_coef[None], chunk[None])
    outputs.append((n, coefs))
  return outputs


def _landmarks(generator: Generator, dispatched: list[tuple[int, jax.Array]],
               release_coef_scaling: bool | None) -> Landmarks:
  """The Landmarks of AT-net's chunks (waits for them)."""
  # Sliced and joined on the host: no executable depends on the length.
  raw = np.concatenate([np.asarray(coefs)[0, :n] for n, coefs in dispatched]
                       ).astype(np.float32)
  scaling = (generator.release_coef_scaling if release_coef_scaling is None
             else release_coef_scaling)
  coefs = raw.copy()
  if scaling:
    coefs[:, 1:6] *= RELEASE_COEF_GAIN[:max(min(coefs.shape[1], 6) - 1, 0)]
  lmarks = landmarks_lib.reconstruct(generator.pca, coefs).astype(np.float32)
  return Landmarks(raw, coefs, lmarks)


def vgnet_example_landmark(generator: Generator, photo: PreparedPhoto
                           ) -> np.ndarray:
  """(136,) float32 example landmark for VG-net, in the x-scale convention.

  As the release demo, the photo's landmarks go through the PCA (projected on
  its k components and reconstructed), like the target landmarks that AT-net
  predicts, so that VG-net's target - example difference is the predicted
  motion only, not the photo's shape details outside the PCA subspace.
  """
  pca = generator.pca
  coef = landmarks_lib.project(pca, photo.landmarks)
  return (coef @ pca.components.T + pca.mean).astype(np.float32)


def generate_chunks(generator: Generator, photo: PreparedPhoto,
                    speech_16k: np.ndarray, *, chunk_frames: int = CHUNK_FRAMES,
                    release_coef_scaling: bool | None = None
                    ) -> Iterator[FrameChunk]:
  """Streams the generated video, `chunk_frames` frames at a time.

  Args:
    generator: from `load_generator_networks`.
    photo: from `prepare_photo` (its image must be generator.image_size).
    speech_16k: (N,) float32 16 kHz mono speech (`audio.load_audio`).
    chunk_frames: frames per network call; compiled once per value.
    release_coef_scaling: None = the generator's default.

  Yields:
    FrameChunks covering frames 0 .. T-1, T = ceil(N * 25 / 16000).
  """
  s = generator.image_size
  if photo.image.shape != (s, s, 3):
    raise ValueError(f"the photo was prepared at {photo.image.shape[:2]}, the "
                     f"VG-net makes {s}x{s} frames (prepare_photo(image_size=))")
  dispatched = _dispatch_atnet(generator, photo, speech_16k, chunk_frames)
  image = jnp.asarray(photo.image[None])
  example = jnp.asarray(vgnet_example_landmark(generator, photo)[None])
  _, carry = generator.initial_carries()
  # VG-net's first chunk needs AT-net's first chunk only (the same numbers as
  # the whole prediction's first rows); on a device of its own
  # (`Generator.atnet_device`) AT-net's other chunks run beside it.
  head = _landmarks(generator, dispatched[:1], release_coef_scaling)
  _, n, coefs = next(_padded_chunks(head.coefs, chunk_frames))
  frames, attention, colour, carry = vgnet_step(
      generator.vgnet, generator.vgnet_variables, carry, image,
      jnp.asarray(coefs[None]), example, generator.pca_components,
      generator.pca_mean)
  pending = (0, n, frames, attention, colour)
  predicted = _landmarks(generator, dispatched, release_coef_scaling)
  for start, n, coefs in itertools.islice(
      _padded_chunks(predicted.coefs, chunk_frames), 1, None):
    # Dispatch this chunk before fetching the previous one (async dispatch).
    frames, attention, colour, carry = vgnet_step(
        generator.vgnet, generator.vgnet_variables, carry, image,
        jnp.asarray(coefs[None]), example, generator.pca_components,
        generator.pca_mean)
    yield _fetch(*pending, predicted.landmarks)
    pending = (start, n, frames, attention, colour)
  yield _fetch(*pending, predicted.landmarks)


def _fetch(start, n, frames, attention, colour, lmarks) -> FrameChunk:
  return FrameChunk(start, np.asarray(frames)[:n], np.asarray(attention)[:n],
                    np.asarray(colour)[:n], lmarks[start:start + n])


@dataclasses.dataclass(frozen=True)
class Generation:
  """A whole generated video: frames (T, S, S, 3) uint8, attention (T, S, S),
  colour (T, S, S, 3) uint8 and landmarks (T, 136) (None unless requested)."""
  frames: np.ndarray
  attention: np.ndarray | None = None
  colour: np.ndarray | None = None
  landmarks: np.ndarray | None = None


def generate(generator: Generator, photo: PreparedPhoto, speech_16k: np.ndarray,
             *, chunk_frames: int = CHUNK_FRAMES,
             release_coef_scaling: bool | None = None,
             intermediates: bool = False) -> Generation:
  """The whole video in memory (use `generate_chunks` to stream long inputs)."""
  chunks = list(generate_chunks(generator, photo, speech_16k,
                                chunk_frames=chunk_frames,
                                release_coef_scaling=release_coef_scaling))
  cat = lambda name: np.concatenate([getattr(c, name) for c in chunks])
  if not intermediates:
    return Generation(cat("frames"))
  return Generation(cat("frames"), cat("attention"), cat("colour"),
                    cat("landmarks"))


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


def write_result(path: str | os.PathLike,
                 frames: np.ndarray | Iterable[np.ndarray | FrameChunk],
                 audio: np.ndarray, *, audio_sample_rate: int = audio_lib.SAMPLE_RATE,
                 fps: float = FPS, crf: int = 18) -> int:
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
  with video_lib.VideoWriter(path, fps=fps, audio=audio,
                             audio_sample_rate=audio_sample_rate, crf=crf) as writer:
    if isinstance(frames, np.ndarray):
      writer.write(frames)
    else:
      for chunk in frames:
        writer.write(chunk.frames if isinstance(chunk, FrameChunk) else chunk)
    return writer.num_frames
