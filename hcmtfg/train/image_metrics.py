"""SSIM and PSNR in JAX, for the training summaries ('eval/ssim', 'eval/psnr').

One convention, unlike both of the evaluation's in `hcmtfg.evaluation.metrics` (release_*
and plain_*): Wang et al. (2004)'s SSIM as dm-pix computes it, with an
11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, population (co)variances,
each channel on its own and the mean of the SSIM map over the valid region (no
padding); PSNR of the RGB mean squared error, capped at 100 dB so that identical
images give a finite summary. Both run inside the jitted eval step.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp

PSNR_CAP = 100.0


def _images(x: jax.Array) -> jax.Array:
  """(..., H, W, C) -> float32 (N, H, W, C)."""
  x = jnp.asarray(x, jnp.float32)
  return x.reshape((-1,) + x.shape[-3:])


def gaussian_ssim(a: jax.Array, b: jax.Array, max_value: float = 1.0
                  ) -> jax.Array:
  """Mean SSIM per image (11x11 Gaussian window, sigma 1.5, valid region).

  Args:
    a, b: (..., H, W, C) images with values in [0, max_value], H, W >= 11.
    max_value: the images' peak value.

  Returns:
    float32 (...,): SSIM per image, in [-1, 1].
  """
  lead = jnp.shape(a)[:-3]
  values = dm_pix.ssim(_images(a), _images(b), max_val=max_value)
  return values.reshape(lead)


def capped_psnr(a: jax.Array, b: jax.Array, max_value: float = 1.0
                ) -> jax.Array:
  """PSNR in dB per image (..., H, W, C), 100 for (nearly) identical images.

  Args:
    a, b: (..., H, W, C) images with values in [0, max_value].
    max_value: the images' peak value.

  Returns:
    float32 (...,): 10 log10(max_value^2 / MSE), at most 100.
  """
  lead = jnp.shape(a)[:-3]
  values = dm_pix.psnr(_images(a) / max_value, _images(b) / max_value)
  return jnp.minimum(values, PSNR_CAP).reshape(lead)
