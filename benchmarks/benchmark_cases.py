"""The cases of `benchmarks.benchmark`: our JAX code and the release's PyTorch side.

Like-for-like settings on both sides: BatchNorm statistics per frame in train
mode (the release's frame loops), the release's ConvGRU over the batch axis
(`Options.paper_mode` switches both sides to the recurrence over time), and the
paper's GAN losses (the G step's adversarial and landmark terms reach G through
D, on both sides; `loss.release_detached_gan` is off). Shared
set-up (weights, inputs, sides) lives in `benchmarks.benchmark_setup`, the
generation path in `benchmarks.benchmark_generate`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from configs import atnet as atnet_configs
from configs import vgnet as vgnet_configs
from hcmtfg.models import at_net
from hcmtfg.models import winograd
from hcmtfg.runtime import sharding
from hcmtfg.train import atnet_steps
from hcmtfg.train import train_state as ts
from hcmtfg.train import vgnet_steps
from benchmarks import benchmark_generate
from benchmarks import benchmark_setup as setup
from benchmarks.benchmark_setup import Case
from benchmarks.benchmark_setup import Options
from benchmarks.benchmark_setup import Side


def _matmul(options: Options) -> Case:
  """A large square f32 matmul: the machine's usable GEMM rate (GFLOP/s)."""
  n = 512 if options.tiny else 2048
  rng = np.random.default_rng(options.seed)
  a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
  gflop = 2.0 * n**3 / 1e9

  def ours() -> Side:
    x, y = (jnp.asarray(v, setup.compute_dtype(options)) for v in (a, b))
    compiled, info = setup.compile_aot(lambda p, q: p @ q, x, y,
                                       options=options)
    return Side(lambda: compiled(x, y).block_until_ready(),
                lambda: x.nbytes + y.nbytes, gflop * 1e9, info)

  def release() -> Side:
    import torch  # pylint: disable=g-import-not-at-top
    x, y = torch.from_numpy(a), torch.from_numpy(b)
    return Side(lambda: x @ y, lambda: 2 * x.numel() * 4, gflop * 1e9)

  return Case("matmul_gflops", "GFLOP/s", gflop, ours, release)


def _with_transformed_kernels(module, variables):
  """Inference variables as `hcmtfg.inference.generate.Generator` holds them: with the
  Winograd kernel transforms of the fixed weights computed once."""
  return winograd.with_transformed_kernels(module, variables,
                                           *module.dummy_inputs(), train=False)


def _at_infer(options: Options, batch: int) -> Case:
  """AT-net inference (eval mode) on B clips of T frames."""
  frames = options.frames
  inputs = setup.at_inputs(batch, frames, options.seed)
  nets, flax_side = setup.shared_networks(options, ("atnet",))

  def ours() -> Side:
    module, variables = flax_side["atnet"]
    dtype = setup.compute_dtype(options)
    variables = jax.device_put(ts.cast_floats(
        _with_transformed_kernels(module, variables), dtype))
    coef = jnp.asarray(inputs["example_coef"], dtype)
    mfcc = jnp.asarray(inputs["mfcc"], dtype)
    fn = lambda v, c, m: module.apply(v, c, m, train=False)
    compiled, info = setup.compile_aot(
        fn, variables, coef, mfcc, options=options,
        default_options=at_net.compiler_options)
    return Side(lambda: compiled(variables, coef, mfcc).block_until_ready(),
                lambda: setup.tree_bytes((variables, coef, mfcc)),
                info["flops"], info)

  def release() -> Side:
    import torch  # pylint: disable=g-import-not-at-top
    net = nets["atnet"].eval()
    coef = torch.from_numpy(inputs["example_coef"])
    mfcc = torch.from_numpy(inputs["mfcc"])

    def run():
      with torch.no_grad():
        return net(coef, mfcc)

    return Side(run, lambda: setup.torch_bytes(net, coef, mfcc))

  return Case(f"at_infer_b{batch}", "frames/s", batch * frames, ours, release)


