"""3x3 stride-1 'same' convolutions by Winograd's minimal filtering, for CPU.

VG-net's nine ResNet blocks hold 18 convolutions of 3x3 over 8x8x512 maps:
about two thirds of the generator's FLOPs. The ConvGRU's dilated 3x3
convolutions on 8x8 maps are ordinary ones on 4x4 sub-grids (one F(4x4) tile
each), and AT-net's audio encoder is five 3x3 convolutions. On such maps XLA's
CPU convolution already runs near the machine's matrix-multiply rate, so the
only way to make them faster is to do fewer multiplications. Winograd's
F(m x m, 3 x 3) computes each m x m output tile from an (m+2) x (m+2) input
tile with (m+2)^2 multiplications per input/output channel pair instead of
9 m^2:

  Y = A^T [ (G g G^T) .* (B^T d B) ] A      (per tile, summed over channels)

With the transformed kernel U = G g G^T and transformed input tiles V = B^T d
B, the channel sum becomes (m+2)^2 independent matrix products
(tiles, C) @ (C, F). F(2x2, 3x3) (m = 2) needs 2.25x fewer multiplications,
F(4x4, 3x3) (m = 4) 4x fewer, at the cost of some float accuracy (relative
errors below 1e-6 and 1e-5 in float32; the release parity tests pass with
either) and of the transforms, which are written here as sums of strided
slices so that XLA fuses each into one elementwise loop. Their transposes,
which autodiff derives, fuse the same way, so the gradient is Winograd too.

`resolve` picks the algorithm: 'direct' is XLA's convolution, 'winograd2' and
'winograd4' the two tile sizes, 'auto' Winograd on the CPU backend for maps
large enough that the saved multiplications outweigh the transforms (see
`AUTO_MIN_ROWS`) or whose kernel transform is cached, and XLA's convolution
elsewhere (GPU/TPU libraries choose their own algorithms). `Conv3x3` is the
linen layer; `module_conv3x3` and `module_kernel_transform` serve modules
holding their own kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

ALGORITHMS = ("auto", "direct", "winograd2", "winograd4")

# The variable collection holding precomputed kernel transforms.
TRANSFORMED = "winograd"

# 'auto' uses F(4x4, 3x3) on CPU when the convolution has at least this many
# output rows N*H*W (all frames' pixels) and at least this many channels;
# below, the transforms cost more than the multiplications they save.
AUTO_MIN_ROWS = 512
AUTO_MIN_CHANNELS = 64
AUTO_TILE = 4

# Lavin & Gray's matrices. B^T (a x a), G (a x 3), A^T (m x a), a = m + 2.
_TRANSFORMS = {
    2: (np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0],
                  [0.5, 0.5, 0.5],
                  [0.5, -0.5, 0.5],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64)),
}


def _combine(rows: list[Array], matrix: np.ndarray, axis: int) -> Array:
  """Stacks sum_k matrix[j, k] * rows[k] over j along `axis` (constant
  coefficients written out, so XLA fuses the lot into one loop)."""
  out = []
  for coefficients in matrix:
    total = None
    for c, row in zip(coefficients, rows):
      if c == 0:
        continue
      term = row if c == 1 else -row if c == -1 else row * np.asarray(
          c, row.dtype)
      total = term if total is None else total + term
    out.append(total)
  return jnp.stack(out, axis=axis)


def _input_tiles(x: Array, bt: np.ndarray, m: int, tiles: int,
                 axis: int) -> Array:
  """B^T applied along `axis` of a padded input: (..., P, ...) -> a new
  leading axis of size a, `axis` now indexing tiles."""
  a = bt.shape[0]
  rows = [lax.slice_in_dim(x, k, k + m * (tiles - 1) + 1, stride=m, axis=axis)
          for k in range(a)]
  return _combine(rows, bt, axis=0)


def winograd_conv3x3(x_NxHxWxC: Array, kernel_3x3xCxF: Array,
                     tile: int = 4, transformed: Array | None = None) -> Array:
  """3x3, stride 1, zero padding 1 convolution (cross-correlation, NHWC/HWIO,
  as `lax.conv_general_dilated`) by Winograd F(tile x tile, 3 x 3).

  Args:
    x_NxHxWxC: input (N, H, W, C).
    kernel_3x3xCxF: kernel (3, 3, C, F).
    tile: output tile size m, 2 or 4.
    transformed: `transform_kernel(kernel_3x3xCxF, tile)` if already at hand.

  Returns:
    (N, H, W, F), in the result dtype of the inputs.
  """
  if tile not in _TRANSFORMS:
    raise ValueError(f"tile must be one of {sorted(_TRANSFORMS)}, got {tile}")
  bt, _, at = _TRANSFORMS[tile]
  m, a = tile, tile + 2
  n, h, w, c = x_NxHxWxC.shape
  features = kernel_3x3xCxF.shape[-1]
  dtype = jnp.result_type(x_NxHxWxC, kernel_3x3xCxF)
  th, tw = -(-h // m), -(-w // m)  # tiles per axis
  x = jnp.pad(x_NxHxWxC.astype(dtype),
              ((0, 0), (1, th * m - h + 1), (1, tw * m - w + 1), (0, 0)))
  # V: (a, a, N, th, tw, C) -> (a*a, N*th*tw, C).
  v = _input_tiles(x, bt, m, tw, axis=2)             # (a_w, N, Hp, tw, C)
  v = _input_tiles(v, bt, m, th, axis=2)             # (a_h, a_w, N, th, tw, C)
  v = v.reshape(a * a, n * th * tw, c)
  # U = G g G^T for every channel pair: one (a*a, 9) @ (9, C*F) product.
  u = (transform_kernel(kernel_3x3xCxF, tile) if transformed is None
       else transformed).astype(dtype)
  prod = jnp.einsum("kpc,kcf->kpf", v, u,
                    preferred_element_type=dtype)    # (a*a, N*th*tw, F)
  prod = prod.reshape(a, a, n, th, tw, features)
  # Y = A^T M A: rows, then columns; interleave the tile outputs.
  y = _combine(list(prod), at, axis=0)               # (m, a, N, th, tw, F)
  y = _combine(list(jnp.moveaxis(y, 1, 0)), at, axis=0)  # (m_w, m_h, N, ...)
  y = y.transpose(2, 3, 1, 4, 0, 5).reshape(n, th * m, tw * m, features)
  return y[:, :h, :w]


def direct_conv3x3(x_NxHxWxC: Array, kernel_3x3xCxF: Array) -> Array:
  """XLA's 3x3, stride 1, zero padding 1 convolution (NHWC/HWIO)."""
  dtype = jnp.result_type(x_NxHxWxC, kernel_3x3xCxF)
  return lax.conv_general_dilated(
      x_NxHxWxC.astype(dtype), kernel_3x3xCxF.astype(dtype), (1, 1),
      ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def transform_kernel(kernel_3x3xCxF: Array, tile: int) -> Array:
  """U = G g G^T for every channel pair: (a*a, C, F), a = tile + 2."""
  g = _TRANSFORMS[tile][1]
  c, features = kernel_3x3xCxF.shape[2:]
  u = jnp.asarray(np.kron(g, g), kernel_3x3xCxF.dtype) @ kernel_3x3xCxF.reshape(
      9, c * features)
  return u.reshape((tile + 2) ** 2, c, features)


def resolve(algorithm: str, x_shape: tuple[int, ...], features: int,
            prepared: bool = False) -> str:
  """The algorithm 'auto' stands for on this backend and shape.

  `prepared`: the transformed kernel is at hand (`with_transformed_kernels`),
  so Winograd pays for itself on any number of rows.
  """
  if algorithm not in ALGORITHMS:
    raise ValueError(f"conv algorithm must be one of {ALGORITHMS}, "
                     f"got {algorithm!r}")
  if algorithm != "auto":
    return algorithm
  rows = int(np.prod(x_shape[:-1]))
  if (jax.default_backend() == "cpu"
      and (prepared or rows >= AUTO_MIN_ROWS)
      and min(x_shape[-1], features) >= AUTO_MIN_CHANNELS):
    return f"winograd{AUTO_TILE}"
  return "direct"


class Conv3x3(nn.Module):
  """`nn.Conv(features, (3, 3), padding=1, use_bias=False)` with the same
  parameter ('kernel', (3, 3, C, F)), computed by the chosen algorithm.

  With a Winograd algorithm the kernel's transform is read from the
  `TRANSFORMED` collection when the variables carry it (see
  `with_transformed_kernels`), else computed on every call.

  Attributes:
    features: output channels F.
    algorithm: one of `ALGORITHMS`.
    kernel_init: the kernel's initialiser.
  """
  features: int
  algorithm: str = "auto"
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init,
                        (3, 3, x.shape[-1], self.features))
    x_NxHxWxC = x.reshape((-1,) + x.shape[-3:])
    y = module_conv3x3(self, "kernel", x_NxHxWxC, kernel, self.algorithm)
    return y.reshape(x.shape[:-3] + y.shape[1:])


