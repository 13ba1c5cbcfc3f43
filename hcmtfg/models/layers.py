"""Building blocks shared by AT-net, VG-net and the discriminator (NHWC, linen).

Everything here reproduces a PyTorch layer of the ATVGnet release closely enough
that converted release weights give the release's outputs (see
`hcmtfg.weights.convert_torch` for the weight layouts):

* `BatchNorm`: PyTorch's BatchNorm2d, including its running-variance update with
  the *unbiased* batch variance (Flax's `nn.BatchNorm` uses the biased one), and an
  option to take batch statistics per frame as the release does when it calls its
  per-frame modules once per frame in a Python loop.
* `ConvBNReLU`, `ResnetBlock`, `TorchConvTranspose`, `DeconvBNReLU`, and a
  sharding-friendly `Dropout`.
* `ConfigurableModule`: the networks' base, rebuilt from their config.json.
* `TorchLSTM`: a multi-layer `torch.nn.LSTM(batch_first=True)`, scanned over
  time with `lax.scan` from a zero (or given) state.
* `ConvParams`: an `nn.Conv`'s parameters without the convolution, to fuse
  convolutions that share an input.

Per-frame tensors may carry two leading axes (B, T, ...): convolutions fold every
leading axis into one batch axis, so per-frame work runs once on B*T frames.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Self

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from hcmtfg.models import conv_transpose
from hcmtfg.models import normalize
from hcmtfg.models import winograd

Array = jax.Array
Initializer = Callable[..., Array]
# Per LSTM layer (h, c), each (B, H).
LSTMState = tuple[tuple[Array, Array], ...]

# The release's `weights_init`: N(0, 0.02) for Conv/Linear weights, zero biases,
# BatchNorm scale N(1, 0.02) (AT-net and VG-net).
RELEASE_KERNEL_INIT: Initializer = nn.initializers.normal(stddev=0.02)


def release_bn_scale_init(key: Array, shape: tuple[int, ...],
                          dtype: Any = jnp.float32) -> Array:
  """BatchNorm scale drawn from N(1, 0.02), as the release initialises it."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


# PyTorch's default Conv2d/Linear weight init, kaiming_uniform(a=sqrt(5)), is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance 1/(3 fan_in).
TORCH_DEFAULT_KERNEL_INIT: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform")


