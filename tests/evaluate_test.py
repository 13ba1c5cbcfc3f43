"""Tests of batch evaluation (hcmtfg/evaluate.py, hcmtfg/evaluation/report.py).

The tiny synthetic dataset (10 clips) is the one the dataset and launcher tests
share under pytest's base temp dir. The networks are tiny (32x32 frames) with
lively random weights (so that VG-net's output depends on its landmarks),
saved as training workdirs with the dataset's landmark PCA.
"""

import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import build
from hcmtfg import models
from hcmtfg.data import input_pipeline
from hcmtfg.errors import InputError
from hcmtfg.evaluation import evaluate
from hcmtfg.evaluation import mouth_metrics
from hcmtfg.evaluation import report as cli
from hcmtfg.features import audio as audio_lib
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.inference import engine
from hcmtfg.inference import generate
from hcmtfg.inference import networks as networks_lib
from tests import generate_test

ATNET = dict(base_width=4, lmark_features=[8, 16], audio_features=[32, 8],
             lstm_features=8, lstm_layers=1)
VGNET = dict(image_size=32, base_width=8, bottleneck_features=8,
             convgru_features=16, num_res_blocks=1)


@pytest.fixture(scope="module")
def builder(tiny_data):
  return build.load_builder("synthetic_talking_faces", str(tiny_data), "tiny")


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, builder, tiny_data):
  root = tmp_path_factory.mktemp("eval_nets")
  pca = input_pipeline.load_dataset_pca(builder)
  data = {"name": "synthetic_talking_faces", "config": "tiny",
          "data_dir": str(tiny_data)}
  atnet, vgnet = models.ATNet.from_config(ATNET), models.VGNet.from_config(VGNET)
  generate_test.write_training_workdir(root / "atnet", "atnet",
                                      generate_test.random_variables(atnet, 0),
                                      {"model": ATNET, "data": data}, pca)
  vg_vars = generate_test.random_variables(vgnet, 1)
  # Landmark motion is small (~0.05): amplify it, and let the colour map (not
  # the example image) dominate, so frames follow the landmarks visibly.
  vg_vars["params"]["landmark_encoder"]["kernel"] *= 50.0
  vg_vars["params"]["generator_attention"]["bias"][:] = 2.0
  generate_test.write_training_workdir(
      root / "vgnet", "vgnet", vg_vars,
      {"model": {"generator": VGNET, "discriminator": {}}, "data": data}, pca)
  return root / "atnet", root / "vgnet"


@pytest.fixture(scope="module")
def generator(workdirs):
  return networks_lib.load_generator_networks(*workdirs)


@pytest.fixture(scope="module")
def analyzer():
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
  return face.FaceAnalyzer()


@pytest.fixture(scope="module")
def clips(builder):
  return list(evaluate.read_clips(builder, "train", max_clips=3))


def test_max_clips_past_the_split_reads_all_and_unknown_split_is_named(
    builder):
  total = evaluate.split_size(builder, "test")
  assert total >= 1
  ids = [c.clip_id for c in evaluate.read_clips(builder, "test",
                                                  max_clips=total + 5)]
  assert len(ids) == total and len(set(ids)) == total
  assert evaluate.split_size(builder, "test[:1]") == 1
  assert evaluate.split_size(builder, "validation+test") == total + (
      evaluate.split_size(builder, "validation"))
  both = [c.clip_id for c in evaluate.read_clips(
      builder, "validation+test", max_clips=evaluate.split_size(
          builder, "validation") + 1)]
  assert both[-1] == ids[0]  # the first N clips of the union, in order
  with pytest.raises(InputError, match="no split 'validation\\+tset'"):
    evaluate.split_size(builder, "validation+tset")
  with pytest.raises(InputError, match=r"no split 'tset' \(it has: .*test"):
    list(evaluate.read_clips(builder, "tset", max_clips=2))


