"""The release's training steps written in PyTorch, as a speed baseline.

Used by `benchmarks.benchmark` only (it needs torch and
benchmarks/release_torch.py). Our own code for the release's training recipe
as stated below (its defaults), not copied from the release:

* `ATNetTrainStep`: AT-net, MSE on the predicted PCA coefficients, Adam
  (lr 2e-4, betas 0.5 / 0.999).
* `GanTrainStep`: one VG-net GAN iteration at the release's defaults:
    1. generator forward (train mode) -> fake frames;
    2. D step: BCE(D(real), 1) + BCE(D(fake.detach()), 0) + masked landmark
       MSE of D's regression on real and on fake; Adam step of D;
    3. G step with a fresh generator forward: BCE(D(fake), 1) + masked
       landmark MSE of D on fake
       + 10 x mean(|fake - real| * (A.detach() + 0.5));
       Adam step of G. D's parameters are frozen during the G step (no
       gradients are computed for them; the cheapest faithful baseline).
  `detached_gan=True` feeds D a detached fake in the G step (the release's
  quirk: only the pixel loss then trains G), as `loss.release_detached_gan` in
  `hcmtfg.train.vgnet_steps`.

Tensors are PyTorch-layout: images (N, 3, H, W), clips (N, T, 3, H, W).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

Tensor = torch.Tensor

MOUTH_Y_INDICES = tuple(range(97, 136, 2))  # y of landmarks 48..67.


def adam(module: nn.Module, learning_rate: float = 2e-4) -> torch.optim.Adam:
  """The release's optimiser: Adam(lr, betas=(0.5, 0.999))."""
  return torch.optim.Adam(module.parameters(), lr=learning_rate,
                          betas=(0.5, 0.999))


def landmark_mask(mouth_weight: float = 100.0, num_coords: int = 136) -> Tensor:
  """(136,) weights: 1 everywhere, `mouth_weight` on the mouth y-coordinates."""
  w = torch.ones(num_coords)
  w[list(MOUTH_Y_INDICES)] = mouth_weight
  return w


def masked_landmark_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
  """MSE(w * pred, w * target) over every element."""
  return F.mse_loss(pred * mask, target * mask)


class ATNetTrainStep:
  """One AT-net Adam step on MSE(pred coefs, target coefs).

  Args:
    atnet: a `release_torch.ATNetTorch` (put in train mode here).
    learning_rate: Adam learning rate (2e-4).
  """

  def __init__(self, atnet: nn.Module, learning_rate: float = 2e-4):
    self.atnet = atnet.train()
    self.optimizer = adam(atnet, learning_rate)

  def __call__(self, example_coef_Nx6: Tensor, mfcc_NxTx28x12: Tensor,
               target_coef_NxTx6: Tensor) -> float:
    """Returns the loss before the update."""
    self.optimizer.zero_grad(set_to_none=True)
    pred = self.atnet(example_coef_Nx6, mfcc_NxTx28x12)
    loss = F.mse_loss(pred, target_coef_NxTx6)
    loss.backward()
    self.optimizer.step()
    return float(loss.detach())


class GanTrainStep:
  """One VG-net GAN iteration (D step, then G step with a fresh forward).

  Args:
    generator: a `release_torch.VGNetTorch`.
    discriminator: a `release_torch.DiscriminatorTorch`.
    learning_rate: Adam learning rate of both (2e-4).
    pixel_weight: weight of the dynamic pixel-wise loss (10).
    mouth_weight: landmark-loss weight on the mouth y-coordinates (100).
    detached_gan: the release's G step quirk (see the module docstring).
  """

  def __init__(self, generator: nn.Module, discriminator: nn.Module, *,
               learning_rate: float = 2e-4, pixel_weight: float = 10.0,
               mouth_weight: float = 100.0, detached_gan: bool = False):
    self.generator = generator.train()
    self.discriminator = discriminator.train()
    self.opt_g = adam(generator, learning_rate)
    self.opt_d = adam(discriminator, learning_rate)
    self.pixel_weight = pixel_weight
    self.mask = landmark_mask(mouth_weight)
    self.detached_gan = detached_gan

  def _freeze_discriminator(self, frozen: bool) -> None:
    for p in self.discriminator.parameters():
      p.requires_grad_(not frozen)

  def __call__(self, example_image_Nx3xHxW: Tensor, example_lmark_Nx136: Tensor,
               target_image_NxTx3xHxW: Tensor, target_lmark_NxTx136: Tensor
               ) -> dict[str, float]:
    """Runs the iteration; returns the D and G losses."""
    gen, dis, mask = self.generator, self.discriminator, self.mask
    real = target_image_NxTx3xHxW
    ones, zeros = torch.ones_like, torch.zeros_like

    # D step on a generated clip held fixed.
    self._freeze_discriminator(False)
    with torch.no_grad():
      fake = gen(example_image_Nx3xHxW, target_lmark_NxTx136,
                 example_lmark_Nx136)[0]
    self.opt_d.zero_grad(set_to_none=True)
    prob_real, lmark_real = dis(real, example_lmark_Nx136)
    prob_fake, lmark_fake = dis(fake, example_lmark_Nx136)
    d_loss = (F.binary_cross_entropy(prob_real, ones(prob_real))
              + F.binary_cross_entropy(prob_fake, zeros(prob_fake))
              + masked_landmark_loss(lmark_real, target_lmark_NxTx136, mask)
              + masked_landmark_loss(lmark_fake, target_lmark_NxTx136, mask))
    d_loss.backward()
    self.opt_d.step()

    # G step: a fresh generator forward, judged by the updated D.
    self._freeze_discriminator(True)
    self.opt_g.zero_grad(set_to_none=True)
    frames, attention, _, _ = gen(example_image_Nx3xHxW, target_lmark_NxTx136,
                                  example_lmark_Nx136)
    judged = frames.detach() if self.detached_gan else frames
    prob, lmark = dis(judged, example_lmark_Nx136)
    pixel = torch.mean(torch.abs(frames - real) * (attention.detach() + 0.5))
    g_loss = (F.binary_cross_entropy(prob, ones(prob))
              + masked_landmark_loss(lmark, target_lmark_NxTx136, mask)
              + self.pixel_weight * pixel)
    g_loss.backward()
    self.opt_g.step()
    return {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}
