"""VG-net GAN training: landmarks + example image → video (the release's recipe).

One train step does what the release does per iteration:
  1. generator forward #1 (train mode) → fake frames, held fixed (stop-grad);
  2. D step: D(real), then D(fake) (train mode, D's BatchNorm statistics
     updated by each call in that order); loss BCE(D(real), 1) +
     BCE(D(fake), 0) [+ masked landmark loss of D's regression on real and on
     fake]; Adam update of D;
  3. G step: a fresh generator forward #2 (new dropout mask), D(fake) with the
     updated D (train mode, its statistics updated a third time); loss
     BCE(D(fake), 1) [+ masked landmark loss of D on fake] + pixel_weight ·
     pixel loss; Adam update of G.
The generator's BatchNorm statistics are updated by both of its forwards
(#1 then #2), as in the release.

`loss.fused_gan_step=True` runs the generator once: forward #1 keeps its vjp,
the D step is unchanged (bit-identical D update), and the G loss of forward
#1's output, judged by the updated D, is backpropagated through that vjp. G
then sees forward #1's dropout mask and BatchNorm statistics (updated once per
step, not twice). About a third less work per step; default off (the
release's two forwards). The bracketed terms exist only with the
regression discriminator (`model.regress_landmarks`).

Release quirk: its G step feeds `fake.detach()` to D, so there the adversarial
and landmark terms give the generator no gradient (only the pixel loss trains
it). Default here is the paper's intent (gradients flow);
`loss.release_detached_gan=True` reproduces the release.

`STAGE` is what the trainer takes from this module (`hcmtfg.train.stage`);
the generator's pixel terms and diagnostics are in `hcmtfg.train.vgnet_terms`.

Config fields read here (an `ml_collections.ConfigDict`; their defaults and
meaning are in configs/vgnet.py):
  seed, compute_dtype, fast_compile
  model.generator.*          `hcmtfg.models.vg_net.VGNet` attributes
  model.discriminator.*      `RegressionDiscriminator` attributes except
                             regress_landmarks
  model.regress_landmarks    the regression discriminator, or a plain one
  loss.pixel, loss.pixel_weight, loss.colour_weight, loss.colour_region,
  loss.mouth_pixel_weight, loss.mouth_box_pad   the pixel terms (vgnet_terms)
  loss.mouth_weight          landmark-loss weight on mouth y-coordinates
  loss.release_detached_gan, loss.fused_gan_step   see above
  loss.warmup_steps          steps of `reconstruction_step` before the GAN
  optim.*                    Adam and its schedule, shared by G and D
  summaries.num_examples, summaries.num_frames
  plus the loop fields of `hcmtfg.train.trainer.train`.

Batches: 'example_image' (B, H, W, 3) in [-1, 1]; 'example_lmark' (B, 136);
'target_image' (B, T, H, W, 3) in [-1, 1]; 'target_lmark' (B, T, 136).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import vgnet as vgnet_configs
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.models import discriminator as discriminator_lib
from hcmtfg.models import vg_net
from hcmtfg.train import image_metrics
from hcmtfg.train import losses
from hcmtfg.train import stage as stage_lib
from hcmtfg.train import train_state as ts
from hcmtfg.train import vgnet_terms as terms_lib
from hcmtfg.train import visualize

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def build_generator(config: ml_collections.ConfigDict) -> vg_net.VGNet:
  """VGNet from `config.model.generator`."""
  return vg_net.VGNet.from_config(config.model.generator.to_dict())


def build_discriminator(config: ml_collections.ConfigDict
                        ) -> discriminator_lib.RegressionDiscriminator:
  """The discriminator from `config.model.discriminator` and the ablation."""
  fields = dict(config.model.discriminator.to_dict(),
                regress_landmarks=bool(config.model.regress_landmarks))
  return discriminator_lib.RegressionDiscriminator.from_config(fields)


def init_train_state(rng: jax.Array,
                     config: ml_collections.ConfigDict) -> ts.TrainState:
  """The initial GAN state (trace it under jit: see `make_init_fn`)."""
  generator, disc = build_generator(config), build_discriminator(config)
  tx = ts.make_optimizer(config.optim)
  g_rng, d_rng, state_rng = jax.random.split(rng, 3)
  g_vars = generator.init({'params': ts.parameter_init_key(g_rng)},
                          *generator.dummy_inputs(), train=False)
  d_vars = disc.init({'params': ts.parameter_init_key(d_rng)},
                     *disc.dummy_inputs(), train=False)
  return ts.TrainState(step=jnp.zeros((), jnp.int32), rng=state_rng,
                       g=ts.NetState.create(tx, g_vars),
                       d=ts.NetState.create(tx, d_vars))


def make_init_fn(config: ml_collections.ConfigDict, rng: jax.Array,
                 mesh: jax.sharding.Mesh, *,
                 compiler_options: Mapping[str, Any] | None = None
                 ) -> ts.Initializer:
  """A jitted, argument-free initialiser; every leaf replicated on `mesh`."""
  return ts.jit_init(init_train_state, config, rng, mesh,
                     compiler_options=compiler_options)


def train_step(state: ts.TrainState, batch: Batch,
               config: ml_collections.ConfigDict
               ) -> tuple[ts.TrainState, Metrics]:
  """One discriminator update followed by one generator update.

  Returns:
    (new state, metrics): 'train/d_loss', 'train/d_real', 'train/d_fake',
    'train/d_lmark' (regression D only), 'train/g_adv', 'train/g_lmark'
    (regression D only), 'train/g_pixel', 'train/g_loss', 'train/g_grad_norm',
    'train/d_grad_norm', 'train/d_prob_real', 'train/d_prob_fake'; with
    the regression D also 'train/d_lmark_real' and 'train/d_lmark_fake' (its
    landmark loss on each); 'train/g_colour' with `loss.colour_weight`;
    'train/g_grad_norm_colour', 'train/g_grad_norm_attention' (the heads'
    gradients) and 'train/att_mouth', 'train/att_rest' (mean attention of
    forward #1 inside and outside the mouth box), for diagnosis.
  """
  dtype = ts.compute_dtype(config)
  generator, disc = build_generator(config), build_discriminator(config)
  tx = ts.make_optimizer(config.optim)
  regress = bool(config.model.regress_landmarks)
  mask = losses.landmark_loss_mask(mouth_weight=config.loss.mouth_weight)
  x = terms_lib.cast_inputs(batch, dtype)
  target_lmark = batch['target_lmark']
  pixel_weight_map = terms_lib.pixel_weight_map(config, batch)
  g_rng1, g_rng2 = jax.random.split(state.step_rng())

  def generate(g_params, g_batch_stats, rng):
    out, updates = generator.apply(
        state.g.variables(g_params, dtype, batch_stats=g_batch_stats),
        x['example_image'], x['target_lmark'], x['example_lmark'], train=True,
        rngs={'dropout': rng}, mutable=['batch_stats'])
    return out, updates['batch_stats']

  def discriminate(d_params, d_batch_stats, frames):
    out, updates = disc.apply(
        state.d.variables(d_params, dtype, batch_stats=d_batch_stats),
        frames, x['example_lmark'], train=True, mutable=['batch_stats'])
    return out, updates['batch_stats']

  # Generator forward #1; its frames are constants for the D step. Fused, its
  # vjp is kept for the G step instead of running a second forward.
  fused = bool(config.loss.fused_gan_step)

  def forward1(g_params):
    out, stats = generate(g_params, state.g.batch_stats, g_rng1)
    return (out.frames, out.attention, out.colour), stats

  if fused:
    fake1, g_vjp, g_stats = jax.vjp(forward1, state.g.params, has_aux=True)
  else:
    fake1, g_stats = forward1(state.g.params)
  fake1_frames = jax.lax.stop_gradient(fake1[0])

  def d_loss_fn(d_params):
    real, stats = discriminate(d_params, state.d.batch_stats, x['target_image'])
    fake, stats = discriminate(d_params, stats, fake1_frames)
    terms = losses.discriminator_gan_losses(real.logit, fake.logit)
    probs = {'d_prob_real': jnp.mean(real.prob.astype(jnp.float32)),
             'd_prob_fake': jnp.mean(fake.prob.astype(jnp.float32))}
    if regress:
      probs['d_lmark_real'] = losses.masked_landmark_loss(
          real.landmarks, target_lmark, mask)
      probs['d_lmark_fake'] = losses.masked_landmark_loss(
          fake.landmarks, target_lmark, mask)
      terms['d_lmark'] = probs['d_lmark_real'] + probs['d_lmark_fake']
    return sum(terms.values()), (terms, probs, stats)

  (d_loss, (d_terms, d_probs, d_stats)), d_grads = jax.value_and_grad(
      d_loss_fn, has_aux=True)(state.d.params)
  new_d = state.d.apply_gradients(tx, d_grads, d_stats)

  def g_loss_of_outputs(frames, attention, colour):
    """The G loss of generated frames, attention and colour, judged by the
    new D."""
    judged_frames = frames
    if config.loss.release_detached_gan:
      judged_frames = jax.lax.stop_gradient(frames)
    judged, new_d_stats = discriminate(new_d.params, new_d.batch_stats,
                                       judged_frames)
    terms = {'g_adv': losses.generator_gan_loss(judged.logit)}
    if regress:
      terms['g_lmark'] = losses.masked_landmark_loss(judged.landmarks,
                                                     target_lmark, mask)
    terms.update(terms_lib.pixel_terms(
        config, vg_net.VGNetOutput(frames, attention, colour, None), batch,
        pixel_weight_map))
    total = (terms['g_adv'] + terms.get('g_lmark', 0.0)
             + terms_lib.pixel_total(config, terms))
    return total, (terms, new_d_stats)

  if fused:
    # Backpropagate through forward #1 (its vjp was saved above).
    (g_loss, (g_terms, new_d_stats)), output_grads = jax.value_and_grad(
        g_loss_of_outputs, argnums=(0, 1, 2), has_aux=True)(*fake1)
    g_grads, = g_vjp(output_grads)
    new_g_stats = g_stats
  else:
    def g_loss_fn(g_params):
      out, new_g_stats = generate(g_params, g_stats, g_rng2)
      total, (terms, new_d_stats) = g_loss_of_outputs(
          out.frames, out.attention, out.colour)
      return total, (terms, new_g_stats, new_d_stats)

    (g_loss, (g_terms, new_g_stats, new_d_stats)), g_grads = (
        jax.value_and_grad(g_loss_fn, has_aux=True)(state.g.params))
  new_state = state.replace(
      step=state.step + 1,
      g=state.g.apply_gradients(tx, g_grads, new_g_stats),
      d=new_d.replace(batch_stats=new_d_stats))
  metrics = {'d_loss': d_loss, **d_terms, **d_probs,
             **terms_lib.generator_metrics(g_loss, g_terms, g_grads, fake1[1],
                                           batch),
             'd_grad_norm': ts.global_norm(d_grads)}
  return new_state, {f'train/{k}': v for k, v in metrics.items()}


def reconstruction_step(state: ts.TrainState, batch: Batch,
                        config: ml_collections.ConfigDict
                        ) -> tuple[ts.TrainState, Metrics]:
  """One generator update on the pixel terms alone (no discriminator).

  The first `loss.warmup_steps` steps of a run take this step instead of
  `train_step` (see `jit_train_step`): one generator forward and backward, no
  adversarial or landmark term, D untouched. A third of a GAN step's work.

  Returns:
    (new state, metrics): 'train/g_loss', 'train/g_pixel', 'train/g_colour'
    (with `loss.colour_weight`), 'train/g_grad_norm', the heads' gradient
    norms and 'train/att_mouth', 'train/att_rest'.
  """
  dtype = ts.compute_dtype(config)
  generator = build_generator(config)
  tx = ts.make_optimizer(config.optim)
  x = terms_lib.cast_inputs(batch, dtype)
  weight = terms_lib.pixel_weight_map(config, batch)

  def loss_fn(g_params):
    out, updates = generator.apply(
        state.g.variables(g_params, dtype), x['example_image'],
        x['target_lmark'], x['example_lmark'], train=True,
        rngs={'dropout': state.step_rng()}, mutable=['batch_stats'])
    terms = terms_lib.pixel_terms(config, out, batch, weight)
    return terms_lib.pixel_total(config, terms), (
        terms, updates['batch_stats'], out.attention)

  (loss, (terms, stats, attention)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.g.params)
  new_state = state.replace(step=state.step + 1,
                            g=state.g.apply_gradients(tx, grads, stats))
  metrics = terms_lib.generator_metrics(loss, terms, grads, attention, batch)
  return new_state, {f'train/{k}': v for k, v in metrics.items()}


class WarmupThenGan:
  """`reconstruction_step` for the first `warmup_steps` steps, then the GAN
  step, both jitted once; the step number is counted on the host from the
  state's step at the first call, so a resumed run picks the right one."""

  def __init__(self, warmup_fn, gan_fn, warmup_steps: int):
    self._warmup_fn, self._gan_fn = warmup_fn, gan_fn
    self._warmup_steps = int(warmup_steps)
    self._step = None

  def __call__(self, state: ts.TrainState, batch):
    if self._step is None:
      self._step = int(jax.device_get(state.step))
    fn = self._warmup_fn if self._step < self._warmup_steps else self._gan_fn
    self._step += 1
    return fn(state, batch)


def _generate_eval_mode(state: ts.TrainState, batch: Batch,
                        config: ml_collections.ConfigDict
                        ) -> vg_net.VGNetOutput:
  """The generator's outputs in eval mode, computed in the compute dtype."""
  dtype = ts.compute_dtype(config)
  x = terms_lib.cast_inputs(batch, dtype)
  return build_generator(config).apply(
      state.g.variables(None, dtype, train=False), x['example_image'],
      x['target_lmark'], x['example_lmark'], train=False)


def eval_step(state: ts.TrainState, batch: Batch,
              config: ml_collections.ConfigDict) -> Metrics:
  """Eval-mode generation quality on one batch, for tracking progress.

  Metrics on RGB frames mapped to [0, 1] (quick trackers, not the release's
  evaluation conventions of `hcmtfg.evaluation.metrics`): 'eval/l1' (on [-1, 1]),
  'eval/psnr', 'eval/ssim', and the same for the baseline that copies the
  example image into every frame ('eval/baseline_*').
  """
  real = batch['target_image'].astype(jnp.float32)
  fake = _generate_eval_mode(state, batch, config).frames.astype(jnp.float32)
  copy = jnp.broadcast_to(batch['example_image'][:, None].astype(jnp.float32),
                          real.shape)
  unit = lambda v: (jnp.clip(v, -1.0, 1.0) + 1.0) / 2.0
  metrics = {}
  for prefix, pred in (('eval/', fake), ('eval/baseline_', copy)):
    metrics[prefix + 'l1'] = losses.l1_loss(pred, real)
    metrics[prefix + 'psnr'] = jnp.mean(
        image_metrics.capped_psnr(unit(pred), unit(real)))
    metrics[prefix + 'ssim'] = jnp.mean(
        image_metrics.gaussian_ssim(unit(pred), unit(real)))
  return metrics


def predict(state: ts.TrainState, batch: Batch,
            config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Eval-mode generator outputs for the first `summaries.num_examples` clips,
  with the clips' target frames and landmarks."""
  k = config.summaries.num_examples
  clips = {name: batch[name][:k] for name in
           ('example_image', 'target_lmark', 'example_lmark', 'target_image')}
  out = _generate_eval_mode(state, clips, config)
  fields = ('frames', 'attention', 'colour', 'lmark_attention')
  return {**{f: getattr(out, f).astype(jnp.float32) for f in fields}, **clips}


def summary_images(outputs: Mapping[str, np.ndarray],
                   pca: landmarks_lib.Pca | None,
                   config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Real and generated frames, attention, colour and landmark grids."""
  del pca  # The landmarks are drawn as they are, not from PCA coefficients.
  return visualize.vgnet_grids(outputs, outputs, config.summaries.num_frames)


def jit_train_step(config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh, *,
                   compiler_options: Mapping[str, Any] | None = None):
  """`train_step` jitted: state replicated and donated, batch over 'data'.

  With `loss.warmup_steps` > 0, a `WarmupThenGan` over the jitted
  `reconstruction_step` and `train_step`. Equal configs share one compiled
  executable (the config is static).
  """
  gan = ts.jit_with_shardings(train_step, config, mesh, donate_state=True,
                              compiler_options=compiler_options)
  warmup_steps = int(config.loss.warmup_steps)
  if warmup_steps <= 0:
    return gan
  warmup = ts.jit_with_shardings(reconstruction_step, config, mesh,
                                 donate_state=True,
                                 compiler_options=compiler_options)
  return WarmupThenGan(warmup, gan, warmup_steps)


def jit_eval_step(config: ml_collections.ConfigDict,
                  mesh: jax.sharding.Mesh, *,
                  compiler_options: Mapping[str, Any] | None = None):
  """`eval_step` jitted with the same shardings (nothing donated)."""
  return ts.jit_with_shardings(eval_step, config, mesh, donate_state=False,
                               compiler_options=compiler_options)


STAGE = stage_lib.Stage(
    name='vgnet', config_defaults=vgnet_configs.defaults, needs_pca=False,
    make_init_fn=make_init_fn, jit_train_step=jit_train_step,
    jit_eval_step=jit_eval_step, predict=predict,
    summary_images=summary_images)
