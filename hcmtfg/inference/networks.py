"""Warm networks for many videos: what the server and the streaming CLI share.

    pipeline = Pipeline.load(NetworkOptions("runs/atnet", "runs/vgnet"))
    pipeline.warm_up((8, 32))                 # compile (or load) once
    photo = pipeline.prepare_photo("me.jpg")
    stream = pipeline.frame_stream(photo, chunk_frames=32, first_chunk_frames=8)
    render = Renderer(photo, pipeline.image_size, paste_back=True)
    for chunk in stream.push(windows): frames, side = render(chunk) ...

`Pipeline` holds the networks (`generate.Generator`), dlib's face analyser
and the release's crop templates / shape model when asked for; it is made
once per process. `Renderer` turns generated chunks into the frames of the
output video (the face crops, or pasted back into the photo) and, when asked,
the side-by-side intermediates view.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import jax
import numpy as np

from hcmtfg.features import align
from hcmtfg.inference import compose
from hcmtfg.inference import generate
from hcmtfg.inference import mfcc_stream
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.errors import InputError


@dataclasses.dataclass(frozen=True)
class NetworkOptions:
  """Where the weights are and how to use them (`launch.generate`'s flags).

  Attributes:
    atnet_workdir, vgnet_workdir: training workdirs or converted folders.
    pca: landmark PCA when none is stored beside the AT-net weights.
    release_basics_dir: the release's artefacts: crop and normalise photos
      exactly as the release demo (converted release weights).
    release_coef_scaling: None = on for converted release weights.
    min_face_size: smallest face box height accepted, pixels.
  """
  atnet_workdir: str
  vgnet_workdir: str
  pca: str | None = None
  release_basics_dir: str | None = None
  release_coef_scaling: bool | None = None
  min_face_size: int = generate.MIN_FACE_SIZE


def split_cpu_device() -> bool:
  """Gives JAX's CPU backend two devices; True if it did.

  A device runs its computations one at a time, so on one CPU device AT-net
  waits for VG-net's chunk in flight. With two, `generate.Generator` puts
  AT-net on the second and its next chunk computes beside VG-net's current
  one (same executables, same numbers; both share the CPU's threads). For
  the inference entry points: call before any JAX computation. Does nothing
  when the device count is already set (JAX_NUM_CPU_DEVICES, or XLA_FLAGS'
  --xla_force_host_platform_device_count) or JAX has started.
  """
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or jax.config.jax_num_cpu_devices != -1):
    return False
  try:
    jax.config.update("jax_num_cpu_devices", 2)
  except RuntimeError:  # too late: the backend is up
    return False
  return True


def load_generator(options: NetworkOptions) -> generate.Generator:
  """The networks; with release artefacts, their PCA when none is stored."""
  if options.pca is None and options.release_basics_dir:
    try:
      return generate.load_generator_networks(options.atnet_workdir,
                                              options.vgnet_workdir)
    except InputError as e:
      if "no landmark PCA" not in e.problem:
        raise
      return generate.load_generator_networks(
          options.atnet_workdir, options.vgnet_workdir,
          pca_path=options.release_basics_dir)
  return generate.load_generator_networks(
      options.atnet_workdir, options.vgnet_workdir, pca_path=options.pca)


class Pipeline:
  """Networks, face analyser and crop settings, loaded once."""

  def __init__(self, generator: generate.Generator, analyzer,
               options: NetworkOptions, templates=None, shape_model=None):
    self.generator = generator
    self.analyzer = analyzer
    self.options = options
    self.templates = templates
    self.shape_model = shape_model
    self.warm_lengths: tuple[int, ...] = ()

  @classmethod
  def load(cls, options: NetworkOptions) -> Pipeline:
    """Reads the weights and dlib's models. Raises InputError."""
    from hcmtfg.features import face  # pylint: disable=g-import-not-at-top  (dlib)
    templates = shape_model = None
    if options.release_basics_dir:
      templates = align.load_release_templates(options.release_basics_dir)
      shape_model = landmarks_lib.load_release_shape_model(
          options.release_basics_dir)
    generator = load_generator(options)
    return cls(generator, face.FaceAnalyzer(), options, templates,
               shape_model)

  @property
  def image_size(self) -> int:
    return self.generator.image_size

  def warm_up(self, lengths: Sequence[int]) -> float:
    """Compiles (or loads) the executables of these chunk lengths; seconds."""
    start = time.perf_counter()
    mfcc_stream.warm_up(self.generator, lengths)
    self.warm_lengths = tuple(sorted(set(self.warm_lengths) | set(lengths)))
    return time.perf_counter() - start

  def prepare_photo(self, path_or_image) -> generate.PreparedPhoto:
    """Detects, crops and normalises the face. Raises InputError."""
    return generate.prepare_photo(path_or_image, self.analyzer, self.templates,
                                  image_size=self.image_size,
                                  shape_model=self.shape_model,
                                  min_face_size=self.options.min_face_size)

  def frame_stream(self, photo: generate.PreparedPhoto, *,
                   chunk_frames: int = generate.CHUNK_FRAMES,
                   first_chunk_frames: int | None = None
                   ) -> mfcc_stream.FrameStream:
    return mfcc_stream.FrameStream(
        self.generator, photo, chunk_frames=chunk_frames,
        first_chunk_frames=first_chunk_frames,
        release_coef_scaling=self.options.release_coef_scaling)


class Renderer:
  """Generated chunks -> output frames (and the intermediates view).

  Args:
    photo: the prepared photo.
    image_size: S of the generated frames.
    paste_back: composite the faces into the whole photo.
    intermediates: also make [landmarks | attention | colour | result].
  """

  def __init__(self, photo: generate.PreparedPhoto, image_size: int, *,
               paste_back: bool = False, intermediates: bool = False):
    self.photo = photo
    self.intermediates = intermediates
    self._paster = (compose.PasteBack(photo.source_image, photo.transform,
                                      image_size) if paste_back else None)

  @property
  def frame_shape(self) -> tuple[int, int]:
    """(H, W) of the output frames."""
    if self._paster is not None:
      return tuple(self.photo.source_image.shape[:2])
    s = self.photo.image.shape[0]
    return (s, s)

  def __call__(self, chunk: generate.FrameChunk
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """(frames (n, H, W, 3) uint8, intermediates (n, P, 4P, 3) or None)."""
    frames = self._paster(chunk.frames) if self._paster else chunk.frames
    side = None
    if self.intermediates:
      side = compose.intermediates_frames(
          self.photo.crop, self.photo.landmarks_to_crop(chunk.landmarks),
          chunk.attention, chunk.colour, chunk.frames)
    return frames, side
