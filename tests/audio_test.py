"""Tests of hcmtfg.features.audio: loading, MFCC parity with python_speech_features, windows."""

import math

import numpy as np
import pytest
import python_speech_features
import soundfile

from hcmtfg.errors import InputError
from hcmtfg.features import audio
from hcmtfg.media import video_writer

SR = 16000


def _reference_mfcc(signal):
  return python_speech_features.mfcc(signal, SR, winstep=0.01)


def _relative_error(ours, ref):
  diff = np.abs(ours.astype(np.float64) - ref)
  return diff.max(), diff.max() / np.abs(ref).max()


def _tones(n, sr, amp=0.5):
  t = np.arange(n) / sr
  return (amp * (0.6 * np.sin(2 * np.pi * 300 * t) + 0.4 * np.sin(2 * np.pi * 1000 * t))
          ).astype(np.float32)


# ---------------------------------------------------------------- MFCC parity


def test_mfcc_matches_python_speech_features_on_real_speech(shared_data):
  files = sorted((shared_data / "speech").glob("*.wav"))
  assert len(files) == 4
  for path in files:
    signal = audio.pad_for_video(audio.load_audio(path))
    ref = _reference_mfcc(signal)
    ours = audio.mfcc(signal)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (ours.shape[0], 13)
    abs_err, rel_err = _relative_error(ours, ref)
    print(f"{path.name}: {ref.shape[0]} rows, max|diff| {abs_err:.3g}, "
          f"max|diff|/max|ref| {rel_err:.3g}")
    assert rel_err <= 1e-5, (path.name, abs_err, rel_err)
    # Per coefficient too: the small cepstra must match, not only the big c0.
    col_err = np.abs(ours - ref).max(0) / np.abs(ref).max(0)
    assert col_err.max() <= 1e-4, (path.name, col_err)


@pytest.mark.parametrize("n", [1, 399, 400, 401, 560, 561, 16000 * 3 + 17])
def test_mfcc_matches_python_speech_features_on_noise(n):
  rng = np.random.default_rng(n)
  for amp in (1.0, 1e-4):
    signal = (amp * rng.uniform(-1, 1, n)).astype(np.float32)
    ref = _reference_mfcc(signal)
    ours = audio.mfcc(signal)
    assert ours.shape == ref.shape
    if n >= 400:
      abs_err, rel_err = _relative_error(ours, ref)
      print(f"noise n={n} amp={amp}: max|diff| {abs_err:.3g}, relative {rel_err:.3g}")
      assert rel_err <= 1e-5
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_mfcc_rejects_bad_arrays():
  for bad in (np.zeros(0), np.zeros((2, 400)), np.array([0.0, np.nan] * 300)):
    with pytest.raises(ValueError):
      audio.mfcc(bad)


def test_mfcc_of_silence_is_finite():
  ours = audio.mfcc(np.zeros(8000, np.float32))
  assert np.all(np.isfinite(ours))
  np.testing.assert_allclose(ours[:, 0], np.log(np.finfo(np.float64).eps), rtol=1e-6)
  np.testing.assert_allclose(ours[:, 1:], 0.0, atol=1e-6)
  np.testing.assert_allclose(ours, _reference_mfcc(np.zeros(8000)), atol=1e-4)


def test_mel_filterbank_is_triangular():
  bank = audio.mel_filterbank()
  assert bank.shape == (26, 257)
  assert bank.max() == 1.0 and bank.min() == 0.0
  assert np.all(np.argmax(bank, axis=1)[1:] > np.argmax(bank, axis=1)[:-1])
  assert np.all(bank.sum(axis=0)[1:256] > 0)  # every in-band bin is covered


# ---------------------------------------------------------------- loading


def test_load_44k_mono_resamples(shared_data):
  path = shared_data / "speech" / "test.wav"
  info = soundfile.info(str(path))
  assert (info.samplerate, info.channels) == (44100, 1)
  signal = audio.load_audio(path)
  assert signal.dtype == np.float32 and signal.ndim == 1
  assert signal.shape[0] == math.ceil(info.frames * SR / 44100)
  assert np.abs(signal).max() <= 1.0 and signal.std() > 1e-3


def test_load_16k_mono_is_unchanged(shared_data):
  path = shared_data / "speech" / "audio_sample.wav"
  raw, rate = soundfile.read(str(path), dtype="float32")
  assert rate == SR and raw.ndim == 1
  np.testing.assert_array_equal(audio.load_audio(path), np.clip(raw, -1, 1))


def test_load_stereo_mixes_channels(shared_data):
  path = shared_data / "speech" / "mocle_cut.wav"
  raw, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
  assert raw.shape[1] == 2 and rate == 44100
  assert np.abs(raw[:, 0] - raw[:, 1]).max() > 1e-3  # the mix is not one channel
  signal = audio.load_audio(path)
  expected = audio.resample(raw.mean(axis=1), rate, SR)
  assert signal.shape[0] == math.ceil(raw.shape[0] * SR / rate)
  np.testing.assert_allclose(signal, np.clip(expected, -1, 1), atol=1e-6)


