"""Tests of hcmtfg.inference.mfcc_stream: speech in pieces -> the same windows."""

import numpy as np
import pytest

from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import mfcc_stream


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
  """Voice-like 16 kHz float32 signal: two partials, a 3 Hz envelope, noise."""
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
  signal = speech_like(samples / 16000, seed=samples)[:samples]
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
