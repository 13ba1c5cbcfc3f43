"""Release PyTorch state_dicts -> Flax variables of `hcmtfg.models`.

    sd = load_state_dict("atnet_lstm_18.pth")       # needs torch
    variables = convert_atnet(sd)                   # {'params', 'batch_stats'}
    checkpoint_io.save_converted("converted", "atnet", variables,
                                 ATNet().to_config())   # Orbax, for inference

Layout changes (PyTorch -> Flax):
  Conv2d weight (O, I, kh, kw)           -> kernel (kh, kw, I, O)
  ConvTranspose2d weight (I, O, kh, kw)  -> kernel (kh, kw, I, O), flipped in
                                            kh and kw (see TorchConvTranspose)
  Linear weight (out, in)                -> kernel (in, out); the two Linears
      reading flattened conv maps (AT-net `audio_eocder_fc.0`, discriminator
      `img_fc.0`) also have their input columns reordered from PyTorch's
      (C, H, W) flatten order to NHWC's (H, W, C)
  BatchNorm weight, bias, running_mean, running_var
                                         -> params scale, bias; batch_stats mean, var
  LSTM weight_ih_l{k}, weight_hh_l{k}    -> kernel_ih_l{k}, kernel_hh_l{k}, transposed
  ConvGRU weight_{ih,hh}_l0 (3F, C, k, k) -> kernel_{ih,hh} (k, k, C, 3F)
Biases keep their shape. `num_batches_tracked` is ignored; a leading `module.`
(nn.DataParallel) is stripped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
from typing import Any, Callable, Mapping, Optional

from absl import logging
from flax import traverse_util
import flax.linen as nn
import jax
import numpy as np

from hcmtfg.errors import InputError
from hcmtfg.models.at_net import ATNet
from hcmtfg.models.discriminator import RegressionDiscriminator
from hcmtfg.models.vg_net import VGNet

_PREFIX = "module."


class ConversionError(ValueError):
  """A state_dict does not fit the network it is converted for."""


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One PyTorch tensor and where it goes in the Flax variables."""
  key: str  # PyTorch key, without 'module.'.
  path: tuple[str, ...]  # (collection, module..., name).
  to_flax: Callable[[np.ndarray], np.ndarray]
  torch_shape: Callable[[tuple[int, ...]], tuple[int, ...]]  # from Flax shape.


def _same(x):
  return x


def _linear(prefix: str, path: tuple[str, ...],
            chw: Optional[tuple[int, int, int]] = None) -> list[_Entry]:
  """Linear; `chw` reorders input columns from (C, H, W) to (H, W, C)."""
  if chw is None:
    to_kernel = lambda w: w.T
  else:
    c, h, w_ = chw
    to_kernel = lambda w: (w.reshape(w.shape[0], c, h, w_)
                           .transpose(2, 3, 1, 0).reshape(h * w_ * c, -1))
  return [
      _Entry(f"{prefix}.weight", ("params",) + path + ("kernel",), to_kernel,
             lambda s: (s[1], s[0])),
      _Entry(f"{prefix}.bias", ("params",) + path + ("bias",), _same, _same),
  ]


def _conv(prefix: str, path: tuple[str, ...], bias: bool) -> list[_Entry]:
  entries = [_Entry(f"{prefix}.weight", ("params",) + path + ("kernel",),
                    lambda w: w.transpose(2, 3, 1, 0),
                    lambda s: (s[3], s[2], s[0], s[1]))]
  if bias:
    entries.append(
        _Entry(f"{prefix}.bias", ("params",) + path + ("bias",), _same, _same))
  return entries


def _deconv(prefix: str, path: tuple[str, ...], bias: bool) -> list[_Entry]:
  entries = [_Entry(f"{prefix}.weight", ("params",) + path + ("kernel",),
                    lambda w: w.transpose(2, 3, 0, 1)[::-1, ::-1],
                    lambda s: (s[2], s[3], s[0], s[1]))]
  if bias:
    entries.append(
        _Entry(f"{prefix}.bias", ("params",) + path + ("bias",), _same, _same))
  return entries


