"""Train-mode batch normalisation and max pooling, fast on XLA's CPU backend.

Batch normalisation. XLA's CPU backend emits a sum over the outer axes of a
(..., C) array (per-channel statistics and their gradients) as a loop that
produces one output element at a time, and fuses into it the elementwise work
that made its input (a Winograd output transform, a ReLU mask), once per
reduction, which made those reductions a large part of AT-net's training step.
Here every such sum is a matrix product with a block of ones
(`_sum`), and the gradient is written by hand so that it needs two of them,
sum(dy) and sum(dy * x_hat):

  x_hat = (x - mean) * inv,  inv = rsqrt(var + eps),  n values per statistic
  d_bias = sum(dy),  d_scale = sum(dy * x_hat)
  dx = scale * inv * (dy - sum_g(dy) / n - x_hat * sum_g(dy * x_hat) / n)
       + d_mean / n + d_var * 2 (x - mean) / n

(sum_g: over the statistics' axes, per group; d_mean, d_var: cotangents of the
returned statistics, zero when only y is used). Same values as autodiff up to
float rounding.

Max pooling (`max_pool`): a maximum over the window's strided slices, with a
hand-written gradient instead of XLA's select-and-scatter, the slower of the
two on CPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _sum(x: Array, axes: tuple[int, ...]) -> Array:
  """sum(x, axes, keepdims=True) as a matrix product with a block of ones.

  XLA's CPU backend reduces the outer axes of a (..., C) array one output
  element at a time; a dot runs at matrix-multiply speed. The ones block
  has 8 rows because a single row would be rewritten back into a reduction.
  Other backends reduce well: a plain sum there.
  """
  if jax.default_backend() != "cpu":
    return jnp.sum(x, axis=axes, keepdims=True)
  keep = tuple(a for a in range(x.ndim) if a not in axes)
  ones = jnp.ones((8,) + tuple(x.shape[a] for a in axes), x.dtype)
  # (8, kept axes...) in the kept axes' order.
  out = lax.dot_general(ones, x, ((tuple(range(1, len(axes) + 1)), axes),
                                  ((), ())),
                        precision=lax.Precision.HIGHEST)[0]
  shape = [1] * x.ndim
  for a in keep:
    shape[a] = x.shape[a]
  return out.reshape(shape)


def _stats(x32: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
  n = math.prod(x32.shape[a] for a in axes)
  mean = _sum(x32, axes) / n
  var = _sum(jnp.square(x32 - mean), axes) / n
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: Array, scale: Array, bias: Array,
                     axes: tuple[int, ...], epsilon: float
                     ) -> tuple[Array, Array, Array]:
  """Normalises x (..., C) with its own statistics over `axes`.

  Args:
    x: activations (..., C), any float dtype (statistics in float32).
    scale, bias: (C,) float32.
    axes: the axes the statistics are taken over (not the last).
    epsilon: added to the variance.

  Returns:
    (y float32 like x's shape, mean, biased variance), the statistics float32
    with `axes` kept as size 1.
  """
  return _forward(x, scale, bias, axes, epsilon)[0]


def _forward(x, scale, bias, axes, epsilon):
  x32 = x.astype(jnp.float32)
  mean, var = _stats(x32, axes)
  inv = lax.rsqrt(var + epsilon)
  y = (x32 - mean) * inv * scale + bias
  return (y, mean, var), (x, mean, inv, scale)


def _backward(axes, epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale = residuals
  dy, d_mean, d_var = cotangents
  x32 = x.astype(jnp.float32)
  n = math.prod(x.shape[a] for a in axes)
  centred = x32 - mean
  x_hat = centred * inv
  sum_dy = _sum(dy, axes)
  sum_dy_xhat = _sum(dy * x_hat, axes)
  dx = scale * inv * (dy - sum_dy / n - x_hat * (sum_dy_xhat / n))
  dx = dx + d_mean / n + d_var * (2.0 / n) * centred
  rest = tuple(range(x.ndim - 1))
  d_bias = jnp.sum(sum_dy, axis=rest)
  d_scale = jnp.sum(sum_dy_xhat, axis=rest)
  return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(
      scale.dtype)


batch_norm_train.defvjp(_forward, _backward)


# ----------------------------------------------------------------------------
# Max pooling.
# ----------------------------------------------------------------------------


def _window_taps(x: Array, window: tuple[int, int],
                 strides: tuple[int, int]) -> list[Array]:
  """The kh*kw strided slices of x (N, H, W, C) that a VALID pool reads."""
  n, h, w, c = x.shape
  (kh, kw), (sh, sw) = window, strides
  oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
  return [lax.slice(x, (0, i, j, 0),
                    (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x_NxHxWxC: Array, window: tuple[int, int],
             strides: tuple[int, int]) -> Array:
  """VALID max pooling (PyTorch's MaxPool2d without padding, floor mode).

  Written as a maximum over the window's strided slices, which XLA fuses into
  one elementwise loop; the gradient goes to the first maximum of each window
  in row-major order, as PyTorch's does, without XLA's select-and-scatter
  (slow on CPU).
  """
  return _pool_forward(x_NxHxWxC, window, strides)[0]


def _pool_forward(x, window, strides):
  taps = _window_taps(x, window, strides)
  out = functools.reduce(jnp.maximum, taps)
  return out, x


def _pool_backward(window, strides, x, dy):
  taps = _window_taps(x, window, strides)
  out = functools.reduce(jnp.maximum, taps)
  h, w = x.shape[1:3]
  kw, (sh, sw) = window[1], strides
  oh, ow = out.shape[1:3]
  dx = jnp.zeros(x.shape, dy.dtype)
  taken = jnp.zeros(out.shape, bool)
  zero = jnp.zeros((), dy.dtype)
  for k, tap in enumerate(taps):
    i, j = divmod(k, kw)
    first = (tap == out) & ~taken
    taken = taken | first
    grad = jnp.where(first, dy, zero)
    # The transpose of the strided slice: a pad with interior zeros.
    dx = dx + lax.pad(grad, zero, ((0, 0, 0),
                                   (i, h - i - sh * (oh - 1) - 1, sh - 1),
                                   (j, w - j - sw * (ow - 1) - 1, sw - 1),
                                   (0, 0, 0)))
  return (dx,)


max_pool.defvjp(_pool_forward, _pool_backward)
