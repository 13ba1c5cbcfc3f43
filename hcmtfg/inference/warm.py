"""Warm networks for many videos: what the server and the streaming CLI share.

    warm = WarmNetworks.load(NetworkOptions("runs/atnet", "runs/vgnet"))
    warm.warm_up((8, 32))                 # compile (or load) once
    photo = warm.prepare_photo("me.jpg")
    stream = warm.frame_stream(photo, chunk_frames=32, first_chunk_frames=8)
    render = compose.Renderer(photo, warm.image_size, paste_back=True)
    for chunk in stream.push(windows): frames, side = render(chunk) ...

`WarmNetworks` holds the networks (`networks.Generator`), dlib's face
analyser and the release's crop templates / shape model when asked for; it
is made once per process.
"""

from __future__ import annotations

import time
from typing import Sequence

from hcmtfg.features import align
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.inference import engine
from hcmtfg.inference import networks
from hcmtfg.inference import photo as photo_lib


class WarmNetworks:
  """Networks, face analyser and crop settings, loaded once."""

  def __init__(self, generator: networks.Generator, analyzer,
               options: networks.NetworkOptions, templates=None,
               shape_model=None):
    self.generator = generator
    self.analyzer = analyzer
    self.options = options
    self.templates = templates
    self.shape_model = shape_model
    self.warm_lengths: tuple[int, ...] = ()

  @classmethod
  def load(cls, options: networks.NetworkOptions, analyzer=None
           ) -> WarmNetworks:
    """Reads the weights and dlib's models (unless an analyzer is given).

    Raises:
      InputError: unreadable weights or release artefacts.
    """
    templates = shape_model = None
    if options.release_basics_dir:
      templates = align.load_release_templates(options.release_basics_dir)
      shape_model = landmarks_lib.load_release_shape_model(
          options.release_basics_dir)
    generator = networks.load_generator(options)
    if analyzer is None:
      from hcmtfg.features import face  # pylint: disable=g-import-not-at-top  (dlib)
      analyzer = face.FaceAnalyzer()
    return cls(generator, analyzer, options, templates, shape_model)

  @property
  def image_size(self) -> int:
    return self.generator.image_size

  def warm_up(self, lengths: Sequence[int]) -> float:
    """Compiles (or loads) the executables of these chunk lengths; seconds."""
    start = time.perf_counter()
    engine.warm_up(self.generator, lengths)
    self.warm_lengths = tuple(sorted(set(self.warm_lengths) | set(lengths)))
    return time.perf_counter() - start

  def prepare_photo(self, path_or_image) -> photo_lib.PreparedPhoto:
    """Detects, crops and normalises the face. Raises InputError."""
    return photo_lib.prepare_photo(path_or_image, self.analyzer, self.templates,
                                   image_size=self.image_size,
                                   shape_model=self.shape_model,
                                   min_face_size=self.options.min_face_size)

  def frame_stream(self, photo: photo_lib.PreparedPhoto, *,
                   chunk_frames: int = engine.CHUNK_FRAMES,
                   first_chunk_frames: int | None = None
                   ) -> engine.FrameStream:
    return engine.FrameStream.for_photo(
        self.generator, photo, chunk_frames=chunk_frames,
        first_chunk_frames=first_chunk_frames,
        release_coef_scaling=self.options.release_coef_scaling)