def _bn(prefix: str, path: tuple[str, ...]) -> list[_Entry]:
  pairs = (("weight", "params", "scale"), ("bias", "params", "bias"),
           ("running_mean", "batch_stats", "mean"),
           ("running_var", "batch_stats", "var"))
  return [_Entry(f"{prefix}.{t}", (col,) + path + (f,), _same, _same)
          for t, col, f in pairs]


def _conv_bn(prefix: str, path: tuple[str, ...]) -> list[_Entry]:
  """The release's conv2d block: Sequential(Conv2d, BatchNorm2d, ReLU)."""
  return (_conv(f"{prefix}.0", path + ("conv",), bias=False)
          + _bn(f"{prefix}.1", path + ("bn",)))


def _lstm(prefix: str, path: tuple[str, ...], num_layers: int) -> list[_Entry]:
  entries = []
  for k in range(num_layers):
    for kind in ("ih", "hh"):
      entries.append(_Entry(f"{prefix}.weight_{kind}_l{k}",
                            ("params",) + path + (f"kernel_{kind}_l{k}",),
                            lambda w: w.T, lambda s: (s[1], s[0])))
      entries.append(_Entry(f"{prefix}.bias_{kind}_l{k}",
                            ("params",) + path + (f"bias_{kind}_l{k}",),
                            _same, _same))
  return entries


def _convgru(prefix: str, path: tuple[str, ...]) -> list[_Entry]:
  entries = []
  for kind in ("ih", "hh"):
    entries.append(_Entry(f"{prefix}.weight_{kind}_l0",
                          ("params",) + path + (f"kernel_{kind}",),
                          lambda w: w.transpose(2, 3, 1, 0),
                          lambda s: (s[3], s[2], s[0], s[1])))
    entries.append(_Entry(f"{prefix}.bias_{kind}_l0",
                          ("params",) + path + (f"bias_{kind}",), _same, _same))
  return entries


def _to_numpy(value: Any) -> np.ndarray:
  """numpy array from a numpy array, a torch tensor or a nested list."""
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch.
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def _normalise(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Strips 'module.' and converts values to numpy arrays."""
  out = {}
  for key, value in state_dict.items():
    name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
    if name in out:
      raise ConversionError(f"key {name!r} occurs both with and without the "
                            f"{_PREFIX!r} prefix")
    out[name] = _to_numpy(value)
  return out


def _expected_shapes(module: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flattened {(collection, ..., name): shape} of `module.init`, traced only."""
  config = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                        for k, v in module.to_config().items()))
  return dict(_cached_expected_shapes(type(module), config))


@functools.lru_cache(maxsize=16)
def _cached_expected_shapes(cls: type[nn.Module], config: tuple[Any, ...]):
  module = cls(**dict(config))
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  tree = jax.eval_shape(
      lambda: module.init(rngs, *module.dummy_inputs(), train=False))
  return tuple((k, tuple(v.shape))
               for k, v in traverse_util.flatten_dict(tree).items())


def _first_few(items: list[str], sep: str, limit: int = 8) -> str:
  more = f" ... ({len(items) - limit} more)" if len(items) > limit else ""
  return sep.join(items[:limit]) + more


