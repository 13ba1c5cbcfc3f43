"""Tests of hcmtfg.models on tiny configurations (release ones for counts).

Shapes, release parameter counts, BatchNorm, dropout, the two ConvGRU modes and
a batch-sharded VG-net forward. Variables are drawn with numpy from
`jax.eval_shape(init)`: compiling `init` costs more than the tests themselves.
"""

import math

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcmtfg import models
from hcmtfg.models import conv_transpose
from hcmtfg.models import convgru
from hcmtfg.models import layers

TINY_ATNET = dict(base_width=4, lmark_features=(8, 16), audio_features=(32, 8),
                  lstm_features=8, lstm_layers=2)
TINY_VGNET = dict(image_size=32, base_width=8, bottleneck_features=8,
                  convgru_features=16, num_res_blocks=2)
TINY_DISCRIMINATOR = dict(image_size=32, base_width=4, img_features=16,
                          lmark_features=(8, 16), lstm_features=8,
                          lstm_layers=2)
B, T = 2, 3
VG_BATCH = 8


def _rngs(seed=0):
  return {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}


def _random_inputs(module, batch=B, frames=T, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(
      jnp.asarray(np.clip(rng.normal(0, 0.5, x.shape), -1, 1), jnp.float32)
      for x in module.dummy_inputs(batch, frames))


def _num_params(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _draw_variables(shapes, seed=0):
  """Fills a variables tree of ShapeDtypeStructs with numpy random values.

  Kernels ~ N(0, 1/fan_in) keep activations alive; running statistics and
  BatchNorm affine parameters are randomised too (variances positive).
  """
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = path[-1].key
    if name == "mean":
      return rng.normal(0, 0.1, x.shape).astype(np.float32)
    if name == "var":
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    if name == "scale":
      return rng.uniform(0.8, 1.2, x.shape).astype(np.float32)
    fan_in = math.prod(x.shape[:-1]) if len(x.shape) > 1 else 100
    return rng.normal(0, 1 / math.sqrt(fan_in), x.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _random_variables(module, seed=0):
  """Variables of a network without a compiled init (slow on CPU)."""
  return _draw_variables(jax.eval_shape(
      lambda: module.init(_rngs(), *module.dummy_inputs(), train=False)), seed)


def _random_variables_like(module, *inputs, **kwargs):
  """Variables of a layer for the given inputs."""
  return _draw_variables(jax.eval_shape(
      lambda: module.init(jax.random.key(0), *inputs, **kwargs)))


class _Jitted:
  """One module's jitted eval and train forwards (compiled once per shape)."""

  def __init__(self, module):
    self.module = module

    def eval_fn(variables, *inputs):
      return module.apply(variables, *inputs, train=False,
                          mutable=["intermediates", "batch_stats"])

    def train_fn(variables, key, *inputs):
      return module.apply(variables, *inputs, train=True,
                          rngs={"dropout": key}, mutable=["batch_stats"])

    self.eval = jax.jit(eval_fn)
    self.train = jax.jit(train_fn)


@pytest.fixture(scope="module")
def tiny_vgnet():
  module = models.VGNet(**TINY_VGNET)
  # Batch 8 so that the sharded test reuses the compiled unsharded forward.
  return (_Jitted(module), _random_variables(module),
          _random_inputs(module, batch=VG_BATCH))


def test_atnet_shapes_and_intermediates():
  module = models.ATNet(**TINY_ATNET)
  inputs = _random_inputs(module)
  variables = _random_variables(module)
  out, state = _Jitted(module).eval(variables, *inputs)
  assert out.shape == (B, T, 6)
  inter = {k: v[0].shape for k, v in state["intermediates"].items()}
  assert inter == {"lmark_feature": (B, 16), "audio_feature": (B, T, 8),
                   "lstm_out": (B, T, 8)}
  assert module.audio_feature_map_shape() == (12, 2, 32)
  with pytest.raises(ValueError, match="MFCC windows"):
    jax.eval_shape(lambda: module.apply(variables, inputs[0],
                                        inputs[1][:, :, :20], train=False))


def test_vgnet_shapes_ranges_and_intermediates(tiny_vgnet):
  jitted, variables, inputs = tiny_vgnet
  n = VG_BATCH
  out, state = jitted.eval(variables, *inputs)
  s = jitted.module.image_size
  assert out.frames.shape == (n, T, s, s, 3)
  assert out.colour.shape == (n, T, s, s, 3)
  assert out.attention.shape == (n, T, s, s, 1)
  assert out.lmark_attention.shape == (n, T, s // 4, s // 4, 1)
  assert float(jnp.max(jnp.abs(out.frames))) <= 1.0
  assert float(out.attention.min()) >= 0 and float(out.attention.max()) <= 1
  assert float(jnp.std(out.frames)) > 1e-2
  # frames = A * C + (1 - A) * image.
  expected = (out.attention * out.colour
              + (1 - out.attention) * inputs[0][:, None])
  np.testing.assert_allclose(out.frames, expected, atol=1e-6)
  inter = {k: v[0].shape for k, v in state["intermediates"].items()}
  assert inter == {
      "image_feature1": (n, 8, 8, 16), "image_feature2": (n, 2, 2, 64),
      "lmark_attention": (n, T, 8, 8, 1), "bottleneck": (n, T, 2, 2, 8),
      "convgru_out": (n, T, 2, 2, 16), "generator1_out": (n, T, 8, 8, 16),
      "fused": (n, T, 8, 8, 16), "base_out": (n, T, 32, 32, 4)}
  lmark_att = state["intermediates"]["lmark_attention"][0]
  fused = (state["intermediates"]["image_feature1"][0][:, None]
           * (1 - lmark_att)
           + state["intermediates"]["generator1_out"][0] * lmark_att)
  np.testing.assert_allclose(state["intermediates"]["fused"][0], fused,
                             atol=1e-5)


def test_vgnet_without_attention_outputs_the_colour_map(tiny_vgnet):
  """use_attention=False (the no-attention ablation): frames = C, A = 1, the
  same parameter tree, and no gradient reaches the attention head."""
  from hcmtfg.train import losses  # pylint: disable=g-import-not-at-top
  jitted, variables, inputs = tiny_vgnet
  module = models.VGNet(**TINY_VGNET, use_attention=False)
  assert models.VGNet.from_config(module.to_config()) == module
  shapes = lambda m: jax.tree.map(lambda x: x.shape, jax.eval_shape(
      lambda: m.init(_rngs(), *m.dummy_inputs(), train=False)))
  assert shapes(module) == shapes(jitted.module)  # the same weights load
  full, _ = jitted.eval(variables, *inputs)
  out, _ = _Jitted(module).eval(variables, *inputs)
  np.testing.assert_allclose(out.colour, full.colour, atol=1e-6)
  np.testing.assert_array_equal(out.frames, out.colour)
  np.testing.assert_array_equal(out.attention, np.ones_like(full.attention))
  np.testing.assert_array_equal(out.lmark_attention, full.lmark_attention)
  assert float(jnp.max(jnp.abs(out.frames - full.frames))) > 0.1
  # The dynamic pixel-wise loss, |fake - real| * (A + 0.5), is then 1.5 x L1.
  real = jnp.zeros_like(out.frames)
  assert float(losses.dynamic_pixel_loss(out.frames, real, out.attention)) == (
      pytest.approx(1.5 * float(losses.l1_loss(out.frames, real)), rel=1e-6))

  @jax.jit
  def head_grads(params):
    def loss(p):
      frames = module.apply({**variables, "params": p},
                            *(x[:2] for x in inputs), train=False).frames
      return jnp.mean(jnp.abs(frames - 0.3))
    g = jax.grad(loss)(params)
    return g["generator_attention"], g["generator_color"]

  attention_grad, colour_grad = head_grads(variables["params"])
  assert all(not np.any(x) for x in jax.tree.leaves(attention_grad))
  assert all(np.any(x) for x in jax.tree.leaves(colour_grad))


def test_vgnet_rejects_bad_image_size():
  module = models.VGNet(**{**TINY_VGNET, "image_size": 40})
  with pytest.raises(ValueError, match="multiple of 16"):
    jax.eval_shape(
        lambda: module.init(_rngs(), *module.dummy_inputs(), train=False))


def test_discriminator_outputs():
  module = models.RegressionDiscriminator(**TINY_DISCRIMINATOR)
  frames, example = _random_inputs(module, frames=4)
  variables = _random_variables(module)
  out, state = _Jitted(module).eval(variables, frames, example)
  assert out.logit.shape == (B,) and out.prob.shape == (B,)
  np.testing.assert_allclose(out.prob, jax.nn.sigmoid(out.logit), rtol=1e-6)
  inter = {k: v[0].shape for k, v in state["intermediates"].items()}
  assert inter == {"img_feature": (B, 4, 16), "lmark_feature": (B, 16),
                   "lstm_out": (B, 4, 8)}
  assert out.landmarks.shape == (B, 4, 136)
  # tanh(...) + example: within 1 of the example landmark.
  assert float(jnp.max(jnp.abs(out.landmarks - example[:, None]))) < 1.0
  # The logit is the mean over frames of the per-frame decision logits.
  decision = variables["params"]["decision"]
  lstm_out = state["intermediates"]["lstm_out"][0]
  per_frame = lstm_out @ decision["kernel"] + decision["bias"]
  np.testing.assert_allclose(out.logit, per_frame[..., 0].mean(axis=1),
                             rtol=1e-5, atol=1e-6)
  assert float(jnp.std(per_frame)) > 1e-3


def test_plain_discriminator_has_no_landmark_head():
  module = models.RegressionDiscriminator(**TINY_DISCRIMINATOR,
                                          regress_landmarks=False)
  inputs = module.dummy_inputs(batch=B, frames=T)
  out, variables = jax.eval_shape(
      lambda: module.init_with_output(_rngs(), *inputs, train=False))
  assert out.landmarks is None
  assert out.logit.shape == (B,)
  assert "lstm_fc" not in variables["params"]
  assert "decision" in variables["params"]


@pytest.mark.parametrize("module, expected", [
    (models.ATNet(), 30_071_750),
    (models.VGNet(), 58_355_781),
    (models.RegressionDiscriminator(), 20_896_905),
])
def test_release_parameter_counts(module, expected):
  shapes = jax.eval_shape(
      lambda: module.init(_rngs(), *module.dummy_inputs(), train=False))
  assert _num_params(shapes["params"]) == expected


def test_config_round_trip_and_factory():
  vgnet = models.VGNet(**TINY_VGNET, convgru_over_batch_axis=True)
  assert models.VGNet.from_config(vgnet.to_config()) == vgnet
  nets = models.build_models({"atnet": TINY_ATNET,
                              "discriminator": {"regress_landmarks": False}})
  assert nets.atnet == models.ATNet(**TINY_ATNET)
  assert nets.vgnet is None
  assert not nets.discriminator.regress_landmarks
  with pytest.raises(ValueError, match="unknown networks"):
    models.build_models({"vg_net": {}})
  with pytest.raises(TypeError):
    models.build_models({"vgnet": {"no_such_attribute": 1}})


def test_batchnorm_matches_pytorch_statistics():
  rng = np.random.default_rng(0)
  x = rng.normal(1.0, 2.0, (3, 4, 5, 6)).astype(np.float32)
  bn = layers.BatchNorm()
  variables = bn.init(jax.random.key(0), x, train=True)
  y, state = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  axes = (0, 1, 2)
  mean, var = x.mean(axis=axes), x.var(axis=axes)
  n = 3 * 4 * 5
  np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * mean,
                             rtol=1e-5)
  # PyTorch feeds the unbiased variance into the running average.
  np.testing.assert_allclose(state["batch_stats"]["var"],
                             0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
  # Eval mode: running statistics, nothing updated.
  y_eval, state_eval = bn.apply(variables, x, train=False,
                                mutable=["batch_stats"])
  np.testing.assert_allclose(y_eval, x / np.sqrt(1 + 1e-5), rtol=1e-5)
  assert jax.tree.all(jax.tree.map(np.array_equal, state_eval["batch_stats"],
                                   variables["batch_stats"]))


def test_batchnorm_per_frame_equals_sequential_frames():
  rng = np.random.default_rng(1)
  x = rng.normal(0.5, 1.5, (2, 4, 3, 3, 5)).astype(np.float32)
  bn_frames = layers.BatchNorm(per_frame_stats=True)
  variables = bn_frames.init(jax.random.key(0), x, train=True)
  variables = {"params": variables["params"], "batch_stats": {
      "mean": rng.normal(0, 1, 5).astype(np.float32),
      "var": rng.uniform(0.5, 1.5, 5).astype(np.float32)}}
  y, state = bn_frames.apply(variables, x, train=True, mutable=["batch_stats"])
  bn = layers.BatchNorm()
  seq_vars, ys = variables, []
  for t in range(x.shape[1]):
    y_t, st = bn.apply(seq_vars, x[:, t], train=True, mutable=["batch_stats"])
    seq_vars = {"params": variables["params"], **st}
    ys.append(y_t)
  np.testing.assert_allclose(y, np.stack(ys, 1), atol=1e-5)
  for k in ("mean", "var"):
    np.testing.assert_allclose(state["batch_stats"][k],
                               seq_vars["batch_stats"][k], rtol=1e-5)
  # Pooled statistics are different.
  y_pooled = bn.apply(variables, x, train=True, mutable=["batch_stats"])[0]
  assert float(jnp.max(jnp.abs(y_pooled - y))) > 1e-2


def test_network_batchnorm_train_updates_stats_eval_does_not(tiny_vgnet):
  jitted, variables, inputs = tiny_vgnet
  _, train_state = jitted.train(variables, jax.random.key(3), *inputs)
  _, eval_state = jitted.eval(variables, *inputs)
  stats = variables["batch_stats"]
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.allclose(a, b), train_state["batch_stats"], stats))
  assert len(changed) == len(jax.tree.leaves(stats)) and all(changed)
  assert jax.tree.all(jax.tree.map(np.array_equal, eval_state["batch_stats"],
                                   stats))


def test_dropout_only_in_train(tiny_vgnet):
  jitted, variables, inputs = tiny_vgnet

  def frames(seed):
    return jitted.train(variables, jax.random.key(seed), *inputs)[0].frames

  assert float(jnp.max(jnp.abs(frames(0) - frames(1)))) > 1e-4
  np.testing.assert_array_equal(frames(2), frames(2))
  # One ResNet block: eval ignores the dropout RNG; rate 0 disables it.
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 8))
  block = layers.ResnetBlock()
  block_vars = _random_variables_like(block, x, train=False)

  def run(blk, seed, train):
    return blk.apply(block_vars, x, train=train,
                     rngs={"dropout": jax.random.key(seed)},
                     mutable=["batch_stats"])[0]

  np.testing.assert_array_equal(run(block, 0, False), run(block, 1, False))
  assert float(jnp.max(jnp.abs(run(block, 0, True) - run(block, 1, True)))) > 1e-4
  no_dropout = layers.ResnetBlock(dropout_rate=0.0)
  np.testing.assert_array_equal(run(no_dropout, 0, True),
                                run(no_dropout, 1, True))


