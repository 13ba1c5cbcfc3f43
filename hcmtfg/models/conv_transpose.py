"""PyTorch's ConvTranspose2d(k3, s2, p1, output_padding 1) made fast on CPU.

The release upsamples 2x with this layer everywhere (VG-net's decoders and
landmark attention). XLA runs the textbook form, a convolution over the
stride-dilated input, well at low resolution but slowly at 32x32 and above,
and its CPU kernel gradient of either form runs far below the machine's
matrix-multiply rate. Here:

* forward: the dilated convolution below `SUBPIXEL_MIN_SIZE` rows, else one
  sub-pixel convolution (a stride-1 2x2 convolution producing the four
  output phases, then depth-to-space);
* backward (`jax.custom_vjp`): XLA's input gradient of that forward, and the
  kernel gradient as one matrix product of 2x2 input patches with the output
  phases.
All forms compute the same values up to float rounding. `kernel` is
`TorchConvTranspose`'s: the spatially flipped PyTorch weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# Inputs with at least this many rows take the sub-pixel path of
# `TorchConvTranspose`: the size from which it is the cheaper form on CPU.
SUBPIXEL_MIN_SIZE = 32

# For PyTorch's ConvTranspose2d(k3, s2, p1, output_padding 1), per spatial
# axis: out[2m] = x[m] w[1] and out[2m + 1] = x[m] w[2] + x[m + 1] w[0], with w
# the unflipped weight. Keys (output phase, input tap: 0 = x[m], 1 = x[m + 1])
# map to the index into the flipped kernel (w[a] = kernel[2 - a]).
_SUBPIXEL_TAPS = {(0, 0): 1, (1, 0): 0, (1, 1): 2}


def subpixel_conv_transpose(x_NxHxWxC: Array, kernel_3x3xCxF: Array) -> Array:
  """The release's 2x transposed conv as one stride-1 2x2 conv + depth-to-space.

  Every output pixel (2m + py, 2n + px) reads input taps x[m + dy, n + dx],
  dy, dx in {0, 1}; the 2x2 kernel holds, per tap, the four output phases
  (py, px) side by side along its output axis (zeros where a phase does not
  read the tap). Same result as the dilated convolution up to float rounding.

  Args:
    x_NxHxWxC: input (N, H, W, C).
    kernel_3x3xCxF: the flipped kernel of `TorchConvTranspose`.

  Returns:
    (N, 2H, 2W, F).
  """
  cin, features = kernel_3x3xCxF.shape[2:]
  zeros = jnp.zeros((cin, features), kernel_3x3xCxF.dtype)

  def tap(py, px, dy, dx):
    a, b = _SUBPIXEL_TAPS.get((py, dy)), _SUBPIXEL_TAPS.get((px, dx))
    return zeros if a is None or b is None else kernel_3x3xCxF[a, b]

  kernel_2x2xCx4F = jnp.stack([jnp.stack([jnp.concatenate(
      [tap(py, px, dy, dx) for py in range(2) for px in range(2)], axis=-1)
      for dx in range(2)]) for dy in range(2)])
  y = lax.conv_general_dilated(
      x_NxHxWxC, kernel_2x2xCx4F, window_strides=(1, 1),
      padding=((0, 1), (0, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  n, h, w, _ = y.shape
  y = y.reshape(n, h, w, 2, 2, features).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, 2 * h, 2 * w, features)



def dilated_conv_transpose(x_NxHxWxC: Array, kernel_3x3xCxF: Array) -> Array:
  """The release's transposed conv as a conv over the stride-dilated input."""
  return lax.conv_general_dilated(
      x_NxHxWxC, kernel_3x3xCxF, window_strides=(1, 1),
      padding=((1, 2), (1, 2)), lhs_dilation=(2, 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_transpose_forward(x_NxHxWxC: Array, kernel_3x3xCxF: Array) -> Array:
  if x_NxHxWxC.shape[1] >= SUBPIXEL_MIN_SIZE:
    return subpixel_conv_transpose(x_NxHxWxC, kernel_3x3xCxF)
  return dilated_conv_transpose(x_NxHxWxC, kernel_3x3xCxF)


@jax.custom_vjp
def release_conv_transpose(x_NxHxWxC: Array, kernel_3x3xCxF: Array) -> Array:
  """PyTorch's ConvTranspose2d(k3, s2, p1, output_padding 1): (N, 2H, 2W, F)."""
  return _conv_transpose_forward(x_NxHxWxC, kernel_3x3xCxF)


def _release_conv_transpose_fwd(x, kernel):
  return _conv_transpose_forward(x, kernel), (x, kernel)


def _release_conv_transpose_bwd(residuals, dy_Nx2Hx2WxF):
  """Input gradient by XLA; kernel gradient as patches^T @ output phases."""
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda v: _conv_transpose_forward(v, kernel), x)
  dx, = input_vjp(dy_Nx2Hx2WxF)
  n, h, w, cin = x.shape
  features = kernel.shape[-1]
  xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  # Input taps (dy, dx) of every output 2x2 block, and its four phases.
  patches_Px4C = jnp.concatenate(
      [xp[:, dy:dy + h, dx:dx + w] for dy in range(2) for dx in range(2)],
      axis=-1).reshape(n * h * w, 4 * cin)
  phases_Px4F = dy_Nx2Hx2WxF.reshape(n, h, 2, w, 2, features).transpose(
      0, 1, 3, 2, 4, 5).reshape(n * h * w, 4 * features)
  grad = jnp.matmul(patches_Px4C.T, phases_Px4F,
                    preferred_element_type=jnp.float32)
  grad = grad.reshape(2, 2, cin, 2, 2, features)  # (dy, dx, C, py, px, F)
  dkernel = jnp.zeros(kernel.shape, jnp.float32)
  for (py, dy), a in _SUBPIXEL_TAPS.items():
    for (px, dx_), b in _SUBPIXEL_TAPS.items():
      dkernel = dkernel.at[a, b].set(grad[dy, dx_, :, py, px, :])
  return dx, dkernel.astype(kernel.dtype)


release_conv_transpose.defvjp(_release_conv_transpose_fwd,
                              _release_conv_transpose_bwd)
