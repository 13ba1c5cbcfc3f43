"""Tests of hcmtfg.weights.convert_torch, checkpoint_io's converted checkpoints and the CLI.

State dicts are built from numpy arrays shaped as the release's checkpoints
(release_state_dict_keys.txt), so most tests need no torch; numerical parity
with the PyTorch networks is tested in parity_test.py.
"""

import logging
import math
import os
import re
import subprocess
import sys

from absl import app
from absl import flags
from absl.testing import flagsaver
import conftest
import jax
import numpy as np
import pytest

from hcmtfg import models
from hcmtfg.errors import InputError
from hcmtfg.weights import checkpoint_io
from hcmtfg.weights import convert_torch
from launch import convert_checkpoint

_SECTIONS = {"AT-net": "atnet", "VG-net generator": "vgnet",
             "discriminator": "discriminator"}
_CONVERTERS = {"atnet": convert_torch.convert_atnet,
               "vgnet": convert_torch.convert_vgnet,
               "discriminator": convert_torch.convert_discriminator}
_MODULES = {"atnet": models.ATNet, "vgnet": models.VGNet,
            "discriminator": models.RegressionDiscriminator}


@pytest.fixture(scope="module")
def release_shapes(shared_data):
  """{network: {key: shape}} parsed from release_state_dict_keys.txt."""
  path = shared_data.parent / "design" / "release_state_dict_keys.txt"
  shapes, section = {}, None
  for line in path.read_text().splitlines():
    if line.startswith("## "):
      section = _SECTIONS[line[3:].split(" (")[0]]
      shapes[section] = {}
    elif "\t" in line:
      key, shape = line.split("\t")
      shapes[section][key] = tuple(int(v) for v in re.findall(r"\d+", shape))
  assert set(shapes) == set(_SECTIONS.values())
  return shapes


def _state_dict(shapes, seed=0, prefix="module."):
  rng = np.random.default_rng(seed)
  return {prefix + k: rng.standard_normal(s).astype(np.float32)
          if s else np.asarray(7, np.int64) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def converted(release_shapes):
  """{network: (state_dict without prefix, converted variables)}."""
  out = {}
  for name, shapes in release_shapes.items():
    sd = _state_dict(shapes, prefix="")
    out[name] = (sd, _CONVERTERS[name](sd))
  return out


@pytest.mark.parametrize("name", ["atnet", "vgnet", "discriminator"])
def test_converted_tree_matches_init(converted, name):
  module = _MODULES[name]()
  expected = jax.eval_shape(
      lambda: module.init({"params": jax.random.key(0)},
                          *module.dummy_inputs(), train=False))
  _, variables = converted[name]
  assert (jax.tree.structure(variables) == jax.tree.structure(
      jax.tree.map(lambda x: 0, dict(expected))))
  jax.tree.map(lambda a, e: _assert_shape(a, e.shape), variables,
               dict(expected))
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(variables))


def _assert_shape(array, shape):
  assert array.shape == shape


def test_release_parameter_count_survives_conversion(converted,
                                                     release_shapes):
  counts = {name: sum(math.prod(a.shape)
                      for a in jax.tree.leaves(v["params"]))
            for name, (_, v) in converted.items()}
  assert counts == {"atnet": 30_071_750, "vgnet": 58_355_781,
                    "discriminator": 20_896_905}
  # Everything but num_batches_tracked, the running stats and the decoder.
  torch_params = sum(math.prod(s) for k, s in release_shapes["atnet"].items()
                     if "running" not in k and "num_batches" not in k)
  assert torch_params == counts["atnet"]


