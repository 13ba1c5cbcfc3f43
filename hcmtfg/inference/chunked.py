"""AT-net and VG-net on consecutive chunks of a long sequence, with no seam.

Both networks are per-frame except for one recurrence each: AT-net's LSTM and
VG-net's ConvGRU (over time, the paper's mode). Running a long utterance in
fixed-size chunks is exact if the recurrent state at the end of chunk k is the
initial state of chunk k+1. The modules in `hcmtfg.models` start from a zero
state, so the functions here run the unchanged modules under a Flax method
interceptor that passes the recurrent layer (`layers.TorchLSTM`,
`convgru.ConvGRU`) a given initial state and records the final state it
returns (`initial_state=`, `return_state=True`). Everything else (encoders,
BatchNorm in eval mode, decoders) is the modules' own code;
`generate_test.py` checks chunked == whole-sequence.

With the release's ConvGRU (`convgru_over_batch_axis=True`) one clip (B = 1)
has no temporal recurrence at all, so the module is left alone and the carry
is unused.

Carries are plain pytrees of arrays, so the chunk functions can be jitted once
for a chunk length and reused for every chunk and every utterance.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hcmtfg.models import at_net
from hcmtfg.models import convgru as convgru_lib
from hcmtfg.models import layers
from hcmtfg.models import vg_net

Array = jax.Array
Carry = Any  # pytree of arrays


class _CarryInterceptor:
  """Runs one recurrent module type from `initial`, recording its end state."""

  def __init__(self, module_type: type[nn.Module], initial: Carry):
    self.module_type = module_type
    self.initial = initial
    self.final: Carry = None
    self.calls = 0

  def __call__(self, next_fun, args, kwargs, context):
    if (isinstance(context.module, self.module_type)
        and context.method_name == "__call__"):
      self.calls += 1
      out, self.final = next_fun(args[0], self.initial, return_state=True)
      return out
    return next_fun(*args, **kwargs)


# ----------------------------------------------------------------------------
# AT-net: LSTM carry.
# ----------------------------------------------------------------------------


def atnet_initial_carry(module: at_net.ATNet, batch: int = 1) -> Carry:
  """Zero LSTM state: a tuple over layers of (h, c), each (batch, lstm_features)."""
  zeros = jnp.zeros((batch, module.lstm_features), jnp.float32)
  return tuple((zeros, zeros) for _ in range(module.lstm_layers))


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
  interceptor = _CarryInterceptor(layers.TorchLSTM, carry)
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
  interceptor = _CarryInterceptor(convgru_lib.ConvGRU, carry)
  with nn.intercept_methods(interceptor):
    out = module.apply(variables, image_BxSxSx3, target_lmark_BxTx136,
                       example_lmark_Bx136, train=False)
  if interceptor.calls != 1:
    raise AssertionError(f"expected one ConvGRU call, got {interceptor.calls}")
  return out, interceptor.final