def _convert(what: str, state_dict: Mapping[str, Any], entries: list[_Entry],
             module: nn.Module, dropped_prefixes: tuple[str, ...] = ()) -> dict:
  """Checks keys and shapes of `state_dict` against `entries` and converts."""
  tensors = _normalise(state_dict)
  expected = _expected_shapes(module)
  dropped = sorted(k for k in tensors
                   if any(k.startswith(p) for p in dropped_prefixes))
  if dropped:
    logging.info("%s: dropping %d unused release tensors: %s", what,
                 len(dropped), ", ".join(dropped))
  used = set(dropped) | {k for k in tensors if k.endswith("num_batches_tracked")}
  missing, mismatched, flat = [], [], {}
  for entry in entries:
    want = entry.torch_shape(expected[entry.path])
    if entry.key not in tensors:
      missing.append(entry.key)
      continue
    used.add(entry.key)
    got = tuple(tensors[entry.key].shape)
    if got != want:
      mismatched.append(f"{entry.key} has shape {got}, expected {want}")
      continue
    # A copy: never alias the caller's (possibly torch-owned) memory.
    flat[entry.path] = np.array(entry.to_flax(tensors[entry.key]),
                                dtype=np.float32, order="C", copy=True)
  unexpected = sorted(set(tensors) - used)
  problems = []
  if missing:
    problems.append(f"missing keys: {_first_few(missing, ', ')}")
  if unexpected:
    problems.append(f"unexpected keys: {_first_few(unexpected, ', ')}")
  if mismatched:
    problems.append(f"shape mismatches: {_first_few(mismatched, '; ')}")
  if problems:
    raise ConversionError(f"cannot convert the {what} state_dict: "
                          + " | ".join(problems))
  uncovered = set(expected) - set(flat)
  if uncovered:  # A bug in the rules below, not in the checkpoint.
    raise AssertionError(f"{what}: no PyTorch tensor for {sorted(uncovered)}")
  return traverse_util.unflatten_dict(flat)


def convert_atnet(state_dict: Mapping[str, Any], *,
                  module: Optional[ATNet] = None) -> dict:
  """Converts the release AT-net (`atnet_lstm_*.pth`) to `ATNet` variables.

  Args:
    state_dict: key -> numpy array or torch tensor; 'module.' prefixes allowed.
    module: the `ATNet` to convert for (default: the release's configuration).

  Returns:
    {'params': ..., 'batch_stats': ...}: nested dicts of float32 numpy arrays,
    the same tree as `module.init` produces.

  Raises:
    ConversionError: missing or unexpected keys, or shape mismatches.
  """
  module = ATNet() if module is None else module
  entries = []
  for i, _ in enumerate(module.lmark_features):
    entries += _linear(f"lmark_encoder.{2 * i}", (f"lmark_encoder_{i}",))
  for i, torch_index in enumerate((0, 1, 3, 4, 5)):  # MaxPools at 2 and 6.
    entries += _conv_bn(f"audio_eocder.{torch_index}", (f"audio_encoder_{i}",))
  h, w, c = module.audio_feature_map_shape()
  for i, _ in enumerate(module.audio_features):
    entries += _linear(f"audio_eocder_fc.{2 * i}", (f"audio_fc_{i}",),
                       chw=(c, h, w) if i == 0 else None)
  entries += _lstm("lstm", ("lstm",), module.lstm_layers)
  entries += _linear("lstm_fc.0", ("lstm_fc",))
  return _convert("AT-net", state_dict, entries, module)


