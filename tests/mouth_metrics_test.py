"""Tests of the mouth-aperture and sync-proxy metrics and of the speech envelope
(hcmtfg/evaluation/mouth_metrics.py, hcmtfg/evaluation/speech_envelope.py).

Landmark sequences are hand-made faces whose inner-lip gap is set frame by
frame, so apertures, correlations and lags are known exactly; dlib is replaced
by a stub analyzer that reads the aperture back from the frame's pixels (the
evaluation tests run the real one).
"""

import math
import warnings

import numpy as np
import pytest

from hcmtfg.evaluation import mouth_metrics as mm
from hcmtfg.evaluation import speech_envelope as se
from hcmtfg.features import audio

IOD = 40.0  # eye centres of the hand-made face, pixels apart


def make_faces(gaps_T: np.ndarray) -> np.ndarray:
  """(T, 68, 2) faces in image coordinates (y down) whose inner lips are
  `gaps_T` pixels apart (each facing pair), eyes IOD apart."""
  gaps_T = np.asarray(gaps_T, np.float64)
  face = np.zeros((68, 2))
  face[:17] = np.stack([np.linspace(30, 98, 17), 60 + 40 * np.sin(
      np.linspace(0, np.pi, 17))], -1)  # jaw
  face[27:36] = [[64, 45], [64, 52], [64, 58], [64, 64], [56, 68], [60, 69],
                 [64, 70], [68, 69], [72, 68]]  # nose, tip = 33
  for eye, cx in ((slice(36, 42), 44.0), (slice(42, 48), 84.0)):
    angle = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    face[eye] = np.stack([cx + 6 * np.cos(angle), 40 + 3 * np.sin(angle)], -1)
  face[48:60] = np.stack([64 + 20 * np.cos(np.linspace(np.pi, -np.pi, 12,
                                                       endpoint=False)),
                          90 + 8 * np.sin(np.linspace(np.pi, -np.pi, 12,
                                                      endpoint=False))], -1)
  face[48], face[54] = [44, 90], [84, 90]
  faces = np.repeat(face[None], gaps_T.shape[0], 0)
  faces[:, 60], faces[:, 64] = [48, 90], [80, 90]
  for upper, lower, x in ((61, 67, 54), (62, 66, 64), (63, 65, 74)):
    faces[:, upper] = np.stack([np.full_like(gaps_T, x), 90 - gaps_T / 2], -1)
    faces[:, lower] = np.stack([np.full_like(gaps_T, x), 90 + gaps_T / 2], -1)
  return faces


def similarity(points_Tx68x2: np.ndarray, angle_deg: float, scale: float,
               shift: tuple[float, float]) -> np.ndarray:
  a = np.deg2rad(angle_deg)
  rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
  return points_Tx68x2 @ rot.T + np.asarray(shift)


def smooth_signal(n: int, seed: int) -> np.ndarray:
  """A smooth random (n,) sequence (no period that a lag could alias to)."""
  rng = np.random.default_rng(seed)
  x = np.convolve(rng.normal(size=n + 8), np.hanning(7), mode="valid")[:n]
  return x


def tone(amplitude_T: np.ndarray, hz: float, rate: int = 16000) -> np.ndarray:
  """A sine whose amplitude steps at every 25-fps frame."""
  per_frame = rate // 25
  t = np.arange(amplitude_T.shape[0] * per_frame) / rate
  return np.repeat(amplitude_T, per_frame) * np.sin(2 * np.pi * hz * t)


@pytest.fixture
def no_warnings():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    yield