@pytest.mark.parametrize("name,rate,fmt,subtype,tolerance", [
    ("u8.wav", SR, "WAV", "PCM_U8", 2 / 256),
    ("s24.wav", SR, "WAV", "PCM_24", 1e-5),
    ("s32.wav", SR, "WAV", "PCM_32", 1e-5),
    ("f32.wav", SR, "WAV", "FLOAT", 1e-7),
    ("s16.flac", SR, "FLAC", "PCM_16", 1e-4),
    ("vorbis.ogg", SR, "OGG", "VORBIS", 0.05),
    ("s16_8k.wav", 8000, "WAV", "PCM_16", 0.02),
    ("stereo_48k.wav", 48000, "WAV", "PCM_16", 0.02),
])
def test_load_formats(tmp_path, name, rate, fmt, subtype, tolerance):
  n = rate // 2
  written = _tones(n, rate)
  data = np.stack([written, written], 1) if name.startswith("stereo") else written
  path = tmp_path / name
  soundfile.write(str(path), data, rate, format=fmt, subtype=subtype)
  signal = audio.load_audio(path)
  assert signal.dtype == np.float32 and signal.shape == (math.ceil(n * SR / rate),)
  expected = _tones(signal.shape[0], SR)
  inner = slice(200, -200)  # resampler edge effects
  err = np.abs(signal[inner] - expected[inner]).max()
  assert err <= tolerance, (name, err)
  assert np.corrcoef(signal[inner], expected[inner])[0, 1] > 0.99


def test_load_audio_track_of_a_video(tmp_path):
  tone = _tones(SR, SR)
  path = tmp_path / "talk.mp4"
  video_writer.write_video(path, np.full((25, 32, 32, 3), 90, np.uint8), 25, audio=tone)
  signal = audio.load_audio(path)
  assert abs(signal.shape[0] - SR) <= 1024
  m = min(signal.shape[0], SR)
  assert np.corrcoef(signal[:m], tone[:m])[0, 1] > 0.98


def test_silent_file_gives_finite_features(tmp_path):
  path = tmp_path / "silence.wav"
  soundfile.write(str(path), np.zeros(SR, np.float32), SR, subtype="PCM_16")
  mfcc_Mx13, windows = audio.speech_features(path)
  assert windows.shape == (25, 28, 12)
  assert np.all(np.isfinite(mfcc_Mx13)) and np.all(np.isfinite(windows))


# ---------------------------------------------------------------- windows


def _release_windows(mfcc_Mx13):
  """The release demo's loop over frames ind = 3 .. M // 4 - 4."""
  out, ind = [], 3
  while ind <= mfcc_Mx13.shape[0] // 4 - 4:
    out.append(mfcc_Mx13[(ind - 3) * 4:(ind + 4) * 4, 1:])
    ind += 1
  return np.stack(out) if out else np.zeros((0, 28, 12), np.float32)


@pytest.mark.parametrize("num_frames", [1, 2, 29, 250])
def test_windows_shapes_and_release_convention(num_frames):
  signal = (0.3 * np.random.default_rng(num_frames).standard_normal(640 * num_frames)
            ).astype(np.float32)
  mfcc_Mx13, windows = audio.speech_features(signal)
  assert audio.num_video_frames(signal.shape[0]) == num_frames
  assert mfcc_Mx13.shape == (4 * num_frames + 23, 13)
  assert windows.shape == (num_frames, 28, 12) and windows.dtype == np.float32
  release = _release_windows(mfcc_Mx13)
  # The release drops the last frame; everything it defines is identical.
  assert release.shape[0] == num_frames - 1
  np.testing.assert_array_equal(windows[:num_frames - 1], release)
  # First frame: in range thanks to the padding; its first rows are the silence.
  np.testing.assert_array_equal(windows[0][:27], mfcc_Mx13[:27, 1:])
  if num_frames > 1:
    np.testing.assert_array_equal(windows[0], mfcc_Mx13[:28, 1:])
  assert np.abs(windows[0][:10]).max() < 1e-4
  assert np.abs(windows[0][12:]).max() > 1.0
  # Last frame: all rows but one exist; the missing one is zero-filled.
  last = windows[-1]
  np.testing.assert_array_equal(last[:27], mfcc_Mx13[4 * (num_frames - 1):, 1:])
  np.testing.assert_array_equal(last[27], 0.0)
  assert np.abs(last[:20]).max() > 1.0


