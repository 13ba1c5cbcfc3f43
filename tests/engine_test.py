"""Tests of hcmtfg.inference.engine: the one chunk driver of every output path.

Streaming in any schedule, B sequences at once (evaluation), VG-net alone on
given landmarks and AT-net alone all equal the plain one-sequence generation.
"""

import numpy as np
import pytest

from hcmtfg import models
from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import engine
from hcmtfg.inference import generate
from hcmtfg.inference import mfcc_stream
from hcmtfg.inference import networks
from hcmtfg.inference import photo as photo_lib
from tests import generate_test
from tests.mfcc_stream_test import speech_like  # pylint: disable=g-importing-member


@pytest.fixture(scope="module")
def tiny_generator(shared_data):
  from hcmtfg.features import landmarks as landmarks_lib  # pylint: disable=g-import-not-at-top
  atnet = models.ATNet.from_config(generate_test.ATNET)
  vgnet = models.VGNet.from_config(generate_test.VGNET)
  at_vars = generate_test.random_variables(atnet, 0)
  vg_vars = generate_test.random_variables(vgnet, 1)
  h, f = generate_test.ATNET["lstm_features"], generate_test.VGNET[
      "convgru_features"]
  for layer in range(generate_test.ATNET["lstm_layers"]):
    at_vars["params"]["lstm"][f"bias_ih_l{layer}"][h:2 * h] = 3.0
  vg_vars["params"]["convgru"]["bias_ih"][f:2 * f] = 3.0
  pca = landmarks_lib.load_release_pca(shared_data / "atvgnet_basics")
  return networks.Generator(atnet, at_vars, vgnet, vg_vars, pca,
                            release_coef_scaling=True)


@pytest.fixture(scope="module")
def photo(tiny_generator, shared_data):
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
  return photo_lib.prepare_photo(shared_data / "faces" / "obama.jpg",
                                face.FaceAnalyzer(), image_size=32)


# Two chunk lengths only (4 and 8): each new one is a compilation.
@pytest.mark.parametrize("first,chunk,block", [(4, 8, 700), (8, 8, 16000),
                                                (8, 4, 333)])
def test_frame_stream_equals_batch_generation(tiny_generator, photo, first,
                                               chunk, block):
  speech = speech_like(1.3)  # 33 frames
  expected = generate.generate(tiny_generator, photo, speech, chunk_frames=8,
                               intermediates=True)
  mfcc = mfcc_stream.MfccStream()
  frames = engine.FrameStream.for_photo(tiny_generator, photo,
                                        chunk_frames=chunk,
                                        first_chunk_frames=first)
  chunks = []
  for i in range(0, speech.size, block):
    chunks += list(frames.push(mfcc.push(speech[i:i + block])))
  chunks += list(frames.push(mfcc.finish()))
  chunks += list(frames.finish())
  assert [c.start for c in chunks] == list(
      np.cumsum([0] + [c.frames.shape[0] for c in chunks[:-1]]))
  assert chunks[0].frames.shape[0] == first
  got = {name: np.concatenate([getattr(c, name) for c in chunks])
         for name in ("frames", "attention", "colour", "landmarks")}
  assert got["frames"].shape[0] == 33 == frames.frames_done
  # Different chunkings sum in different orders: allow one grey level.
  assert np.abs(got["frames"].astype(int) - expected.frames).max() <= 1
  np.testing.assert_allclose(got["attention"], expected.attention, atol=2e-3)
  np.testing.assert_allclose(got["landmarks"], expected.landmarks, atol=1e-4)


def test_warm_up_compiles_what_the_stream_runs(tiny_generator, photo,
                                                max_chunk_traces):
  engine.warm_up(tiny_generator, [4, 8])
  stream = engine.FrameStream.for_photo(tiny_generator, photo, chunk_frames=8,
                                        first_chunk_frames=4)
  windows = audio_lib.speech_features(speech_like(1.0))[1]
  with max_chunk_traces(0):  # nothing is traced (compiled) again
    list(stream.push(windows))
    list(stream.finish())


def test_frame_stream_checks_the_photo_size(tiny_generator, photo):
  small = photo_lib.PreparedPhoto(**{**photo.__dict__,
                                    "image": photo.image[:16, :16]})
  with pytest.raises(ValueError, match="VG-net makes 32x32"):
    engine.FrameStream.for_photo(tiny_generator, small)
  with pytest.raises(ValueError, match=">= 1"):
    engine.chunk_schedule(0)


@pytest.fixture(scope="module")
def photos(tiny_generator, shared_data):
  """Two different people."""
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
  analyzer = face.FaceAnalyzer()
  return [photo_lib.prepare_photo(shared_data / "faces" / name, analyzer,
                                  image_size=32)
          for name in ("obama.jpg", "test1.jpg")]


