"""Convolutional GRU of VG-net, scanned over time (NHWC).

Gates as in `torch.nn.GRU`, with convolutions in place of matrix products:
  r = sigmoid(W_ir * x + b_ir + W_hr * h + b_hr)
  z = sigmoid(W_iz * x + b_iz + W_hz * h + b_hz)
  n = tanh(W_in * x + b_in + r * (W_hn * h + b_hn))
  h' = n + z * (h - n)
from a zero (or given) initial state. Convolutions are dilated with "same"
zero padding (the release pads (d(k-1)) // 2 before and (d(k-1) + 1) // 2
after).

The release feeds (N, T, ...) to a GRU built with batch_first=False, so it
recurs over the N axis and treats the T frames as a batch; at N=1 there is no
temporal recurrence at all. `over_batch_axis=True` reproduces that exactly (for
converted release weights and parity tests); the default recurs over T per clip,
as the paper intends.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from hcmtfg.models import layers
from hcmtfg.models import winograd

Array = jax.Array


def _same_conv(x: Array, kernel: Array, dilation: int) -> Array:
  """Stride-1 dilated convolution of x (N, H, W, C) keeping H and W.

  With an odd kernel and H, W multiples of the dilation d it runs as an
  ordinary convolution of each of the d x d interleaved sub-grids (the same
  sums): XLA's CPU gradients of dilated convolutions are very slow.
  """
  k, d = kernel.shape[0], dilation
  dtype = jnp.result_type(x, kernel)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if _splits_into_subgrids(x.shape, k, d):
    p = (k - 1) // 2
    y = lax.conv_general_dilated(
        _to_subgrids(x, d), kernel,
        window_strides=(1, 1), padding=((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return _from_subgrids(y, d)
  span = d * (k - 1)
  pad = (span // 2, (span + 1) // 2)
  return lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=(pad, pad),
      rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _splits_into_subgrids(shape: tuple[int, ...], k: int, d: int) -> bool:
  """Whether a k x k conv dilated by d over (N, H, W, C) equals ordinary
  convolutions of the d x d interleaved sub-grids."""
  return d > 1 and k % 2 == 1 and shape[1] % d == 0 and shape[2] % d == 0


def _to_subgrids(x: Array, d: int) -> Array:
  """(N, H, W, C) -> (N*d*d, H/d, W/d, C): the d x d interleaved sub-grids."""
  n, h, w, c = x.shape
  grids = x.reshape(n, h // d, d, w // d, d, c).transpose(0, 2, 4, 1, 3, 5)
  return grids.reshape(n * d * d, h // d, w // d, c)


def _from_subgrids(y: Array, d: int) -> Array:
  """The inverse of `_to_subgrids`."""
  nd, hd, wd, f = y.shape
  n = nd // (d * d)
  y = y.reshape(n, d, d, hd, wd, f).transpose(0, 3, 1, 4, 2, 5)
  return y.reshape(n, hd * d, wd * d, f)


def _matmul_conv(x: Array, kernel: Array, dilation: int) -> Array:
  """`_same_conv` as one matrix product of the k x k input taps (im2col).

  Used for W_h * h inside the scan, where XLA's CPU convolutions (and
  above all their gradients) run far below its matrix-product rate.
  """
  k, d = kernel.shape[0], dilation
  dtype = jnp.result_type(x, kernel)
  n, h, w, c = x.shape
  span = d * (k - 1)
  pad = (span // 2, (span + 1) // 2)
  xp = jnp.pad(x.astype(dtype), ((0, 0), pad, pad, (0, 0)))
  taps = jnp.concatenate([xp[:, i * d:i * d + h, j * d:j * d + w]
                          for i in range(k) for j in range(k)], axis=-1)
  y = taps.reshape(n * h * w, k * k * c) @ kernel.astype(dtype).reshape(
      k * k * c, -1)
  return y.reshape(n, h, w, -1)


class ConvGRU(nn.Module):
  """One-layer ConvGRU over a frame sequence.

  Parameters: `kernel_ih` (k, k, C_in, 3F), `kernel_hh` (k, k, F, 3F),
  `bias_ih` and `bias_hh` (3F,); gates ordered r, z, n along the last axis.
  Initialised like the release's ConvGRU: U(-1/sqrt(F), 1/sqrt(F)) everywhere.

  Attributes:
    features: hidden channels F (512 in the release).
    kernel_size: square kernel size (3).
    dilation: kernel dilation (2).
    over_batch_axis: False = recur over T for every clip (the paper's intent);
      True = recur over the batch axis B, treating the T frames as the batch
      (the release's behaviour).
    conv_algorithm: for a 3x3 kernel whose dilation splits the maps into
      sub-grids, how their convolutions are computed
      (`hcmtfg.models.winograd.ALGORITHMS`; 'direct': XLA's convolution for
      the input gates and one im2col matrix product for the hidden ones).
  """
  features: int = 512
  kernel_size: int = 3
  dilation: int = 2
  over_batch_axis: bool = False
  conv_algorithm: str = "direct"

  @nn.compact
  def __call__(self, x_BxTxHxWxC: Array, initial_state: Array | None = None,
               *, return_state: bool = False):
    """Runs the recurrence.

    Args:
      x_BxTxHxWxC: input frames (B, T, H, W, C).
      initial_state: hidden state before the first step, (B, H, W, features)
        (over time) or (T, H, W, features) (`over_batch_axis`); None = zeros.
      return_state: also return the state after the last step.

    Returns:
      The hidden state after every step, (B, T, H, W, features), and with
      `return_state` the final state (shaped like `initial_state`).
    """
    k, f = self.kernel_size, self.features
    init = layers.symmetric_uniform(1.0 / math.sqrt(f))
    kernel_ih = self.param("kernel_ih", init, (k, k, x_BxTxHxWxC.shape[-1], 3 * f))
    kernel_hh = self.param("kernel_hh", init, (k, k, f, 3 * f))
    bias_ih = self.param("bias_ih", init, (3 * f,))
    bias_hh = self.param("bias_hh", init, (3 * f,))

    x = x_BxTxHxWxC
    if self.over_batch_axis:
      x = jnp.swapaxes(x, 0, 1)  # The batch axis becomes the time axis.
    batch, steps, height, width, _ = x.shape
    d = self.dilation
    # Input convolutions of all frames at once; only W_h * h is sequential.
    x_NxHxWxC = x.reshape((batch * steps,) + x.shape[2:])
    subgrids = k == 3 and _splits_into_subgrids(x_NxHxWxC.shape, k, d)
    if subgrids:
      gates_x = _from_subgrids(winograd.module_conv3x3(
          self, "kernel_ih", _to_subgrids(x_NxHxWxC, d), kernel_ih,
          self.conv_algorithm), d)
    else:
      gates_x = _same_conv(x_NxHxWxC, kernel_ih, d)
    gates_x = gates_x.reshape(batch, steps, height, width, 3 * f) + bias_ih
    gates_x_TxBxHxWx3F = jnp.swapaxes(gates_x, 0, 1)

    def update(h_BxHxWxF, gx_BxHxWx3F, gh_BxHxWx3F):
      x_r, x_z, x_n = jnp.split(gx_BxHxWx3F, 3, axis=-1)
      h_r, h_z, h_n = jnp.split(gh_BxHxWx3F, 3, axis=-1)
      r = jax.nn.sigmoid(x_r + h_r)
      z = jax.nn.sigmoid(x_z + h_z)
      n = jnp.tanh(x_n + r * h_n)
      return n + z * (h_BxHxWxF - n)

    # W_h * h: the kernel's Winograd transform (if any) is taken once, here,
    # outside the scan.
    plan = None
    # From a zero state a single step needs no hidden conv (see below); the
    # transform is still taken when the cache of transforms is being filled.
    needs_hidden = initial_state is not None or steps > 1 or (
        self.is_mutable_collection(winograd.TRANSFORMED)
        and not self.is_initializing())
    if subgrids and needs_hidden:
      plan = winograd.module_kernel_transform(
          self, "kernel_hh", kernel_hh, self.conv_algorithm,
          (batch * d * d, height // d, width // d, f))

    def hidden_conv(h_BxHxWxF):
      if plan is None:
        return _matmul_conv(h_BxHxWxF, kernel_hh, d)
      tile, u = plan
      return _from_subgrids(winograd.winograd_conv3x3(
          _to_subgrids(h_BxHxWxF, d), kernel_hh, tile, transformed=u), d)

    def step(h_BxHxWxF, gx_BxHxWx3F):
      gh = hidden_conv(h_BxHxWxF) + bias_hh
      h_new = update(h_BxHxWxF, gx_BxHxWx3F, gh)
      return h_new, h_new

    if initial_state is None:
      # From a zero state W_h * h is exactly zero: skip the first step's
      # hidden convolution (the only one in the release's mode at B = 1).
      h0 = jnp.zeros((batch, height, width, f), gates_x.dtype)
      gh0 = jnp.broadcast_to(bias_hh.astype(gates_x.dtype),
                             h0.shape[:-1] + (3 * f,))
      h1 = update(h0, gates_x_TxBxHxWx3F[0], gh0)
      h_last, rest = lax.scan(step, h1, gates_x_TxBxHxWx3F[1:])
      h_TxBxHxWxF = jnp.concatenate([h1[None], rest], axis=0)
    else:
      h_last, h_TxBxHxWxF = lax.scan(
          step, initial_state.astype(gates_x.dtype), gates_x_TxBxHxWx3F)
    out = jnp.swapaxes(h_TxBxHxWxF, 0, 1)
    if self.over_batch_axis:
      out = jnp.swapaxes(out, 0, 1)
    if return_state:
      return out, h_last
    return out