def _vg_infer(options: Options, batch: int) -> Case:
  """VG-net inference (eval mode) on B clips of T frames."""
  frames = options.frames
  size = setup.vg_sizes(options)["image_size"]
  inputs = setup.vg_inputs(batch, frames, size, options.seed)
  nets, flax_side = setup.shared_networks(options, ("vgnet",))
  names = ("example_image", "target_lmark", "example_lmark")

  def ours() -> Side:
    module, variables = flax_side["vgnet"]
    dtype = setup.compute_dtype(options)
    variables = jax.device_put(ts.cast_floats(
        _with_transformed_kernels(module, variables), dtype))
    args = [jnp.asarray(inputs[k], dtype) for k in names]
    fn = lambda v, *a: module.apply(v, *a, train=False)
    compiled, info = setup.compile_aot(fn, variables, *args, options=options)
    return Side(lambda: jax.block_until_ready(compiled(variables, *args)),
                lambda: setup.tree_bytes((variables, args)), info["flops"],
                info)

  def release() -> Side:
    import torch  # pylint: disable=g-import-not-at-top
    net = nets["vgnet"].eval()
    image = torch.from_numpy(setup.nchw(inputs["example_image"]))
    target = torch.from_numpy(inputs["target_lmark"])
    example = torch.from_numpy(inputs["example_lmark"])

    def run():
      with torch.no_grad():
        return net(image, target, example)

    return Side(run, lambda: setup.torch_bytes(net, image, target, example))

  return Case(f"vg_infer_b{batch}", "frames/s", batch * frames, ours, release)


def _train_side(step_fn, config, variables: dict[str, Any],
                batch: dict[str, np.ndarray], metric: str,
                options: Options, default_options=None) -> Side:
  """Our jitted train step exactly as the trainers jit it (state donated,
  replicated; batch over 'data'), compiled ahead of time for its FLOPs."""
  mesh = sharding.make_mesh()
  tx = ts.make_optimizer(config.optim)
  nets = {k: ts.NetState.create(tx, v) for k, v in variables.items()}
  state = ts.TrainState(step=jnp.zeros((), jnp.int32),
                        rng=jax.random.PRNGKey(options.seed), **nets)
  replicated = sharding.replicated(mesh)
  data = sharding.data_sharding(mesh)
  state = jax.device_put(state, replicated)
  batch = jax.device_put(dict(batch), data)
  compiled, info = setup.compile_aot(step_fn, state, batch, ts.freeze(config),
                            options=options, static_argnums=(2,),
                            default_options=default_options,
                            in_shardings=(replicated, data),
                            out_shardings=replicated, donate_argnums=(0,))
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics[metric].block_until_ready()

  return Side(run, lambda: setup.tree_bytes((holder["state"], batch)),
              info["flops"], info)


def _at_train(options: Options, batch: int) -> Case:
  """One AT-net Adam step on B clips of T frames (the release's config)."""
  frames = options.frames
  inputs = setup.at_inputs(batch, frames, options.seed)
  nets, flax_side = setup.shared_networks(options, ("atnet",))

  def ours() -> Side:
    config = atnet_configs.get_config("lrw")
    config.batch_size = batch
    config.data.num_target_frames = frames
    config.compute_dtype = options.dtype
    return _train_side(atnet_steps.train_step, config,
                       {"g": flax_side["atnet"][1]}, inputs, "train/loss",
                       options, default_options=at_net.compiler_options)

  def release() -> Side:
    import torch  # pylint: disable=g-import-not-at-top
    # pylint: disable-next=g-import-not-at-top
    from benchmarks import release_torch_train
    step = release_torch_train.ATNetTrainStep(nets["atnet"])
    args = [torch.from_numpy(inputs[k])
            for k in ("example_coef", "mfcc", "target_coef")]
    return Side(lambda: step(*args),
                lambda: setup.torch_bytes(step.atnet, step.optimizer, *args))

  return Case(f"at_train_b{batch}", "clips/s", batch, ours, release)


