"""Winograd 3x3 convolutions (hcmtfg.models.winograd) against XLA's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcmtfg.models import winograd


def _inputs(shape, features, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape, np.float32))
  k = jnp.asarray(rng.standard_normal((3, 3, shape[-1], features), np.float32)
                  / np.sqrt(9 * shape[-1]))
  return x, k


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# Sizes that tile exactly and sizes that need a partial last tile.
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("hw", [(8, 8), (5, 7), (1, 3), (12, 6)])
def test_winograd_equals_direct_convolution(tile, hw):
  x, k = _inputs((3,) + hw + (16,), 24)
  ref = winograd.direct_conv3x3(x, k)
  y = jax.jit(winograd.winograd_conv3x3, static_argnums=2)(x, k, tile)
  assert y.shape == ref.shape
  # Float rounding only; a wrong tap or transform gives errors of order 1.
  assert _rel(y, ref) < (1e-6 if tile == 2 else 1e-5)
  np.testing.assert_allclose(y, ref, atol=1e-4 * float(jnp.abs(ref).max()))


def test_each_kernel_tap_lands_where_the_direct_convolution_puts_it():
  # One-hot kernels catch a transposed tap or a swapped tile axis, which a
  # random kernel on random data would show only as a large error.
  x, _ = _inputs((1, 8, 8, 1), 1, seed=1)
  for tile in (2, 4):
    for i in range(3):
      for j in range(3):
        k = jnp.zeros((3, 3, 1, 1)).at[i, j, 0, 0].set(1.0)
        np.testing.assert_allclose(
            winograd.winograd_conv3x3(x, k, tile),
            winograd.direct_conv3x3(x, k), atol=2e-5,
            err_msg=f"tile {tile}, tap {(i, j)}")


@pytest.mark.parametrize("tile", [2, 4])
def test_gradients_equal_the_direct_convolutions(tile):
  x, k = _inputs((2, 8, 8, 8), 8, seed=2)
  cotangent = jnp.asarray(np.random.default_rng(3).standard_normal(
      (2, 8, 8, 8), np.float32))

  def loss(fn):
    return lambda x, k: jnp.sum(fn(x, k) * cotangent)

  gx, gk = jax.grad(loss(lambda x, k: winograd.winograd_conv3x3(x, k, tile)),
                    argnums=(0, 1))(x, k)
  rx, rk = jax.grad(loss(winograd.direct_conv3x3), argnums=(0, 1))(x, k)
  assert _rel(gx, rx) < 1e-5 and _rel(gk, rk) < 1e-5


def test_bfloat16_inputs_stay_bfloat16():
  x, k = _inputs((1, 8, 8, 8), 8)
  y = winograd.winograd_conv3x3(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  assert _rel(y.astype(jnp.float32), winograd.direct_conv3x3(x, k)) < 0.05


def test_auto_picks_winograd_only_for_large_cpu_maps():
  assert winograd.resolve("auto", (64, 8, 8, 512), 512) == (
      f"winograd{winograd.AUTO_TILE}")
  assert winograd.resolve("auto", (1, 8, 8, 512), 512) == "direct"
  assert winograd.resolve("auto", (64, 8, 8, 16), 16) == "direct"
  assert winograd.resolve("direct", (64, 8, 8, 512), 512) == "direct"
  with pytest.raises(ValueError, match="winograd3"):
    winograd.resolve("winograd3", (1, 8, 8, 8), 8)


def test_module_has_nn_conv_parameters_and_output():
  x, _ = _inputs((2, 3, 8, 8, 16), 16)  # two leading axes fold into one
  conv = nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  params = conv.init(jax.random.key(0), x)
  for algorithm in winograd.ALGORITHMS:
    module = winograd.Conv3x3(16, algorithm=algorithm)
    ours = module.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(module.apply(params, x), conv.apply(params, x),
                               atol=1e-4, err_msg=algorithm)


class _TwoConvs(nn.Module):
  """Two Winograd-eligible convs and one that stays direct (too narrow)."""

  @nn.compact
  def __call__(self, x):
    x = winograd.Conv3x3(winograd.AUTO_MIN_CHANNELS, name="a")(x)
    x = winograd.Conv3x3(winograd.AUTO_MIN_CHANNELS, name="b")(nn.relu(x))
    return winograd.Conv3x3(4, name="narrow")(x)


def test_transformed_kernels_are_used_and_give_the_same_output():
  module = _TwoConvs()
  x, _ = _inputs((1, 6, 6, winograd.AUTO_MIN_CHANNELS), 1, seed=4)
  variables = module.init(jax.random.key(1), x)
  prepared = winograd.with_transformed_kernels(module, variables, x[:1, :3])
  cache = prepared[winograd.TRANSFORMED]
  tile = winograd.AUTO_TILE
  assert set(cache) == {"a", "b"}  # the narrow conv has nothing to cache
  assert cache["a"][f"kernel{tile}"].shape == (
      (tile + 2) ** 2, winograd.AUTO_MIN_CHANNELS, winograd.AUTO_MIN_CHANNELS)
  # One row is below AUTO_MIN_ROWS: unprepared 'auto' runs XLA's conv.
  direct = module.apply(variables, x)
  np.testing.assert_allclose(module.apply(prepared, x), direct,
                             atol=1e-4 * float(jnp.abs(direct).max()))
  # The stored transform, not the kernel, is what a prepared call reads.
  broken = jax.tree.map(lambda u: u * 0.0, cache)
  out = module.apply({**variables, winograd.TRANSFORMED: broken}, x)
  assert not np.allclose(out, direct, atol=1e-3)


@pytest.mark.parametrize("over_batch_axis", [False, True])
def test_convgru_on_winograd_equals_direct_with_gradients(over_batch_axis):
  from hcmtfg.models import convgru  # pylint: disable=g-import-not-at-top
  x, _ = _inputs((2, 3, 8, 8, 8), 1, seed=5)
  h0 = jnp.asarray(np.random.default_rng(6).standard_normal(
      (3 if over_batch_axis else 2, 8, 8, 16)), jnp.float32)

  def run(algorithm):
    gru = convgru.ConvGRU(16, over_batch_axis=over_batch_axis,
                          conv_algorithm=algorithm)
    params = gru.init(jax.random.key(2), x)

    def loss(params, x):
      # From zeros (first hidden conv skipped) and from a given state.
      out = gru.apply(params, x)
      out2, last = gru.apply(params, x, h0, return_state=True)
      return jnp.sum(out ** 2) + jnp.sum(out2 * 0.5) + jnp.sum(last), out2
    (value, out2), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        params, x)
    return value, out2, grads

  direct, wino = run("direct"), run("winograd4")
  np.testing.assert_allclose(wino[1], direct[1], atol=1e-4)
  np.testing.assert_allclose(wino[0], direct[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(wino[2]), jax.tree.leaves(direct[2])):
    assert float(jnp.abs(b).max()) > 0
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_vgnet_caches_the_convgru_transforms_in_release_mode():
  """Frames from cached ConvGRU transforms equal those computed without them.

  In eval mode with the initial BatchNorm statistics (mean 0, variance 1) the
  activations shrink layer after layer, and the frames hardly depend on the
  ConvGRU (zeroing its hidden kernel moved them by 2e-7): the statistics are
  first set by train-mode passes over the inputs, as training would. Then
  zeroing either cached transform moves the frames by over 10x the
  tolerance (1e-3 and 6e-3 against 1e-5), so the comparison would catch a
  wrong or unused cache.
  """
  from hcmtfg.models import vg_net  # pylint: disable=g-import-not-at-top
  net = vg_net.VGNet(image_size=32, base_width=8, bottleneck_features=64,
                     convgru_features=64, num_res_blocks=1,
                     convgru_over_batch_axis=True)
  inputs = net.dummy_inputs(batch=3, frames=2)
  variables = jax.jit(lambda: net.init(jax.random.key(0), *net.dummy_inputs(),
                                       train=False))()
  rng = np.random.default_rng(7)
  inputs = [jnp.asarray(rng.uniform(-1, 1, a.shape), jnp.float32)
            for a in inputs]
  statistics = jax.jit(lambda v, *a: net.apply(
      v, *a, train=True, rngs={"dropout": jax.random.key(1)},
      mutable=["batch_stats"])[1]["batch_stats"])
  for _ in range(20):  # Running averages with momentum 0.1: 88% of the way.
    variables = {**variables, "batch_stats": statistics(variables, *inputs)}
  prepared = winograd.with_transformed_kernels(net, variables,
                                               *net.dummy_inputs(), train=False)
  cached = prepared[winograd.TRANSFORMED]["convgru"]
  tile = winograd.AUTO_TILE
  assert set(cached) == {f"kernel_ih{tile}", f"kernel_hh{tile}"}
  frames = jax.jit(lambda v, *a: net.apply(v, *a, train=False).frames)
  want, got = frames(variables, *inputs), frames(prepared, *inputs)
  assert float(jnp.std(want)) > 1e-3
  atol = 1e-5
  np.testing.assert_allclose(got, want, atol=atol)
  for key in cached:
    broken = jax.tree.map(lambda x: x, prepared)  # New containers, same arrays.
    broken[winograd.TRANSFORMED]["convgru"][key] = jnp.zeros_like(cached[key])
    moved = float(jnp.abs(frames(broken, *inputs) - want).max())
    assert moved > 10 * atol, (key, moved)