def test_layouts(converted):
  sd, v = converted["atnet"]
  p = v["params"]
  w = sd["audio_eocder.1.0.weight"]  # Conv (O, I, kh, kw) -> HWIO.
  kernel = p["audio_encoder_1"]["conv"]["kernel"]
  np.testing.assert_array_equal(kernel[2, 0, 5, 7], w[7, 5, 2, 0])
  np.testing.assert_array_equal(p["lstm_fc"]["kernel"], sd["lstm_fc.0.weight"].T)
  np.testing.assert_array_equal(p["lstm"]["kernel_hh_l2"],
                                sd["lstm.weight_hh_l2"].T)
  np.testing.assert_array_equal(v["batch_stats"]["audio_encoder_4"]["bn"]["var"],
                                sd["audio_eocder.5.1.running_var"])
  np.testing.assert_array_equal(p["audio_encoder_4"]["bn"]["scale"],
                                sd["audio_eocder.5.1.weight"])
  # Flattened (C=512, H=12, W=2) columns reordered to (H, W, C).
  fc = sd["audio_eocder_fc.0.weight"]
  c, h, w_ = 300, 7, 1
  np.testing.assert_array_equal(
      p["audio_fc_0"]["kernel"][(h * 2 + w_) * 512 + c, 9],
      fc[9, c * 24 + h * 2 + w_])
  sd, v = converted["vgnet"]
  p = v["params"]
  # ConvTranspose (I, O, kh, kw) -> flipped HWIO.
  deconv = sd["generator1.9.weight"]
  kernel = p["generator1_up_0"]["deconv"]["kernel"]
  np.testing.assert_array_equal(kernel[0, 1, 4, 3], deconv[4, 3, 2, 1])
  np.testing.assert_array_equal(p["lmark_att_0"]["deconv"]["bias"],
                                sd["lmark_att.0.bias"])
  gru = sd["convGRU.weight_hh_l0"]  # (3F, F, k, k) -> (k, k, F, 3F).
  np.testing.assert_array_equal(p["convgru"]["kernel_hh"][1, 2, 10, 1000],
                                gru[1000, 10, 1, 2])
  kernel = p["generator1_res_8"]["conv1"]["kernel"]
  np.testing.assert_array_equal(
      kernel[0, 2, 3, 4], sd["generator1.8.conv_block.4.weight"][4, 3, 0, 2])
  np.testing.assert_array_equal(v["batch_stats"]["base_1"]["bn"]["mean"],
                                sd["base.4.running_mean"])
  sd, v = converted["discriminator"]
  fc = sd["img_fc.0.weight"]  # (C=512, H=8, W=8) -> (H, W, C).
  kernel = v["params"]["img_fc"]["kernel"]
  np.testing.assert_array_equal(kernel[(3 * 8 + 5) * 512 + 17, 2],
                                fc[2, 17 * 64 + 3 * 8 + 5])


def test_module_prefix_is_optional(release_shapes, converted):
  sd_plain, expected = converted["discriminator"]
  with_prefix = {"module." + k: v for k, v in sd_plain.items()}
  got = convert_torch.convert_discriminator(with_prefix)
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  del release_shapes


def test_converted_arrays_do_not_alias_the_input(release_shapes):
  sd = _state_dict(release_shapes["atnet"])
  variables = convert_torch.convert_atnet(sd)
  before = variables["batch_stats"]["audio_encoder_0"]["bn"]["mean"].copy()
  sd["module.audio_eocder.0.1.running_mean"] += 1.0  # As torch updates it.
  np.testing.assert_array_equal(
      variables["batch_stats"]["audio_encoder_0"]["bn"]["mean"], before)


def test_missing_key(release_shapes):
  sd = _state_dict(release_shapes["atnet"])
  del sd["module.lstm.bias_hh_l1"]
  with pytest.raises(convert_torch.ConversionError,
                     match=r"missing keys: lstm\.bias_hh_l1"):
    convert_torch.convert_atnet(sd)


def test_unexpected_key(release_shapes):
  sd = _state_dict(release_shapes["vgnet"])
  sd["module.extra_head.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(convert_torch.ConversionError,
                     match=r"unexpected keys: extra_head\.weight"):
    convert_torch.convert_vgnet(sd)


def test_shape_mismatch_names_key_and_both_shapes(release_shapes):
  sd = _state_dict(release_shapes["vgnet"])
  sd["module.convGRU.weight_ih_l0"] = np.zeros((1536, 64, 3, 3), np.float32)
  with pytest.raises(convert_torch.ConversionError) as info:
    convert_torch.convert_vgnet(sd)
  message = str(info.value)
  assert "convGRU.weight_ih_l0" in message
  assert "(1536, 64, 3, 3)" in message and "(1536, 128, 3, 3)" in message


