"""Training losses of AT-net and VG-net, as the release trains them.

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

from hcmtfg.features import landmarks as landmarks_lib

# y-coordinates of the mouth points 48..67 in the flattened
# (x0, y0, x1, y1, ...) 136-vector: indices 97, 99, ..., 135.
MOUTH_Y_INDICES = tuple(range(2 * landmarks_lib.MOUTH_POINTS.start + 1,
                              2 * landmarks_lib.MOUTH_POINTS.stop, 2))
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


def mouth_region_mask(mouth_BxTx20x2: jax.Array, size: int,
                      pad: float = 0.25) -> jax.Array:
  """1 inside each frame's mouth box, 0 elsewhere.

  The box is the bounding box of the 20 mouth points (48..67), grown on every
  side by `pad` times the mouth's width (the lips' full extent plus a margin:
  chin and cheeks move with the jaw).

  Args:
    mouth_BxTx20x2: mouth points (x, y) in pixels of the size x size frames
      (the batch key 'target_mouth').
    size: frame side S.
    pad: margin, in mouth widths.

  Returns:
    float32 (B, T, S, S, 1).
  """
  pts = mouth_BxTx20x2.astype(jnp.float32)
  lo, hi = jnp.min(pts, axis=-2), jnp.max(pts, axis=-2)  # (B, T, 2)
  margin = pad * (hi[..., :1] - lo[..., :1])  # (B, T, 1), from the width
  lo, hi = lo - margin, hi + margin
  grid = jnp.arange(size, dtype=jnp.float32)
  inside = ((grid >= lo[..., None]) & (grid <= hi[..., None]))  # (B, T, 2, S)
  mask = inside[..., 1, :, None] & inside[..., 0, None, :]  # (B, T, S, S)
  return mask.astype(jnp.float32)[..., None]


def l1_loss(fake: jax.Array, real: jax.Array,
            weight: jax.Array | None = None) -> jax.Array:
  """Mean absolute error over every element (the plain-L1 ablation).

  Args:
    fake, real: images of the same shape, (..., H, W, C).
    weight: None, or per-pixel weights (..., H, W, 1) broadcast over channels
      (e.g. `1 + w * mouth_region_mask(...)`); the mean is then of the
      weighted errors.
  """
  err = jnp.abs(fake.astype(jnp.float32) - real.astype(jnp.float32))
  if weight is not None:
    err = err * weight.astype(jnp.float32)
  return jnp.mean(err)


def dynamic_pixel_loss(fake: jax.Array, real: jax.Array,
                       attention: jax.Array,
                       weight: jax.Array | None = None) -> jax.Array:
  """The dynamic pixel-wise loss, mean(|fake − real| ⊙ (stop_grad(A) + 0.5)).

  Args:
    fake: (B, T, H, W, 3) generated frames in [-1, 1].
    real: (B, T, H, W, 3) ground-truth frames in [-1, 1].
    attention: (B, T, H, W, 1) generator attention A in [0, 1]; broadcast over
      channels. No gradient flows into A.
    weight: None (the paper), or extra per-pixel weights (B, T, H, W, 1)
      multiplying (A + 0.5), e.g. to weight the mouth region more.

  Returns:
    float32 scalar: the mean over B, T, H, W and the 3 channels.
  """
  weight_a = jax.lax.stop_gradient(attention.astype(jnp.float32)) + 0.5
  if weight is not None:
    weight_a = weight_a * weight.astype(jnp.float32)
  return l1_loss(fake, real, weight_a)


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
