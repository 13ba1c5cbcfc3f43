"""Tests of hcmtfg.train.image_metrics (training's JAX SSIM and PSNR) against known
values and scikit-image."""

import numpy as np
from skimage import metrics as skimage_metrics

from hcmtfg.train import image_metrics


def _noisy_pair(shape, noise=0.1, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.uniform(0, 1, shape).astype(np.float32)
  b = np.clip(a + noise * rng.standard_normal(shape), 0, 1).astype(np.float32)
  return a, b


def test_ssim_equals_skimage_gaussian_population_covariance():
  a, b = _noisy_pair((3, 24, 20, 3))
  b[2] = np.clip(a[2] + 0.3 * np.random.default_rng(1).standard_normal(
      a[2].shape), 0, 1)
  got = np.asarray(image_metrics.gaussian_ssim(a, b))
  assert got.shape == (3,)
  want = [skimage_metrics.structural_similarity(
      x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
      data_range=1.0, channel_axis=-1) for x, y in zip(a, b)]
  np.testing.assert_allclose(got, want, rtol=1e-4)
  assert got[2] < got[0]  # more noise, lower SSIM


def test_ssim_known_values():
  a, _ = _noisy_pair((24, 24, 3))
  np.testing.assert_allclose(image_metrics.gaussian_ssim(a, a), 1.0, rtol=1e-6)
  # Flat images: no (co)variance, so SSIM is the luminance term alone,
  # (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) with C1 = 0.01^2.
  flat_a = np.full((16, 16, 1), 0.5, np.float32)
  flat_b = np.full((16, 16, 1), 0.25, np.float32)
  c1 = 0.01**2
  np.testing.assert_allclose(
      image_metrics.gaussian_ssim(flat_a, flat_b),
      (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1), rtol=1e-5)


def test_ssim_leading_axes_and_value_range():
  a, b = _noisy_pair((2, 3, 16, 16, 3))
  got = np.asarray(image_metrics.gaussian_ssim(a, b))
  assert got.shape == (2, 3)
  np.testing.assert_allclose(
      got[1, 2], image_metrics.gaussian_ssim(a[1, 2], b[1, 2]), rtol=1e-6)
  np.testing.assert_allclose(
      image_metrics.gaussian_ssim(255 * a, 255 * b, max_value=255.0), got,
      rtol=1e-4)


def test_psnr_known_values_and_skimage():
  # A uniform difference d has MSE d^2: PSNR = -20 log10(d) = 20 dB for 0.1.
  a = np.full((2, 8, 8, 3), 0.5, np.float32)
  np.testing.assert_allclose(image_metrics.capped_psnr(a, a + 0.1), [20, 20],
                             rtol=1e-5)
  x, y = _noisy_pair((2, 24, 20, 3))
  want = [skimage_metrics.peak_signal_noise_ratio(p, q, data_range=1.0)
          for p, q in zip(x, y)]
  np.testing.assert_allclose(image_metrics.capped_psnr(x, y), want, rtol=1e-5)
  np.testing.assert_allclose(
      image_metrics.capped_psnr(255 * x, 255 * y, max_value=255.0), want,
      rtol=1e-5)
  assert float(image_metrics.capped_psnr(x[0], x[0])) == 100.0