def test_wrong_network(release_shapes):
  sd = _state_dict(release_shapes["atnet"])
  with pytest.raises(convert_torch.ConversionError, match="missing keys"):
    convert_torch.convert_discriminator(sd)


def test_duplicate_key_with_and_without_prefix(release_shapes):
  sd = _state_dict(release_shapes["atnet"], prefix="")
  sd["module.lstm_fc.0.bias"] = sd["lstm_fc.0.bias"]
  with pytest.raises(convert_torch.ConversionError, match="lstm_fc.0.bias"):
    convert_torch.convert_atnet(sd)


def test_decoder_keys_dropped_with_a_log(release_shapes, caplog):
  sd = _state_dict(release_shapes["discriminator"])
  assert any(k.startswith("module.decoder.") for k in sd)
  # The converter logs through absl's logger, whose level an absl app run
  # earlier in this process (e.g. a CLI test) may have raised.
  with caplog.at_level(logging.INFO, logger="absl"):
    variables = convert_torch.convert_discriminator(sd)
  assert "decoder" not in variables["params"]
  assert "decoder.0.weight" in caplog.text
  # Elsewhere a decoder is not expected.
  sd = _state_dict(release_shapes["atnet"])
  sd["module.decoder.0.weight"] = np.zeros((2, 2), np.float32)
  with pytest.raises(convert_torch.ConversionError, match="decoder.0.weight"):
    convert_torch.convert_atnet(sd)


def test_converts_a_shrunk_network(release_shapes):
  """`module=` converts for a non-release configuration (parity on tiny nets)."""
  module = models.RegressionDiscriminator(image_size=32, base_width=4,
                                          img_features=16, lstm_layers=1)
  shapes = dict(release_shapes["discriminator"])
  shapes.update({"image_encoder_dis.0.0.weight": (4, 3, 3, 3),
                 "image_encoder_dis.0.0.bias": (4,),
                 "img_fc.0.weight": (16, 32 * 2 * 2), "img_fc.0.bias": (16,),
                 "lstm.weight_ih_l0": (1024, 512 + 16)})
  for i, width in ((1, 8), (2, 16), (3, 32)):
    shapes[f"image_encoder_dis.{i}.0.weight"] = (width, width // 2, 3, 3)
    for t in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"image_encoder_dis.{i}.1.{t}"] = (width,)
  shapes = {k: s for k, s in shapes.items() if not re.search(r"_l[12]$", k)}
  variables = convert_torch.convert_discriminator(_state_dict(shapes),
                                                  module=module)
  assert variables["params"]["img_fc"]["kernel"].shape == (128, 16)
  assert variables["params"]["lstm"]["kernel_ih_l0"].shape == (528, 1024)


def test_torch_tensors_and_files(release_shapes, converted, torch, tmp_path):
  sd_np, expected = converted["atnet"]
  sd_torch = {"module." + k: torch.from_numpy(v) for k, v in sd_np.items()}
  jax.tree.map(np.testing.assert_array_equal,
               convert_torch.convert_atnet(sd_torch), expected)
  path = tmp_path / "atnet.pth"
  torch.save({"state_dict": sd_torch, "epoch": 3}, path)
  loaded = convert_torch.load_state_dict(path)
  assert set(loaded) == set(sd_np)
  np.testing.assert_array_equal(loaded["lstm_fc.0.weight"],
                                sd_np["lstm_fc.0.weight"])
  garbage = tmp_path / "garbage.pth"
  garbage.write_text("not a checkpoint")
  for bad in (garbage, tmp_path / "missing.pth"):
    with pytest.raises(InputError, match=bad.name):
      convert_torch.load_state_dict(bad)
  del release_shapes


