"""Tests of the learning study (hcmtfg/evaluation/learning_study.py, its report
hcmtfg/evaluation/study_report.py, launch/learning_study.py).

The end-to-end test runs `python -m launch.learning_study` as a subprocess (one
CPU device) on the tiny configs and the tiny synthetic dataset the other tests
share: every variant for 2 steps, evaluated at steps 1 and 2 on 2 clips; then
runs it again and checks that nothing is redone.
"""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import conftest
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vgnet as vgnet_configs
from data_pipelines import build
from hcmtfg import models
from hcmtfg.errors import InputError
from hcmtfg.evaluation import learning_study
from hcmtfg.evaluation import study_report
from hcmtfg.train import checkpoints as checkpoints_lib
from hcmtfg.train import train_state as ts
from hcmtfg.weights import checkpoint_io

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("full", "l1", "no_regression", "no_attention")
# The end-to-end run trains two of them (the table test covers every row).
E2E_VARIANTS = ("full", "no_attention")
# Matplotlib's default colours of the first four lines (C0..C3), RGB.
LINE_COLOURS = ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C),
                (0xD6, 0x27, 0x28))


def test_variants_change_only_their_field():
  base = vgnet_configs.get_config("tiny")
  configs = {v: learning_study.variant_config(base, v, 10, 4, "/data")
             for v in VARIANTS}
  assert learning_study.eval_steps(10, 4) == [4, 8, 10]
  assert learning_study.eval_steps(4, 4) == [4]
  for name, (config, overrides) in configs.items():
    assert config.num_train_steps == 10 and config.checkpoint_every_steps == 4
    assert config.keep_checkpoints >= 3 + 2  # every evaluated step is kept
    assert config.eval_every_steps == 0
    assert config.data.data_dir == "/data"
    assert config.data.download_dir == "/data/downloads"
    assert overrides["num_train_steps"] == 10
    is_variant = {"l1": config.loss.pixel == "l1",
                  "no_regression": not config.model.regress_landmarks,
                  "no_attention": not config.model.generator.use_attention}
    assert [k for k, v in is_variant.items() if v] == (
        [] if name == "full" else [name])
  assert base.num_train_steps == 2 and base.loss.pixel == "dynamic"  # untouched
  # Shared references are resolved: the frame size stays the base's.
  assert configs["no_attention"][0].model.generator.image_size == 32
  with pytest.raises(ValueError, match="VG-net"):
    from configs import atnet as atnet_configs  # pylint: disable=g-import-not-at-top
    learning_study.variant_config(atnet_configs.get_config("tiny"), "full", 2, 1)
  with pytest.raises(KeyError, match="no_such"):
    learning_study.apply_overrides(base.copy_and_resolve_references(),
                                   {"loss.no_such": 1})
  # The variant's config is left unlocked, as the base's copy was.
  assert not configs["full"][0].is_locked


def test_workdir_trained_with_another_config_is_refused(tmp_path):
  base = vgnet_configs.get_config("tiny")
  config, _ = learning_study.variant_config(base, "full", 4, 2)
  learning_study.check_workdir_config(str(tmp_path), config)  # nothing yet
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  learning_study.check_workdir_config(str(tmp_path), config)
  longer, _ = learning_study.variant_config(base, "full", 40, 2)
  learning_study.check_workdir_config(str(tmp_path), longer)  # continued
  other, _ = learning_study.variant_config(base, "l1", 4, 2)
  with pytest.raises(InputError, match="loss.pixel: 'dynamic' there, 'l1' now"):
    learning_study.check_workdir_config(str(tmp_path), other)
  (tmp_path / "config.json").write_text("[]")
  with pytest.raises(InputError, match="not a JSON object"):
    learning_study.check_workdir_config(str(tmp_path), config)


def _save_steps(workdir: pathlib.Path, module, steps) -> dict[int, dict]:
  """Saves a train state whose VG-net weights differ per step."""
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.key(0), *module.dummy_inputs(), train=False))
  saved = {}
  checkpointer = checkpoints_lib.Checkpointer(workdir / "checkpoints",
                                            async_save=False)
  for step in steps:
    variables = jax.tree.map(
        lambda x, s=step: np.full(x.shape, 0.01 * s, np.float32), shapes)
    state = ts.TrainState(step=jnp.array(step, jnp.int32),
                          rng=jax.random.PRNGKey(0),
                          g=ts.NetState.create(optax.adam(1e-3), variables))
    checkpointer.save(step, state, {}, force=True)
    saved[step] = variables
  checkpointer.close()
  config = {"model": {"generator": module.to_config(), "discriminator": {}}}
  (workdir / "config.json").write_text(json.dumps(config))
  return saved