def _vg_gan(options: Options, batch: int, fused: bool = False) -> Case:
  """One VG-net GAN iteration (D step + G step) on B clips of T frames.

  `fused` times our `loss.fused_gan_step` (one generator forward) against the
  release's step (two forwards).
  """
  frames = options.frames
  sizes = setup.vg_sizes(options)
  inputs = setup.vg_inputs(batch, frames, sizes["image_size"], options.seed)
  nets, flax_side = setup.shared_networks(options, ("vgnet", "discriminator"))

  def ours() -> Side:
    config = vgnet_configs.get_config("lrw")
    config.image_size = sizes["image_size"]
    config.batch_size = batch
    config.data.num_target_frames = frames
    config.compute_dtype = options.dtype
    gen = config.model.generator
    gen.base_width = sizes["base_width"]
    gen.bottleneck_features = 2 * sizes["base_width"]
    gen.convgru_features = 8 * sizes["base_width"]
    gen.num_res_blocks = sizes["num_res_blocks"]
    gen.convgru_over_batch_axis = not options.paper_mode
    config.model.discriminator.base_width = sizes["base_width"]
    config.loss.release_detached_gan = False
    config.loss.fused_gan_step = fused
    return _train_side(vgnet_steps.train_step, config,
                       {"g": flax_side["vgnet"][1],
                        "d": flax_side["discriminator"][1]},
                       inputs, "train/g_loss", options)

  def release() -> Side:
    import torch  # pylint: disable=g-import-not-at-top
    # pylint: disable-next=g-import-not-at-top
    from benchmarks import release_torch_train
    step = release_torch_train.GanTrainStep(nets["vgnet"],
                                            nets["discriminator"])
    args = [torch.from_numpy(inputs["example_image"].transpose(0, 3, 1, 2)
                             .copy()),
            torch.from_numpy(inputs["example_lmark"]),
            torch.from_numpy(setup.nchw(inputs["target_image"])),
            torch.from_numpy(inputs["target_lmark"])]
    return Side(lambda: step(*args),
                lambda: setup.torch_bytes(step.generator, step.discriminator,
                                     step.opt_g, step.opt_d, *args))

  name = f"vg_gan_{'fused_' if fused else ''}b{batch}"
  return Case(name, "frames/s", batch * frames, ours, release)


CPU_CASES = ("matmul_gflops", "at_infer_b1", "at_infer_b16", "vg_infer_b1",
             "vg_infer_b8", "at_train_b16", "vg_gan_b1", "vg_gan_b2",
             "vg_gan_fused_b1", "vg_gan_fused_b2", "generate_10s",
             "generate_10s_write")
DEVICE_CASES = tuple(f"{c}_{d}" for c in (
    "matmul_gflops", "at_infer_b16", "at_infer_b256", "vg_infer_b8",
    "vg_infer_b64", "at_train_b16", "vg_gan_b2", "vg_gan_b10")
                     for d in ("f32", "bf16")) + ("generate_10s",)
_BATCHED = {"at_infer": _at_infer, "vg_infer": _vg_infer,
            "at_train": _at_train, "vg_gan": _vg_gan,
            "vg_gan_fused": lambda o, b: _vg_gan(o, b, fused=True)}


def build(name: str, options: Options) -> Case:
  """The case called `name`: a CPU_CASES / DEVICE_CASES name, or any
  '{at_infer,vg_infer,at_train,vg_gan,vg_gan_fused}_b<B>' (device names end
  in _f32/_bf16).

  Raises:
    ValueError: for an unknown name.
  """
  base, _, suffix = name.rpartition("_")
  if suffix in ("f32", "bf16"):
    options = dataclasses.replace(
        options, dtype="bfloat16" if suffix == "bf16" else "float32")
  else:
    base = name
  if base == "matmul_gflops":
    case = _matmul(options)
  elif base in ("generate_10s", "generate_10s_write"):
    case = benchmark_generate.generation_case(options,
                                                 write=base.endswith("_write"))
  else:
    kind, _, batch = base.rpartition("_b")
    if kind not in _BATCHED or not batch.isdigit() or int(batch) < 1:
      raise ValueError(f"unknown benchmark case {name!r}; known: "
                       f"{', '.join(CPU_CASES)} (any _b<B>), and in device "
                       "mode the same ending in _f32 or _bf16")
    case = _BATCHED[kind](options, int(batch))
  if base != name:
    case = dataclasses.replace(case, name=name)
  return case