def test_perfect_generator_scores_ssim_one_lmd_zero(clips, analyzer):
  rows = []
  for clip in clips[:2]:
    reference = evaluate.real_reference(clip, analyzer)
    truth = reference["true_aperture"]
    perfect = evaluate.frame_scores(reference, clip.frames[1:], analyzer,
                                      truth)
    # Its mouth metrics are the real frames': dlib's aperture follows the true
    # landmarks' in the same (inter-ocular) units, and the corpus's speech is
    # loud when the mouth is open, in the same frames (~0.99, ~0.8-0.97).
    real = mouth_metrics.sequence_metrics(reference["aperture"], truth,
                                          reference["envelope"])
    assert {k: perfect[k] for k in real} == real
    assert perfect["aperture_r"] > 0.9
    assert perfect["aperture_std"] == pytest.approx(
        perfect["driving_aperture_std"], rel=0.3)
    assert perfect["sync_peak_r"] > 0.6 and abs(perfect["sync_peak_lag"]) <= 1
    assert perfect["release/ssim"] == pytest.approx(1.0)
    assert perfect["plain/ssim"] == pytest.approx(1.0)
    assert perfect["release/psnr"] == 100.0
    assert perfect["lmd"] == 0.0
    assert perfect["cpbd"] == pytest.approx(reference["cpbd"])
    rows.append({"clip_id": clip.clip_id, "frames": 28,
                 **{f"cascade/{k}": v for k, v in perfect.items()}})
    # A wrong video (the clip reversed in time) scores worse.
    wrong = evaluate.frame_scores(reference, clip.frames[1:][::-1], analyzer,
                                    truth)
    assert wrong["release/ssim"] < 0.99 and wrong["lmd"] > 1.0
    assert wrong["aperture_r"] < perfect["aperture_r"] - 0.3
  summary = evaluate.aggregate(rows)
  assert summary["cascade/release/ssim"]["mean"] == pytest.approx(1.0)
  assert summary["cascade/release/ssim"]["std"] == pytest.approx(0.0, abs=1e-12)
  assert summary["cascade/lmd"] == {"mean": 0.0, "std": 0.0, "count": 2}


def test_still_video_has_constant_aperture_and_undefined_r(clips, analyzer):
  clip = clips[0]
  reference = evaluate.real_reference(clip, analyzer)
  truth = reference["true_aperture"]
  # Also where dlib finds no face (upside down) and its predictor runs in the
  # real frames' boxes, were these to move.
  moving = dict(reference, boxes=[dataclasses.replace(
      b, left=b.left + t % 3, right=b.right + 2 * (t % 4))
                                  for t, b in enumerate(reference["boxes"])])
  for frame, ref in ((clip.frames[1], reference), (clip.frames[1][::-1], moving)):
    still = evaluate.frame_scores(
        ref, np.repeat(frame[None], len(truth), 0), analyzer, truth)
    assert still["aperture_std"] == pytest.approx(0.0, abs=1e-12)
    assert all(math.isnan(still[k]) for k in (
        "aperture_r", "sync_r", "sync_peak_r", "sync_peak_lag"))
    assert still["driving_aperture_std"] == pytest.approx(np.std(truth))


def test_aggregate_mean_std_skips_nan():
  rows = [{"clip_id": "a", "frames": 3, "m": 1.0, "n": math.nan},
          {"clip_id": "b", "frames": 5, "m": 3.0, "n": 2.0},
          {"clip_id": "c", "frames": 5, "m": math.nan, "n": 4.0}]
  summary = evaluate.aggregate(rows)
  assert set(summary) == {"m", "n"}
  assert summary["m"] == {"mean": 2.0, "std": 1.0, "count": 2}
  assert summary["n"] == {"mean": 3.0, "std": 1.0, "count": 2}


@functools.partial(jax.jit, static_argnums=(0,))
def _apply(module, variables, *inputs):
  return module.apply(variables, *inputs, train=False)


def _direct_frames(generator, clip: evaluate.Clip) -> dict[str, np.ndarray]:
  """Both paths for one clip with the modules' own apply (no chunks, B = 1)."""
  pca, scale = generator.pca, generator.pca.scale
  s = generator.image_size
  image = cv2.resize(clip.frames[0], (s, s), interpolation=cv2.INTER_AREA)
  image = jnp.asarray(image[None], jnp.float32) / 127.5 - 1.0
  windows = audio_lib.mfcc_windows(clip.mfcc, clip.frames.shape[0])[1:]
  example_coef = landmarks_lib.project(pca, clip.normalized[0])
  coefs = _apply(generator.atnet, generator.atnet_variables,
                 jnp.asarray(example_coef[None], jnp.float32),
                 jnp.asarray(windows[None]))
  lift = lambda c: np.asarray(c) @ pca.components.T + pca.mean
  inputs = {"cascade": (lift(coefs), lift(example_coef[None])),
            "gt_landmarks": (clip.normalized[None, 1:] * scale,
                             clip.normalized[None, 0] * scale)}
  out = {}
  for path, (target, example) in inputs.items():
    frames = _apply(generator.vgnet, generator.vgnet_variables, image,
                    jnp.asarray(target, jnp.float32),
                    jnp.asarray(example, jnp.float32)).frames
    out[path] = np.clip(np.round((np.asarray(frames[0]) + 1) * 127.5), 0, 255)
  return out


