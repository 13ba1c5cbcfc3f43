"""Numerical parity of the Flax networks with a PyTorch copy of the release.

For AT-net, VG-net (both ConvGRU modes) and the discriminator, at the release's
full size with B=2 clips of T=16 frames:
  1. build the PyTorch declaration (benchmarks/release_torch.py) and randomise
     every tensor, BatchNorm running statistics included (with default buffers
     BatchNorm is nearly the identity in eval mode and swapped BatchNorm
     tensors would pass unnoticed), with scales that keep activations alive
     (asserted: outputs not saturated);
  2. convert its state_dict with `hcmtfg.weights.convert_torch`;
  3. run both on the same random inputs, in eval mode and in train mode with
     dropout off (BatchNorm on batch statistics), and require
     ||flax - torch|| / ||torch|| <= 1e-4 for every output, every named
     intermediate and, after a train-mode call, every running statistic.
A failure lists all compared tensors with their errors, in network order, so it
says at which stage the two sides part.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import Any, Callable

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcmtfg import models
from hcmtfg.weights import convert_torch

B, T = 2, 16
REL_TOL = 1e-4
SEED = 20190603
# Test mode -> (train, BatchNorm statistics pooled over B*T, not per frame).
MODES = {'eval': (False, False), 'train': (True, False),
         'train_pooled_bn': (True, True)}


# ----------------------------------------------------------------------------
# Helpers.


def randomize_(torch, model, seed: int) -> None:
  """Overwrites every tensor of a release_torch network with random values.

  Conv / Linear weights N(0, 2 / fan_in) (He; a stride-2 transposed conv has
  fan_in cin * k * k / 4), halved for the second conv of each ResNet block (so
  the residual stream grows slowly) and for VG-net's output heads; biases
  N(0, 0.1^2). BatchNorm: scale U(0.6, 1.4), bias N(0, 0.1^2), running_mean
  N(0, 0.1^2), running_var U(0.5, 1.5). LSTM / ConvGRU weights N(0, 1 / fan_in),
  biases N(0, 0.1^2).
  """
  from benchmarks import release_torch  # pylint: disable=g-import-not-at-top
  nn = torch.nn
  gen = torch.Generator().manual_seed(seed)

  def normal_(t, std):
    with torch.no_grad():
      t.copy_(torch.randn(t.shape, generator=gen) * std)

  def uniform_(t, lo, hi):
    with torch.no_grad():
      t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

  for name, m in model.named_modules():
    if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
      fan_in = m.weight[0].numel()
      if isinstance(m, nn.ConvTranspose2d):
        fan_in = m.weight.shape[0] * m.weight[0, 0].numel() / 4
      gain = math.sqrt(2.0)
      if name.endswith('conv_block.4'):
        gain *= 0.5
      if name.startswith(('generator_color', 'generator_attention')):
        gain *= 0.5
      normal_(m.weight, gain / math.sqrt(fan_in))
      if m.bias is not None:
        normal_(m.bias, 0.1)
    elif isinstance(m, nn.BatchNorm2d):
      uniform_(m.weight, 0.6, 1.4)
      normal_(m.bias, 0.1)
      normal_(m.running_mean, 0.1)
      uniform_(m.running_var, 0.5, 1.5)
      m.num_batches_tracked.fill_(
          int(torch.randint(1, 1000, (), generator=gen)))
    elif isinstance(m, (nn.LSTM, release_torch.ConvGRU)):
      for pname, p in m.named_parameters():
        if pname.startswith('weight'):
          normal_(p, 1.0 / math.sqrt(p[0].numel()))
        else:
          normal_(p, 0.1)


def rel_err(got: Any, want: Any) -> float:
  """||got - want|| / ||want|| in float64."""
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def to_numpy(x) -> np.ndarray:
  return x.detach().cpu().numpy()


def nhwc(x) -> np.ndarray:
  """A torch (..., C, H, W) tensor as a numpy (..., H, W, C) array."""
  return np.moveaxis(to_numpy(x), -3, -1)


class Comparison:
  """Relative errors of named tensors; `check` fails listing all of them."""

  def __init__(self):
    self.errors: dict[str, float] = {}
    self.notes: dict[str, str] = {}

  def add(self, what: str, got: Any, want: np.ndarray) -> None:
    got = np.asarray(got)
    assert np.linalg.norm(want) > 0, f'{what}: the reference is all zeros'
    if got.shape != want.shape:
      self.errors[what] = math.inf
      self.notes[what] = f'shape {got.shape}, want {want.shape}'
    else:
      self.errors[what] = rel_err(got, want)

  def table(self) -> str:
    width = max(len(k) for k in self.errors)
    return '\n'.join(
        f'{k:{width}s}  rel err {v:.2e}  {self.notes.get(k, "")}'
        + ('  <-- FAIL' if not v <= REL_TOL else '')
        for k, v in self.errors.items())

  def check(self) -> None:
    table = self.table()
    print(table)  # Shown with `pytest -s`.
    bad = [k for k, v in self.errors.items() if not v <= REL_TOL]
    assert not bad, f'relative error > {REL_TOL} for {bad}:\n{table}'


def assert_alive(what: str, x: np.ndarray, lo: float, hi: float) -> None:
  """x (a tanh/sigmoid output in [lo, hi]) is neither constant nor saturated."""
  x = np.asarray(x)
  margin = 0.02 * (hi - lo)
  saturated = np.mean((x - lo < margin) | (hi - x < margin))
  assert saturated < 0.3, f'{what}: {saturated:.0%} saturated'
  assert np.std(x) > margin, f'{what}: nearly constant (std {np.std(x)})'


@dataclasses.dataclass
class Case:
  """One network on both sides, with its inputs."""
  torch_model: Any
  state_dict: dict  # The randomised tensors (cloned).
  flax_module: Any
  variables: dict  # Converted from state_dict.
  torch_inputs: tuple
  flax_inputs: tuple
  convert: Callable[..., dict]


def make_case(torch, torch_model, flax_module, convert, torch_inputs,
              flax_inputs, seed) -> Case:
  randomize_(torch, torch_model, seed)
  state_dict = {k: v.clone() for k, v in torch_model.state_dict().items()}
  variables = jax.tree.map(jnp.asarray,
                           convert(state_dict, module=flax_module))
  return Case(torch_model, state_dict, flax_module, variables, torch_inputs,
              flax_inputs, convert)


def with_pooled_batch_stats(case: Case) -> Case:
  """The same case with BatchNorm statistics pooled over all B*T frames."""
  torch_model = copy.deepcopy(case.torch_model)
  torch_model.batchnorm_per_step = False
  return dataclasses.replace(
      case, torch_model=torch_model,
      flax_module=case.flax_module.clone(per_frame_batch_stats=False))


def run_flax(case: Case, train: bool):
  """Returns (output, {intermediate: array}, updated batch_stats or None)."""
  mutable = ['intermediates', 'batch_stats'] if train else ['intermediates']
  # Jitted: one compilation costs less than op-by-op dispatch of VG-net.
  apply = jax.jit(functools.partial(case.flax_module.apply, train=train,
                                    mutable=mutable))
  out, state = apply(case.variables, *case.flax_inputs,
                     rngs={'dropout': jax.random.key(0)})
  flat = traverse_util.flatten_dict(
      state['intermediates'], is_leaf=lambda k, v: isinstance(v, tuple))
  inter = {path[-1]: value[0] for path, value in flat.items()}
  return out, inter, state.get('batch_stats')


def run_torch(torch, case: Case, train: bool):
  """Returns (output, intermediates, state_dict after the call)."""
  model = case.torch_model
  model.load_state_dict(case.state_dict)
  model.train(train)
  with torch.no_grad():
    out = model(*case.torch_inputs)
  return out, dict(model.intermediates), copy.deepcopy(model.state_dict())


def add_intermediates(cmp: Comparison, names: dict[str, Callable],
                      flax_inter: dict, torch_inter: dict) -> None:
  """names: intermediate -> function giving the torch tensor in Flax layout."""
  missing = sorted(set(names) - set(flax_inter))
  assert not missing, f'Flax intermediates missing: {missing}'
  for name, to_flax_layout in names.items():
    cmp.add(f'intermediate {name}', flax_inter[name],
            to_flax_layout(torch_inter[name]))


def add_running_stats(cmp: Comparison, case: Case, flax_batch_stats: dict,
                      torch_state_after: dict) -> None:
  """Running statistics after one train-mode call, on both sides."""
  want = case.convert(torch_state_after, module=case.flax_module)
  want = traverse_util.flatten_dict(want['batch_stats'])
  got = traverse_util.flatten_dict(flax_batch_stats)
  before = traverse_util.flatten_dict(case.variables['batch_stats'])
  assert set(got) == set(want)
  for path in sorted(want):
    # Guard against a vacuous comparison: the call must move every statistic.
    assert rel_err(want[path], before[path]) > 1e-3, f'{path} did not change'
    cmp.add('running ' + '/'.join(path), got[path], want[path])


# ----------------------------------------------------------------------------
# AT-net.


@pytest.fixture(scope='module')
def atnet_case(torch):
  from benchmarks import release_torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(SEED + 1)
  coef = torch.randn(B, 6, generator=gen)
  mfcc = torch.randn(B, T, 28, 12, generator=gen) * 2.0
  return make_case(torch, release_torch.ATNetTorch(), models.ATNet(),
                   convert_torch.convert_atnet, (coef, mfcc),
                   (jnp.asarray(coef.numpy()), jnp.asarray(mfcc.numpy())),
                   SEED + 2)


ATNET_INTERMEDIATES = {
    'lmark_feature': to_numpy, 'audio_feature': to_numpy,
    'lstm_out': to_numpy}


@pytest.mark.parametrize('mode', list(MODES))
def test_atnet_parity(torch, atnet_case, mode):
  train, pooled = MODES[mode]
  case = with_pooled_batch_stats(atnet_case) if pooled else atnet_case
  out_t, inter_t, state_after = run_torch(torch, case, train)
  out_f, inter_f, stats_f = run_flax(case, train)
  assert np.all(np.abs(to_numpy(inter_t['lstm_out'])) < 0.99)
  assert to_numpy(out_t).std() > 0.05
  cmp = Comparison()
  add_intermediates(cmp, ATNET_INTERMEDIATES, inter_f, inter_t)
  cmp.add('output', out_f, to_numpy(out_t))
  if train:
    add_running_stats(cmp, case, stats_f, state_after)
  cmp.check()


def test_parity_check_detects_a_wrong_batchnorm_buffer(torch, atnet_case):
  """The comparison can fail: roll one BatchNorm's running variance by 1."""
  out_t, inter_t, _ = run_torch(torch, atnet_case, train=False)
  state = dict(atnet_case.state_dict)
  key = 'audio_eocder.3.1.running_var'
  state[key] = torch.roll(state[key], 1)
  broken = dataclasses.replace(
      atnet_case, variables=convert_torch.convert_atnet(state))
  out_f, inter_f, _ = run_flax(broken, train=False)
  assert rel_err(inter_f['audio_feature'],
                 to_numpy(inter_t['audio_feature'])) > 1000 * REL_TOL
  assert rel_err(out_f, to_numpy(out_t)) > 10 * REL_TOL


