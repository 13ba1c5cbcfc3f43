"""Tests of hcmtfg.inference.mfcc_stream: speech in pieces -> the same windows and frames."""

import numpy as np
import pytest

from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import generate
from hcmtfg.inference import mfcc_stream
from hcmtfg import models
from tests import generate_test


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * audio_lib.SAMPLE_RATE)) / audio_lib.SAMPLE_RATE
  voice = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 900 * t)
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
  return (0.3 * envelope * voice + 0.01 * rng.standard_normal(t.size)).astype(
      np.float32)


# Sample-by-sample pushes only on short signals (slow, and longer ones add
# nothing the other block sizes do not cover).
@pytest.mark.parametrize("samples, block", [
    (samples, block)
    for samples in (640, 641, 3000, 16000, 16007, 40960)
    for block in (1, 37, 160, 640, 5000) if block > 1 or samples <= 3000])
def test_mfcc_stream_equals_the_whole_signal(samples, block):
  signal = _speech(samples / 16000, seed=samples)[:samples]
  expected = audio_lib.speech_features(signal)[1]
  stream = mfcc_stream.MfccStream()
  parts = [stream.push(signal[i:i + block])
           for i in range(0, samples, block)]
  parts.append(stream.finish())
  got = np.concatenate(parts)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
  assert stream.frames == audio_lib.num_video_frames(samples)


def test_mfcc_stream_emits_a_frame_after_its_lookahead():
  stream = mfcc_stream.MfccStream()
  # Frame t needs (t + 1) * 640 + LOOKAHEAD_SAMPLES samples.
  need = 640 + mfcc_stream.LOOKAHEAD_SAMPLES
  assert mfcc_stream.LOOKAHEAD_SAMPLES == 2160
  assert stream.push(np.zeros(need - 1, np.float32)).shape[0] == 0
  assert stream.push(np.zeros(1, np.float32)).shape[0] == 1
  assert stream.push(np.zeros(639, np.float32)).shape[0] == 0
  assert stream.push(np.zeros(1, np.float32)).shape[0] == 1


def test_mfcc_stream_rejects_misuse():
  stream = mfcc_stream.MfccStream()
  with pytest.raises(ValueError, match="NaN"):
    stream.push(np.array([0.0, np.nan]))
  stream.push(np.zeros(100))
  with pytest.raises(ValueError, match="at least one video frame"):
    stream.finish()
  stream = mfcc_stream.MfccStream()
  stream.push(np.zeros(1000))
  stream.finish()
  with pytest.raises(ValueError, match="finished"):
    stream.push(np.zeros(10))


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
  return generate.Generator(atnet, at_vars, vgnet, vg_vars, pca,
                            release_coef_scaling=True)


@pytest.fixture(scope="module")
def photo(tiny_generator, shared_data):
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
  return generate.prepare_photo(shared_data / "faces" / "obama.jpg",
                                face.FaceAnalyzer(), image_size=32)


# Two chunk lengths only (4 and 8): each new one is a compilation.
@pytest.mark.parametrize("first,chunk,block", [(4, 8, 700), (8, 8, 16000),
                                                (8, 4, 333)])
def test_frame_stream_equals_batch_generation(tiny_generator, photo, first,
                                               chunk, block):
  speech = _speech(1.3)  # 33 frames
  expected = generate.generate(tiny_generator, photo, speech, chunk_frames=8,
                               intermediates=True)
  mfcc = mfcc_stream.MfccStream()
  frames = mfcc_stream.FrameStream(tiny_generator, photo, chunk_frames=chunk,
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
  mfcc_stream.warm_up(tiny_generator, [4, 8])
  stream = mfcc_stream.FrameStream(tiny_generator, photo, chunk_frames=8,
                                   first_chunk_frames=4)
  windows = audio_lib.speech_features(_speech(1.0))[1]
  with max_chunk_traces(0):  # nothing is traced (compiled) again
    list(stream.push(windows))
    list(stream.finish())


def test_frame_stream_checks_the_photo_size(tiny_generator, photo):
  small = generate.PreparedPhoto(**{**photo.__dict__,
                                    "image": photo.image[:16, :16]})
  with pytest.raises(ValueError, match="VG-net makes 32x32"):
    mfcc_stream.FrameStream(tiny_generator, small)
  with pytest.raises(ValueError, match=">= 1"):
    mfcc_stream.chunk_schedule(0)