def test_batched_chunked_paths_equal_direct_computation(generator, clips):
  # B = 3 clips in chunks of 8 frames vs one clip, all frames at once.
  batched = evaluate.dispatch(generator, clips, 3, 8)
  frames = {path: engine.concatenated(chunks, "frames")
            for path, chunks in batched.chunks.items()}
  for b in (0, 2):
    direct = _direct_frames(generator, clips[b])
    n = clips[b].frames.shape[0] - 1
    for path in evaluate.NETWORK_PATHS:
      x = frames[path][b, :n].astype(int)
      assert np.abs(x - direct[path]).max() <= 1, (b, path)
  cascade, truth = frames["cascade"], frames["gt_landmarks"]
  assert (cascade != truth).mean() > 1e-3, "true landmarks give the cascade's frames"


def test_vgnet_only_generator_evaluates_a_subset_of_paths(
    generator, workdirs, clips, analyzer):
  vgnet_only = networks_lib.load_vgnet_generator(workdirs[1])
  assert vgnet_only.atnet is None and vgnet_only.pca.scale == generator.pca.scale
  run = lambda g, paths: evaluate.evaluate(  # batch padded to 3 clips
      g, clips[:1], analyzers=[analyzer], batch_size=3, chunk_frames=8,
      paths=paths)
  every = run(generator, evaluate.PATHS)
  alone = run(vgnet_only, ("gt_landmarks",))
  assert alone["paths"] == ["gt_landmarks"] and alone["num_clips"] == 1
  kept = {k for k in every["metrics"] if k.startswith(("gt_landmarks/", "real/"))}
  assert set(alone["metrics"]) == kept  # no cascade, baseline or atnet/*
  for key in kept:
    a, b = alone["metrics"][key], every["metrics"][key]
    assert a["mean"] == pytest.approx(b["mean"], nan_ok=True), key
  baseline = run(vgnet_only, ("copy_example",))
  assert {k.split("/")[0] for k in baseline["metrics"]} == {"copy_example", "real"}
  assert baseline["metrics"]["copy_example/plain/psnr"] == (
      every["metrics"]["copy_example/plain/psnr"])
  with pytest.raises(ValueError, match="AT-net"):
    run(vgnet_only, ("cascade", "gt_landmarks"))
  with pytest.raises(ValueError, match="subset"):
    run(vgnet_only, ("gt_landmark",))
  with pytest.raises(ValueError, match="no AT-net"):
    generate.predict_landmarks(vgnet_only, None, np.zeros(16000, np.float32))