# ----------------------------------------------------------------------------
# VG-net.


def vgnet_case(torch, over_batch_axis: bool, image_size: int = 128,
               base_width: int = 64, num_res_blocks: int = 9) -> Case:
  """VG-net with dropout off; the default sizes are the release's."""
  from benchmarks import release_torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(SEED + 3)
  image = torch.rand(B, 3, image_size, image_size, generator=gen) * 2 - 1
  target = torch.randn(B, T, 136, generator=gen) * 0.5
  example = torch.randn(B, 136, generator=gen) * 0.5
  torch_model = release_torch.VGNetTorch(
      image_size, base_width, num_res_blocks, dropout_rate=0.0,
      convgru_over_batch_axis=over_batch_axis)
  flax_module = models.VGNet(
      image_size=image_size, base_width=base_width,
      bottleneck_features=2 * base_width, convgru_features=8 * base_width,
      num_res_blocks=num_res_blocks, dropout_rate=0.0,
      convgru_over_batch_axis=over_batch_axis)
  flax_inputs = (jnp.asarray(nhwc(image)), jnp.asarray(target.numpy()),
                 jnp.asarray(example.numpy()))
  return make_case(torch, torch_model, flax_module,
                   convert_torch.convert_vgnet, (image, target, example),
                   flax_inputs, SEED + 4)