def test_zero_fill_equals_longer_silence_padding():
  signal = (0.3 * np.random.default_rng(7).standard_normal(640 * 29 + 100)
            ).astype(np.float32)
  t = audio.num_video_frames(signal.shape[0]) + 3  # more frames than the audio
  mfcc_Mx13, windows = audio.speech_features(signal, num_frames=t)
  assert t == 33 and windows.shape == (33, 28, 12)
  longer = audio.mfcc(np.pad(audio.pad_for_video(signal), (0, 20000)))
  np.testing.assert_allclose(windows, audio.mfcc_windows(longer, t), atol=1e-5)
  assert mfcc_Mx13.shape[0] < longer.shape[0]
  beyond = mfcc_Mx13.shape[0] - 4 * (t - 1)  # rows of the last window past the MFCC
  assert 0 < beyond < 28
  np.testing.assert_array_equal(windows[-1][beyond:], 0.0)
  assert np.abs(windows[-1][:beyond - 4]).max() > 1.0  # context of the last audio


def test_windows_index_convention_with_ramp():
  # A synthetic "MFCC" whose row r holds r makes every index visible.
  mfcc_Mx13 = np.repeat(np.arange(50, dtype=np.float32)[:, None], 13, 1)
  windows = audio.mfcc_windows(mfcc_Mx13, 7)
  for t in range(7):
    rows = np.arange(4 * t, 4 * t + 28)
    expected = np.where(rows < 50, rows, 0).astype(np.float32)
    np.testing.assert_array_equal(windows[t], np.repeat(expected[:, None], 12, 1))
  assert audio.mfcc_windows(mfcc_Mx13, 0).shape == (0, 28, 12)


def test_num_video_frames_and_padding():
  assert [audio.num_video_frames(n) for n in (0, 1, 640, 641, 16000)] == [0, 1, 1, 2, 25]
  assert audio.num_video_frames(44100, 44100) == 25
  assert audio.num_video_frames(16000, fps=29.97) == 30
  padded = audio.pad_for_video(np.ones(10, np.float32))
  assert padded.shape == (3850,) and padded[:1920].max() == 0 and padded[-1920:].max() == 0
  np.testing.assert_array_equal(padded[1920:1930], 1.0)


# ---------------------------------------------------------------- bad input


def _expect_input_error(path, fragment):
  with pytest.raises(InputError) as info:
    audio.load_audio(path)
  assert info.value.path == str(path)
  assert fragment in info.value.problem, info.value.problem


def test_missing_file(tmp_path):
  _expect_input_error(tmp_path / "nope.wav", "not found")


def test_empty_file(tmp_path):
  (tmp_path / "empty.wav").write_bytes(b"")
  _expect_input_error(tmp_path / "empty.wav", "empty")


def test_text_file_named_wav(tmp_path):
  (tmp_path / "notes.wav").write_text("this is not audio\n" * 50)
  _expect_input_error(tmp_path / "notes.wav", "not a readable media file")


def test_jpeg_named_wav(tmp_path, shared_data):
  jpeg = sorted((shared_data / "faces").glob("*.jpg"))[0]
  (tmp_path / "photo.wav").write_bytes(jpeg.read_bytes())
  _expect_input_error(tmp_path / "photo.wav", "no audio track")


def test_truncated_and_corrupt_wav(tmp_path):
  good = tmp_path / "good.wav"
  soundfile.write(str(good), _tones(SR, SR), SR, subtype="PCM_16")
  (tmp_path / "cut.wav").write_bytes(good.read_bytes()[:30])  # header cut short
  _expect_input_error(tmp_path / "cut.wav", "not a readable media file")
  garbage = b"RIFF" + bytes([0xFF, 0xFF, 0, 0]) + b"WAVE" + bytes(range(256)) * 8
  (tmp_path / "garbage.wav").write_bytes(garbage)
  with pytest.raises(InputError):
    audio.load_audio(tmp_path / "garbage.wav")


def test_zero_and_too_few_samples(tmp_path):
  soundfile.write(str(tmp_path / "zero.wav"), np.zeros(0, np.float32), SR)
  _expect_input_error(tmp_path / "zero.wav", "no samples")
  soundfile.write(str(tmp_path / "short.wav"), _tones(160, SR), SR)  # 0.01 s
  _expect_input_error(tmp_path / "short.wav", "shorter than one video frame")
  soundfile.write(str(tmp_path / "ok.wav"), _tones(640, SR), SR)  # exactly one frame
  assert audio.load_audio(tmp_path / "ok.wav").shape == (640,)


def test_non_finite_samples(tmp_path):
  data = _tones(SR, SR)
  data[100] = np.nan
  soundfile.write(str(tmp_path / "nan.wav"), data, SR, subtype="FLOAT")
  _expect_input_error(tmp_path / "nan.wav", "NaN")


def test_video_without_audio_track(tmp_path):
  path = tmp_path / "mute.mp4"
  video_writer.write_video(path, np.full((5, 16, 16, 3), 40, np.uint8), 25)
  _expect_input_error(path, "no audio track")
