r"""Evaluates trained AT-net + VG-net on every clip of a dataset split.

  python -m launch.evaluate --atnet_workdir=runs/atnet --vgnet_workdir=runs/vgnet \
      --dataset=synthetic_talking_faces --data_dir=~/tensorflow_datasets \
      --split=test --output_dir=runs/eval [--config=default] [--max_clips=N]

Each clip is generated from its first frame and its audio, through the whole
cascade (AT-net -> VG-net) and, separately, by VG-net from the true landmarks;
SSIM/PSNR (the release's conventions and plain RGB), LMD, CPBD, AT-net's
landmark errors, the mouth aperture's correlation with the driving landmarks
and a lip-sync proxy (`hcmtfg.mouth_metrics`) are reported as mean +- std over
clips (`hcmtfg.evaluation` documents every convention). Writes
OUTPUT_DIR/metrics.json (per-clip values included) and OUTPUT_DIR/metrics.md,
and prints the table.

--dataset, --data_dir and --config (the dataset's builder config, e.g. 'tiny')
default to the ones recorded in the AT-net workdir's config.json. Paths may be
relative, start with `~` or contain spaces; workdirs and --data_dir may be
gs:// URLs.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from absl import app
from absl import flags

import numpy as np

from hcmtfg import atomic
from hcmtfg import compile_cache
from hcmtfg import evaluation
from hcmtfg import generate
from hcmtfg import paths
from hcmtfg.errors import InputError


# (key suffix, metric, convention): the table rows of each path.
TABLE_ROWS = (
    ("release/ssim", "SSIM ↑", "release: RGB, 256×256 INTER_AREA"),
    ("plain/ssim", "SSIM ↑", "plain: RGB, S×S"),
    ("release/psnr", "PSNR dB ↑", "release: gray uint8 256×256 (wraparound)"),
    ("release/psnr_true_mse", "PSNR dB ↑", "release, true MSE"),
    ("plain/psnr", "PSNR dB ↑", "plain: RGB, S×S"),
    ("lmd", "LMD px ↓", "release: dlib mouth, summed over 20 points, 128×128"),
    ("lmd_detected", "face found", "share of frames dlib detected"),
    ("cpbd", "CPBD ↑", "release: 64×64 blocks, 128×128"),
    ("aperture_r", "aperture r ↑", "dlib inner-lip aperture vs the driving "
     "landmarks' (real: vs true), Pearson"),
    ("aperture_std", "aperture std", "dlib inner-lip aperture, inter-ocular units"),
    ("driving_aperture_std", "driving aperture std", "of the driving landmarks (real: "
     "true landmarks)"),
    ("sync_r", "sync proxy r ↑", "aperture vs speech RMS envelope, lag 0 (not LSE)"),
    ("sync_peak_r", "sync proxy r ↑", "best lag within ±5 frames"),
    ("sync_peak_lag", "sync lag, frames", "that lag (+: mouth after sound)"),
)
ATNET_ROWS = (("atnet/pca_mse", "AT-net MSE ↓", "PCA coefficients (×scale)"),
              ("atnet/pixels_mean", "AT-net error px ↓", "68 points, 128×128"),
              ("atnet/pixels_mouth", "AT-net error px ↓", "mouth points, 128×128"),
              ("atnet/aperture_r", "AT-net aperture r ↑", "vs the true landmarks'"))


def _cell(summary: dict[str, dict[str, float]], key: str) -> str:
  entry = summary.get(key)
  if entry is None or not math.isfinite(entry["mean"]):
    if entry is None:
      return "–"
    return "—" if math.isnan(entry["mean"]) else str(entry["mean"])
  digits = 4 if abs(entry["mean"]) < 1 else 2
  return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def format_table(results: dict[str, Any]) -> str:
  """The results as a markdown table (mean ± std over clips)."""
  m = results["metrics"]
  title = results.get("title", "evaluation")
  lines = [f"## {title}", "",
           f"{results['num_clips']} clips, {results['num_frames']} scored frames "
           f"(example frame {results['example_frame']}, VG-net at "
           f"{results['image_size']}×{results['image_size']}); mean ± std over "
           "clips.", "",
           "| metric | convention | " + " | ".join(
               evaluation.PATH_TITLES[p] for p in evaluation.PATHS)
           + " | real frames |", "|---" * (3 + len(evaluation.PATHS)) + "|"]
  for suffix, name, convention in TABLE_ROWS:
    cells = [_cell(m, f"{p}/{suffix}") for p in evaluation.PATHS]
    real = _cell(m, f"real/{suffix}")
    lines.append(f"| {name} | {convention} | {' | '.join(cells)} | {real} |")
  rest = " | ".join(["–"] * len(evaluation.PATHS))  # other paths, real frames
  for key, name, convention in ATNET_ROWS:
    lines.append(f"| {name} | {convention} | {_cell(m, key)} | {rest} |")
  lines += ["", "Aperture: the inner-lip gap (points 61–67, 62–66, 63–65) over "
            "the inter-ocular distance, per frame; r and std per clip "
            "(`hcmtfg.mouth_metrics`). Sync proxy: r with the speech's RMS "
            "envelope at 25 fps (from the stored MFCC), a weights-free stand-in for "
            "LSE (SyncNet's metric), not LSE. — : undefined (a still video "
            "has no aperture r).", "",
            "Paper (real data, 128×128): GRID SSIM 0.83, PSNR 32.15, LMD "
            "1.29; LRW SSIM 0.81.", ""]
  return "\n".join(lines)


def _json_safe(x):
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def _write_text(path: str, text: str) -> None:
  fd, tmp = atomic.temp_beside(path)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_results(output_dir: str | os.PathLike, results: dict[str, Any]
                  ) -> tuple[str, str]:
  """Writes metrics.json (non-finite values as null) and metrics.md atomically;
  returns their paths."""
  output_dir = os.fspath(output_dir)
  json_path = os.path.join(output_dir, "metrics.json")
  md_path = os.path.join(output_dir, "metrics.md")
  _write_text(json_path, json.dumps(_json_safe(results), indent=1,
                                    allow_nan=False) + "\n")
  _write_text(md_path, format_table(results))
  return json_path, md_path


def _recorded_data(atnet_workdir: str) -> dict:
  """config.data of a training workdir ({} when absent or unreadable)."""
  try:
    with open(os.path.join(atnet_workdir, "config.json"), encoding="utf-8") as f:
      data = json.load(f).get("data", {})
    return data if isinstance(data, dict) else {}
  except (OSError, ValueError, AttributeError):
    return {}


def load_builder(name: str, data_dir: str, config: str | None):
  """The prepared TFDS builder; InputError with the build command if missing."""
  import data_pipelines  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = paths.user_path(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir, config=config)
  except Exception as e:  # pylint: disable=broad-except  (unknown name/config)
    raise InputError(data_dir, f"no dataset {name!r} (config {config!r}): {e}"
                     ) from e
  if not builder.is_prepared():
    raise InputError(os.path.join(data_dir, name), "dataset not built; build it "
                     f"with: python -m data_pipelines.build --dataset={name} "
                     f"--data_dir={data_dir}"
                     + (f" --config={config}" if config else ""))
  return builder


def run(atnet_workdir: str, vgnet_workdir: str, output_dir: str, *,
        dataset: str | None = None, data_dir: str | None = None,
        config: str | None = None, split: str = "test",
        max_clips: int | None = None, batch_size: int = 4,
        chunk_frames: int = 32, pca: str | None = None,
        release_coef_scaling: bool | None = None, threads: int | None = None,
        progress: bool = True) -> dict:
  """Evaluates, writes metrics.json / metrics.md, prints and returns results."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from hcmtfg import face  # pylint: disable=g-import-not-at-top  (dlib)
  atnet_workdir, vgnet_workdir, output_dir, data_dir, pca = (
      paths.user_path(p) for p in (atnet_workdir, vgnet_workdir, output_dir,
                                   data_dir, pca))
  recorded = _recorded_data(atnet_workdir)
  dataset = dataset or recorded.get("name")
  data_dir = data_dir or recorded.get("data_dir")
  config = config or recorded.get("config")
  if not (dataset and data_dir):
    raise InputError(atnet_workdir, "no dataset recorded in the workdir; give "
                     "--dataset and --data_dir")
  builder = load_builder(dataset, data_dir, config)
  generator = generate.load_generator_networks(atnet_workdir, vgnet_workdir,
                                               pca_path=pca)
  threads = threads or min(2, os.cpu_count() or 1)
  total = evaluation.split_size(builder, split)
  total = min(total, max_clips) if max_clips else total
  with tqdm(total=total, unit="clip", desc=f"evaluate {split}",
            disable=not progress) as bar:
    results = evaluation.evaluate(
        generator, evaluation.read_clips(builder, split, max_clips),
        analyzers=[face.FaceAnalyzer() for _ in range(threads)],
        batch_size=batch_size,
        chunk_frames=chunk_frames, release_coef_scaling=release_coef_scaling,
        progress=bar)
  if not results["num_clips"]:
    raise InputError(os.path.join(os.fspath(builder.data_dir)),
                     f"split {split!r} has no clip of 2 frames or more")
  name = builder.builder_config.name if builder.builder_config else ""
  results = {"title": f"{dataset}{'/' + name if name else ''} {split}",
             "dataset": dataset, "config": name, "split": split,
             "data_dir": os.fspath(builder.data_dir),
             "atnet": generator.sources.get("atnet"),
             "vgnet": generator.sources.get("vgnet"), **results}
  json_path, md_path = write_results(output_dir, results)
  print(format_table(results))
  print(f"wrote {json_path} and {md_path}")
  return results