@pytest.fixture(scope="module")
def convgru_runner():
  """Runs a ConvGRU (4, 4, 5, 5, 4) -> (4, 4, 5, 5, 6) in both modes."""
  grus = {mode: convgru.ConvGRU(features=6, over_batch_axis=mode)
          for mode in (False, True)}
  x = jnp.zeros((4, 4, 5, 5, 4))
  params = _random_variables_like(grus[False], x)
  return jax.jit(lambda x: {mode: gru.apply(params, x)
                            for mode, gru in grus.items()})


def test_convgru_modes_differ_for_batches(convgru_runner):
  x = jax.random.normal(jax.random.key(1), (4, 4, 5, 5, 4))
  outs = convgru_runner(x)
  assert outs[False].shape == outs[True].shape == (4, 4, 5, 5, 6)
  assert float(jnp.max(jnp.abs(outs[False] - outs[True]))) > 1e-3
  # Release mode = paper mode on the (T, B) transposed sequence.
  swapped = convgru_runner(jnp.swapaxes(x, 0, 1))
  np.testing.assert_allclose(outs[True], jnp.swapaxes(swapped[False], 0, 1),
                             atol=1e-6)


def test_convgru_release_mode_has_no_recurrence_over_time_at_batch_1(
    convgru_runner):
  # Release mode recurs over the batch axis, so clip 0 of a batch is computed
  # exactly as a batch of one clip would be: clips 1-3 only pad the shape.
  x = jax.random.normal(jax.random.key(2), (4, 4, 5, 5, 4))
  x_changed = x.at[0, 0].add(1.0)  # Change frame 0 of clip 0 only.
  outs, outs_changed = convgru_runner(x), convgru_runner(x_changed)
  # Paper mode: later frames of clip 0 see the change through the state.
  assert float(jnp.max(jnp.abs(outs[False][0, 1:]
                               - outs_changed[False][0, 1:]))) > 1e-3
  # Release mode: frame 0 changes, later frames of clip 0 do not.
  assert float(jnp.max(jnp.abs(outs[True][0, 0]
                               - outs_changed[True][0, 0]))) > 1e-3
  np.testing.assert_array_equal(outs[True][0, 1:], outs_changed[True][0, 1:])
  # Both modes agree on clip 0's first frame (one step from a zero state).
  np.testing.assert_allclose(outs[True][0, 0], outs[False][0, 0], atol=1e-6)