def test_evaluate_cli_writes_table_and_finite_metrics(workdirs, tiny_data,
                                                      tmp_path, capsys,
                                                      max_chunk_traces):
  out = tmp_path / "eval"
  # 2 batches (the last one padded), 4 chunks each, 2 paths: each step is
  # traced once per input shape at most (VG-net: coefficients, landmarks).
  with max_chunk_traces(2):
    results = cli.run(str(workdirs[0]), str(workdirs[1]), str(out),
                      load_builder=build.load_builder, split="train",
                      max_clips=4, batch_size=3, chunk_frames=8,
                      progress=False)
  printed = capsys.readouterr().out
  assert "| SSIM ↑ | release" in printed and "| LMD px ↓ |" in printed
  assert (out / "metrics.md").read_text().strip() in printed
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["num_clips"] == 4 == len(saved["per_clip"])
  assert saved["num_frames"] == 4 * 28 and saved["dataset"] == results["dataset"]
  expected = {f"{p}/{k}" for p in evaluate.PATHS for k in (
      "release/ssim", "release/psnr", "release/psnr_true_mse", "plain/ssim",
      "plain/psnr", "lmd", "lmd_detected", "cpbd")}
  mouth = ("aperture_r", "aperture_std", "driving_aperture_std", "sync_r",
           "sync_peak_r", "sync_peak_lag")
  expected |= {f"{p}/{k}" for p in evaluate.PATHS + ("real",) for k in mouth}
  expected -= {"copy_example/driving_aperture_std"}  # the baseline is not driven
  expected |= {"real/cpbd", "atnet/pca_mse", "atnet/pixels_mean",
               "atnet/pixels_mouth", "atnet/aperture_r"}
  assert set(saved["metrics"]) == expected
  # The still baseline's r is undefined: null in the JSON, "—" in the table.
  undefined = {f"copy_example/{k}" for k in ("aperture_r", "sync_r",
                                             "sync_peak_r", "sync_peak_lag")}
  for key, entry in saved["metrics"].items():
    if key in undefined:
      assert entry == {"mean": None, "std": None, "count": 0}, key
      assert all(row[key] is None for row in saved["per_clip"]), key
      continue
    assert entry["count"] == 4, key
    assert math.isfinite(entry["mean"]) and math.isfinite(entry["std"]), key
  m = saved["metrics"]
  assert m["copy_example/aperture_std"]["mean"] == pytest.approx(0, abs=1e-12)
  assert m["real/aperture_r"]["mean"] > 0.9
  truth_std = m["real/driving_aperture_std"]["mean"]  # the true landmarks'
  assert m["gt_landmarks/driving_aperture_std"]["mean"] == pytest.approx(truth_std)
  assert m["cascade/driving_aperture_std"]["mean"] != pytest.approx(truth_std)
  rows = {line.split(" | ")[0] + " | " + line.split(" | ")[1]: line
          for line in printed.splitlines() if line.startswith("| ")}
  aperture_row = rows["| aperture r ↑ | dlib inner-lip aperture vs the driving "
                      "landmarks' (real: vs true), Pearson"]
  cells = [c.strip() for c in aperture_row.strip("|").split("|")][2:]
  assert cells[2] == "—" and all("±" in c for c in cells[:2] + cells[3:]), cells
  for name in ("| aperture std |", "| sync proxy r ↑ |", "| sync lag, frames |",
               "| AT-net aperture r ↑ |", "not LSE"):
    assert name in printed, name
  assert 0 < m["cascade/release/ssim"]["mean"] < 1
  assert m["atnet/pca_mse"]["mean"] > 0 and m["cascade/lmd"]["mean"] > 0
  differs = [abs(a[f"cascade/{k}"] - a[f"gt_landmarks/{k}"]) > 1e-6
             for a in saved["per_clip"] for k in ("plain/psnr", "release/ssim")]
  assert any(differs), "the true-landmark path equals the cascade"


def test_evaluate_cli_missing_dataset_names_build_command(workdirs, tmp_path):
  with pytest.raises(cli.InputError, match="data_pipelines.build"):
    cli.run(str(workdirs[0]), str(workdirs[1]), str(tmp_path / "e"),
            load_builder=build.load_builder,
            dataset="synthetic_talking_faces", data_dir=str(tmp_path / "none"),
            config="tiny", progress=False)


def test_evaluate_from_another_directory(workdirs, tiny_data, tmp_path,
                                        monkeypatch, capsys):
  """Workdirs and output relative to the current directory (with spaces),
  the dataset under `~`, as a user would type them (the same shapes as the
  test above, so nothing is compiled again)."""
  home, cwd = tmp_path / "home", tmp_path / "my work"
  home.mkdir()
  (home / "data sets").symlink_to(tiny_data, target_is_directory=True)
  for workdir in workdirs:
    shutil.copytree(workdir, cwd / "runs" / f"{workdir.name} run")
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.chdir(cwd)
  cli.run("runs/atnet run", "runs/vgnet run", "eval out",
          load_builder=build.load_builder,
          dataset="synthetic_talking_faces", data_dir="~/data sets",
          config="tiny", split="train", max_clips=1, batch_size=3,
          chunk_frames=8, threads=1, progress=False)
  assert str(cwd / "eval out" / "metrics.md") in capsys.readouterr().out
  saved = json.loads((cwd / "eval out" / "metrics.json").read_text())
  assert saved["num_clips"] == 1
  assert saved["data_dir"].startswith(str(home / "data sets"))
  assert saved["atnet"].startswith(str(cwd / "runs" / "atnet run"))
  assert sorted(os.listdir(cwd)) == ["eval out", "runs"]  # no folder '~'