def convert_vgnet(state_dict: Mapping[str, Any], *,
                  module: Optional[VGNet] = None) -> dict:
  """Converts the release VG-net generator (`generator_*.pth`) to `VGNet` variables.

  The ConvGRU mode (`convgru_over_batch_axis`) does not change the parameters.
  Args, returns and raises as `convert_atnet`.
  """
  module = VGNet() if module is None else module
  entries = []
  for i in range(3):  # image_encoder1.0 is the ReflectionPad.
    entries += _conv_bn(f"image_encoder1.{i + 1}", (f"image_encoder1_{i}",))
  for i in range(2):
    entries += _conv_bn(f"image_encoder2.{i}", (f"image_encoder2_{i}",))
  entries += _linear("landmark_encoder.0", ("landmark_encoder",))
  entries += _conv_bn("landmark_encoder_stage2.0", ("landmark_encoder_stage2",))
  for i, (deconv, bn) in enumerate(((0, 1), (3, 4))):
    entries += _deconv(f"lmark_att.{deconv}", (f"lmark_att_{i}", "deconv"),
                       bias=True)
    entries += _bn(f"lmark_att.{bn}", (f"lmark_att_{i}", "bn"))
  entries += _conv("lmark_att.6.0", ("lmark_att_conv",), bias=True)
  entries += _conv_bn("lmark_feature.0", ("lmark_feature",))
  entries += _conv_bn("bottle_neck.0", ("bottle_neck",))
  entries += _convgru("convGRU", ("convgru",))
  n = module.num_res_blocks
  for i in range(n):
    for j, (conv, bn) in enumerate(((0, 1), (4, 5))):
      path = (f"generator1_res_{i}",)
      entries += _conv(f"generator1.{i}.conv_block.{conv}", path + (f"conv{j}",),
                       bias=False)
      entries += _bn(f"generator1.{i}.conv_block.{bn}", path + (f"bn{j}",))
  # Two (ConvTranspose, BatchNorm, ReLU) triples after the ResNet blocks in
  # generator1, and two in base.
  for torch_name, offset, flax_name in (("generator1", n, "generator1_up_"),
                                        ("base", 0, "base_")):
    for i in range(2):
      index = offset + 3 * i
      entries += _deconv(f"{torch_name}.{index}", (f"{flax_name}{i}", "deconv"),
                         bias=False)
      entries += _bn(f"{torch_name}.{index + 1}", (f"{flax_name}{i}", "bn"))
  entries += _conv("generator_color.0", ("generator_color",), bias=True)
  entries += _conv("generator_attention.0", ("generator_attention",), bias=True)
  return _convert("VG-net", state_dict, entries, module)


def convert_discriminator(state_dict: Mapping[str, Any], *,
                          module: Optional[RegressionDiscriminator] = None
                          ) -> dict:
  """Converts the release discriminator (`discriminator_*.pth`).

  The release's unused `decoder` MLP (`decoder.*`) is dropped with an INFO log.
  Args, returns and raises as `convert_atnet`.
  """
  module = RegressionDiscriminator() if module is None else module
  entries = _conv("image_encoder_dis.0.0", ("image_encoder_0",), bias=True)
  for i in range(1, 4):
    entries += _conv_bn(f"image_encoder_dis.{i}", (f"image_encoder_{i}",))
  for i, _ in enumerate(module.lmark_features):
    entries += _linear(f"encoder.{2 * i}", (f"lmark_encoder_{i}",))
  h, w, c = module.frame_feature_map_shape()
  entries += _linear("img_fc.0", ("img_fc",), chw=(c, h, w))
  entries += _lstm("lstm", ("lstm",), module.lstm_layers)
  if module.regress_landmarks:
    entries += _linear("lstm_fc.0", ("lstm_fc",))
  entries += _linear("decision.0", ("decision",))
  return _convert("discriminator", state_dict, entries, module,
                  dropped_prefixes=("decoder.",))


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint (needs torch) into {key: numpy array}.

  Accepts a bare state_dict or a dict holding exactly one (e.g. under
  'state_dict'); strips a leading 'module.' from every key.

  Raises:
    InputError: the file cannot be read or holds no state_dict.
  """
  import torch  # pylint: disable=g-import-not-at-top

  try:
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
  except (OSError, RuntimeError, EOFError, ValueError, KeyError,
          pickle.UnpicklingError) as e:
    detail = (str(e).strip().splitlines() or [""])[0][:200]
    raise InputError(path, "cannot read it as a PyTorch checkpoint "
                     f"({type(e).__name__}: {detail})") from e

  def is_tensor_dict(d):
    return (isinstance(d, Mapping) and bool(d)
            and all(isinstance(v, torch.Tensor) for v in d.values()))

  if not is_tensor_dict(obj):
    held = ([v for v in obj.values() if is_tensor_dict(v)]
            if isinstance(obj, Mapping) else [])
    if len(held) != 1:
      raise InputError(path, "holds no state_dict (a mapping of names to "
                       "tensors), or more than one")
    obj = held[0]
  try:
    return _normalise(obj)
  except ConversionError as e:
    raise InputError(path, str(e)) from e