VGNET_INTERMEDIATES = {
    name: nhwc for name in ('image_feature1', 'image_feature2',
                            'lmark_attention', 'bottleneck', 'convgru_out',
                            'generator1_out', 'fused', 'base_out')}


def check_vgnet(torch, case: Case, train: bool) -> None:
  (frames_t, att_t, colour_t, latt_t), inter_t, state_after = run_torch(
      torch, case, train)
  out_f, inter_f, stats_f = run_flax(case, train)
  assert_alive('colour', to_numpy(colour_t), -1, 1)
  assert_alive('attention', to_numpy(att_t), 0, 1)
  assert_alive('lmark_attention', to_numpy(latt_t), 0, 1)
  assert_alive('convgru_out', to_numpy(inter_t['convgru_out']), -1, 1)
  cmp = Comparison()
  add_intermediates(cmp, VGNET_INTERMEDIATES, inter_f, inter_t)
  cmp.add('lmark_attention', out_f.lmark_attention, nhwc(latt_t))
  cmp.add('colour', out_f.colour, nhwc(colour_t))
  cmp.add('attention', out_f.attention, nhwc(att_t))
  cmp.add('frames', out_f.frames, nhwc(frames_t))
  if train:
    add_running_stats(cmp, case, stats_f, state_after)
  cmp.check()