def symmetric_uniform(bound: float) -> Initializer:
  """Returns an initializer drawing from U(-bound, bound).

  PyTorch's default bias init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and its
  LSTM/GRU init is U(-1/sqrt(hidden), 1/sqrt(hidden)) for every tensor.
  """

  def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class ConfigurableModule(nn.Module):
  """A linen module whose constructor attributes round-trip through JSON.

  The networks (AT-net, VG-net, the discriminator) derive from it, so that a
  checkpoint's config.json rebuilds the module that wrote it.
  """

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> Self:
    """Builds the module from `to_config()`-style attributes; lists become
    tuples; unknown keys raise TypeError."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v
                  for k, v in config.items()})

  def to_config(self) -> dict[str, Any]:
    """The constructor attributes as a JSON-friendly dict: tuples become
    lists; `parent` and `name` are left out."""
    config = {}
    for field in dataclasses.fields(self):
      if field.name in ("parent", "name") or not field.init:
        continue
      value = getattr(self, field.name)
      config[field.name] = list(value) if isinstance(value, tuple) else value
    return config


class BatchNorm(nn.Module):
  """PyTorch-faithful BatchNorm over the last (channel) axis.

  Train mode normalises with the biased batch variance and updates the running
  averages PyTorch-style with momentum m: `running = (1 - m) * running +
  m * batch`, where the variance entering the running average is the unbiased
  one (n / (n - 1) times the biased one; n = values per channel). Eval mode
  normalises with the running averages. The running averages are not updated
  while the module is being initialised.

  Attributes:
    momentum: PyTorch momentum (0.1; Flax's convention would be 0.9).
    epsilon: added to the variance (1e-5).
    per_frame_stats: for 5-D inputs (B, T, H, W, C) take the batch statistics
      of every frame t separately over (B, H, W), and apply T running-average
      updates in frame order — exactly what PyTorch does when a per-frame
      module is called once per frame. Inputs of other ranks are unaffected.
    scale_init: initializer of the scale (gamma).
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  per_frame_stats: bool = False
  scale_init: Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """Normalises x (..., C); returns the same shape."""
    channels = x.shape[-1]
    scale = self.param("scale", self.scale_init, (channels,))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    running_mean = self.variable("batch_stats", "mean", jnp.zeros,
                                 (channels,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones,
                                (channels,), jnp.float32)
    out_dtype = jnp.result_type(x, scale)
    if not train:
      mean = running_mean.value.astype(jnp.float32)
      var = running_var.value.astype(jnp.float32)
      # Statistics in float32 whatever x's dtype.
      y = (x.astype(jnp.float32) - mean) * lax.rsqrt(var + self.epsilon)
      return (y * scale + bias).astype(out_dtype)
    per_frame = self.per_frame_stats and x.ndim == 5
    axes = (0, 2, 3) if per_frame else tuple(range(x.ndim - 1))
    y, mean, var = normalize.batch_norm_train(x, scale, bias, axes,
                                              self.epsilon)
    if not self.is_initializing():
      n = math.prod(x.shape[a] for a in axes)
      unbiased_var = var * (n / max(n - 1, 1))
      m = self.momentum
      old_mean = running_mean.value.astype(jnp.float32)
      old_var = running_var.value.astype(jnp.float32)
      if per_frame:
        # T sequential updates r <- (1-m) r + m s_t, in closed form.
        steps = x.shape[1]
        weights_Tx1 = m * (1.0 - m) ** jnp.arange(
            steps - 1, -1, -1, dtype=jnp.float32)[:, None]
        decay = (1.0 - m) ** steps
        # Weighted sums, not matmuls: exact f32 on every backend.
        new_mean = decay * old_mean + jnp.sum(
            weights_Tx1 * mean.reshape(steps, channels), axis=0)
        new_var = decay * old_var + jnp.sum(
            weights_Tx1 * unbiased_var.reshape(steps, channels), axis=0)
      else:
        new_mean = (1.0 - m) * old_mean + m * mean.reshape(channels)
        new_var = (1.0 - m) * old_var + m * unbiased_var.reshape(channels)
      running_mean.value = new_mean.astype(running_mean.value.dtype)
      running_var.value = new_var.astype(running_var.value.dtype)
    return y.astype(out_dtype)


class ConvBNReLU(nn.Module):
  """The release's `conv2d(cin, cout, k, s, p)`: Conv (no bias), BatchNorm, ReLU.

  Input (*batch, H, W, Cin); output (*batch, H', W', features) with PyTorch's
  size rule H' = (H + 2p - k) // s + 1. A 3x3, stride 1, padding 1 conv is
  computed by `conv_algorithm` (`hcmtfg.models.winograd.ALGORITHMS`), any
  other by XLA's convolution; the parameters are `nn.Conv`'s either way.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int = 1
  per_frame_stats: bool = False
  kernel_init: Initializer = RELEASE_KERNEL_INIT
  bn_scale_init: Initializer = release_bn_scale_init
  conv_algorithm: str = "direct"

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    p, k, s = self.padding, self.kernel_size, self.strides
    if (k, s, p) == (3, 1, 1):
      x = winograd.Conv3x3(self.features, algorithm=self.conv_algorithm,
                           kernel_init=self.kernel_init, name="conv")(x)
    else:
      x = nn.Conv(self.features, (k, k), strides=s, padding=((p, p), (p, p)),
                  use_bias=False, kernel_init=self.kernel_init, name="conv")(x)
    x = BatchNorm(per_frame_stats=self.per_frame_stats,
                  scale_init=self.bn_scale_init, name="bn")(x, train=train)
    return nn.relu(x)


class Dropout(nn.Module):
  """Inverted dropout (RNG stream 'dropout'), active only when `train` is True.

  Unlike `nn.Dropout`, the mask takes the input's sharding, so it also works
  under a mesh with explicit axis types (`jax.make_mesh`'s default), where
  mixing a replicated mask with a batch-sharded input is an error.
  """
  rate: float

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    sharding = jax.typeof(x).sharding
    explicit = any(t == jax.sharding.AxisType.Explicit
                   for t in getattr(sharding.mesh, "axis_types", ()))
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape,
                                out_sharding=sharding if explicit else None)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class ResnetBlock(nn.Module):
  """x + [Conv3x3, BN, ReLU, Dropout, Conv3x3, BN](x); zero padding, no biases.

  Input and output (*batch, H, W, C). Dropout uses the 'dropout' RNG stream and
  is active only when `train` is True. `conv_algorithm` picks how the 3x3
  convolutions are computed (`hcmtfg.models.winograd.ALGORITHMS`); the
  parameters are `nn.Conv`'s whatever it is.
  """
  dropout_rate: float = 0.5
  per_frame_stats: bool = False
  conv_algorithm: str = "direct"
  kernel_init: Initializer = RELEASE_KERNEL_INIT
  bn_scale_init: Initializer = release_bn_scale_init

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    channels = x.shape[-1]
    y = x
    for i in range(2):
      y = winograd.Conv3x3(channels, algorithm=self.conv_algorithm,
                           kernel_init=self.kernel_init, name=f"conv{i}")(y)
      y = BatchNorm(per_frame_stats=self.per_frame_stats,
                    scale_init=self.bn_scale_init, name=f"bn{i}")(y, train=train)
      if i == 0:
        y = nn.relu(y)
        y = Dropout(self.dropout_rate, name="dropout")(y, train=train)
    return x + y


class ConvParams(nn.Module):
  """The parameters of an `nn.Conv` (same names, shapes and initialisers),
  returned instead of applied, so that several convolutions over one input
  can run as one (their kernels concatenated along the output axis).

  Attributes:
    features: output channels F.
    kernel_size: square kernel size k.
    kernel_init, bias_init: as `nn.Conv`'s.
  """
  features: int
  kernel_size: int
  kernel_init: Initializer = RELEASE_KERNEL_INIT
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, in_features: int) -> tuple[Array, Array]:
    """Returns (kernel (k, k, in_features, F), bias (F,))."""
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, in_features, self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    return kernel, bias


class TorchConvTranspose(nn.Module):
  """PyTorch `ConvTranspose2d(cin, features, k, stride, padding, output_padding)`.

  Output size: (H - 1) * stride - 2 * padding + kernel_size + output_padding,
  i.e. exactly 2H for the release's (k3, s2, p1, output_padding 1).
  Implemented as a convolution over the stride-dilated input padded by
  (k - 1 - p, k - 1 - p + output_padding), except for the release's
  configuration, which runs as `conv_transpose.release_conv_transpose`
  (sub-pixel forward at high resolution, kernel gradient as one matrix
  product: much faster on CPU). `kernel`
  (k, k, cin, features) is the spatially flipped PyTorch weight:
  kernel[i, j, ci, co] = weight[ci, co, k - 1 - i, k - 1 - j].
  """
  features: int
  kernel_size: int = 3
  strides: int = 2
  padding: int = 1
  output_padding: int = 1
  use_bias: bool = False
  kernel_init: Initializer = RELEASE_KERNEL_INIT
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x (*batch, H, W, cin) -> (*batch, H', W', features)."""
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features))
    batch_shape = x.shape[:-3]
    dtype = jnp.result_type(x, kernel)
    x4 = x.reshape((-1,) + x.shape[-3:]).astype(dtype)
    release_config = (k, self.strides, self.padding,
                      self.output_padding) == (3, 2, 1, 1)
    if release_config:
      y = conv_transpose.release_conv_transpose(x4, kernel.astype(dtype))
    else:
      lo = k - 1 - self.padding
      hi = lo + self.output_padding
      y = lax.conv_general_dilated(
          x4, kernel.astype(dtype), window_strides=(1, 1),
          padding=((lo, hi), (lo, hi)),
          lhs_dilation=(self.strides, self.strides),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y.reshape(batch_shape + y.shape[1:])


class DeconvBNReLU(nn.Module):
  """TorchConvTranspose (k3, s2, p1, output_padding 1) + BatchNorm + ReLU: 2x up."""
  features: int
  use_bias: bool = False
  per_frame_stats: bool = False
  kernel_init: Initializer = RELEASE_KERNEL_INIT
  bn_scale_init: Initializer = release_bn_scale_init

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """x (*batch, H, W, C) -> (*batch, 2H, 2W, features)."""
    x = TorchConvTranspose(self.features, use_bias=self.use_bias,
                           kernel_init=self.kernel_init, name="deconv")(x)
    x = BatchNorm(per_frame_stats=self.per_frame_stats,
                  scale_init=self.bn_scale_init, name="bn")(x, train=train)
    return nn.relu(x)


class TorchLSTM(nn.Module):
  """Multi-layer `torch.nn.LSTM(batch_first=True)`.

  Per layer k the parameters are `kernel_ih_l{k}` (D_in, 4H), `kernel_hh_l{k}`
  (H, 4H), `bias_ih_l{k}` and `bias_hh_l{k}` (4H,), gates ordered i, f, g, o
  along the last axis (PyTorch's weights transposed). Initialised like
  PyTorch: every tensor from U(-1/sqrt(H), 1/sqrt(H)).
  """
  features: int
  num_layers: int = 1

  @nn.compact
  def __call__(self, x_BxTxD: Array, initial_state: LSTMState | None = None,
               *, return_state: bool = False):
    """Runs the stack over time.

    Args:
      x_BxTxD: inputs (B, T, D).
      initial_state: per layer (h, c), each (B, H); None = zeros (PyTorch's
        default).
      return_state: also return the state after the last step.

    Returns:
      The top layer's outputs (B, T, H), and with `return_state` the final
      state (same structure as `initial_state`).
    """
    hidden = self.features
    init = symmetric_uniform(1.0 / math.sqrt(hidden))
    batch = x_BxTxD.shape[0]
    x = x_BxTxD
    final = []
    for layer in range(self.num_layers):
      w_ih = self.param(f"kernel_ih_l{layer}", init, (x.shape[-1], 4 * hidden))
      w_hh = self.param(f"kernel_hh_l{layer}", init, (hidden, 4 * hidden))
      b_ih = self.param(f"bias_ih_l{layer}", init, (4 * hidden,))
      b_hh = self.param(f"bias_hh_l{layer}", init, (4 * hidden,))
      # Input projections of every step at once; only h @ W_hh is sequential.
      gates_x_TxBx4H = jnp.swapaxes(x @ w_ih + (b_ih + b_hh), 0, 1)

      def step(carry, gates_x_Bx4H, w_hh=w_hh):
        h, c = carry
        gates = gates_x_Bx4H + h @ w_hh
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

      dtype = gates_x_TxBx4H.dtype
      if initial_state is None:
        zeros = jnp.zeros((batch, hidden), dtype)
        state = (zeros, zeros)
      else:
        state = tuple(v.astype(dtype) for v in initial_state[layer])
      state, h_TxBxH = lax.scan(step, state, gates_x_TxBx4H)
      final.append(state)
      x = jnp.swapaxes(h_TxBxH, 0, 1)
    if return_state:
      return x, tuple(final)
    return x