def test_checkpoint_io_reads_a_given_step(tmp_path):
  module = models.VGNet(image_size=32, base_width=4, bottleneck_features=8,
                        convgru_features=8, num_res_blocks=1,
                        use_attention=False)
  saved = _save_steps(tmp_path, module, (2, 4))
  assert checkpoint_io.saved_steps(tmp_path) == [2, 4]
  assert checkpoint_io.saved_steps(tmp_path / "none") == []
  for step in (2, 4, None):
    loaded = checkpoint_io.load_network(tmp_path, "vgnet", step=step)
    assert loaded.step == (step or 4) and loaded.module == module
    kernel = loaded.variables["params"]["generator_color"]["kernel"]
    np.testing.assert_array_equal(
        kernel, saved[step or 4]["params"]["generator_color"]["kernel"])
  with pytest.raises(InputError, match=r"no checkpoint of step 3 \(saved: 2, 4\)"):
    checkpoint_io.load_network(tmp_path, "vgnet", step=3)
  checkpoint_io.save_converted(tmp_path / "converted", "vgnet", saved[2],
                               module.to_config())
  assert checkpoint_io.load_network(tmp_path / "converted", "vgnet").step is None
  with pytest.raises(InputError, match="converted checkpoint: it has no "
                     "training steps"):
    checkpoint_io.load_network(tmp_path / "converted", "vgnet", step=2)


def _numbers():
  """`collect`-style numbers for two steps of every variant."""
  curves = {}
  for i, name in enumerate(VARIANTS):
    curve = {"steps": [5, 10]}
    for j, m in enumerate(study_report.METRICS):
      curve[m.key] = {"mean": [0.1 * (i + 1) + j, 0.2 * (i + 1) + j],
                      "std": [0.01, 0.02]}
    curves[name] = curve
  curves["no_attention"]["aperture_r"]["mean"][0] = math.nan
  flat = {m.key: {"mean": 1.5 + j, "std": 0.5} for j, m in
          enumerate(study_report.METRICS)}
  return {"curves": curves, "baseline": dict(flat, aperture_r={
      "mean": math.nan, "std": math.nan}), "real": flat, "num_clips": 3,
          "image_size": 32}


def _study_record():
  return {"settings": {"config": "configs/vgnet.py:tiny", "overrides": {},
                       "dataset": "synthetic_talking_faces/tiny",
                       "split": "test", "max_clips": None, "eval_every": 5,
                       "output_dir": "study"},
          "variants": list(VARIANTS), "train_seconds": {"full": 75.0},
          "eval_seconds": {}, "runs": [
              {"command": "python -m launch.learning_study --output_dir=study",
               "started": "today", "seconds": 125.0}]}


def _table_rows(md: str) -> dict[tuple[str, str], list[str]]:
  rows = {}
  for line in md.splitlines():
    if line.startswith("| ") and not line.startswith("| variant"):
      cells = [c.strip() for c in line.strip("|").split("|")]
      rows[(cells[0], cells[1])] = cells[2:]
  return rows


def test_markdown_table_and_plot(tmp_path):
  numbers = _numbers()
  md = study_report.format_markdown(_study_record(), numbers,
                                  learning_study.VARIANTS)
  rows = _table_rows(md)
  assert set(rows) == {(v, s) for v in VARIANTS for s in ("5", "10")} | {
      ("example frame repeated (baseline)", "–"), ("real frames", "–")}
  # Column j is METRICS[j]; variant i's value at step 10 is 0.2 (i + 1) + j.
  assert rows[("l1", "10")][0] == "0.4000 ± 0.0200"
  assert rows[("l1", "10")][2] == "2.40 ± 0.02"
  assert rows[("no_attention", "5")][3] == "—"
  assert rows[("example frame repeated (baseline)", "–")][:4] == [
      "1.50 ± 0.50", "2.50 ± 0.50", "3.50 ± 0.50", "—"]
  assert "python -m launch.learning_study --output_dir=study" in md
  assert "Wall time: 2 min 05 s in 1 run" in md and "full 1 min 15 s" in md
  assert "`--config.model.generator.use_attention=False`" in md

  png = tmp_path / "plot.png"
  study_report.plot(numbers, str(png), "title")
  _check_plot(png, LINE_COLOURS)


def _check_plot(png: pathlib.Path, line_colours) -> None:
  """A 2 x 3 panel grid with lines of `line_colours` and the baseline; every
  variant in the legend."""
  image = cv2.imread(str(png))
  assert image is not None and image.shape == (720, 1260, 3)
  rgb = image[..., ::-1].astype(int)
  near = lambda colour: (np.abs(rgb - np.array(colour)).sum(-1) < 30).sum()
  for colour in line_colours:
    assert near(colour) > 600, colour  # a line in each of the six panels
  legend = rgb[-60:]  # the legend's strip: a short line of every variant
  for colour in line_colours:
    assert (np.abs(legend - np.array(colour)).sum(-1) < 30).sum() > 20, colour
  grey = np.abs(rgb - 0x59).sum(-1) < 15  # the baseline / real-frame lines
  assert grey.sum() > 200
  assert not list(png.parent.glob(".*"))  # no temporary file left behind


