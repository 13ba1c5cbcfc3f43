"""Tests of hcmtfg.evaluation.metrics against known values and skimage."""

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio
from skimage.metrics import structural_similarity

from hcmtfg.evaluation import metrics
from hcmtfg.features import landmarks as landmarks_lib


def _smooth_image(seed: int, size: int = 128) -> np.ndarray:
  """A textured RGB uint8 image with values away from 0 and 255."""
  rng = np.random.default_rng(seed)
  x = cv2.GaussianBlur(rng.uniform(0, 1, (size, size, 3)), (0, 0), 2.0)
  x = (x - x.min()) / (x.max() - x.min())
  return np.round(60 + 130 * x).astype(np.uint8)


def _bars(seed: int, size: int = 128) -> np.ndarray:
  """Gray image of random vertical bars with sharp (1-pixel) edges."""
  rng = np.random.default_rng(seed)
  columns = np.repeat(rng.choice([40, 200], size // 8), 8)
  return np.repeat(columns[None, :], size, axis=0).astype(np.uint8)


def test_identical_images_conventions():
  a = _smooth_image(0)
  assert metrics.plain_ssim(a, a) == pytest.approx(1.0)
  assert metrics.plain_psnr(a, a) == np.inf
  assert metrics.release_ssim(a, a) == pytest.approx(1.0)
  assert metrics.release_psnr(a, a) == 100.0
  assert metrics.release_psnr(a, a, uint8_wraparound=False) == 100.0


@pytest.mark.parametrize("sigma", [2.0, 8.0])
def test_psnr_of_known_gaussian_noise(sigma):
  rng = np.random.default_rng(1)
  a = _smooth_image(1).astype(np.float64)
  noisy = a + rng.normal(0, sigma, a.shape)
  expected = 20 * np.log10(255 / sigma)
  assert metrics.plain_psnr(a, noisy) == pytest.approx(expected, abs=0.1)
  # The release's gray 256x256 PSNR with the true MSE: noise shared by the
  # three channels of a gray image survives the luma conversion unchanged.
  gray = np.repeat(_smooth_image(2, 256)[..., :1], 3, axis=-1)
  noise = np.round(rng.normal(0, sigma, gray.shape[:2]))[..., None]
  noisy_gray = np.clip(gray + noise, 0, 255).astype(np.uint8)
  true_sigma = np.sqrt(np.mean(noise**2))
  assert metrics.release_psnr(gray, noisy_gray, uint8_wraparound=False) == (
      pytest.approx(20 * np.log10(255 / true_sigma), abs=0.05))


def test_release_psnr_uint8_wraparound():
  gray = np.repeat(_smooth_image(3, 256)[..., :1], 3, axis=-1)
  rng = np.random.default_rng(3)
  small = np.clip(gray + rng.integers(-3, 4, gray.shape[:2])[..., None], 0, 255
                  ).astype(np.uint8)
  # |d| < 16: d^2 < 256, so the wraparound changes nothing.
  assert metrics.release_psnr(gray, small) == pytest.approx(
      metrics.release_psnr(gray, small, uint8_wraparound=False))
  # A uniform difference of 16 wraps to 0 (16^2 = 256): "identical".
  shifted = (gray.astype(np.int64) + 16).clip(0, 255).astype(np.uint8)
  assert np.all(shifted.astype(int) - gray == 16)
  assert metrics.release_psnr(gray, shifted) == 100.0
  assert metrics.release_psnr(gray, shifted, uint8_wraparound=False) == (
      pytest.approx(20 * np.log10(255 / 16)))
  # Heavy noise: the wrapped MSE never exceeds 255, so PSNR stays >= 24.05 dB.
  noisy = rng.integers(0, 256, gray.shape, dtype=np.uint8)
  assert metrics.release_psnr(gray, noisy) >= 20 * np.log10(255 / np.sqrt(255))
  assert metrics.release_psnr(gray, noisy, uint8_wraparound=False) < 15


def test_plain_ssim_and_psnr_equal_skimage():
  rng = np.random.default_rng(4)
  a = np.stack([_smooth_image(s) for s in range(3)])
  b = np.clip(a + rng.normal(0, [[[[5.0]]], [[[15.0]]], [[[30.0]]]], a.shape),
              0, 255).astype(np.uint8)
  ours = metrics.plain_ssim(a, b)
  assert ours.shape == (3,)
  expected = [structural_similarity(x, y, channel_axis=-1, data_range=255)
              for x, y in zip(a, b)]
  np.testing.assert_allclose(ours, expected, atol=1e-4)
  assert ours[0] > ours[1] > ours[2]  # more noise, lower SSIM
  np.testing.assert_allclose(
      metrics.plain_psnr(a, b),
      [peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b)],
      rtol=1e-6)
  # Single-channel images too.
  np.testing.assert_allclose(
      metrics.plain_ssim(a[0, ..., :1], b[0, ..., :1]),
      structural_similarity(a[0, ..., 0], b[0, ..., 0], data_range=255), atol=1e-4)
  # Flat images have no (co)variance: SSIM is the luminance term alone,
  # (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) with C1 = (0.01 * 255)^2.
  c1 = (0.01 * 255) ** 2
  assert metrics.plain_ssim(np.full((16, 16, 3), 100, np.uint8),
                            np.full((16, 16, 3), 150, np.uint8)) == pytest.approx(
      (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1), rel=1e-9)


def test_release_ssim_resizes_to_256_with_inter_area():
  rng = np.random.default_rng(5)
  a = _smooth_image(5)
  b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
  resize = lambda x: cv2.resize(x, (256, 256), interpolation=cv2.INTER_AREA)
  expected = structural_similarity(resize(a), resize(b), channel_axis=-1,
                                   data_range=255)
  assert metrics.release_ssim(a, b) == pytest.approx(expected, abs=1e-4)
  assert metrics.release_ssim(a, b) != pytest.approx(metrics.plain_ssim(a, b), abs=1e-3)


def test_frame_metrics_keys_and_batch():
  a = np.stack([_smooth_image(6), _smooth_image(7)])
  b = a.copy()
  b[1] = 255 - b[1]
  values = metrics.frame_metrics(a, b)
  assert set(values) == {"release/ssim", "release/psnr", "release/psnr_true_mse",
                         "plain/ssim", "plain/psnr"}
  assert values["release/ssim"] == pytest.approx(
      np.mean([1.0, metrics.release_ssim(a[1], b[1])]))


def _mouth(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).uniform(40, 90, (20, 2))


def test_lmd_zero_for_identical_and_shifted_sets():
  real = np.stack([_mouth(0), _mouth(1)])
  assert metrics.lmd(real, real) == 0.0
  # Each set is centred on its own mean: a translation costs nothing.
  assert metrics.lmd(real, real + [7.0, -3.0]) == pytest.approx(0.0, abs=1e-12)


def test_lmd_hand_computed_perturbation():
  real = np.stack([_mouth(2), _mouth(3)])
  fake = real.copy()
  fake[0, 5] += [3.0, 4.0]  # one point of frame 0 moves by (3, 4)
  # After centring, that point is off by (3, 4) - (3, 4) / 20 = (2.85, 3.8)
  # (length 4.75) and the other 19 by (0.15, 0.2) (length 0.25 each).
  per_frame_sum = 4.75 + 19 * 0.25  # 9.5 pixels
  assert metrics.lmd(real, fake) == pytest.approx(per_frame_sum / 2)
  assert metrics.lmd(real, fake, points_reduction="mean") == pytest.approx(
      per_frame_sum / 20 / 2)
  # Frames where a face was not found (NaN) are left out of the mean.
  fake_nan = fake.copy()
  fake_nan[1] = np.nan
  assert metrics.lmd(real, fake_nan) == pytest.approx(per_frame_sum)
  # Full 68-point sets: only points 48..67 count.
  full_real = np.random.default_rng(4).uniform(0, 128, (2, 68, 2))
  full_fake = full_real.copy()
  full_fake[:, 48:] = fake
  full_real[:, 48:] = real
  full_fake[:, :48] += 10.0
  assert metrics.lmd(full_real, full_fake) == pytest.approx(per_frame_sum / 2)


def test_cpbd_sharp_above_blurred_and_in_range():
  sharp = np.stack([_bars(s) for s in range(3)])
  blurred = np.stack([cv2.GaussianBlur(x, (0, 0), 2.0) for x in sharp])
  cpbd_sharp, cpbd_blurred = metrics.cpbd(sharp), metrics.cpbd(blurred)
  assert cpbd_sharp.shape == (3,)
  assert np.all((cpbd_sharp >= 0) & (cpbd_sharp <= 1))
  assert np.all((cpbd_blurred >= 0) & (cpbd_blurred <= 1))
  # A 1-pixel step is ~2 px wide (P(blur) ~ 0.23 < 0.63): all sharp.
  np.testing.assert_allclose(cpbd_sharp, 1.0)
  assert np.all(cpbd_blurred < 0.5 * cpbd_sharp)
  assert metrics.cpbd(sharp[0]) == cpbd_sharp[0]
  assert metrics.cpbd(np.full((128, 128), 90, np.uint8)) == 0.0  # no edges
  # The release's port walks through the flat run right of a falling edge, so
  # falling edges of the bars look wide (blurred) there: about half of them.
  release = metrics.cpbd(sharp, release_plateaus=True)
  assert np.all((release > 0.3) & (release < 0.7))


def test_cpbd_real_face_decreases_with_blur(shared_data):
  crop = cv2.cvtColor(cv2.imread(str(shared_data / "atvgnet_golden" /
                                     "obama_region.jpg")), cv2.COLOR_BGR2RGB)
  values = [metrics.cpbd(crop if s == 0 else cv2.GaussianBlur(crop, (0, 0), s))
            for s in (0, 0.7, 1.5)]
  assert 0 < values[0] <= 1
  assert values[0] > values[1] > values[2]


def test_mouth_landmarks_and_lmd_on_a_real_face(shared_data):
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
  from hcmtfg.media import image_io  # pylint: disable=g-import-not-at-top
  image = image_io.load_image(shared_data / "faces" / "obama.jpg")
  frames = np.stack([image, image[:, ::-1], np.zeros_like(image)])
  points, found = metrics.mouth_landmarks(frames, face.FaceAnalyzer())
  assert found.tolist() == [True, True, False]
  assert points.shape == (3, 20, 2) and np.isnan(points[2]).all()
  assert metrics.lmd(points, points) == 0.0
  # The mirrored face's mouth, mirrored back, is close to the original's.
  mirrored = points[1].copy()
  mirrored[:, 0] = image.shape[1] - 1 - mirrored[:, 0]
  order = [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60,
           67, 66, 65]
  mirrored = mirrored[np.array(order) - 48]
  assert metrics.lmd(points[:1], mirrored[None], points_reduction="mean") < 3.0


def test_atnet_errors_in_pca_space_and_pixels(shared_data):
  pca = landmarks_lib.load_release_pca(shared_data / "atvgnet_basics")
  rng = np.random.default_rng(8)
  target = rng.normal(0, 0.3, (5, 6))
  assert metrics.atnet_errors(target, target, pca) == {"pca/mse": 0.0}
  pred = target + rng.normal(0, 0.05, target.shape)
  # Real frames = the normalised target shapes under a known similarity.
  scale, angle = 310.0, 0.2
  rotation = scale * np.array([[np.cos(angle), -np.sin(angle)],
                               [np.sin(angle), np.cos(angle)]])
  target_norm = landmarks_lib.reconstruct(pca, target).reshape(-1, 68, 2)
  pixels = target_norm @ rotation.T + [64.0, 70.0]
  errors = metrics.atnet_errors(pred, target, pca, pixels)
  assert errors["pca/mse"] == pytest.approx(np.mean((pred - target)**2))
  pred_norm = landmarks_lib.reconstruct(pca, pred).reshape(-1, 68, 2)
  distance = np.linalg.norm(pred_norm - target_norm, axis=-1)
  assert errors["pixels/mean"] == pytest.approx(scale * distance.mean(), rel=1e-6)
  assert errors["pixels/mouth"] == pytest.approx(scale * distance[:, 48:].mean(),
                                                 rel=1e-6)