def test_vgnet_forward_sharded_over_data_axis(tiny_vgnet):
  assert len(jax.devices()) == 8, "tests/conftest.py provides 8 CPU devices"
  jitted, variables, inputs = tiny_vgnet
  key = jax.random.key(0)
  expected_out, expected_state = jitted.train(variables, key, *inputs)
  mesh = jax.make_mesh((8,), ("data",))
  batch_sharding = jax.sharding.NamedSharding(mesh,
                                              jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  out, state = jitted.train(jax.device_put(variables, replicated),
                            jax.device_put(key, replicated),
                            *jax.device_put(inputs, batch_sharding))
  assert len(out.frames.sharding.device_set) == 8
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5),
               out, expected_out)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               state, expected_state)


def test_lstm_zero_weights_reduce_to_bias_dynamics():
  """With W_ih = W_hh = 0 every step sees only the biases: closed form."""
  lstm = layers.TorchLSTM(features=3, num_layers=1)
  x = jnp.ones((2, 4, 5))
  params = jax.tree.map(lambda a: np.zeros(a.shape, np.float32),
                        jax.eval_shape(lambda: lstm.init(jax.random.key(0), x)))
  bias = np.linspace(-1, 1, 12).astype(np.float32)
  params["params"]["bias_ih_l0"] = bias
  y = np.asarray(lstm.apply(params, x))
  sig = lambda v: 1 / (1 + np.exp(-v))
  i, f, g, o = np.split(bias, 4)  # PyTorch gate order.
  c = np.zeros(3)
  for t in range(4):
    c = sig(f) * c + sig(i) * np.tanh(g)
    np.testing.assert_allclose(y[:, t], np.broadcast_to(sig(o) * np.tanh(c),
                                                        (2, 3)), rtol=1e-5)