@pytest.mark.slow
@pytest.mark.parametrize('over_batch_axis', [True, False],
                         ids=['release_convgru', 'paper_convgru'])
def test_vgnet_eval_parity(torch, over_batch_axis):
  check_vgnet(torch, vgnet_case(torch, over_batch_axis), train=False)


@pytest.mark.slow
def test_vgnet_train_parity(torch):
  check_vgnet(torch, vgnet_case(torch, over_batch_axis=True), train=True)


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
def test_vgnet_small_config_parity(torch, train):
  """A shrunk VG-net (64x64, width 8, 2 ResNet blocks): the size knobs agree."""
  case = vgnet_case(torch, over_batch_axis=False, image_size=64,
                    base_width=8, num_res_blocks=2)
  check_vgnet(torch, case, train=train)


# ----------------------------------------------------------------------------
# Discriminator.


@pytest.fixture(scope='module')
def discriminator_case(torch):
  from benchmarks import release_torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(SEED + 5)
  frames = torch.rand(B, T, 3, 128, 128, generator=gen) * 2 - 1
  example = torch.randn(B, 136, generator=gen) * 0.5
  return make_case(
      torch, release_torch.DiscriminatorTorch(),
      models.RegressionDiscriminator(), convert_torch.convert_discriminator,
      (frames, example),
      (jnp.asarray(nhwc(frames)), jnp.asarray(example.numpy())), SEED + 6)


DISCRIMINATOR_INTERMEDIATES = {
    'img_feature': to_numpy, 'lmark_feature': to_numpy,
    'lstm_out': to_numpy}


@pytest.mark.parametrize('mode', list(MODES))
def test_discriminator_parity(torch, discriminator_case, mode):
  train, pooled = MODES[mode]
  case = discriminator_case
  if pooled:
    case = with_pooled_batch_stats(case)
  (prob_t, lmarks_t), inter_t, state_after = run_torch(torch, case, train)
  out_f, inter_f, stats_f = run_flax(case, train)
  example = to_numpy(case.torch_inputs[1])[:, None]
  assert_alive('landmark tanh', to_numpy(lmarks_t) - example, -1, 1)
  assert np.all(np.abs(to_numpy(inter_t['lstm_out'])) < 0.99)
  logit_t = to_numpy(case.torch_model.logit)
  assert np.all(np.abs(logit_t) < 4) and np.ptp(logit_t) > 1e-3
  cmp = Comparison()
  add_intermediates(cmp, DISCRIMINATOR_INTERMEDIATES, inter_f, inter_t)
  cmp.add('logit', out_f.logit, logit_t)
  cmp.add('prob', out_f.prob, to_numpy(prob_t))
  cmp.add('landmarks', out_f.landmarks, to_numpy(lmarks_t))
  if train:
    add_running_stats(cmp, case, stats_f, state_after)
  cmp.check()
