"""VG-net: example image + landmark sequence -> video frames, attention, colour.

Release architecture (58,355,781 parameters at the defaults; b = base_width = 64,
S = image_size = 128; "conv(c, k, s)" = Conv (no bias) + BatchNorm + ReLU):
  image_encoder1   ReflectionPad(3), conv(b, 7, 1), conv(b, 3, 2), conv(2b, 3, 2)
                   -> (S/4, S/4, 2b)
  image_encoder2   conv(4b, 3, 2), conv(8b, 3, 2) -> (S/16, S/16, 8b)
  landmark encoder Linear(136, (S/16)^2)+ReLU reshaped to (S/16, S/16, 1),
                   then conv(4b, 3, 1) (shared by example and target landmarks)
  lmark_att        per frame on [target, example] (8b ch): 2 x (ConvTranspose up
                   2x + BN + ReLU) to 4b, 2b channels, Conv3x3(1)+bias, sigmoid
                   -> (S/4, S/4, 1)
  lmark_feature    conv(8b, 3, 1) on both; bottle_neck conv(bottleneck_features)
                   on [image feature, target - example]
  ConvGRU          bottleneck_features -> convgru_features, k3, dilation 2
  generator1       num_res_blocks ResNet blocks, then 2 x up (4b, 2b) -> (S/4, S/4, 2b)
  fusion           image_feature1 * (1 - lmark_att) + generator1 * lmark_att
  base             2 x up (b, b/2) -> (S, S, b/2)
  heads            colour = tanh(Conv7x7(3)), attention = sigmoid(Conv7x7(1))
  frame            attention * colour + (1 - attention) * example image
                   (use_attention=False, the paper's ablation: colour alone)
The landmark encoder's (S/16, S/16) map must match image_encoder2's output, so
image_size must be a multiple of 16.
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hcmtfg.models import convgru as convgru_lib
from hcmtfg.models import layers

Array = jax.Array


@flax.struct.dataclass
class VGNetOutput:
  """VG-net outputs, all NHWC with a time axis.

  Attributes:
    frames: generated frames (B, T, H, W, 3) in [-1, 1].
    attention: pixel attention A (B, T, H, W, 1) in [0, 1]; 1 = use `colour`.
    colour: colour map C (B, T, H, W, 3) in [-1, 1].
    lmark_attention: landmark attention (B, T, H/4, W/4, 1) in [0, 1].
  """
  frames: Array
  attention: Array
  colour: Array
  lmark_attention: Array


class VGNet(layers.ConfigurableModule):
  """Landmark-driven video generator.

  Attributes:
    image_size: square frame size S, a multiple of 16 (128).
    base_width: base channel width b; encoder/decoder widths are multiples (64).
    num_landmarks: landmark vector length (136); sets `dummy_inputs` only.
    bottleneck_features: ConvGRU input channels (128).
    convgru_features: ConvGRU hidden channels, also the ResNet width (512).
    convgru_kernel_size: ConvGRU kernel size (3).
    convgru_dilation: ConvGRU dilation (2).
    convgru_over_batch_axis: reproduce the release's ConvGRU bug (recurrence
      over the batch axis, see `hcmtfg.models.convgru`); False = over time.
    num_res_blocks: ResNet blocks in generator1 (9).
    dropout_rate: dropout inside the ResNet blocks (0.5), train mode only.
    per_frame_batch_stats: in train mode take BatchNorm statistics per frame,
      as the release does with its per-frame Python loops; False pools them
      over all B*T frames.
    conv_algorithm: how the 3x3 convolutions (ResNet blocks, the other stride-1
      ones, the ConvGRU's) are computed, one of
      `hcmtfg.models.winograd.ALGORITHMS` ('auto': Winograd on CPU for large
      batches of frames or cached transforms); parameters and results (up to
      float rounding) are the same whatever it is.
    use_attention: True (the paper): frames blend the colour map with the
      example image by the attention map. False: the paper's no-attention
      ablation, frames are the colour map alone and `attention` is all ones
      (so the dynamic pixel-wise loss is 1.5 x L1); the attention head keeps
      its parameters (unused, with zero gradients), so weights load either way.
  """
  image_size: int = 128
  base_width: int = 64
  num_landmarks: int = 136
  bottleneck_features: int = 128
  convgru_features: int = 512
  convgru_kernel_size: int = 3
  convgru_dilation: int = 2
  convgru_over_batch_axis: bool = False
  num_res_blocks: int = 9
  dropout_rate: float = 0.5
  per_frame_batch_stats: bool = True
  conv_algorithm: str = "auto"
  use_attention: bool = True

  def dummy_inputs(self, batch: int = 1,
                   frames: int = 1) -> tuple[Array, Array, Array]:
    """Zero inputs of the right shapes, e.g. for `init`."""
    s = self.image_size
    return (jnp.zeros((batch, s, s, 3), jnp.float32),
            jnp.zeros((batch, frames, self.num_landmarks), jnp.float32),
            jnp.zeros((batch, self.num_landmarks), jnp.float32))

  @nn.compact
  def __call__(self, image_BxHxWx3: Array, target_lmark_BxTx136: Array,
               example_lmark_Bx136: Array, *, train: bool) -> VGNetOutput:
    """Generates one frame per target landmark.

    Args:
      image_BxHxWx3: example image in [-1, 1], H = W = image_size.
      target_lmark_BxTx136: target landmarks (normalised, x5), (B, T, 136).
      example_lmark_Bx136: landmarks of the example image, (B, 136).
      train: BatchNorm uses batch statistics and updates `batch_stats`;
        dropout is active (RNG stream 'dropout').

    Returns:
      A `VGNetOutput`.
    """
    s, b = self.image_size, self.base_width
    if s % 16:
      raise ValueError(f"image_size must be a multiple of 16, got {s}")
    if tuple(image_BxHxWx3.shape[1:]) != (s, s, 3):
      raise ValueError(f"image has shape {image_BxHxWx3.shape[1:]}, the model "
                       f"expects {(s, s, 3)}")
    batch, steps = target_lmark_BxTx136.shape[:2]
    pf = self.per_frame_batch_stats

    def conv_bn_relu(features, name, k=3, stride=1, p=1):
      return layers.ConvBNReLU(features, kernel_size=k, strides=stride,
                               padding=p, per_frame_stats=pf,
                               conv_algorithm=self.conv_algorithm, name=name)

    def up(features, name, bias=False):
      return layers.DeconvBNReLU(features, use_bias=bias, per_frame_stats=pf,
                                 name=name)

    def conv(features, k, name):
      return nn.Conv(features, (k, k), padding=k // 2,
                     kernel_init=layers.RELEASE_KERNEL_INIT, name=name)

    # Per clip: image encoders.
    x = jnp.pad(image_BxHxWx3, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")
    x = conv_bn_relu(b, "image_encoder1_0", k=7, p=0)(x, train=train)
    x = conv_bn_relu(b, "image_encoder1_1", stride=2)(x, train=train)
    image_feature1 = conv_bn_relu(2 * b, "image_encoder1_2", stride=2)(
        x, train=train)
    self.sow("intermediates", "image_feature1", image_feature1)
    x = conv_bn_relu(4 * b, "image_encoder2_0", stride=2)(image_feature1,
                                                          train=train)
    image_feature2 = conv_bn_relu(8 * b, "image_encoder2_1", stride=2)(
        x, train=train)
    self.sow("intermediates", "image_feature2", image_feature2)

    # Landmark encoder, shared by the example (B, ...) and targets (B, T, ...).
    g = s // 16
    lmark_dense = nn.Dense(g * g, kernel_init=layers.RELEASE_KERNEL_INIT,
                           name="landmark_encoder")
    lmark_stage2 = conv_bn_relu(4 * b, "landmark_encoder_stage2")
    lmark_feature = conv_bn_relu(8 * b, "lmark_feature")
    # The release computes the example's path before the target frames, which
    # fixes the order of the BatchNorm running-average updates.
    example = nn.relu(lmark_dense(example_lmark_Bx136)).reshape(batch, g, g, 1)
    example = lmark_stage2(example, train=train)  # (B, g, g, 4b)
    example_feature = lmark_feature(example, train=train)  # (B, g, g, 8b)
    target = nn.relu(lmark_dense(target_lmark_BxTx136))
    target = lmark_stage2(target.reshape(batch, steps, g, g, 1), train=train)

    # Landmark attention, per frame.
    att = jnp.concatenate(
        [target, jnp.broadcast_to(example[:, None], target.shape)], axis=-1)
    att = up(4 * b, "lmark_att_0", bias=True)(att, train=train)
    att = up(2 * b, "lmark_att_1", bias=True)(att, train=train)
    lmark_att = jax.nn.sigmoid(conv(1, 3, "lmark_att_conv")(att))
    self.sow("intermediates", "lmark_attention", lmark_att)

    # Bottleneck and ConvGRU.
    target_feature = lmark_feature(target, train=train)  # (B, T, g, g, 8b)
    image_feature2_t = jnp.broadcast_to(
        image_feature2[:, None], (batch, steps) + image_feature2.shape[1:])
    x = jnp.concatenate(
        [image_feature2_t, target_feature - example_feature[:, None]], axis=-1)
    x = conv_bn_relu(self.bottleneck_features, "bottle_neck")(x, train=train)
    self.sow("intermediates", "bottleneck", x)
    x = convgru_lib.ConvGRU(
        self.convgru_features, kernel_size=self.convgru_kernel_size,
        dilation=self.convgru_dilation,
        over_batch_axis=self.convgru_over_batch_axis,
        conv_algorithm=self.conv_algorithm, name="convgru")(x)
    self.sow("intermediates", "convgru_out", x)

    # generator1, fusion, base, heads: per frame.
    for i in range(self.num_res_blocks):
      x = layers.ResnetBlock(self.dropout_rate, per_frame_stats=pf,
                             conv_algorithm=self.conv_algorithm,
                             name=f"generator1_res_{i}")(x, train=train)
    x = up(4 * b, "generator1_up_0")(x, train=train)
    x = up(2 * b, "generator1_up_1")(x, train=train)
    self.sow("intermediates", "generator1_out", x)
    x = image_feature1[:, None] * (1.0 - lmark_att) + x * lmark_att
    self.sow("intermediates", "fused", x)
    x = up(b, "base_0")(x, train=train)
    x = up(b // 2, "base_1")(x, train=train)
    self.sow("intermediates", "base_out", x)
    # The colour and attention heads read the same input: one convolution
    # with their kernels side by side (channels 0-2 colour, 3 attention).
    heads = [layers.ConvParams(c, 7, name=n)(x.shape[-1])
             for c, n in ((3, "generator_color"), (1, "generator_attention"))]
    dtype = jnp.result_type(x, heads[0][0])
    y = jax.lax.conv_general_dilated(
        x.reshape((-1,) + x.shape[-3:]).astype(dtype),
        jnp.concatenate([k for k, _ in heads], axis=-1).astype(dtype),
        window_strides=(1, 1), padding=((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(x.shape[:-1] + (4,)) + jnp.concatenate(
        [bias for _, bias in heads]).astype(dtype)
    colour = jnp.tanh(y[..., :3])
    attention = jax.nn.sigmoid(y[..., 3:])
    if not self.use_attention:  # colour output only
      return VGNetOutput(frames=colour, attention=jnp.ones_like(attention),
                         colour=colour, lmark_attention=lmark_att)
    frames = attention * colour + (1.0 - attention) * image_BxHxWx3[:, None]
    return VGNetOutput(frames=frames, attention=attention, colour=colour,
                       lmark_attention=lmark_att)
