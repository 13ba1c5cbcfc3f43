"""Shared pieces of `benchmarks.benchmark`: options, sides, equal-weight networks.

A case (see `benchmarks.benchmark_cases`) builds, on request, one `Side` per
implementation: a zero-argument `run` that does one unit of work and returns
when it is done, the FLOPs of one call (from XLA's cost analysis of our
compiled executable; the PyTorch side does the same arithmetic) and the bytes
of the arrays the side keeps alive. Both sides get the same weights (the
PyTorch networks' random initialisation, converted with `hcmtfg.weights.convert_torch`)
and the same inputs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hcmtfg import models
from hcmtfg.weights import convert_torch


@dataclasses.dataclass(frozen=True)
class Options:
  """What every case is built with.

  Attributes:
    tiny: shrunk VG-net / discriminator (32x32, base width 8, one ResNet
      block), 4 frames per clip and 2 s of speech, for smoke tests.
    paper_mode: ConvGRU over time on both sides (default: the release's).
    dtype: 'float32' or 'bfloat16' (ours only; device mode).
    seed: weights and inputs.
    with_release: build the PyTorch side (and take our weights from it);
      False in device mode, where torch need not be installed.
    compiler_options: JSON object of XLA options for our executables that
      the benchmark compiles (not those `hcmtfg.inference.generate` jits itself).
  """
  tiny: bool = False
  paper_mode: bool = False
  dtype: str = "float32"
  seed: int = 0
  with_release: bool = True
  compiler_options: str = ""

  def xla_options(self) -> dict[str, Any] | None:
    """`compiler_options` (a JSON object) as a dict, None when empty."""
    return json.loads(self.compiler_options) if self.compiler_options else None

  @property
  def frames(self) -> int:
    return 4 if self.tiny else 16

  @property
  def speech_seconds(self) -> float:
    return 2.0 if self.tiny else 10.0


@dataclasses.dataclass
class Side:
  """One implementation of a case.

  Attributes:
    run: does one call's work and blocks until it is done.
    persistent_bytes: bytes of the arrays the side keeps between calls
      (parameters, BatchNorm statistics, optimiser state, inputs).
    flops: floating-point operations per call (None when unknown).
    extra: anything worth reporting (compile time, XLA's buffer sizes).
  """
  run: Callable[[], Any]
  persistent_bytes: Callable[[], int]
  flops: float | None = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Case:
  """A benchmark case: `work` units (frames, clips, GFLOP) per call."""
  name: str
  unit: str
  work: float
  ours: Callable[[], Side]
  release: Callable[[], Side] | None


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def tree_bytes(tree: Any) -> int:
  """Bytes of the arrays in a pytree."""
  return int(sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes
                 for x in jax.tree.leaves(tree)))


def torch_bytes(*things: Any) -> int:
  """Bytes of tensors, modules (parameters + buffers) and optimisers."""
  import torch  # pylint: disable=g-import-not-at-top
  total = 0
  for thing in things:
    if isinstance(thing, torch.nn.Module):
      tensors = list(thing.parameters()) + list(thing.buffers())
    elif isinstance(thing, torch.optim.Optimizer):
      tensors = [v for s in thing.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor)]
    else:
      tensors = [thing]
    total += sum(t.numel() * t.element_size() for t in tensors)
  return total


def _cost(compiled) -> dict[str, Any]:
  """FLOPs and XLA buffer sizes of a compiled executable."""
  info = {}
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  info["flops"] = float(cost["flops"]) if cost and "flops" in cost else None
  try:
    mem = compiled.memory_analysis()
    info["xla_temp_mb"] = mem.temp_size_in_bytes / 2**20
    info["xla_argument_mb"] = mem.argument_size_in_bytes / 2**20
  except Exception:  # pylint: disable=broad-except  (backend without it)
    pass
  return info


def compile_aot(fn: Callable[..., Any], *args, options: Options,
                static_argnums=(), default_options=None, **jit_kwargs):
  """AOT-compiles `fn` for `args`: (compiled, cost info incl. compile_s).

  `default_options` (a function of the user's XLA options returning the
  merged ones, e.g. `at_net.compiler_options`) adds the options our code
  compiles that computation with.
  """
  start = time.perf_counter()
  xla_options = options.xla_options()
  if default_options is not None:
    xla_options = default_options(xla_options)
  lowered = jax.jit(fn, static_argnums=static_argnums,
                    compiler_options=xla_options,
                    **jit_kwargs).lower(*args)
  compiled = lowered.compile()
  info = _cost(compiled)
  info["compile_s"] = time.perf_counter() - start
  return compiled, info


def compute_dtype(options: Options):
  """jnp.float32 or jnp.bfloat16, from `options.dtype`."""
  return jnp.bfloat16 if options.dtype in ("bfloat16", "bf16") else jnp.float32


def nchw(x: np.ndarray) -> np.ndarray:
  """(..., H, W, C) -> (..., C, H, W), contiguous."""
  return np.ascontiguousarray(np.moveaxis(x, -1, -3))


# ----------------------------------------------------------------------------
# Networks with shared weights.
# ----------------------------------------------------------------------------


def vg_sizes(options: Options) -> dict[str, int]:
  """VG-net / discriminator sizes: the release's, or shrunk when tiny."""
  return (dict(image_size=32, base_width=8, num_res_blocks=1) if options.tiny
          else dict(image_size=128, base_width=64, num_res_blocks=9))


def _flax_vgnet(options: Options) -> models.VGNet:
  s = vg_sizes(options)
  return models.VGNet(image_size=s["image_size"], base_width=s["base_width"],
                      bottleneck_features=2 * s["base_width"],
                      convgru_features=8 * s["base_width"],
                      num_res_blocks=s["num_res_blocks"],
                      convgru_over_batch_axis=not options.paper_mode)


def _flax_discriminator(options: Options) -> models.RegressionDiscriminator:
  s = vg_sizes(options)
  return models.RegressionDiscriminator(image_size=s["image_size"],
                                        base_width=s["base_width"])


def _torch_nets(options: Options, names: tuple[str, ...]) -> dict[str, Any]:
  """The release networks with PyTorch's random init (seeded)."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import release_torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(options.seed)
  s = vg_sizes(options)
  nets = {}
  for name in names:
    if name == "atnet":
      nets[name] = release_torch.ATNetTorch()
    elif name == "vgnet":
      nets[name] = release_torch.VGNetTorch(
          **s, convgru_over_batch_axis=not options.paper_mode)
    else:
      nets[name] = release_torch.DiscriminatorTorch(
          image_size=s["image_size"], base_width=s["base_width"])
  return nets


def _flax_module(options: Options, name: str):
  """Our module for 'atnet', 'vgnet' or 'discriminator'."""
  if name == "atnet":
    return models.ATNet()
  if name == "vgnet":
    return _flax_vgnet(options)
  return _flax_discriminator(options)


def _random_variables(shapes: Any, rng: np.random.Generator) -> Any:
  """Variables of the given shapes without compiling an init: weights from
  N(0, 0.02), BatchNorm scales and running variances 1, biases and running
  means 0 (speed does not depend on the values as long as they are normal)."""
  def fill(path, leaf):
    name = str(path[-1])
    if "scale" in name or "var" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    if "bias" in name or "mean" in name:
      return jnp.zeros(leaf.shape, leaf.dtype)
    return jnp.asarray(rng.normal(0, 0.02, leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def shared_networks(options: Options, names: tuple[str, ...]):
  """(torch nets, {name: (flax module, flax variables)}) with equal weights.

  Without the release side (`options.with_release` False, device mode) there
  are no torch nets (None) and the Flax variables are random (see
  `_random_variables`).
  """
  if not options.with_release:
    rng = np.random.default_rng(options.seed)
    flax_side = {}
    for name in names:
      module = _flax_module(options, name)
      shapes = jax.eval_shape(lambda m=module: m.init(
          jax.random.PRNGKey(0), *m.dummy_inputs(), train=False))
      flax_side[name] = (module, _random_variables(shapes, rng))
    return None, flax_side
  converters = {"atnet": convert_torch.convert_atnet,
                "vgnet": convert_torch.convert_vgnet,
                "discriminator": convert_torch.convert_discriminator}
  nets = _torch_nets(options, names)
  flax_side = {}
  for name, net in nets.items():
    module = _flax_module(options, name)
    flax_side[name] = (module, converters[name](net.state_dict(),
                                                module=module))
  return nets, flax_side


def at_inputs(batch: int, frames: int, seed: int) -> dict[str, np.ndarray]:
  """AT-net batch: example_coef (B, 6), mfcc (B, T, 28, 12), target_coef."""
  rng = np.random.default_rng(seed)
  return {"example_coef": rng.normal(0, 1, (batch, 6)).astype(np.float32),
          "mfcc": rng.normal(0, 5, (batch, frames, 28, 12)).astype(np.float32),
          "target_coef": rng.normal(0, 1, (batch, frames, 6)
                                    ).astype(np.float32)}


def vg_inputs(batch: int, frames: int, size: int,
              seed: int) -> dict[str, np.ndarray]:
  """VG-net batch (NHWC, see `hcmtfg.train.vgnet_steps`): images in [-1, 1]."""
  rng = np.random.default_rng(seed)
  example = rng.normal(0, 0.3, (batch, 136)).astype(np.float32)
  return {
      "example_image": rng.uniform(-1, 1, (batch, size, size, 3)
                                   ).astype(np.float32),
      "example_lmark": example,
      "target_image": rng.uniform(-1, 1, (batch, frames, size, size, 3)
                                  ).astype(np.float32),
      "target_lmark": (example[:, None] + rng.normal(
          0, 0.05, (batch, frames, 136))).astype(np.float32),
  }
