"""Regression-based sequence discriminator of ATVGnet.

Release architecture (20,896,905 parameters at the defaults, without the
release's unused `decoder` MLP; b = base_width = 64, S = image_size = 128):
  per frame   Conv3x3 s2 (b)+bias+ReLU, then conv(2b), conv(4b), conv(8b), all
              stride 2 (Conv no bias + BatchNorm + ReLU) -> (S/16, S/16, 8b),
              flattened in (H, W, C) order, Linear(-, 512)+ReLU
  example     Linear(136, 256)+ReLU, Linear(256, 512)+ReLU
  LSTM        3 layers over [example 512, frame 512], hidden 256
  per step    landmarks = tanh(Linear(256, 136)) + example landmark;
              decision logit = Linear(256, 1), averaged over T.
PyTorch default initialisation (the release does not re-initialise it).
"""

from __future__ import annotations

import math
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hcmtfg.models import layers

Array = jax.Array

_FRAME_WIDTH_MULTIPLIERS = (1, 2, 4, 8)


@flax.struct.dataclass
class DiscriminatorOutput:
  """Discriminator outputs.

  Attributes:
    logit: real/fake logit per sequence (B,), the mean of the per-frame logits.
    prob: sigmoid(logit) (B,), the probability that the sequence is real.
    landmarks: regressed landmarks per frame (B, T, 136) (tanh output + the
      example landmark), or None when `regress_landmarks` is False.
  """
  logit: Array
  prob: Array
  landmarks: Optional[Array]


def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
  """A Linear layer with PyTorch's default init (its fan-in given)."""
  return nn.Dense(features, kernel_init=layers.TORCH_DEFAULT_KERNEL_INIT,
                  bias_init=layers.symmetric_uniform(1.0 / math.sqrt(fan_in)),
                  name=name)


class RegressionDiscriminator(layers.ConfigurableModule):
  """Sequence discriminator that also regresses the frames' landmarks.

  Attributes:
    image_size: square frame size S, a multiple of 16 (128).
    base_width: width of the first frame conv; the others are multiples (64).
    num_landmarks: landmark vector length (136).
    img_features: width of the per-frame Linear after the convs (512).
    lmark_features: widths of the example-landmark MLP (256, 512).
    lstm_features: LSTM hidden size (256).
    lstm_layers: LSTM depth (3).
    regress_landmarks: True = the paper's regression-based discriminator;
      False = its plain sequence-discriminator ablation: no landmark head (no
      `lstm_fc` parameters) and `landmarks` is None. The example landmark still
      conditions the LSTM in both cases.
    per_frame_batch_stats: in train mode take BatchNorm statistics per frame,
      as the release does; False pools them over all B*T frames.
  """
  image_size: int = 128
  base_width: int = 64
  num_landmarks: int = 136
  img_features: int = 512
  lmark_features: tuple[int, ...] = (256, 512)
  lstm_features: int = 256
  lstm_layers: int = 3
  regress_landmarks: bool = True
  per_frame_batch_stats: bool = True

  def frame_feature_map_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the frame conv output before flattening: (8, 8, 512)."""
    size = self.image_size
    for _ in _FRAME_WIDTH_MULTIPLIERS:
      size = (size - 1) // 2 + 1
    return size, size, self.base_width * _FRAME_WIDTH_MULTIPLIERS[-1]

  def dummy_inputs(self, batch: int = 1, frames: int = 1) -> tuple[Array, Array]:
    """Zero inputs of the right shapes, e.g. for `init`."""
    s = self.image_size
    return (jnp.zeros((batch, frames, s, s, 3), jnp.float32),
            jnp.zeros((batch, self.num_landmarks), jnp.float32))

  @nn.compact
  def __call__(self, frames_BxTxHxWx3: Array, example_lmark_Bx136: Array, *,
               train: bool) -> DiscriminatorOutput:
    """Scores a frame sequence.

    Args:
      frames_BxTxHxWx3: frames in [-1, 1], H = W = image_size.
      example_lmark_Bx136: landmarks of the example frame (B, num_landmarks).
      train: BatchNorm uses batch statistics and updates `batch_stats`.

    Returns:
      A `DiscriminatorOutput`.
    """
    s = self.image_size
    if tuple(frames_BxTxHxWx3.shape[2:]) != (s, s, 3):
      raise ValueError(f"frames have shape {frames_BxTxHxWx3.shape[2:]}, the "
                       f"model expects {(s, s, 3)}")
    batch, steps = frames_BxTxHxWx3.shape[:2]

    x = frames_BxTxHxWx3
    in_channels = 3
    for i, mult in enumerate(_FRAME_WIDTH_MULTIPLIERS):
      width = self.base_width * mult
      if i == 0:  # No norm: Conv with bias + ReLU.
        x = nn.relu(nn.Conv(
            width, (3, 3), strides=2, padding=((1, 1), (1, 1)),
            kernel_init=layers.TORCH_DEFAULT_KERNEL_INIT,
            bias_init=layers.symmetric_uniform(1.0 / math.sqrt(9 * in_channels)),
            name="image_encoder_0")(x))
      else:
        x = layers.ConvBNReLU(
            width, strides=2, per_frame_stats=self.per_frame_batch_stats,
            kernel_init=layers.TORCH_DEFAULT_KERNEL_INIT,
            bn_scale_init=nn.initializers.ones,
            name=f"image_encoder_{i}")(x, train=train)
      in_channels = width
    x = x.reshape(batch, steps, -1)  # (H, W, C) flatten order.
    x = nn.relu(_dense(self.img_features, x.shape[-1], "img_fc")(x))
    self.sow("intermediates", "img_feature", x)

    lmark = example_lmark_Bx136
    for i, width in enumerate(self.lmark_features):
      lmark = nn.relu(_dense(width, lmark.shape[-1], f"lmark_encoder_{i}")(lmark))
    self.sow("intermediates", "lmark_feature", lmark)

    lmark_BxTxL = jnp.broadcast_to(lmark[:, None, :],
                                   (batch, steps, lmark.shape[-1]))
    lstm_out = layers.TorchLSTM(self.lstm_features, self.lstm_layers,
                                name="lstm")(
                                    jnp.concatenate([lmark_BxTxL, x], axis=-1))
    self.sow("intermediates", "lstm_out", lstm_out)

    h = self.lstm_features
    logit_BxT = _dense(1, h, "decision")(lstm_out)[..., 0]
    logit = jnp.mean(logit_BxT, axis=1)
    landmarks = None
    if self.regress_landmarks:
      landmarks = (jnp.tanh(_dense(self.num_landmarks, h, "lstm_fc")(lstm_out))
                   + example_lmark_Bx136[:, None, :])
    return DiscriminatorOutput(logit=logit, prob=jax.nn.sigmoid(logit),
                               landmarks=landmarks)