def module_kernel_transform(module: nn.Module, name: str,
                            kernel_3x3xCxF: Array, algorithm: str,
                            x_shape: tuple[int, ...]
                            ) -> tuple[int, Array] | None:
  """What a bound linen module whose parameter `name` is a 3x3 kernel should
  convolve an input of `x_shape` (N, H, W, C) with: None for XLA's
  convolution, else (tile, transformed kernel). The transform is read from
  the module's `TRANSFORMED` variables (`name` + tile) when present, stored
  there while `with_transformed_kernels` fills them, else computed here."""
  # `init` makes every collection mutable; only fill the cache on request.
  filling = (module.is_mutable_collection(TRANSFORMED)
             and not module.is_initializing())
  prepared = filling or any(module.has_variable(TRANSFORMED, f"{name}{t}")
                            for t in _TRANSFORMS)
  chosen = resolve(algorithm, x_shape, kernel_3x3xCxF.shape[-1],
                   prepared=prepared)
  if chosen == "direct":
    return None
  tile = int(chosen[-1])
  key = f"{name}{tile}"
  if module.has_variable(TRANSFORMED, key):
    return tile, module.get_variable(TRANSFORMED, key)
  u = transform_kernel(kernel_3x3xCxF, tile)
  if filling:
    module.put_variable(TRANSFORMED, key, u)
  return tile, u