def test_batch_of_sequences_equals_each_alone(tiny_generator, photos):
  # Evaluation's use: B sequences dispatched at once, fetched later.
  speech = [speech_like(1.0, seed=1), speech_like(0.7, seed=2)]
  windows = [generate.speech_windows(s) for s in speech]
  alone = [generate.generate(tiny_generator, p, s, chunk_frames=8,
                             intermediates=True)
           for p, s in zip(photos, speech)]
  length = windows[0].shape[0]  # 25 frames; the second clip padded to it
  padded = np.stack([np.concatenate(
      [w, np.repeat(w[-1:], length - w.shape[0], axis=0)]) for w in windows])
  stream = engine.FrameStream(
      tiny_generator, np.stack([p.image for p in photos]),
      np.stack([p.landmarks for p in photos]), chunk_frames=8)
  done = stream.dispatch(padded)
  assert [(d.start, d.n) for d in done] == [(0, 8), (8, 8), (16, 8), (24, 1)]
  frames = engine.concatenated(done, "frames")
  assert frames.shape == (2, length, 32, 32, 3)
  for b, expected in enumerate(alone):
    n = expected.frames.shape[0]
    assert np.abs(frames[b, :n].astype(int) - expected.frames).max() <= 1
    chunk = stream.fetch(done[1], row=b)
    np.testing.assert_allclose(chunk.landmarks, expected.landmarks[8:16],
                               atol=1e-4)
  # Two people, two voices: the rows differ (no row is a copy of another).
  assert np.abs(frames[0, :18].astype(int) - frames[1, :18]).mean() > 5
  with pytest.raises(ValueError, match="finished"):
    stream.dispatch(padded)


def test_vgnet_alone_on_given_landmarks(tiny_generator, photo):
  # Driving VG-net with the landmarks AT-net's path gave it makes its frames.
  speech = speech_like(1.0, seed=3)
  expected = generate.generate(tiny_generator, photo, speech, chunk_frames=8,
                               intermediates=True)
  scale = tiny_generator.pca.scale
  # By default VG-net's example is then the photo's own landmark, as in
  # training (evaluation's true-landmarks path), not the PCA's copy of it.
  own = engine.FrameStream.for_photo(tiny_generator, photo, drive="landmarks")
  np.testing.assert_allclose(own.example_landmarks[0], photo.landmarks * scale,
                             rtol=1e-6)
  stream = engine.FrameStream.for_photo(tiny_generator, photo,
                                        drive="landmarks", chunk_frames=8,
                                        example_through_pca=True)
  chunks = list(stream.run(expected.landmarks * scale))
  got = np.concatenate([c.frames for c in chunks])
  assert np.abs(got.astype(int) - expected.frames).max() <= 1
  np.testing.assert_allclose(np.concatenate([c.landmarks for c in chunks]),
                             expected.landmarks, atol=1e-5)


def test_atnet_alone_and_the_release_gain(tiny_generator, photo):
  speech = speech_like(0.8, seed=4)
  windows = generate.speech_windows(speech)
  plain = engine.FrameStream.for_photo(tiny_generator, photo, chunk_frames=8,
                                       release_coef_scaling=False)
  scaled = engine.FrameStream.for_photo(tiny_generator, photo, chunk_frames=8)
  raw = engine.concatenated(plain.predict(windows[None]), "raw_coefs")
  done = scaled.predict(windows[None])
  assert all(d.frames is None for d in done)  # VG-net never ran
  np.testing.assert_array_equal(engine.concatenated(done, "raw_coefs"), raw)
  gain = engine.coef_gain(raw.shape[-1], True)
  np.testing.assert_allclose(engine.concatenated(done, "driving"), raw * gain,
                             rtol=1e-6)
  assert engine.coef_gain(raw.shape[-1], False) is None
  assert raw.shape == (1, windows.shape[0], tiny_generator.pca.num_components)


def test_frame_stream_rejects_misuse(tiny_generator, photo):
  with pytest.raises(ValueError, match="drive"):
    engine.FrameStream.for_photo(tiny_generator, photo, drive="text")
  stream = engine.FrameStream.for_photo(tiny_generator, photo)
  with pytest.raises(ValueError, match=r"\(1, N\)"):
    list(stream.push(np.zeros((5, 136), np.float32)))  # landmarks, not windows
  vgnet_only = networks.Generator(None, None, tiny_generator.vgnet,
                                  tiny_generator.vgnet_variables,
                                  tiny_generator.pca)
  with pytest.raises(ValueError, match="no AT-net"):
    engine.FrameStream.for_photo(vgnet_only, photo)
  pair = engine.FrameStream(tiny_generator, np.stack([photo.image] * 2),
                            np.stack([photo.landmarks] * 2))
  with pytest.raises(ValueError, match="one sequence"):
    list(pair.run(np.zeros((2, 4, 28, 12), np.float32)))
