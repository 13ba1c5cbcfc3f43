"""VG-net's generator pixel terms and diagnostics, shared by its two steps.

The GAN step and the warm-up (reconstruction) step of `hcmtfg.train.vgnet_steps`
both train the generator on the same pixel terms: the paper's pixel loss
('g_pixel', dynamic or L1), optionally with the mouth box weighted more
(`loss.mouth_pixel_weight`) and an L1 on the colour map ('g_colour',
`loss.colour_weight`). Both report the same diagnostics: the gradient norms of
the colour and attention heads, and the mean attention inside and outside the
mouth box (WORKSPACE.md, "Why VG-net needs a warm-up", explains why these are
watched).

Config fields read here (defaults in configs/vgnet.py): loss.pixel,
loss.pixel_weight, loss.mouth_pixel_weight, loss.mouth_box_pad,
loss.colour_weight, loss.colour_region.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from hcmtfg.models import vg_net
from hcmtfg.train import losses
from hcmtfg.train import train_state as ts

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def cast_inputs(batch: Batch, dtype) -> dict[str, jax.Array]:
  """The batch cast to the compute dtype (float32 when dtype is None)."""
  dtype = jnp.float32 if dtype is None else dtype
  return {k: v.astype(dtype) for k, v in batch.items()}


def pixel_weight_map(config: ml_collections.ConfigDict,
                     batch: Batch) -> jax.Array | None:
  """1 + loss.mouth_pixel_weight inside the mouth box, 1 elsewhere (or None)."""
  extra = float(config.loss.mouth_pixel_weight)
  if not extra:
    return None
  size = batch['target_image'].shape[-2]
  return 1.0 + extra * losses.mouth_region_mask(
      batch['target_mouth'], size, config.loss.mouth_box_pad)


def pixel_terms(config: ml_collections.ConfigDict, out: vg_net.VGNetOutput,
                batch: Batch, weight: jax.Array | None
                ) -> dict[str, jax.Array]:
  """'g_pixel' (the paper's pixel loss) and, if enabled, 'g_colour'.

  'g_colour' is the L1 between the colour map and the target frame, over the
  whole frame (pixel weights `weight`) or, with `loss.colour_region='mouth'`,
  inside the mouth box only.
  """
  real = batch['target_image']
  if config.loss.pixel == 'dynamic':
    terms = {'g_pixel': losses.dynamic_pixel_loss(out.frames, real,
                                                  out.attention, weight)}
  elif config.loss.pixel == 'l1':
    terms = {'g_pixel': losses.l1_loss(out.frames, real, weight)}
  else:
    raise ValueError(f"config.loss.pixel must be 'dynamic' or 'l1', "
                     f'got {config.loss.pixel!r}')
  if config.loss.colour_weight:
    if config.loss.colour_region == 'mouth':
      colour_weight = losses.mouth_region_mask(
          batch['target_mouth'], real.shape[-2], config.loss.mouth_box_pad)
    else:
      colour_weight = weight
    terms['g_colour'] = losses.l1_loss(out.colour, real, colour_weight)
  return terms


def pixel_total(config: ml_collections.ConfigDict,
                terms: Mapping[str, jax.Array]) -> jax.Array:
  """pixel_weight * (g_pixel + colour_weight * g_colour)."""
  pixel = terms['g_pixel'] + config.loss.colour_weight * terms.get(
      'g_colour', 0.0)
  return config.loss.pixel_weight * pixel


def attention_metrics(attention: jax.Array, batch: Batch) -> Metrics:
  """Mean attention inside and outside the mouth box (if the batch has it)."""
  if 'target_mouth' not in batch:
    return {}
  mask = losses.mouth_region_mask(batch['target_mouth'], attention.shape[-2])
  a = attention.astype(jnp.float32)
  return {'att_mouth': jnp.sum(a * mask) / jnp.maximum(jnp.sum(mask), 1.0),
          'att_rest': jnp.sum(a * (1 - mask)) / jnp.maximum(
              jnp.sum(1 - mask), 1.0)}


def head_grad_norms(g_grads) -> Metrics:
  """Gradient norms of the colour and attention heads."""
  return {f'g_grad_norm_{name}': ts.global_norm(g_grads[key])
          for name, key in (('colour', 'generator_color'),
                            ('attention', 'generator_attention'))
          if key in g_grads}


def generator_metrics(loss: jax.Array, terms: Mapping[str, jax.Array],
                      g_grads, attention: jax.Array, batch: Batch) -> Metrics:
  """The generator's loss, its terms, gradient norms and attention means."""
  return {'g_loss': loss, **terms, 'g_grad_norm': ts.global_norm(g_grads),
          **head_grad_norms(g_grads),
          **attention_metrics(jax.lax.stop_gradient(attention), batch)}