def test_aperture_in_interocular_units_and_similarity_invariant(no_warnings):
  gaps = np.array([0.0, 2.0, 8.0, 13.0, -1.0])
  faces = make_faces(gaps)
  np.testing.assert_allclose(mm.inner_lip_aperture(faces), gaps / IOD,
                             atol=1e-12)
  np.testing.assert_allclose(mm.inner_lip_aperture(faces, normalise=False),
                             gaps, atol=1e-12)
  # Normalised landmark space: any rotation (even upside down), scale and
  # shift, flattened to (T, 136), gives the same apertures, also when each
  # frame is scaled on its own (as the per-frame Procrustes normalisation).
  for angle in (25.0, 170.0, -90.0):
    moved = similarity(faces, angle, 0.004, (-0.3, 0.1)).reshape(-1, 136)
    np.testing.assert_allclose(mm.inner_lip_aperture(moved), gaps / IOD,
                               atol=1e-9)
    np.testing.assert_allclose(mm.inner_lip_aperture(moved, normalise=False),
                               gaps * 0.004, atol=1e-12)
  per_frame = faces * np.linspace(0.5, 2.0, len(gaps))[:, None, None]
  np.testing.assert_allclose(mm.inner_lip_aperture(per_frame), gaps / IOD,
                             atol=1e-12)
  # A mirror image (the release's normalisation allows reflections): the
  # mouth's vertical axis is oriented away from the nose, so still positive.
  mirrored = faces * np.array([-1.0, 1.0])
  np.testing.assert_allclose(mm.inner_lip_aperture(mirrored), gaps / IOD,
                             atol=1e-12)
  # Missing points give NaN for that frame only.
  faces[2, 62] = np.nan
  aperture = mm.inner_lip_aperture(faces)
  assert np.isnan(aperture[2]) and np.isfinite(np.delete(aperture, 2)).all()
  with pytest.raises(ValueError, match="136"):
    mm.inner_lip_aperture(np.zeros((3, 20, 2)))


def test_shifted_copy_gives_its_lag_and_r_one(no_warnings):
  s = smooth_signal(120, seed=1)
  for true_lag in (3, -2, 0, 5):
    video = np.roll(s, true_lag)[10:-10]  # video[t] = s[t - true_lag]
    sound = s[10:-10]
    lags, r = mm.lagged_correlation(video, sound)
    np.testing.assert_array_equal(lags, np.arange(-5, 6))
    assert r[true_lag + 5] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.delete(r, true_lag + 5) < 0.999)
    scores = mm.sync_scores(video, sound)
    assert scores["sync_peak_lag"] == true_lag
    assert scores["sync_peak_r"] == pytest.approx(1.0, abs=1e-12)
    assert scores["sync_r"] == pytest.approx(r[5])
    assert (scores["sync_r"] < 0.999) == (true_lag != 0)
  # The peak is the largest r, not the largest |r|: a mouth that closes on
  # loud sound has r = -1 at lag 0, and its peak is elsewhere.
  anti = mm.sync_scores(-s, s)
  assert anti["sync_r"] == pytest.approx(-1.0)
  assert anti["sync_peak_r"] > -0.9 and anti["sync_peak_lag"] != 0
  # Ties (a period of 4 frames: r = 1 at lags -4, 0, 4): the smallest |lag|.
  periodic = np.tile([0.0, 1.0, 0.0, -1.0], 10)
  assert mm.sync_scores(periodic, periodic)["sync_peak_lag"] == 0
  assert mm.sync_scores(np.roll(periodic, 1), periodic)["sync_peak_lag"] == 1


def test_landmark_sequences_with_known_correlation(no_warnings):
  s = smooth_signal(200, seed=2)
  gaps = 6 + 3 * s / np.abs(s).max()  # 3 .. 9 px, always open
  faces = make_faces(gaps)
  same = mm.inner_lip_aperture(similarity(faces, 10, 0.01, (0, 0)))
  # Closing where the other opens: r = -1.
  anti = mm.inner_lip_aperture(make_faces(12 - gaps))
  assert mm.pearson(mm.inner_lip_aperture(faces), same) == pytest.approx(1.0)
  assert mm.pearson(mm.inner_lip_aperture(faces), anti) == pytest.approx(-1.0)
  # Noise of a known correlation: rho = 0.6 (standard error ~0.005).
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(2, 20000))
  noisy = make_faces(6 + x), make_faces(6 + 0.6 * x + 0.8 * y)
  r = mm.pearson(*(mm.inner_lip_aperture(f) for f in noisy))
  assert r == pytest.approx(0.6, abs=0.02)
  metrics = mm.sequence_metrics(mm.inner_lip_aperture(noisy[1]),
                                mm.inner_lip_aperture(noisy[0]), None)
  assert metrics["aperture_r"] == r
  assert metrics["aperture_std"] == pytest.approx(1.0 / IOD, rel=0.03)
  assert metrics["driving_aperture_std"] == pytest.approx(1.0 / IOD, rel=0.03)


