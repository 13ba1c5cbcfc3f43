"""AT-net and VG-net on consecutive chunks of a long sequence, with no seam.

Both networks are per-frame except for one recurrence each: AT-net's LSTM and
VG-net's ConvGRU (over time, the paper's mode). Running a long utterance in
fixed-size chunks is exact if the recurrent state at the end of chunk k is the
initial state of chunk k+1. The modules in `hcmtfg.models` start from a zero
state and do not return their final state, so the functions here run the
unchanged modules under a Flax method interceptor that swaps the recurrent
layer's `__call__` for a scan starting from a given carry and records the
final carry. Everything else (encoders, BatchNorm in eval mode, decoders) is
the modules' own code; `generate_test.py` checks chunked == whole-sequence.

The scans below repeat the arithmetic of `layers.TorchLSTM` and
`convgru.ConvGRU` (same parameter names and gate order). With the release's
ConvGRU (`convgru_over_batch_axis=True`) one clip (B = 1) has no temporal
recurrence at all, so the module is left alone and the carry is unused.

Carries are plain pytrees of arrays, so the chunk functions can be jitted once
for a chunk length and reused for every chunk and every utterance.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from hcmtfg.models import at_net
from hcmtfg.models import convgru as convgru_lib
from hcmtfg.models import layers
from hcmtfg.models import vg_net

Array = jax.Array
Carry = Any  # pytree of arrays


class _CarryInterceptor:
  """Replaces `__call__` of one recurrent module type by `scan(initial, ...)`."""

  def __init__(self, module_type: type[nn.Module],
               scan: Callable[[nn.Module, Array, Carry], tuple[Array, Carry]],
               initial: Carry):
    self.module_type = module_type
    self.scan = scan
    self.initial = initial
    self.final: Carry = None
    self.calls = 0

  def __call__(self, next_fun, args, kwargs, context):
    if (isinstance(context.module, self.module_type)
        and context.method_name == "__call__"):
      self.calls += 1
      out, self.final = self.scan(context.module, args[0], self.initial)
      return out
    return next_fun(*args, **kwargs)


# ----------------------------------------------------------------------------
# AT-net: LSTM carry.
# ----------------------------------------------------------------------------


def atnet_initial_carry(module: at_net.ATNet, batch: int = 1) -> Carry:
  """Zero LSTM state: a tuple over layers of (h, c), each (batch, lstm_features)."""
  zeros = jnp.zeros((batch, module.lstm_features), jnp.float32)
  return tuple((zeros, zeros) for _ in range(module.lstm_layers))


def _lstm_scan(lstm: layers.TorchLSTM, x_BxTxD: Array,
               carry: Carry) -> tuple[Array, Carry]:
  """`TorchLSTM.__call__` from `carry` instead of zeros; also returns the end state."""
  params = lstm.variables["params"]
  x = x_BxTxD
  final = []
  for layer in range(lstm.num_layers):
    w_ih = params[f"kernel_ih_l{layer}"]
    w_hh = params[f"kernel_hh_l{layer}"]
    bias = params[f"bias_ih_l{layer}"] + params[f"bias_hh_l{layer}"]
    gates_x_TxBx4H = jnp.swapaxes(x @ w_ih + bias, 0, 1)

    def step(state, gates_x_Bx4H, w_hh=w_hh):
      h, c = state
      gates = gates_x_Bx4H + h @ w_hh
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    h0, c0 = carry[layer]
    state, h_TxBxH = lax.scan(
        step, (h0.astype(gates_x_TxBx4H.dtype), c0.astype(gates_x_TxBx4H.dtype)),
        gates_x_TxBx4H)
    final.append(state)
    x = jnp.swapaxes(h_TxBxH, 0, 1)
  return x, tuple(final)


def atnet_chunk(module: at_net.ATNet, variables: Any, carry: Carry,
                example_coef_Bx6: Array, mfcc_BxTx28x12: Array
                ) -> tuple[Array, Carry]:
  """AT-net (eval mode) on one chunk of frames, continuing from `carry`.

  Args:
    module: the AT-net.
    variables: its {'params', 'batch_stats'}.
    carry: from `atnet_initial_carry` or the previous chunk.
    example_coef_Bx6: example landmark PCA coefficients (B, pca_dim).
    mfcc_BxTx28x12: this chunk's MFCC windows.

  Returns:
    (coefficients (B, T, pca_dim), carry after the chunk's last frame).
  """
  interceptor = _CarryInterceptor(layers.TorchLSTM, _lstm_scan, carry)
  with nn.intercept_methods(interceptor):
    coefs = module.apply(variables, example_coef_Bx6, mfcc_BxTx28x12, train=False)
  if interceptor.calls != 1:
    raise AssertionError(f"expected one LSTM call, got {interceptor.calls}")
  return coefs, interceptor.final


# ----------------------------------------------------------------------------
# VG-net: ConvGRU carry.
# ----------------------------------------------------------------------------


def vgnet_initial_carry(module: vg_net.VGNet, batch: int = 1) -> Carry:
  """Zero ConvGRU state (batch, S/16, S/16, convgru_features).

  Unused (passed through) with the release's ConvGRU mode.
  """
  g = module.image_size // 16
  return jnp.zeros((batch, g, g, module.convgru_features), jnp.float32)


def _dilated_same_conv(x: Array, kernel: Array, dilation: int) -> Array:
  """Stride-1 dilated NHWC convolution keeping H, W (as the ConvGRU pads)."""
  span = dilation * (kernel.shape[0] - 1)
  pad = (span // 2, (span + 1) // 2)
  dtype = jnp.result_type(x, kernel)
  return lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=(1, 1),
      padding=(pad, pad), rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _convgru_scan(gru: convgru_lib.ConvGRU, x_BxTxHxWxC: Array,
                  carry: Array) -> tuple[Array, Array]:
  """`ConvGRU.__call__` (over time) from `carry`; also returns the end state."""
  params = gru.variables["params"]
  f = gru.features
  batch, steps, height, width, _ = x_BxTxHxWxC.shape
  gates_x = _dilated_same_conv(
      x_BxTxHxWxC.reshape((batch * steps,) + x_BxTxHxWxC.shape[2:]),
      params["kernel_ih"], gru.dilation)
  gates_x = gates_x.reshape(batch, steps, height, width, 3 * f) + params["bias_ih"]
  kernel_hh, bias_hh = params["kernel_hh"], params["bias_hh"]

  def step(h, gx):
    gh = _dilated_same_conv(h, kernel_hh, gru.dilation) + bias_hh
    x_r, x_z, x_n = jnp.split(gx, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    h_new = n + z * (h - n)
    return h_new, h_new

  h_last, h_TxBxHxWxF = lax.scan(step, carry.astype(gates_x.dtype),
                                 jnp.swapaxes(gates_x, 0, 1))
  return jnp.swapaxes(h_TxBxHxWxF, 0, 1), h_last


def vgnet_chunk(module: vg_net.VGNet, variables: Any, carry: Array,
                image_BxSxSx3: Array, target_lmark_BxTx136: Array,
                example_lmark_Bx136: Array
                ) -> tuple[vg_net.VGNetOutput, Array]:
  """VG-net (eval mode) on one chunk of frames, continuing from `carry`.

  Args:
    module: the VG-net.
    variables: its {'params', 'batch_stats'}.
    carry: from `vgnet_initial_carry` or the previous chunk.
    image_BxSxSx3: example image in [-1, 1].
    target_lmark_BxTx136: this chunk's landmarks (normalised, x scale).
    example_lmark_Bx136: the example image's landmarks (same convention).

  Returns:
    (VGNetOutput for the chunk, carry after its last frame). In release
    ConvGRU mode the carry is returned unchanged (frames are independent).
  """
  if module.convgru_over_batch_axis:
    out = module.apply(variables, image_BxSxSx3, target_lmark_BxTx136,
                       example_lmark_Bx136, train=False)
    return out, carry
  interceptor = _CarryInterceptor(convgru_lib.ConvGRU, _convgru_scan, carry)
  with nn.intercept_methods(interceptor):
    out = module.apply(variables, image_BxSxSx3, target_lmark_BxTx136,
                       example_lmark_Bx136, train=False)
  if interceptor.calls != 1:
    raise AssertionError(f"expected one ConvGRU call, got {interceptor.calls}")
  return out, interceptor.final