def _run_study(out: pathlib.Path, data_dir: pathlib.Path) -> str:
  env = dict(os.environ, XLA_FLAGS=conftest.xla_flags(None))  # one device
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", "launch.learning_study", f"--output_dir={out}",
       "--config=configs/vgnet.py:tiny", "--steps=2", "--eval_every=1",
       f"--variants={','.join(E2E_VARIANTS)}",
       f"--data_dir={data_dir}", "--split=train", "--max_clips=2",
       # GAN steps only: one step function to compile per variant.
       "--config.loss.fused_gan_step=True", "--config.loss.warmup_steps=0"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  log = proc.stdout + proc.stderr
  assert proc.returncode == 0, log[-4000:]
  return proc.stdout


def _cell(mean: float, std: float) -> str:
  digits = 4 if abs(mean) < 1 else 2
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


@pytest.mark.slow
def test_study_end_to_end_and_resume(tmp_path, tiny_data):
  out = tmp_path / "study"
  stdout = _run_study(out, tiny_data)
  md = (out / "learning_study.md").read_text()
  assert md.strip() in stdout
  rows = _table_rows(md)
  assert set(rows) == {(v, s) for v in E2E_VARIANTS for s in ("1", "2")} | {
      ("example frame repeated (baseline)", "–"), ("real frames", "–")}
  assert "--config.loss.fused_gan_step=True" in md  # the exact command
  assert re.search(r"Wall time: (\d+ min )?\d+ s in 1 run", md)

  psnr = {}
  for variant in E2E_VARIANTS:
    workdir = out / variant
    config = json.loads((workdir / "config.json").read_text())
    assert config["loss"]["fused_gan_step"] is True
    assert config["loss"]["pixel"] == ("l1" if variant == "l1" else "dynamic")
    assert config["model"]["regress_landmarks"] == (variant != "no_regression")
    assert config["model"]["generator"]["use_attention"] == (
        variant != "no_attention")
    assert checkpoint_io.saved_steps(workdir) == [1, 2]
    for step in (1, 2):
      results = json.loads((workdir / "eval" / f"step_{step:08d}.json")
                           .read_text())
      assert results["step"] == step and results["num_clips"] == 2
      assert results["checkpoint"] == os.path.join("checkpoints", str(step),
                                                   "state")
      assert len(results["per_clip"]) == 2
      assert not any(k.startswith(("cascade/", "copy_example/", "atnet/"))
                     for k in results["metrics"])
      # Every cell of the row comes from this file's numbers.
      for cell, m in zip(rows[(variant, str(step))], study_report.METRICS):
        entry = results["metrics"][f"gt_landmarks/{m.key}"]
        if entry["mean"] is None:
          assert cell == "—", (variant, step, m.key)
        else:
          assert cell == _cell(entry["mean"], entry["std"]), (variant, m.key)
      psnr[variant, step] = results["metrics"]["gt_landmarks/plain/psnr"]["mean"]
  # Colour output only: not the full model's frames (it blends in the photo).
  assert abs(psnr["no_attention", 1] - psnr["full", 1]) > 0.5
  baseline = json.loads((out / "baseline.json").read_text())["metrics"]
  cells = rows[("example frame repeated (baseline)", "–")]
  assert cells[0] == _cell(baseline["copy_example/plain/psnr"]["mean"],
                           baseline["copy_example/plain/psnr"]["std"])
  assert cells[3] == "—"  # a still video has no aperture r
  # Colours follow the order of the variants run: full, no_attention.
  _check_plot(out / "learning_study.png", LINE_COLOURS[:2])

  # Again, in this process (nothing is compiled): nothing is redone.
  evals = sorted(out.glob("*/eval/*.json"))
  assert len(evals) == 2 * len(E2E_VARIANTS)
  stamps = [p.stat().st_mtime_ns for p in evals]
  config = vgnet_configs.get_config("tiny")
  config.loss.fused_gan_step = True
  config.loss.warmup_steps = 0
  said = []
  learning_study.run(config, str(out), prepare_dataset=build.prepare_dataset,
                     variants=E2E_VARIANTS, steps=2,
                     eval_every=1, data_dir=str(tiny_data), split="train",
                     max_clips=2, command="again", say=said.append)
  assert said == [f"[{v}] trained to step 2" for v in E2E_VARIANTS]
  assert [p.stat().st_mtime_ns for p in evals] == stamps
  study = json.loads((out / "learning_study.json").read_text())
  assert [r["command"] for r in study["runs"]][1:] == ["again"]
  assert _table_rows((out / "learning_study.md").read_text()) == rows
  with pytest.raises(InputError, match="split='train'"):  # not mixed
    learning_study.run(config, str(out), prepare_dataset=build.prepare_dataset,
                       variants=E2E_VARIANTS, steps=2,
                       eval_every=1, data_dir=str(tiny_data), split="test",
                       say=said.append)