def test_constant_or_short_sequences_give_nan_without_warnings(no_warnings):
  x = smooth_signal(50, seed=4)
  for constant in (np.zeros(50), np.full(50, 0.1), np.full(50, -3e5)):
    assert math.isnan(mm.pearson(constant, x))
    assert math.isnan(mm.pearson(x, constant))
    scores = mm.sync_scores(constant, x)
    assert all(math.isnan(v) for v in scores.values()), scores
    metrics = mm.sequence_metrics(constant, x, x)
    assert metrics["aperture_std"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(metrics["aperture_r"]) and math.isnan(metrics["sync_r"])
  # Too few finite frame pairs; NaN frames are skipped, not propagated.
  assert math.isnan(mm.pearson(x[:2], x[:2]))
  holes = x.copy()
  holes[::3] = np.nan
  assert mm.pearson(holes, x) == pytest.approx(1.0)
  assert math.isnan(mm.pearson(np.full(50, np.nan), x))
  # 6 frames: 2 overlap at |lag| 4 (NaN), 3 at |lag| 3 (defined).
  _, r = mm.lagged_correlation(x[:6], x[:6])
  assert np.isnan(r[[0, 1, -2, -1]]).all() and np.isfinite(r[2:-2]).all()
  assert r[5] == pytest.approx(1)
  # A face whose eyes coincide has no scale: NaN, not inf.
  faces = make_faces(np.ones(4))
  faces[1, 36:48] = 50.0
  np.testing.assert_array_equal(np.isnan(mm.inner_lip_aperture(faces)),
                                [False, True, False, False])


def test_rms_envelope_of_a_stepped_tone(no_warnings):
  rng = np.random.default_rng(5)
  amplitude = rng.uniform(0.05, 1.0, 30)
  wave = tone(amplitude, 1000)  # 40 cycles per frame
  np.testing.assert_allclose(se.rms_envelope(wave), amplitude / np.sqrt(2),
                             atol=1e-9)
  # Frame count: ceil(N / 640); a partial last frame is the RMS of its samples;
  # extra frames are silent.
  part = se.rms_envelope(wave[:-320])
  assert part.shape == (30,)
  assert part[-1] == pytest.approx(amplitude[-1] / np.sqrt(2))
  longer = se.rms_envelope(wave, num_frames=33)
  np.testing.assert_array_equal(longer[30:], 0.0)
  # Another rate: 8 kHz, 320 samples per frame.
  wave8 = tone(amplitude, 500, rate=8000)
  np.testing.assert_allclose(se.rms_envelope(wave8, 8000), amplitude / np.sqrt(2),
                             atol=1e-9)


def test_mfcc_envelope_matches_the_waveform_envelope(no_warnings):
  # A steady 1 kHz tone (frames 1 .. T-2: the first and last frames' windows
  # reach into the padding). Pre-emphasised: exactly the RMS times the
  # pre-emphasis gain at 1 kHz; undone: about the RMS.
  steady = tone(np.full(25, 0.5), 1000)
  mfcc = audio.mfcc(audio.pad_for_video(steady))
  gain = abs(1 - 0.97 * np.exp(-2j * np.pi * 1000 / 16000))
  np.testing.assert_allclose(
      se.mfcc_envelope(mfcc, 25, undo_preemphasis=False)[1:-1],
      gain * 0.5 / np.sqrt(2), rtol=1e-6)
  np.testing.assert_allclose(se.mfcc_envelope(mfcc, 25)[1:-1], 0.5 / np.sqrt(2),
                             rtol=0.1)
  # An independent random amplitude per frame: the MFCC's frames line up
  # with the waveform's (one frame off, r falls to ~0.1).
  rng = np.random.default_rng(6)
  wave = tone(rng.uniform(0.05, 1.0, 60), 1000)
  mfcc = audio.mfcc(audio.pad_for_video(wave))
  for undo in (True, False):
    scores = mm.sync_scores(se.mfcc_envelope(mfcc, 60, undo_preemphasis=undo),
                            se.rms_envelope(wave))
    assert scores["sync_r"] > 0.95 and scores["sync_peak_lag"] == 0, undo
  # Loud 150 Hz + quiet 5 kHz, each with its own amplitude: the RMS follows the
  # low tone, pre-emphasis makes the high one dominate; undoing it recovers
  # the RMS.
  low, high = rng.uniform(0.1, 1.0, (2, 60))
  wave = tone(low, 150) + tone(0.2 * high, 5000)
  mfcc = audio.mfcc(audio.pad_for_video(wave))
  rms = se.rms_envelope(wave)
  preemphasised = se.rms_envelope(
      np.concatenate([wave[:1], wave[1:] - 0.97 * wave[:-1]]))
  assert mm.pearson(rms, preemphasised) < 0.5
  assert mm.pearson(se.mfcc_envelope(mfcc, 60), rms) > 0.9
  assert mm.pearson(se.mfcc_envelope(mfcc, 60, undo_preemphasis=False),
                    preemphasised) > 0.95
  # Frames past the MFCC's end are silent.
  assert se.mfcc_envelope(mfcc, 80)[70:].max() < 1e-6
  assert se.mfcc_envelope(mfcc, 0).shape == (0,)


def test_mfcc_envelope_of_real_speech(shared_data, no_warnings):
  for name in ("F03C.wav", "test.wav"):
    wave = audio.load_audio(shared_data / "speech" / name)
    n = audio.num_video_frames(wave.shape[0])
    rms = se.rms_envelope(wave)
    from_mfcc = se.mfcc_envelope(audio.mfcc(audio.pad_for_video(wave)), n)
    scores = mm.sync_scores(from_mfcc, rms)
    assert scores["sync_r"] > 0.98 and scores["sync_peak_lag"] == 0, name
    voiced = rms > 0.05 * rms.max()
    assert np.median(from_mfcc[voiced] / rms[voiced]) == pytest.approx(1, abs=0.1)


class StubAnalyzer:
  """dlib's stand-in: one face per frame, unless its green channel is 0; the
  inner-lip gap in pixels is the frame's red value / 10."""

  def __init__(self):
    self.sizes = []
    self.predicted = 0

  def detect_all(self, frame):
    from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
    self.sizes.append(frame.shape[:2])
    return [] if frame[..., 1].max() == 0 else [face.Box(20, 20, 108, 108, 1.0)]

  def landmarks(self, frame, box):
    del box
    self.predicted += 1
    return make_faces(np.array([frame[..., 0].mean() / 10.0]))[0]


def test_talking_metrics_of_a_video(no_warnings):
  n = 75  # 3 s
  s = smooth_signal(n + 10, seed=7)
  gaps = 5 + 4 * s / np.abs(s).max()  # 1 .. 9 px
  frames = np.repeat(np.round(gaps * 10).astype(np.uint8)[:, None, None, None],
                     64, 1).repeat(64, 2).repeat(3, 3)[:n]
  frames[10, ..., 1] = 0  # no face found: the nearest frame's box is used
  driving = similarity(make_faces(gaps[:n]), 5, 0.003, (0, 0)).reshape(n, 136)
  # Speech loud when the mouth opens, 2 frames earlier.
  wave = tone(gaps[2:n + 2] / 10, 1000)
  analyzer = StubAnalyzer()
  m = mm.talking_metrics(frames, driving, wave, 16000, analyzer=analyzer)
  assert set(analyzer.sizes) == {(128, 128)}  # resized up for dlib
  assert m["frames"] == n and m["detected"] == pytest.approx(1 - 1 / n)
  assert analyzer.predicted == n  # frame 10 too, in frame 9's or 11's box
  assert m["aperture_r"] > 0.999
  assert m["aperture_std"] == pytest.approx(np.std(gaps[:n]) / IOD, rel=0.05)
  assert m["std_ratio"] == pytest.approx(1.0, abs=0.05)
  assert m["sync_peak_lag"] == 2 and m["driving_sync_peak_lag"] == 2
  assert m["sync_peak_r"] > 0.95 and m["sync_r"] < m["sync_peak_r"]
  text = mm.format_talking_metrics(m)
  assert "not LSE" in text and "+2 frames" in text
  # A still video: r undefined, std 0, printed as "—".
  still = mm.talking_metrics(np.repeat(frames[:1], n, 0), driving, wave,
                             analyzer=analyzer)
  assert still["aperture_std"] < 1e-12 and still["std_ratio"] < 1e-9
  assert math.isnan(still["aperture_r"]) and math.isnan(still["sync_peak_lag"])
  assert "r —" in mm.format_talking_metrics(still)
  # No face anywhere: NaN everywhere, no crash.
  blank = mm.talking_metrics(np.zeros((5, 64, 64, 3), np.uint8), None, None,
                             analyzer=analyzer)
  assert blank["detected"] == 0 and math.isnan(blank["aperture_std"])
  assert "—" in mm.format_talking_metrics(blank)
  with pytest.raises(ValueError, match="driving"):
    mm.talking_metrics(frames, driving[:-1], None, analyzer=analyzer)