def test_orbax_round_trip(tmp_path):
  module = models.VGNet(image_size=32, base_width=8, convgru_features=16,
                        bottleneck_features=8, num_res_blocks=1,
                        convgru_over_batch_axis=True)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32),
      jax.eval_shape(lambda: module.init({"params": jax.random.key(0)},
                                         *module.dummy_inputs(), train=False)))
  written = checkpoint_io.save_converted(tmp_path, "vgnet", variables,
                                         module.to_config())
  assert written == tmp_path / "vgnet" and written.is_dir()
  restored, config = checkpoint_io.load_converted(tmp_path, "vgnet")
  assert models.VGNet.from_config(config) == module
  assert jax.tree.structure(restored) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, restored, variables)
  # Saving again replaces the checkpoint.
  variables["params"]["landmark_encoder"]["bias"] += 1.0
  checkpoint_io.save_converted(tmp_path, "vgnet", variables, config)
  restored, _ = checkpoint_io.load_converted(tmp_path, "vgnet")
  np.testing.assert_array_equal(restored["params"]["landmark_encoder"]["bias"],
                                variables["params"]["landmark_encoder"]["bias"])
  with pytest.raises(InputError, match="not a converted checkpoint"):
    checkpoint_io.load_converted(tmp_path, "atnet")


def _run_cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "launch.convert_checkpoint", *args],
      cwd=conftest.REPO_ROOT, capture_output=True, text=True, timeout=120,
      check=False)


def test_cli_help_lists_every_flag():
  result = _run_cli("--help")  # absl prints the help and exits with 1.
  assert "Traceback" not in result.stderr
  for flag in ("atnet_pth", "vgnet_pth", "discriminator_pth", "output_dir",
               "convgru_over_batch_axis"):
    assert re.search(rf"--(\[no\])?{flag}:", result.stdout), flag


def test_cli_converts(release_shapes, torch, tmp_path):
  sd = {k: torch.from_numpy(v) if v.ndim else torch.tensor(7)
        for k, v in _state_dict(release_shapes["atnet"]).items()}
  torch.save(sd, tmp_path / "atnet.pth")
  out = tmp_path / "out"
  result = _run_cli(f"--atnet_pth={tmp_path / 'atnet.pth'}",
                    f"--output_dir={out}")
  assert result.returncode == 0, result.stderr
  variables, config = checkpoint_io.load_converted(out, "atnet")
  assert config == models.ATNet().to_config()
  np.testing.assert_array_equal(variables["params"]["lstm_fc"]["bias"],
                                sd["module.lstm_fc.0.bias"].numpy())


def test_cli_from_another_directory_with_relative_and_home_paths(
    release_shapes, torch, tmp_path, monkeypatch):
  home, cwd = tmp_path / "home", tmp_path / "my work"
  (home / "release files").mkdir(parents=True)
  cwd.mkdir()
  sd = {k: torch.from_numpy(v) if v.ndim else torch.tensor(7)
        for k, v in _state_dict(release_shapes["atnet"]).items()}
  torch.save(sd, home / "release files" / "atnet.pth")
  result = subprocess.run(
      [sys.executable, "-m", "launch.convert_checkpoint",
       "--atnet_pth=~/release files/atnet.pth", "--output_dir=converted out"],
      cwd=cwd, env=dict(os.environ, HOME=str(home),
                        PYTHONPATH=str(conftest.REPO_ROOT)),
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  variables, _ = checkpoint_io.load_converted(cwd / "converted out", "atnet")
  np.testing.assert_array_equal(variables["params"]["lstm_fc"]["bias"],
                                sd["module.lstm_fc.0.bias"].numpy())
  assert os.listdir(cwd) == ["converted out"]
  # The library resolves relative and `~` paths itself.
  monkeypatch.chdir(cwd)
  monkeypatch.setenv("HOME", str(home))
  for directory in ("converted out", "~/../my work/converted out"):
    loaded, _ = checkpoint_io.load_converted(directory, "atnet")
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_cli_errors_exit_with_a_message(release_shapes, torch, tmp_path):
  np.save(tmp_path / "not_torch.npy", np.zeros(3))
  argv = ["convert_checkpoint", f"--vgnet_pth={tmp_path / 'not_torch.npy'}",
          f"--output_dir={tmp_path / 'out'}"]
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    with pytest.raises(SystemExit) as info:
      convert_checkpoint.main(argv[:1])
  assert "not_torch.npy" in str(info.value.code)
  with flagsaver.flagsaver():
    flags.FLAGS(argv[:1] + argv[2:])
    with pytest.raises(app.UsageError, match="at least one of"):
      convert_checkpoint.main(argv[:1])
  del release_shapes, torch
