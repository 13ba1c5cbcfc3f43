"""Convolutional GRU of VG-net, scanned over time (NHWC).

Gates as in `torch.nn.GRU`, with convolutions in place of matrix products:
  r = sigmoid(W_ir * x + b_ir + W_hr * h + b_hr)
  z = sigmoid(W_iz * x + b_iz + W_hz * h + b_hz)
  n = tanh(W_in * x + b_in + r * (W_hn * h + b_hn))
  h' = n + z * (h - n)
from a zero initial state. Convolutions are dilated with "same" zero padding
(the release pads (d(k-1)) // 2 before and (d(k-1) + 1) // 2 after).

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

Array = jax.Array


def _same_conv(x: Array, kernel: Array, dilation: int) -> Array:
  """Stride-1 dilated convolution of x (N, H, W, C) keeping H and W."""
  span = dilation * (kernel.shape[0] - 1)
  pad = (span // 2, (span + 1) // 2)
  dtype = jnp.result_type(x, kernel)
  return lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=(1, 1),
      padding=(pad, pad),
      rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


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
  """
  features: int = 512
  kernel_size: int = 3
  dilation: int = 2
  over_batch_axis: bool = False

  @nn.compact
  def __call__(self, x_BxTxHxWxC: Array) -> Array:
    """Returns the hidden state after every step, (B, T, H, W, features)."""
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
    # Input convolutions of all frames at once; only W_h * h is sequential.
    gates_x = _same_conv(x.reshape((batch * steps,) + x.shape[2:]), kernel_ih,
                         self.dilation)
    gates_x = gates_x.reshape(batch, steps, height, width, 3 * f) + bias_ih
    gates_x_TxBxHxWx3F = jnp.swapaxes(gates_x, 0, 1)

    def step(h_BxHxWxF, gx_BxHxWx3F):
      gh = _same_conv(h_BxHxWxF, kernel_hh, self.dilation) + bias_hh
      x_r, x_z, x_n = jnp.split(gx_BxHxWx3F, 3, axis=-1)
      h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
      r = jax.nn.sigmoid(x_r + h_r)
      z = jax.nn.sigmoid(x_z + h_z)
      n = jnp.tanh(x_n + r * h_n)
      h_new = n + z * (h_BxHxWxF - n)
      return h_new, h_new

    h0 = jnp.zeros((batch, height, width, f), gates_x.dtype)
    _, h_TxBxHxWxF = lax.scan(step, h0, gates_x_TxBxHxWx3F)
    out = jnp.swapaxes(h_TxBxHxWxF, 0, 1)
    if self.over_batch_axis:
      out = jnp.swapaxes(out, 0, 1)
    return out