def _define_flags() -> dict[str, flags.FlagHolder]:
  """The command-line flags (defined only when run as a program, so that other
  entry points, e.g. launch/demo.py, can import `run`)."""
  f = {}
  f["atnet_workdir"] = flags.DEFINE_string(
      "atnet_workdir", None, "AT-net training workdir or converted checkpoint "
      "folder.")
  f["vgnet_workdir"] = flags.DEFINE_string(
      "vgnet_workdir", None, "VG-net training workdir or converted checkpoint "
      "folder.")
  f["dataset"] = flags.DEFINE_string(
      "dataset", None, "TFDS dataset name (synthetic_talking_faces, lrw, grid, "
      "voxceleb2).")
  f["data_dir"] = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
  f["config"] = flags.DEFINE_string(
      "config", None, "The dataset's builder config (e.g. default, tiny).")
  f["split"] = flags.DEFINE_string("split", "test", "Split to evaluate.")
  f["output_dir"] = flags.DEFINE_string(
      "output_dir", None, "Where metrics.json and metrics.md go.")
  f["max_clips"] = flags.DEFINE_integer(
      "max_clips", None, "Evaluate only the first N clips of the split.")
  f["batch_size"] = flags.DEFINE_integer("batch_size", 4,
                                         "Clips per network call.")
  f["chunk_frames"] = flags.DEFINE_integer("chunk_frames", 32,
                                           "Frames per network call.")
  f["threads"] = flags.DEFINE_integer(
      "threads", None, "Threads scoring clips (default: 2, or 1 on one core).")
  f["pca"] = flags.DEFINE_string(
      "pca", None, "Landmark PCA when none is stored with the AT-net weights "
      "(as launch.generate).")
  f["release_coef_scaling"] = flags.DEFINE_bool(
      "release_coef_scaling", None, "Scale AT-net coefficients 1..5 as the "
      "release demo (default: on for converted release weights only).")
  f["compile_cache"] = compile_cache.define_flag()
  return f


def main(argv, f: dict[str, flags.FlagHolder]):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  value = {name: holder.value for name, holder in f.items()}
  compile_cache.enable(value.pop("compile_cache"))
  if not (value["atnet_workdir"] and value["vgnet_workdir"]
          and value["output_dir"]):
    raise app.UsageError("give --atnet_workdir, --vgnet_workdir and --output_dir")
  if value["batch_size"] < 1 or value["chunk_frames"] < 1 or (
      value["threads"] is not None and value["threads"] < 1):
    raise app.UsageError("--batch_size, --chunk_frames, --threads must be >= 1")
  atnet, vgnet, output = (value.pop(k) for k in ("atnet_workdir",
                                                  "vgnet_workdir", "output_dir"))
  try:
    run(atnet, vgnet, output, **value)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
