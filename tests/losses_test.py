"""Tests of hcmtfg.train.losses against hand-computed numpy values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcmtfg.train import losses


def test_landmark_mask_weights_mouth_y_coordinates():
  w = losses.landmark_loss_mask()
  assert w.shape == (136,)
  heavy = np.flatnonzero(w == 100.0)
  # y-coordinates of points 48..67 in (x0, y0, x1, y1, ...) order.
  np.testing.assert_array_equal(heavy, [2 * p + 1 for p in range(48, 68)])
  assert heavy[0] == 97 and heavy[-1] == 135 and len(heavy) == 20
  assert np.all(w[np.setdiff1d(np.arange(136), heavy)] == 1.0)


def test_masked_landmark_loss_matches_numpy():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(2, 3, 136)).astype(np.float32)
  target = rng.normal(size=(2, 3, 136)).astype(np.float32)
  w = np.ones(136, np.float32)
  w[97::2] = 100.0
  expected = np.mean((w * pred - w * target) ** 2)
  got = losses.masked_landmark_loss(jnp.asarray(pred), jnp.asarray(target))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # An error on one mouth y-coordinate costs 100^2 times one on an x-coordinate.
  zero = np.zeros((1, 136), np.float32)
  on_mouth_y, on_mouth_x = zero.copy(), zero.copy()
  on_mouth_y[0, 99] = 1.0
  on_mouth_x[0, 98] = 1.0
  ratio = (losses.masked_landmark_loss(on_mouth_y, zero)
           / losses.masked_landmark_loss(on_mouth_x, zero))
  np.testing.assert_allclose(ratio, 1e4, rtol=1e-5)


def test_dynamic_pixel_loss_weights_and_stops_attention_gradient():
  rng = np.random.default_rng(1)
  fake = rng.uniform(-1, 1, (2, 2, 4, 4, 3)).astype(np.float32)
  real = rng.uniform(-1, 1, (2, 2, 4, 4, 3)).astype(np.float32)
  att = rng.uniform(0, 1, (2, 2, 4, 4, 1)).astype(np.float32)
  expected = np.mean(np.abs(fake - real) * (att + 0.5))
  got = losses.dynamic_pixel_loss(fake, real, att)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # Pixels with A = 1 weigh 3x pixels with A = 0.
  ones, zeros = np.ones_like(att), np.zeros_like(att)
  np.testing.assert_allclose(
      losses.dynamic_pixel_loss(fake, real, ones)
      / losses.dynamic_pixel_loss(fake, real, zeros), 3.0, rtol=1e-6)
  grad_att = jax.grad(lambda a: losses.dynamic_pixel_loss(fake, real, a))(att)
  assert np.all(grad_att == 0.0)
  grad_fake = jax.grad(lambda f: losses.dynamic_pixel_loss(f, real, att))(fake)
  expected_grad = np.sign(fake - real) * (att + 0.5) / fake.size
  np.testing.assert_allclose(grad_fake, expected_grad, rtol=1e-5, atol=1e-9)


def test_l1_and_mse_match_numpy():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(3, 5)).astype(np.float32)
  b = rng.normal(size=(3, 5)).astype(np.float32)
  np.testing.assert_allclose(losses.l1_loss(a, b), np.mean(np.abs(a - b)),
                             rtol=1e-6)
  np.testing.assert_allclose(losses.mse_loss(a, b), np.mean((a - b) ** 2),
                             rtol=1e-6)


def _release_bce(prob, label):
  """torch.nn.BCELoss: mean -(y log p + (1-y) log(1-p)), logs clamped at -100."""
  log_p = np.maximum(np.log(prob), -100.0)
  log_1mp = np.maximum(np.log1p(-prob), -100.0)
  return np.mean(-(label * log_p + (1 - label) * log_1mp))


@pytest.mark.parametrize('label', [0.0, 1.0])
def test_bce_with_logits_equals_release_bce_on_probabilities(label):
  logits = np.array([-7.0, -1.5, -0.2, 0.0, 0.3, 2.0, 9.0])
  prob = 1.0 / (1.0 + np.exp(-logits))
  got = losses.bce_with_logits(jnp.asarray(logits, jnp.float32), label)
  np.testing.assert_allclose(got, _release_bce(prob, label), rtol=1e-5)


def test_gan_losses_named_and_stable_for_large_logits():
  real = jnp.array([3.0, 0.5])
  fake = jnp.array([-2.0, 1.0])
  d = losses.discriminator_gan_losses(real, fake)
  assert set(d) == {'d_real', 'd_fake'}
  softplus = lambda x: np.log1p(np.exp(np.asarray(x)))
  # -log(sigmoid(x)) = softplus(-x); -log(1 - sigmoid(x)) = softplus(x).
  np.testing.assert_allclose(d['d_real'], np.mean(softplus([-3.0, -0.5])),
                             rtol=1e-6)
  np.testing.assert_allclose(d['d_fake'], np.mean(softplus([-2.0, 1.0])),
                             rtol=1e-6)
  np.testing.assert_allclose(losses.generator_gan_loss(fake),
                             np.mean(softplus([2.0, -1.0])), rtol=1e-6)
  # Logits whose sigmoid rounds to exactly 0 or 1 in float32 stay finite.
  huge = jnp.array([200.0, -200.0])
  for value in losses.discriminator_gan_losses(huge, huge).values():
    assert np.isfinite(value)
  np.testing.assert_allclose(losses.generator_gan_loss(jnp.array([-200.0])),
                             200.0, rtol=1e-6)
  grads = jax.grad(losses.generator_gan_loss)(jnp.array([-200.0, 0.0]))
  np.testing.assert_allclose(grads, [-0.5, -0.25], rtol=1e-6)


def test_mouth_region_mask_is_the_padded_box_of_the_mouth_points():
  # Mouth points spanning x 10..20 (width 10), y 30..34, in a 48-pixel frame.
  points = np.stack([np.linspace(10, 20, 20), np.linspace(30, 34, 20)], -1)
  mask = np.asarray(losses.mouth_region_mask(points[None, None], 48, pad=0.2))
  assert mask.shape == (1, 1, 48, 48, 1)
  rows, cols = np.nonzero(mask[0, 0, ..., 0])
  # Grown by 0.2 x width = 2 px on every side: x 8..22, y 28..36.
  assert (cols.min(), cols.max(), rows.min(), rows.max()) == (8, 22, 28, 36)
  assert mask.sum() == 15 * 9
  # Each frame has its own box.
  moved = np.stack([points, points + 5.0])[None]
  two = np.asarray(losses.mouth_region_mask(moved, 48, pad=0.0))
  assert two[0, 1, 35, 25, 0] == 1 and two[0, 0, 35, 25, 0] == 0


def test_weighted_pixel_losses_match_numpy():
  rng = np.random.default_rng(3)
  fake = rng.uniform(-1, 1, (2, 3, 8, 8, 3)).astype(np.float32)
  real = rng.uniform(-1, 1, (2, 3, 8, 8, 3)).astype(np.float32)
  att = rng.uniform(0, 1, (2, 3, 8, 8, 1)).astype(np.float32)
  weight = 1.0 + 10.0 * (rng.uniform(size=(2, 3, 8, 8, 1)) > 0.7)
  err = np.abs(fake - real)
  np.testing.assert_allclose(losses.l1_loss(fake, real, weight),
                             np.mean(err * weight), rtol=1e-5)
  np.testing.assert_allclose(
      losses.dynamic_pixel_loss(fake, real, att, weight),
      np.mean(err * (att + 0.5) * weight), rtol=1e-5)
  # Without weights: the paper's losses.
  np.testing.assert_allclose(losses.dynamic_pixel_loss(fake, real, att),
                             np.mean(err * (att + 0.5)), rtol=1e-5)
