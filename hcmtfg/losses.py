"""Training losses of AT-net and VG-net (ATVGnet spec §2 and §5).

All losses are scalar float32 means. Composite losses return dicts of named
scalars (keys without a `train/` prefix; the trainers add prefixes).

The GAN losses take the discriminator's per-sequence *logit* (the mean of its
per-step logits). The release applies a sigmoid to that mean and then uses
`nn.BCELoss`; `-log(sigmoid(x)) = softplus(-x)` and `-log(1 - sigmoid(x)) =
softplus(x)` give the same values without overflow for large |x| (the release's
BCELoss additionally clamps each log term at -100, i.e. caps a term at 100,
which only matters for |logit| > 100).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# y-coordinates of the mouth points 48..67 in the flattened
# (x0, y0, x1, y1, ...) 136-vector: indices 97, 99, ..., 135.
MOUTH_Y_INDICES = tuple(range(97, 136, 2))
MOUTH_WEIGHT = 100.0


def landmark_loss_mask(num_coords: int = 136,
                       mouth_weight: float = MOUTH_WEIGHT) -> np.ndarray:
  """The release's landmark loss weights w.

  Args:
    num_coords: length of a flattened landmark vector (136 for 68 points).
    mouth_weight: weight on the mouth y-coordinates.

  Returns:
    float32 (num_coords,): 1 everywhere, `mouth_weight` at indices 97, 99,
    ..., 135.
  """
  w = np.ones((num_coords,), np.float32)
  w[list(MOUTH_Y_INDICES)] = mouth_weight
  return w


def masked_landmark_loss(pred: jax.Array, target: jax.Array,
                         mask: jax.Array | np.ndarray | None = None
                         ) -> jax.Array:
  """MSE(w ⊙ pred, w ⊙ target), averaged over every element.

  Args:
    pred: (..., 136) predicted landmarks (flattened, ×5-scaled Procrustes
      space).
    target: same shape as `pred`.
    mask: (136,) weights w; defaults to `landmark_loss_mask()`.

  Returns:
    float32 scalar.
  """
  if mask is None:
    mask = landmark_loss_mask(pred.shape[-1])
  w = jnp.asarray(mask, jnp.float32)
  diff = (pred.astype(jnp.float32) - target.astype(jnp.float32)) * w
  return jnp.mean(jnp.square(diff))


def mse_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over every element (AT-net's loss on PCA coefs)."""
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.mean(jnp.square(diff))


def l1_loss(fake: jax.Array, real: jax.Array) -> jax.Array:
  """Mean absolute error over every element (the plain-L1 ablation)."""
  return jnp.mean(jnp.abs(fake.astype(jnp.float32) - real.astype(jnp.float32)))


def dynamic_pixel_loss(fake: jax.Array, real: jax.Array,
                       attention: jax.Array) -> jax.Array:
  """The dynamic pixel-wise loss, mean(|fake − real| ⊙ (stop_grad(A) + 0.5)).

  Args:
    fake: (B, T, H, W, 3) generated frames in [-1, 1].
    real: (B, T, H, W, 3) ground-truth frames in [-1, 1].
    attention: (B, T, H, W, 1) generator attention A in [0, 1]; broadcast over
      channels. No gradient flows into A.

  Returns:
    float32 scalar: the mean over B, T, H, W and the 3 channels.
  """
  weight = jax.lax.stop_gradient(attention.astype(jnp.float32)) + 0.5
  err = jnp.abs(fake.astype(jnp.float32) - real.astype(jnp.float32))
  return jnp.mean(err * weight)


def bce_with_logits(logit: jax.Array, label: float) -> jax.Array:
  """Mean binary cross-entropy of sigmoid(logit) against a constant label.

  Args:
    logit: (B,) per-sequence logits.
    label: 0. or 1. (any value in [0, 1] works).

  Returns:
    float32 scalar: mean(-label·log σ(x) − (1 − label)·log(1 − σ(x))).
  """
  x = logit.astype(jnp.float32)
  return jnp.mean(label * jax.nn.softplus(-x)
                  + (1.0 - label) * jax.nn.softplus(x))


def discriminator_gan_losses(logit_real: jax.Array,
                             logit_fake: jax.Array) -> dict[str, jax.Array]:
  """The discriminator's adversarial losses.

  Args:
    logit_real: (B,) logits of D on real sequences.
    logit_fake: (B,) logits of D on generated sequences (already stop-gradient).

  Returns:
    {'d_real': BCE(D(real), 1), 'd_fake': BCE(D(fake), 0)}.
  """
  return {'d_real': bce_with_logits(logit_real, 1.0),
          'd_fake': bce_with_logits(logit_fake, 0.0)}


def generator_gan_loss(logit_fake: jax.Array) -> jax.Array:
  """The generator's (non-saturating) adversarial loss BCE(D(fake), 1)."""
  return bce_with_logits(logit_fake, 1.0)
