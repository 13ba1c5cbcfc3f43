"""PyTorch declarations of the three ATVGnet release networks.

Our own code for the architectures of the paper's release, not copied from
it. Module names and nesting follow the release so that `state_dict()` has
exactly the keys and shapes of the release checkpoints (a leading `module.`
aside: the released files were saved from `nn.DataParallel`); tensors are
(N, C, H, W) as in PyTorch. The parity tests, the benchmark and the round trip
build the release side from it (it needs torch).

Sizes are configurable so that parity can also run on a shrunk network; the
defaults are the release's (128x128 images, base width 64, 9 ResNet blocks).

Each network keeps the tensors of its last forward call in `self.intermediates`
(a dict name -> tensor, PyTorch layout) so tests can say which stage diverged.

Two switches reproduce behaviours of the release that a JAX port may choose to
change:
  * `convgru_over_batch_axis` (VG-net): the release's ConvGRU is built with
    batch_first=False but fed (N, T, ...), so it recurs over N and treats the T
    frames as a batch. False gives the paper's recurrence over T.
  * `batchnorm_per_step` (all three): the release runs its per-frame encoders in
    a Python loop over time, so in train mode each BatchNorm call sees the N
    samples of one time step and the running statistics are updated T times per
    forward. False runs per-frame layers once on the merged (N*T) batch. Both
    are identical in eval mode.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

Tensor = torch.Tensor


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1,
                 padding: int = 1) -> nn.Sequential:
  """Conv2d (no bias) + BatchNorm2d + ReLU, the release's `conv2d(...)`."""
  return nn.Sequential(
      nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
      nn.BatchNorm2d(cout),
      nn.ReLU(),
  )


def conv_transpose(cin: int, cout: int, bias: bool) -> nn.ConvTranspose2d:
  """The release's 2x upsampling (k3, stride 2, padding 1, output_padding 1)."""
  return nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1,
                            output_padding=1, bias=bias)


def map_frames(module: Callable[[Tensor], Tensor], x_NxTx: Tensor,
               per_step: bool) -> Tensor:
  """Applies a per-frame module to every step of x: (N, T, ...) -> (N, T, ...).

  per_step=True calls the module once per step like the release (BatchNorm batch
  statistics over N); False calls it once on the merged (N*T) batch.
  """
  n, t = x_NxTx.shape[:2]
  if per_step:
    return torch.stack([module(x_NxTx[:, i]) for i in range(t)], dim=1)
  y = module(x_NxTx.reshape(n * t, *x_NxTx.shape[2:]))
  return y.reshape(n, t, *y.shape[1:])


# ----------------------------------------------------------------------------
# AT-net (audio -> landmark PCA coefficients), 30,071,750 parameters.


