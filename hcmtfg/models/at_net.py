"""AT-net: audio (MFCC windows) + example landmark PCA coefficients -> landmarks.

Release architecture (30,071,750 parameters at the defaults):
  landmark encoder  Linear(6, 256)+ReLU, Linear(256, 512)+ReLU
  audio encoder     per frame on a (28, 12, 1) MFCC window: conv(64), conv(128),
                    MaxPool(3, stride (1, 2)), conv(256), conv(256), conv(512),
                    MaxPool(3, stride 2) -> (12, 2, 512), flattened in (H, W, C)
                    order, Linear(12288, 2048)+ReLU, Linear(2048, 256)+ReLU
  LSTM              3 layers, 768 -> 256, over the T frames, zero initial state
  output            Linear(256, 6) per frame
"conv(c)" = Conv3x3 (no bias) + BatchNorm + ReLU. Channel widths are
base_width * (1, 2, 4, 4, 8).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from hcmtfg.models import layers
from hcmtfg.models import normalize

Array = jax.Array

_AUDIO_WIDTH_MULTIPLIERS = (1, 2, 4, 4, 8)


# On CPU, AT-net's convolutions run through XLA's Eigen convolutions instead of
# YNNPACK (its default), which suits AT-net's small (28x12, 26x5) feature maps
# less well, forward and backward; VG-net's larger maps keep the default.
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(
    options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
  """XLA options for computations made of AT-net: `options` over the defaults.

  The defaults (Eigen instead of YNNPACK convolutions) apply on the CPU
  backend only; None when there is nothing to set.
  """
  merged = dict(_CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}
  merged.update(options or {})
  return merged or None


def _pool_size(size: int, stride: int) -> int:
  """Output length of an unpadded window-3 max pool (PyTorch floor mode)."""
  return (size - 3) // stride + 1


class ATNet(layers.ConfigurableModule):
  """Audio-to-landmark network.

  Attributes:
    pca_dim: landmark PCA coefficients in and out (6).
    base_width: width of the first audio conv; the others are multiples (64).
    lmark_features: widths of the example-landmark MLP (256, 512).
    audio_features: widths of the MLP after the audio convs (2048, 256).
    lstm_features: LSTM hidden size (256).
    lstm_layers: LSTM depth (3).
    mfcc_window: (rows, coefficients) of one frame's MFCC window (28, 12).
    per_frame_batch_stats: in train mode take BatchNorm statistics per frame,
      as the release does (it runs its audio encoder once per frame); False
      pools them over all B*T frames.
    conv_algorithm: how the audio encoder's 3x3 convolutions are computed,
      one of `hcmtfg.models.winograd.ALGORITHMS`; parameters and results (up
      to float rounding) are the same whatever it is.
  """
  pca_dim: int = 6
  base_width: int = 64
  lmark_features: tuple[int, ...] = (256, 512)
  audio_features: tuple[int, ...] = (2048, 256)
  lstm_features: int = 256
  lstm_layers: int = 3
  mfcc_window: tuple[int, int] = (28, 12)
  per_frame_batch_stats: bool = True
  conv_algorithm: str = "auto"

  def audio_feature_map_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the audio conv output before flattening: (12, 2, 512)."""
    rows, cols = self.mfcc_window
    h = _pool_size(_pool_size(rows, 1), 2)
    w = _pool_size(_pool_size(cols, 2), 2)
    return h, w, self.base_width * _AUDIO_WIDTH_MULTIPLIERS[-1]

  def dummy_inputs(self, batch: int = 1, frames: int = 1) -> tuple[Array, Array]:
    """Zero inputs of the right shapes, e.g. for `init`."""
    return (jnp.zeros((batch, self.pca_dim), jnp.float32),
            jnp.zeros((batch, frames) + tuple(self.mfcc_window), jnp.float32))

  @nn.compact
  def __call__(self, example_coef_Bx6: Array, mfcc_BxTx28x12: Array, *,
               train: bool) -> Array:
    """Predicts the landmark PCA coefficients of every frame.

    Args:
      example_coef_Bx6: PCA coefficients of the example landmark (B, pca_dim).
      mfcc_BxTx28x12: MFCC windows (B, T, *mfcc_window), c0 dropped.
      train: BatchNorm uses batch statistics and updates `batch_stats`.

    Returns:
      Predicted coefficients (B, T, pca_dim).
    """
    if tuple(mfcc_BxTx28x12.shape[2:]) != tuple(self.mfcc_window):
      raise ValueError(f"MFCC windows have shape {mfcc_BxTx28x12.shape[2:]}, "
                       f"the model expects {tuple(self.mfcc_window)}")
    batch, steps = mfcc_BxTx28x12.shape[:2]
    dense = lambda f, name: nn.Dense(  # pylint: disable=g-long-lambda
        f, kernel_init=layers.RELEASE_KERNEL_INIT, name=name)

    lmark = example_coef_Bx6
    for i, width in enumerate(self.lmark_features):
      lmark = nn.relu(dense(width, f"lmark_encoder_{i}")(lmark))
    self.sow("intermediates", "lmark_feature", lmark)

    x = mfcc_BxTx28x12[..., None]  # (B, T, rows, cols, 1)
    pool_strides = {1: (1, 2), 4: (2, 2)}  # after the 2nd and the 5th conv
    for i, mult in enumerate(_AUDIO_WIDTH_MULTIPLIERS):
      x = layers.ConvBNReLU(self.base_width * mult,
                            per_frame_stats=self.per_frame_batch_stats,
                            conv_algorithm=self.conv_algorithm,
                            name=f"audio_encoder_{i}")(x, train=train)
      if i in pool_strides:
        x4 = normalize.max_pool(x.reshape((-1,) + x.shape[2:]), (3, 3),
                                pool_strides[i])
        x = x4.reshape((batch, steps) + x4.shape[1:])
    x = x.reshape(batch, steps, -1)  # (H, W, C) flatten order.
    for i, width in enumerate(self.audio_features):
      x = nn.relu(dense(width, f"audio_fc_{i}")(x))
    self.sow("intermediates", "audio_feature", x)

    lmark_BxTxL = jnp.broadcast_to(lmark[:, None, :],
                                   (batch, steps, lmark.shape[-1]))
    features = jnp.concatenate([lmark_BxTxL, x], axis=-1)
    lstm_out = layers.TorchLSTM(self.lstm_features, self.lstm_layers,
                                name="lstm")(features)
    self.sow("intermediates", "lstm_out", lstm_out)
    return dense(self.pca_dim, "lstm_fc")(lstm_out)
