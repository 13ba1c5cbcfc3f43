"""Tests of hcmtfg.features.clip_features: one video -> crops, landmarks, MFCC, or ClipError."""

import cv2
import numpy as np
import pytest
from skimage import data as sk_data
import soundfile

from hcmtfg.errors import InputError
from hcmtfg.features import audio
from hcmtfg.features import clip_features
from hcmtfg.features import face
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.media import video
from hcmtfg.media import video_writer

NUM_FRAMES = 29


def _moving_face(num_frames: int) -> np.ndarray:
  """(T, 256, 256, 3) astronaut frames, drifting a few pixels."""
  image = cv2.resize(sk_data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
  frames = []
  for t in range(num_frames):
    shift = np.float32([[1, 0, 3 * np.sin(t / 4)], [0, 1, 2 * np.cos(t / 5)]])
    frames.append(cv2.warpAffine(image, shift, (256, 256),
                                 borderMode=cv2.BORDER_REFLECT))
  return np.stack(frames)


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
  """Amplitude-modulated harmonic noise, (N,) float32 at 16 kHz."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(16000 * seconds)) / 16000
  tone = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((180, 360, 720), 1))
  signal = 0.2 * tone * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
  return (signal + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def analyzer():
  return face.FaceAnalyzer()


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("clips") / "talking.mp4"
  video_writer.write_video(path, _moving_face(NUM_FRAMES), audio=_speech(NUM_FRAMES / 25))
  return path


@pytest.fixture(scope="module")
def example(clip_path, analyzer):
  return clip_features.extract_clip(clip_path, analyzer=analyzer)


def test_shapes_dtypes_and_ranges(example):
  assert example.num_frames == NUM_FRAMES
  assert example.frames.shape == (NUM_FRAMES, 128, 128, 3)
  assert example.frames.dtype == np.uint8
  assert example.landmarks.shape == (NUM_FRAMES, 68, 2)
  assert example.landmarks.dtype == np.float32
  assert example.normalized_landmarks.shape == (NUM_FRAMES, 136)
  assert example.normalized_landmarks.dtype == np.float32
  assert example.mfcc.dtype == np.float32 and example.mfcc.shape[1] == 13
  # The face fills the crop: landmarks (nearly all) inside it, spread over it.
  inside = (example.landmarks >= 0) & (example.landmarks < 128)
  assert inside.mean() > 0.97 and np.abs(example.landmarks - 64).max() < 72
  assert np.ptp(example.landmarks[..., 0], axis=1).min() > 50
  assert np.abs(example.normalized_landmarks).max() < 0.3
  assert example.num_missing_frames == 0
  assert example.pca_coefs is None
  # One transform for the whole clip: the crop landmarks follow the known motion.
  t = np.arange(NUM_FRAMES)
  for axis, motion in ((0, 3 * np.sin(t / 4)), (1, 2 * np.cos(t / 5))):
    track = example.landmarks[:, 27:48, axis].mean(axis=1)
    assert np.corrcoef(track, motion)[0, 1] > 0.9


def test_mfcc_is_the_padded_audio_mfcc(example, clip_path):
  signal = video.read_audio(clip_path)
  expected = audio.mfcc(audio.pad_for_video(signal))
  np.testing.assert_array_equal(example.mfcc, expected)
  # 100 rows a second of audio plus the 0.24 s of padding.
  assert abs(example.mfcc.shape[0] - (signal.size / 160 + 24)) < 3


def test_normalised_landmarks_are_procrustes_to_the_default_mean(example):
  expected = landmarks_lib.procrustes_normalise(
      example.landmarks, landmarks_lib.default_mean_shape())
  np.testing.assert_allclose(example.normalized_landmarks, expected, atol=1e-6)
  # Centred, at most unit norm (the fit's scale: 1 for a perfect match), no x5.
  norms = np.linalg.norm(example.normalized_landmarks, axis=1)
  assert np.all((norms > 0.95) & (norms <= 1.0 + 1e-6))
  centroids = example.normalized_landmarks.reshape(-1, 68, 2).mean(axis=1)
  np.testing.assert_allclose(centroids, 0.0, atol=1e-6)


def test_encoded_frames_decode_to_the_crops(example):
  assert len(example.encoded_frames) == NUM_FRAMES
  first = cv2.cvtColor(cv2.imdecode(np.frombuffer(example.encoded_frames[0], np.uint8),
                                    cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
  error = np.abs(first.astype(float) - example.frames[0]).mean()
  assert 0 < error < 3.0  # JPEG: close, not exact.
  png = clip_features.encode_frames(example.frames[:2], "png")
  decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(png[1], np.uint8),
                                      cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
  np.testing.assert_array_equal(decoded, example.frames[1])
  with pytest.raises(ValueError):
    clip_features.encode_frames(example.frames[:1], "gif")


def test_pca_coefficients_and_frame_limit(clip_path, analyzer, example):
  rng = np.random.default_rng(1)
  pca = landmarks_lib.fit_pca(example.normalized_landmarks
                              + rng.normal(0, 1e-3, (NUM_FRAMES, 136)), 6)
  limited = clip_features.extract_clip(clip_path, analyzer=analyzer, pca=pca,
                                       image_format=None, max_frames=25)
  assert limited.num_frames == 25 and limited.encoded_frames is None
  # Only the audio of the kept frames: 1 s plus 0.24 s of padding, 100 rows/s.
  assert limited.mfcc.shape[0] == 1 + -(-(16000 + 2 * 1920 - 400) // 160)
  np.testing.assert_allclose(limited.mfcc[:80], example.mfcc[:80], atol=1e-4)
  assert limited.pca_coefs.shape == (25, 6)
  np.testing.assert_allclose(
      limited.pca_coefs, landmarks_lib.project(pca, limited.normalized_landmarks),
      rtol=1e-5, atol=1e-6)


def test_separate_audio_file(tmp_path, analyzer, example, clip_path):
  silent = tmp_path / "silent.mp4"
  video_writer.write_video(silent, _moving_face(NUM_FRAMES))
  wav = tmp_path / "speech.wav"
  soundfile.write(wav, video.read_audio(clip_path), 16000, subtype="FLOAT")
  with pytest.raises(clip_features.ClipError) as info:
    clip_features.extract_clip(silent, analyzer=analyzer)
  assert info.value.reason == clip_features.NO_AUDIO
  separate = clip_features.extract_clip(silent, analyzer=analyzer, audio_path=wav)
  np.testing.assert_allclose(separate.mfcc, example.mfcc, atol=1e-4)


@pytest.mark.parametrize("kind, reason", [
    ("corrupt", clip_features.UNREADABLE),
    ("missing", clip_features.UNREADABLE),
    ("short", clip_features.TOO_SHORT),
    ("no_face", clip_features.NO_FACE),
])
def test_failures_raise_clip_error_with_reason(kind, reason, tmp_path, analyzer):
  path = tmp_path / f"{kind}.mp4"
  if kind == "corrupt":
    path.write_bytes(np.random.default_rng(0).bytes(4000))
  elif kind == "short":
    video_writer.write_video(path, _moving_face(10), audio=_speech(0.4))
  elif kind == "no_face":
    rng = np.random.default_rng(0)
    frames = rng.integers(90, 110, (NUM_FRAMES, 96, 96, 3), dtype=np.uint8)
    video_writer.write_video(path, frames, audio=_speech(NUM_FRAMES / 25))
  with pytest.raises(clip_features.ClipError) as info:
    clip_features.extract_clip(path, analyzer=analyzer)
  assert info.value.reason == reason
  assert isinstance(info.value, InputError)
  assert str(path) in str(info.value)