class ATNetTorch(nn.Module):
  """AT-net: example PCA coefs (N, 6) + MFCC windows -> coefs (N, T, 6)."""

  def __init__(self, num_coefs: int = 6, batchnorm_per_step: bool = True):
    super().__init__()
    self.batchnorm_per_step = batchnorm_per_step
    self.lmark_encoder = nn.Sequential(
        nn.Linear(num_coefs, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU())
    # (sic) the release's spelling; the checkpoint keys depend on it.
    self.audio_eocder = nn.Sequential(
        conv_bn_relu(1, 64, 3),
        conv_bn_relu(64, 128, 3),
        nn.MaxPool2d(3, stride=(1, 2)),
        conv_bn_relu(128, 256, 3),
        conv_bn_relu(256, 256, 3),
        conv_bn_relu(256, 512, 3),
        nn.MaxPool2d(3, stride=2),
    )
    self.audio_eocder_fc = nn.Sequential(
        nn.Linear(512 * 12 * 2, 2048), nn.ReLU(),
        nn.Linear(2048, 256), nn.ReLU())
    self.lstm = nn.LSTM(512 + 256, 256, num_layers=3, batch_first=True)
    self.lstm_fc = nn.Sequential(nn.Linear(256, num_coefs))
    self.intermediates: dict[str, Tensor] = {}

  def encode_audio(self, mfcc_Nx1x28x12: Tensor) -> Tensor:
    """One MFCC window per sample -> (N, 256) audio feature."""
    x = self.audio_eocder(mfcc_Nx1x28x12)
    return self.audio_eocder_fc(x.flatten(1))

  def forward(self, example_coef_Nx6: Tensor, mfcc: Tensor) -> Tensor:
    """example_coef (N, 6), mfcc (N, T, [1,] 28, 12) -> (N, T, 6)."""
    if mfcc.dim() == 4:
      mfcc = mfcc.unsqueeze(2)
    n, t = mfcc.shape[:2]
    lmark_NxF = self.lmark_encoder(example_coef_Nx6)
    audio_NxTxF = map_frames(self.encode_audio, mfcc, self.batchnorm_per_step)
    lmark_NxTxF = lmark_NxF.unsqueeze(1).expand(n, t, lmark_NxF.shape[-1])
    lstm_in = torch.cat([lmark_NxTxF, audio_NxTxF], -1)
    lstm_out, _ = self.lstm(lstm_in)  # zero initial state
    out_NxTx6 = self.lstm_fc(lstm_out)
    self.intermediates = {
        'lmark_feature': lmark_NxF,
        'audio_feature': audio_NxTxF,
        'lstm_out': lstm_out,
        'output': out_NxTx6,
    }
    return out_NxTx6


# ----------------------------------------------------------------------------
# VG-net generator, 58,355,781 parameters.


class ConvGRU(nn.Module):
  """One-layer convolutional GRU with torch.nn.GRU's gates and parameter names.

  r = sigmoid(W_ir x + b_ir + W_hr h + b_hr); z likewise;
  n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); h' = n + z * (h - n).
  The W are 2-D convolutions (kernel k, dilation d, 'same' zero padding).
  """

  def __init__(self, in_channels: int, hidden_channels: int, kernel: int = 3,
               dilation: int = 2, over_batch_axis: bool = True):
    super().__init__()
    self.hidden_channels = hidden_channels
    self.dilation = dilation
    self.padding = dilation * (kernel - 1) // 2
    self.over_batch_axis = over_batch_axis
    g = 3 * hidden_channels
    k = kernel
    self.weight_ih_l0 = nn.Parameter(torch.empty(g, in_channels, k, k))
    self.weight_hh_l0 = nn.Parameter(torch.empty(g, hidden_channels, k, k))
    self.bias_ih_l0 = nn.Parameter(torch.empty(g))
    self.bias_hh_l0 = nn.Parameter(torch.empty(g))
    bound = hidden_channels ** -0.5
    for p in self.parameters():
      nn.init.uniform_(p, -bound, bound)

  def _conv(self, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return F.conv2d(x, w, b, padding=self.padding, dilation=self.dilation)

  def forward(self, x_NxTxCxHxW: Tensor) -> Tensor:
    """(N, T, C, H, W) -> hidden states (N, T, hidden, H, W), from zeros.

    over_batch_axis=True recurs over axis 0 (the release); False over axis 1.
    """
    seq = x_NxTxCxHxW if self.over_batch_axis else x_NxTxCxHxW.transpose(0, 1)
    steps, batch, _, h, w = seq.shape
    gi_all = self._conv(seq.reshape(steps * batch, *seq.shape[2:]),
                        self.weight_ih_l0, self.bias_ih_l0)
    gi_all = gi_all.reshape(steps, batch, *gi_all.shape[1:])
    hidden = seq.new_zeros(batch, self.hidden_channels, h, w)
    outputs = []
    for s in range(steps):
      i_r, i_z, i_n = gi_all[s].chunk(3, dim=1)
      h_r, h_z, h_n = self._conv(hidden, self.weight_hh_l0,
                                 self.bias_hh_l0).chunk(3, dim=1)
      r = torch.sigmoid(i_r + h_r)
      z = torch.sigmoid(i_z + h_z)
      n = torch.tanh(i_n + r * h_n)
      hidden = n + z * (hidden - n)
      outputs.append(hidden)
    out = torch.stack(outputs, dim=0)
    return out if self.over_batch_axis else out.transpose(0, 1)


class ResnetBlock(nn.Module):
  """x + [Conv3x3, BN, ReLU, Dropout, Conv3x3, BN](x); zero padding, no bias."""

  def __init__(self, dim: int, dropout_rate: float):
    super().__init__()
    self.conv_block = nn.Sequential(
        nn.Conv2d(dim, dim, 3, padding=1, bias=False),
        nn.BatchNorm2d(dim),
        nn.ReLU(),
        nn.Dropout(dropout_rate),
        nn.Conv2d(dim, dim, 3, padding=1, bias=False),
        nn.BatchNorm2d(dim),
    )

  def forward(self, x: Tensor) -> Tensor:
    return x + self.conv_block(x)


class VGNetTorch(nn.Module):
  """VG-net generator: photo + landmarks -> frames, attention, colour maps.

  Channel widths are multiples of `base_width` (c; release 64): encoders
  3 -> c -> c -> 2c (H/4) -> 4c -> 8c (H/16); landmark maps 4c and 8c; ConvGRU
  2c -> 8c; decoder 8c -> 4c -> 2c (H/4) -> c -> c/2 (H).
  """

  def __init__(self, image_size: int = 128, base_width: int = 64,
               num_res_blocks: int = 9, dropout_rate: float = 0.5,
               convgru_over_batch_axis: bool = True,
               batchnorm_per_step: bool = True):
    super().__init__()
    c = base_width
    self.image_size = image_size
    self.feature_size = image_size // 16
    self.batchnorm_per_step = batchnorm_per_step
    self.image_encoder1 = nn.Sequential(
        nn.ReflectionPad2d(3),
        conv_bn_relu(3, c, 7, 1, 0),
        conv_bn_relu(c, c, 3, 2, 1),
        conv_bn_relu(c, 2 * c, 3, 2, 1),
    )
    self.image_encoder2 = nn.Sequential(
        conv_bn_relu(2 * c, 4 * c, 3, 2, 1),
        conv_bn_relu(4 * c, 8 * c, 3, 2, 1),
    )
    self.landmark_encoder = nn.Sequential(
        nn.Linear(136, self.feature_size ** 2), nn.ReLU())
    self.landmark_encoder_stage2 = nn.Sequential(conv_bn_relu(1, 4 * c, 3))
    self.lmark_att = nn.Sequential(
        conv_transpose(8 * c, 4 * c, bias=True),
        nn.BatchNorm2d(4 * c),
        nn.ReLU(),
        conv_transpose(4 * c, 2 * c, bias=True),
        nn.BatchNorm2d(2 * c),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(2 * c, 1, 3, padding=1), nn.Sigmoid()),
    )
    self.lmark_feature = nn.Sequential(conv_bn_relu(4 * c, 8 * c, 3))
    generator1 = [ResnetBlock(8 * c, dropout_rate)
                  for _ in range(num_res_blocks)]
    generator1 += [
        conv_transpose(8 * c, 4 * c, bias=False), nn.BatchNorm2d(4 * c),
        nn.ReLU(),
        conv_transpose(4 * c, 2 * c, bias=False), nn.BatchNorm2d(2 * c),
        nn.ReLU(),
    ]
    self.generator1 = nn.Sequential(*generator1)
    self.base = nn.Sequential(
        conv_transpose(2 * c, c, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        conv_transpose(c, c // 2, bias=False), nn.BatchNorm2d(c // 2),
        nn.ReLU(),
    )
    self.generator_color = nn.Sequential(
        nn.Conv2d(c // 2, 3, 7, padding=3), nn.Tanh())
    self.generator_attention = nn.Sequential(
        nn.Conv2d(c // 2, 1, 7, padding=3), nn.Sigmoid())
    self.bottle_neck = nn.Sequential(conv_bn_relu(16 * c, 2 * c, 3))
    self.convGRU = ConvGRU(2 * c, 8 * c, kernel=3, dilation=2,
                           over_batch_axis=convgru_over_batch_axis)
    self.intermediates: dict[str, Tensor] = {}

  def encode_landmark(self, lmark_Nx136: Tensor) -> Tensor:
    """(N, 136) -> (N, 4c, H/16, W/16); shared by example and targets."""
    x = self.landmark_encoder(lmark_Nx136)
    x = x.reshape(-1, 1, self.feature_size, self.feature_size)
    return self.landmark_encoder_stage2(x)

  def forward(self, image_Nx3xHxW: Tensor, target_lmark_NxTx136: Tensor,
              example_lmark_Nx136: Tensor
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Generates T frames.

    Args:
      image_Nx3xHxW: example photo in [-1, 1].
      target_lmark_NxTx136: driving landmarks.
      example_lmark_Nx136: landmarks of the example photo.

    Returns:
      frames (N, T, 3, H, W) in [-1, 1], attention (N, T, 1, H, W) in [0, 1],
      colour (N, T, 3, H, W) in [-1, 1],
      lmark_att (N, T, 1, H/4, W/4) in [0, 1].
    """
    per_step = self.batchnorm_per_step
    n, t = target_lmark_NxTx136.shape[:2]
    feat1 = self.image_encoder1(image_Nx3xHxW)
    feat2 = self.image_encoder2(feat1)
    ex_map1 = self.encode_landmark(example_lmark_Nx136)
    ex_map2 = self.lmark_feature(ex_map1)

    def landmark_step(lmark_Mx136: Tensor, ex_map1_M: Tensor
                      ) -> tuple[Tensor, Tensor]:
      map1 = self.encode_landmark(lmark_Mx136)
      att = self.lmark_att(torch.cat([map1, ex_map1_M], 1))
      return att, self.lmark_feature(map1)

    if per_step:
      steps = [landmark_step(target_lmark_NxTx136[:, i], ex_map1)
               for i in range(t)]
      lmark_att = torch.stack([s[0] for s in steps], 1)
      tgt_map2 = torch.stack([s[1] for s in steps], 1)
    else:
      att, map2 = landmark_step(target_lmark_NxTx136.reshape(n * t, -1),
                                ex_map1.repeat_interleave(t, 0))
      lmark_att = att.reshape(n, t, *att.shape[1:])
      tgt_map2 = map2.reshape(n, t, *map2.shape[1:])
    diff = tgt_map2 - ex_map2.unsqueeze(1)
    bn_in = torch.cat([feat2.unsqueeze(1).expand_as(diff), diff], 2)
    bottleneck = map_frames(self.bottle_neck, bn_in, per_step)
    gru_out = self.convGRU(bottleneck)
    gen1 = map_frames(self.generator1, gru_out, per_step)
    fused = feat1.unsqueeze(1) * (1 - lmark_att) + gen1 * lmark_att
    base = map_frames(self.base, fused, per_step)
    colour = map_frames(self.generator_color, base, per_step)
    attention = map_frames(self.generator_attention, base, per_step)
    frames = attention * colour + (1 - attention) * image_Nx3xHxW.unsqueeze(1)
    self.intermediates = {
        'image_feature1': feat1,
        'image_feature2': feat2,
        'example_lmark_map1': ex_map1,
        'example_lmark_map2': ex_map2,
        'lmark_attention': lmark_att,
        'bottleneck': bottleneck,
        'convgru_out': gru_out,
        'generator1_out': gen1,
        'fused': fused,
        'base_out': base,
        'frames': frames,
        'attention': attention,
        'colour': colour,
    }
    return frames, attention, colour, lmark_att


# ----------------------------------------------------------------------------
# Regression-based sequence discriminator, 21,491,473 parameters (594,568 of
# them in the unused `decoder`).


class DiscriminatorTorch(nn.Module):
  """Regression discriminator: frames + example landmark -> (prob, landmarks).

  Image encoder widths 3 -> c -> 2c -> 4c -> 8c (stride 2 each, H/16); the
  release (c = 64) flattens 512x8x8 = 32768 into `img_fc`. `decoder` is declared
  but unused, as in the release (its checkpoint holds it).
  """

  def __init__(self, image_size: int = 128, base_width: int = 64,
               batchnorm_per_step: bool = True):
    super().__init__()
    c = base_width
    self.batchnorm_per_step = batchnorm_per_step
    feature_size = image_size // 16
    self.image_encoder_dis = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.ReLU()),
        conv_bn_relu(c, 2 * c, 3, 2, 1),
        conv_bn_relu(2 * c, 4 * c, 3, 2, 1),
        conv_bn_relu(4 * c, 8 * c, 3, 2, 1),
    )
    self.encoder = nn.Sequential(
        nn.Linear(136, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU())
    self.decoder = nn.Sequential(
        nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 136), nn.Tanh())
    self.img_fc = nn.Sequential(
        nn.Linear(8 * c * feature_size ** 2, 512), nn.ReLU())
    self.lstm = nn.LSTM(1024, 256, num_layers=3, batch_first=True)
    self.lstm_fc = nn.Sequential(nn.Linear(256, 136), nn.Tanh())
    self.decision = nn.Sequential(nn.Linear(256, 1))
    self.intermediates: dict[str, Tensor] = {}
    self.logit: Tensor | None = None

  def encode_frame(self, frame_Nx3xHxW: Tensor) -> Tensor:
    """One frame per sample -> (N, 512)."""
    return self.img_fc(self.image_encoder_dis(frame_Nx3xHxW).flatten(1))

  def forward(self, frames_NxTx3xHxW: Tensor, example_lmark_Nx136: Tensor
              ) -> tuple[Tensor, Tensor]:
    """frames (N, T, 3, H, W), example landmark (N, 136) -> prob, landmarks.

    Returns prob (N,) in (0, 1) and landmarks (N, T, 136); the logit (N,), the
    mean of the per-step logits, is kept in `self.logit`.
    """
    n, t = frames_NxTx3xHxW.shape[:2]
    lmark_NxF = self.encoder(example_lmark_Nx136)
    img_NxTxF = map_frames(self.encode_frame, frames_NxTx3xHxW,
                           self.batchnorm_per_step)
    lmark_NxTxF = lmark_NxF.unsqueeze(1).expand(n, t, lmark_NxF.shape[-1])
    lstm_in = torch.cat([lmark_NxTxF, img_NxTxF], -1)
    lstm_out, _ = self.lstm(lstm_in)
    landmarks = self.lstm_fc(lstm_out) + example_lmark_Nx136.unsqueeze(1)
    logit = self.decision(lstm_out)[..., 0].mean(1)  # average over the T steps
    prob = torch.sigmoid(logit)
    self.logit = logit
    self.intermediates = {
        'lmark_feature': lmark_NxF,
        'img_feature': img_NxTxF,
        'lstm_out': lstm_out,
        'logit': logit,
        'prob': prob,
        'landmarks': landmarks,
    }
    return prob, landmarks
