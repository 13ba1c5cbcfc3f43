"""Photo + speech -> a whole talking-face video in memory (library API).

    analyzer = face.FaceAnalyzer()
    generator = networks.load_generator_networks("runs/atnet", "runs/vgnet")
    prepared = photo.prepare_photo("me.jpg", analyzer)
    speech = audio.load_audio("speech.wav")                  # 16 kHz mono
    result = generate.generate(generator, prepared, speech)  # (T, S, S, 3) uint8
    outputs.write_result("out.mp4", result.frames, speech)

Pipeline (the release demo's): the photo is aligned to the release's 128x128
crop and its landmarks normalised as the datasets normalise theirs
(`hcmtfg.inference.photo`); the speech gives one 28x12 MFCC window per 25-fps
video frame of the whole file (T = ceil(duration x 25)); AT-net turns them
into landmark PCA coefficients and VG-net turns the photo and the landmarks
into frames, chunk by chunk (`engine.FrameStream`: long inputs stream with
memory bounded by the chunk, plus O(T) for the MFCC windows).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hcmtfg.errors import InputError
from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import engine
from hcmtfg.inference import networks
from hcmtfg.inference import photo as photo_lib


def speech_windows(speech_16k: np.ndarray) -> np.ndarray:
  """(T, 28, 12) MFCC windows, one per 25-fps frame of 16 kHz mono speech.

  Raises:
    InputError: not a 1-D signal of at least one video frame.
  """
  signal = np.asarray(speech_16k, np.float32)
  frame = audio_lib.SAMPLE_RATE // engine.FPS
  if signal.ndim != 1 or signal.size < frame:
    raise InputError(None, f"speech must be a 1-D 16 kHz signal of at least one "
                     f"video frame ({frame} samples), got shape {signal.shape}")
  return audio_lib.speech_features(signal)[1]


@dataclasses.dataclass(frozen=True)
class Generation:
  """A whole generated video: frames (T, S, S, 3) uint8, attention (T, S, S),
  colour (T, S, S, 3) uint8 and landmarks (T, 136) (None unless requested)."""
  frames: np.ndarray
  attention: np.ndarray | None = None
  colour: np.ndarray | None = None
  landmarks: np.ndarray | None = None


def generate(generator: networks.Generator, photo: photo_lib.PreparedPhoto,
             speech_16k: np.ndarray, *, chunk_frames: int = engine.CHUNK_FRAMES,
             release_coef_scaling: bool | None = None,
             intermediates: bool = False) -> Generation:
  """The whole video in memory (`engine.FrameStream` streams long inputs)."""
  stream = engine.FrameStream.for_photo(
      generator, photo, chunk_frames=chunk_frames,
      release_coef_scaling=release_coef_scaling)
  chunks = list(stream.run(speech_windows(speech_16k)))
  cat = lambda name: np.concatenate([getattr(c, name) for c in chunks])
  if not intermediates:
    return Generation(cat("frames"))
  return Generation(cat("frames"), cat("attention"), cat("colour"),
                    cat("landmarks"))


@dataclasses.dataclass(frozen=True)
class Landmarks:
  """AT-net's prediction for every frame: raw coefs (T, k), coefs used after
  the optional release scaling (T, k), and normalised landmarks (T, 136)."""
  raw_coefs: np.ndarray
  coefs: np.ndarray
  landmarks: np.ndarray


def predict_landmarks(generator: networks.Generator,
                      photo: photo_lib.PreparedPhoto, speech_16k: np.ndarray, *,
                      chunk_frames: int = engine.CHUNK_FRAMES,
                      release_coef_scaling: bool | None = None) -> Landmarks:
  """AT-net alone on every 25-fps frame of the speech (16 kHz mono float32)."""
  if generator.atnet is None:
    raise ValueError("this generator has no AT-net (VG-net only)")
  stream = engine.FrameStream.for_photo(
      generator, photo, chunk_frames=chunk_frames,
      release_coef_scaling=release_coef_scaling)
  done = stream.predict(speech_windows(speech_16k)[None])
  raw = engine.concatenated(done, "raw_coefs")[0]
  coefs = engine.concatenated(done, "driving")[0]
  lmarks = stream.landmarks_of(coefs)
  return Landmarks(raw, coefs, lmarks)
