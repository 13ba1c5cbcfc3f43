"""Hand-written gradients of hcmtfg.models.normalize against autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcmtfg.models import normalize


def _plain_batch_norm(x, scale, bias, axes, eps):
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias, mean, var


@pytest.mark.parametrize("axes", [(0, 1, 2), (0, 2, 3)])
def test_batch_norm_values_and_gradients_equal_autodiff(axes):
  rng = np.random.default_rng(0)
  shape = (3, 4, 5, 6) if axes == (0, 1, 2) else (2, 3, 4, 5, 6)
  x = jnp.asarray(rng.normal(1.0, 2.0, shape), jnp.float32)
  scale = jnp.asarray(rng.normal(1.0, 0.3, 6), jnp.float32)
  bias = jnp.asarray(rng.normal(0.0, 0.3, 6), jnp.float32)
  w = [jnp.asarray(rng.standard_normal(s), jnp.float32)
       for s in (shape, (1,) * len(shape), (1,) * len(shape))]

  def loss(fn):
    def f(x, scale, bias):
      y, mean, var = fn(x, scale, bias, axes, 1e-5)
      # Weight every output, the statistics included, so each cotangent of
      # the backward pass is exercised.
      return (jnp.sum(y * w[0]) + jnp.sum(mean * 0.7 * jnp.sum(w[1]))
              + jnp.sum(var * 0.3 * jnp.sum(w[2])))
    return f

  ours = normalize.batch_norm_train(x, scale, bias, axes, 1e-5)
  plain = _plain_batch_norm(x, scale, bias, axes, 1e-5)
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  got = jax.grad(loss(normalize.batch_norm_train), argnums=(0, 1, 2))(
      x, scale, bias)
  want = jax.grad(loss(_plain_batch_norm), argnums=(0, 1, 2))(x, scale, bias)
  for a, b in zip(got, want):
    assert float(jnp.abs(b).max()) > 1e-2  # not a vacuous comparison
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strides", [(1, 2), (2, 2), (1, 1)])
def test_max_pool_equals_flax_and_its_gradient(strides):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 8, 3)),
                  jnp.float32)
  ours = normalize.max_pool(x, (3, 3), strides)
  ref = nn.max_pool(x, (3, 3), strides=strides, padding="VALID")
  np.testing.assert_array_equal(ours, ref)
  dy = jnp.asarray(np.random.default_rng(2).standard_normal(ref.shape),
                   jnp.float32)
  got = jax.vjp(lambda x: normalize.max_pool(x, (3, 3), strides), x)[1](dy)[0]
  want = jax.vjp(lambda x: nn.max_pool(x, (3, 3), strides=strides,
                                       padding="VALID"), x)[1](dy)[0]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_max_pool_gradient_goes_to_the_first_maximum_like_pytorch():
  x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 2, 0].set(1.0).at[0, 2, 0, 0].set(1.0)
  g = jax.grad(lambda x: normalize.max_pool(x, (3, 3), (1, 1)).sum())(x)
  want = np.zeros((1, 3, 3, 1), np.float32)
  want[0, 1, 2, 0] = 1.0  # row-major first of the two tied maxima
  np.testing.assert_array_equal(g, want)