def test_torch_conv_transpose_doubles_size():
  deconv = layers.TorchConvTranspose(features=3)
  x = jnp.ones((2, 5, 5, 4, 2))
  params = deconv.init(jax.random.key(0), x)
  assert deconv.apply(params, x).shape == (2, 5, 10, 8, 3)
  # One input pixel spreads a 3x3 footprint centred at 2*(i, j) in the output.
  impulse = jnp.zeros((1, 4, 4, 1)).at[0, 1, 2, 0].set(1.0)
  kernel = jnp.arange(1.0, 10.0).reshape(3, 3, 1, 1)
  y = deconv.clone(features=1).apply({"params": {"kernel": kernel}}, impulse)
  nz = np.argwhere(np.asarray(y[0, ..., 0]))
  assert nz.min(0).tolist() == [1, 3] and nz.max(0).tolist() == [3, 5]


def test_layers_accept_bfloat16_params():
  """Params cast to bfloat16 (mixed precision) work with f32 or bf16 inputs."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 8))
  to_bf16 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.bfloat16), tree)
  for module, kwargs in ((convgru.ConvGRU(features=4), {}),
                         (layers.DeconvBNReLU(features=4), {"train": True}),
                         (layers.ResnetBlock(), {"train": False})):
    variables = to_bf16(_random_variables_like(module, x, **kwargs))
    for inputs in (x, x.astype(jnp.bfloat16)):
      y = module.apply(variables, inputs, **kwargs, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(0)})[0]
      assert bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))


def test_subpixel_conv_transpose_equals_dilated_convolution():
  """Inputs of SUBPIXEL_MIN_SIZE rows take the sub-pixel path: same values as
  the convolution over the stride-dilated input (the small-input path)."""
  size = conv_transpose.SUBPIXEL_MIN_SIZE
  x = jax.random.normal(jax.random.key(0), (2, size, size + 2, 5))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 5, 7))
  y = layers.TorchConvTranspose(features=7).apply(
      {"params": {"kernel": kernel}}, x)
  expected = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((1, 2), (1, 2)), lhs_dilation=(2, 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert y.shape == (2, 2 * size, 2 * size + 4, 7)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_convgru_initial_state_and_final_state():
  gru = convgru.ConvGRU(features=6)
  x = jax.random.normal(jax.random.key(3), (2, 5, 4, 4, 3))
  params = _random_variables_like(gru, x)
  out, final = gru.apply(params, x, return_state=True)
  np.testing.assert_array_equal(final, out[:, -1])
  # The default skips W_h * h on the first step (h = 0): same as zeros given.
  np.testing.assert_allclose(
      gru.apply(params, x, jnp.zeros((2, 4, 4, 6))), out, atol=1e-6)
  # Two chunks with the state carried = one pass.
  first, state = gru.apply(params, x[:, :2], return_state=True)
  second = gru.apply(params, x[:, 2:], state)
  np.testing.assert_allclose(jnp.concatenate([first, second], 1), out,
                             atol=1e-6)


def test_lstm_carried_state_equals_one_pass():
  lstm = layers.TorchLSTM(features=4, num_layers=2)
  x = jax.random.normal(jax.random.key(4), (3, 6, 5))
  params = lstm.init(jax.random.key(0), x)
  out, final = lstm.apply(params, x, return_state=True)
  assert len(final) == 2 and final[1][0].shape == (3, 4)
  np.testing.assert_array_equal(final[1][0], out[:, -1])
  first, state = lstm.apply(params, x[:, :4], return_state=True)
  second = lstm.apply(params, x[:, 4:], state)
  np.testing.assert_allclose(jnp.concatenate([first, second], 1), out,
                             atol=1e-6)


# ----------------------------------------------------------------------------
# The fused GAN step (hcmtfg.train.vgnet_steps, loss.fused_gan_step): one generator
# forward per step instead of the release's two.
# ----------------------------------------------------------------------------


def _gan_config(fused: bool, learning_rate: float = 2e-4):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from hcmtfg.train import vgnet_steps  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.compute_dtype = "float32"
  c.fast_compile = True
  c.model = ml_collections.ConfigDict(dict(
      # No dropout: both steps' generator forwards then compute the same.
      # BatchNorm statistics pooled over the B*T frames: per frame, a batch
      # of 2 clips would leave the landmark features only their sign.
      generator=dict(image_size=32, base_width=4, bottleneck_features=8,
                     convgru_features=8, num_res_blocks=1, dropout_rate=0.0,
                     per_frame_batch_stats=False),
      discriminator=dict(image_size=32, base_width=4, img_features=16,
                         lmark_features=(16, 16), lstm_features=16,
                         lstm_layers=1),
      regress_landmarks=True))
  # With the colour L1 and the weighted mouth box of the fast talking recipe
  # (the box of the batch below): without them the attention collapses to
  # "copy the photo" before the box is learnt (WORKSPACE.md).
  c.loss = ml_collections.ConfigDict(dict(
      pixel="dynamic", pixel_weight=10.0, mouth_weight=100.0,
      release_detached_gan=False, fused_gan_step=fused, colour_weight=1.0,
      mouth_pixel_weight=10.0, mouth_box_pad=0.0))
  c.optim = ml_collections.ConfigDict(dict(learning_rate=learning_rate,
                                           b1=0.5, b2=0.999))
  # The fields not set here, at their defaults.
  return vgnet_steps.STAGE.with_defaults(c)


BOX = slice(12, 24)  # rows and columns of the landmark-driven box
# A face-like landmark scale: a fixed shape, targets moving a little around it.
BASE_LMARK = 0.4 * np.random.RandomState(1).randn(136)


def box_level(target_lmark):
  """(..., 136) landmarks -> the box's grey level in [-0.9, 0.9], set by how
  far one mouth y-coordinate moved."""
  return 0.9 * np.tanh(30.0 * (np.asarray(target_lmark)[..., 97]
                               - BASE_LMARK[97]))


@pytest.fixture(scope="module")
def gan_steps():
  """Initial GAN state, a batch, and jitted steps (two-forward and fused)."""
  from hcmtfg.runtime import sharding  # pylint: disable=g-import-not-at-top
  from hcmtfg.train import vgnet_steps  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(jax.devices()[:1])
  rs = np.random.RandomState(0)
  image = rs.uniform(-1, 1, (2, 32, 32, 3))
  target_lmark = BASE_LMARK + 0.03 * rs.randn(2, 4, 136)
  # Targets: the example image with a box whose grey level is set by one
  # landmark coordinate of each target frame -- a pixel loss the generator
  # can lower only by reading its target landmarks.
  target = np.repeat(image[:, None], 4, 1)
  target[:, :, BOX, BOX] = box_level(target_lmark)[..., None, None, None]
  batch = {"example_image": image,
           "example_lmark": np.repeat(BASE_LMARK[None], 2, 0),
           "target_image": target, "target_lmark": target_lmark,
           # The box's corners, as the mouth points of every target frame.
           "target_mouth": np.broadcast_to(np.array(
               [[BOX.start, BOX.start], [BOX.stop - 1, BOX.stop - 1]] * 10),
                                           (2, 4, 20, 2))}
  batch = sharding.host_local_to_global(
      {k: v.astype(np.float32) for k, v in batch.items()}, mesh)
  from hcmtfg.train import train_state as ts  # pylint: disable=g-import-not-at-top
  # Both steps with XLA's default CPU fusion emitters: the classic ones the
  # tests compile with round the two programs' D losses 1 ulp apart.
  options = {**ts.FAST_COMPILE_OPTIONS, **conftest.DEFAULT_EMITTERS}
  steps = {}
  for fused in (False, True):
    config = _gan_config(fused, learning_rate=3e-3)
    steps[fused] = vgnet_steps.jit_train_step(config, mesh,
                                              compiler_options=options)
  state = vgnet_steps.make_init_fn(_gan_config(False, 3e-3),
                                   jax.random.PRNGKey(0), mesh)()
  return jax.device_get(state), batch, steps, mesh


@pytest.mark.slow
def test_fused_gan_step_updates_d_exactly_like_two_forwards(gan_steps):
  state, batch, steps, mesh = gan_steps
  put = lambda s: jax.device_put(s, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  (two, m_two), (fused, m_fused) = (steps[f](put(state), batch)
                                    for f in (False, True))
  for key in ("train/d_loss", "train/d_prob_real", "train/d_prob_fake"):
    assert float(m_two[key]) == float(m_fused[key]), key
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(two.d.params),
               jax.device_get(fused.d.params))
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(two.d.opt_state), jax.device_get(fused.d.opt_state))
  # Without dropout both generator forwards compute the same frames, so the
  # G gradient through forward #1's vjp equals the fresh forward's.
  assert np.isclose(float(m_two["train/g_loss"]), float(m_fused["train/g_loss"]),
                    rtol=1e-6)
  g_before = jax.device_get(state.g.params)
  jax.tree.map(lambda a, b, c: np.testing.assert_allclose(
      b - a, c - a, rtol=1e-3, atol=1e-7), g_before,
               jax.device_get(two.g.params), jax.device_get(fused.g.params))
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(g_before), jax.tree.leaves(jax.device_get(fused.g.params))))


@pytest.mark.slow
def test_fused_gan_step_trains(gan_steps):
  """Fused GAN steps learn the landmark-driven box; the example image repeated
  (the baseline) and the trained generator fed still landmarks (a generator
  that ignores its targets) do not."""
  from hcmtfg.train import vgnet_steps  # pylint: disable=g-import-not-at-top
  state, batch, steps, mesh = gan_steps
  state = jax.device_put(state, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  for _ in range(100):
    state, metrics = steps[True](state, batch)
    assert np.isfinite(float(metrics["train/g_loss"]))
  host = {k: np.asarray(v) for k, v in batch.items()}

  def box_error(target_lmark):
    out = vgnet_steps.build_generator(_gan_config(True)).apply(
        state.g.variables(None, None, train=False), host["example_image"],
        target_lmark, host["example_lmark"], train=False)
    box = np.asarray(out.frames)[:, :, BOX, BOX].mean(axis=(2, 3, 4))
    return np.abs(box - box_level(host["target_lmark"])).mean(), box

  levels = box_level(host["target_lmark"])
  copy = np.abs(host["example_image"][:, None, BOX, BOX].mean(axis=(2, 3, 4))
                - levels).mean()
  learnt, box = box_error(host["target_lmark"])
  still, _ = box_error(np.repeat(host["target_lmark"][:, :1], 4, 1))
  assert learnt < 0.5 * copy, (learnt, copy)
  assert still > 2 * learnt, (still, learnt)
  assert np.corrcoef(box.ravel(), levels.ravel())[0, 1] > 0.9, (box, levels)


@pytest.mark.parametrize("size", [4, conv_transpose.SUBPIXEL_MIN_SIZE])
def test_conv_transpose_gradients_match_autodiff_of_dilated_conv(size):
  """The hand-written kernel gradient (one matmul) = autodiff's, both paths."""
  x = jax.random.normal(jax.random.key(5), (2, size, size, 3))
  kernel = jax.random.normal(jax.random.key(6), (3, 3, 3, 4))
  probe = jax.random.normal(jax.random.key(7), (2, 2 * size, 2 * size, 4))
  deconv = layers.TorchConvTranspose(features=4)
  ours = jax.grad(lambda v, k: jnp.sum(probe * deconv.apply(
      {"params": {"kernel": k}}, v)), argnums=(0, 1))(x, kernel)
  reference = jax.grad(lambda v, k: jnp.sum(probe * jax.lax.conv_general_dilated(
      v, k, (1, 1), ((1, 2), (1, 2)), lhs_dilation=(2, 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))), argnums=(0, 1))(x, kernel)
  for a, b in zip(ours, reference):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(8, 8), (5, 6)])
def test_convgru_dilated_conv_equals_lax_dilation(size):
  """Sub-grid convolutions (H, W multiples of the dilation) and im2col
  matmuls = lax's dilated convolution."""
  x = jax.random.normal(jax.random.key(8), (3,) + size + (4,))
  kernel = jax.random.normal(jax.random.key(9), (3, 3, 4, 5))
  expected = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # pylint: disable=protected-access
  for conv in (convgru._same_conv, convgru._matmul_conv):
    np.testing.assert_allclose(conv(x, kernel, 2), expected, rtol=1e-5,
                               atol=1e-5)