def module_conv3x3(module: nn.Module, name: str, x_NxHxWxC: Array,
                   kernel_3x3xCxF: Array, algorithm: str) -> Array:
  """A 3x3 'same' convolution of x (N, H, W, C) inside a bound linen module
  whose parameter `name` is the kernel (see `module_kernel_transform`)."""
  plan = module_kernel_transform(module, name, kernel_3x3xCxF, algorithm,
                                 x_NxHxWxC.shape)
  if plan is None:
    return direct_conv3x3(x_NxHxWxC, kernel_3x3xCxF)
  tile, u = plan
  return winograd_conv3x3(x_NxHxWxC, kernel_3x3xCxF, tile, transformed=u)


def transforms_of(module: nn.Module, *args: Any, **kwargs: Any
                  ) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
  """variables -> the `TRANSFORMED` collection of `module.apply(variables,
  *args, **kwargs)` (see `with_transformed_kernels`)."""

  def transforms(variables):
    _, state = module.apply(variables, *args, mutable=[TRANSFORMED], **kwargs)
    return state.get(TRANSFORMED, {})

  return transforms


def with_transformed_kernels(module: nn.Module, variables: Mapping[str, Any],
                             *args: Any, **kwargs: Any) -> dict[str, Any]:
  """`variables` plus every Winograd kernel transform of `module`, for
  inference with fixed parameters (generation, evaluation).

  Runs `module.apply(variables, *args, **kwargs)` (jitted; only the
  transforms are kept) with the `TRANSFORMED` collection mutable. Any inputs
  of the right trailing shapes do, e.g. `module.dummy_inputs()`. The
  transforms are (tile + 2)^2 / 9 times the kernels' size. Parameters must
  not change afterwards (recompute after training steps); BatchNorm must not
  be in train mode.
  """
  cache = jax.jit(transforms_of(module, *args, **kwargs))(variables)
  out = dict(variables)
  if cache:
    out[TRANSFORMED] = cache
  return out
