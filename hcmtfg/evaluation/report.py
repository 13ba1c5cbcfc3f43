"""A dataset split's evaluation, written as metrics.json and a markdown table.

`run` evaluates trained AT-net + VG-net on every clip of a split
(`hcmtfg.evaluation.evaluate`: the cascade, VG-net on the true landmarks and the
example frame repeated), then writes OUTPUT_DIR/metrics.json (per-clip values
included, non-finite numbers as null) and OUTPUT_DIR/metrics.md
(`format_table`: mean +- std over clips, one column per path, the real
frames' mouth metrics) atomically and prints the table. `launch.evaluate`
(the command line) and `launch.demo` use it; the caller gives the function
that opens the dataset (`data_pipelines.build.load_builder`), since the
library does not import the dataset builders.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

from hcmtfg import atomic
from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.evaluation import evaluate as evaluate_lib
from hcmtfg.inference import networks


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
               evaluate_lib.PATH_TITLES[p] for p in evaluate_lib.PATHS)
           + " | real frames |", "|---" * (3 + len(evaluate_lib.PATHS)) + "|"]
  for suffix, name, convention in TABLE_ROWS:
    cells = [_cell(m, f"{p}/{suffix}") for p in evaluate_lib.PATHS]
    real = _cell(m, f"real/{suffix}")
    lines.append(f"| {name} | {convention} | {' | '.join(cells)} | {real} |")
  rest = " | ".join(["–"] * len(evaluate_lib.PATHS))  # other paths, real frames
  for key, name, convention in ATNET_ROWS:
    lines.append(f"| {name} | {convention} | {_cell(m, key)} | {rest} |")
  lines += ["", "Aperture: the inner-lip gap (points 61–67, 62–66, 63–65) over "
            "the inter-ocular distance, per frame; r and std per clip "
            "(`hcmtfg.evaluation.mouth_metrics`). Sync proxy: r with the speech's RMS "
            "envelope at 25 fps (from the stored MFCC), a weights-free stand-in for "
            "LSE (SyncNet's metric), not LSE. — : undefined (a still video "
            "has no aperture r).", "",
            "Paper (real data, 128×128): GRID SSIM 0.83, PSNR 32.15, LMD "
            "1.29; LRW SSIM 0.81.", ""]
  return "\n".join(lines)


def write_results(output_dir: str | os.PathLike, results: dict[str, Any]
                  ) -> tuple[str, str]:
  """Writes metrics.json (non-finite values as null) and metrics.md atomically;
  returns their paths."""
  output_dir = os.fspath(output_dir)
  json_path = os.path.join(output_dir, "metrics.json")
  md_path = os.path.join(output_dir, "metrics.md")
  atomic.write_json(json_path, results)
  atomic.write_text(md_path, format_table(results))
  return json_path, md_path


def _recorded_data(atnet_workdir: str) -> dict:
  """config.data of a training workdir ({} when absent or unreadable)."""
  try:
    with open(os.path.join(atnet_workdir, "config.json"), encoding="utf-8") as f:
      data = json.load(f).get("data", {})
    return data if isinstance(data, dict) else {}
  except (OSError, ValueError, AttributeError):
    return {}


def run(atnet_workdir: str, vgnet_workdir: str, output_dir: str, *,
        load_builder: Callable[[str, str, str | None], Any],
        dataset: str | None = None, data_dir: str | None = None,
        config: str | None = None, split: str = "test",
        max_clips: int | None = None, batch_size: int = 4,
        chunk_frames: int = 32, pca: str | None = None,
        release_coef_scaling: bool | None = None, threads: int | None = None,
        progress: bool = True) -> dict:
  """Evaluates, writes metrics.json / metrics.md, prints and returns results.

  Args:
    atnet_workdir, vgnet_workdir: training workdirs or converted checkpoint
      folders (`hcmtfg.inference.generate.load_generator_networks`).
    output_dir: where metrics.json and metrics.md go.
    load_builder: `(name, data_dir, config) -> prepared TFDS builder`, raising
      InputError when it is missing (`data_pipelines.build.load_builder`).
    dataset, data_dir, config: the TFDS dataset, its data directory and
      builder config; each defaults to the one the AT-net workdir's
      config.json records.
    split: the split evaluated.
    max_clips: evaluate only the first N clips of the split (None: all).
    batch_size, chunk_frames: clips and frames per network call.
    pca: landmark PCA when none is stored with the AT-net weights.
    release_coef_scaling: as `hcmtfg.inference.generate` (None: on for converted
      release weights only).
    threads: clip-scoring threads (None: 2, or 1 on one core).
    progress: show a progress bar.

  Raises:
    InputError: no dataset given or recorded, a dataset not built, unreadable
      weights, or a split without a clip of 2 frames or more.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top  (dlib)
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
  generator = networks.load_generator_networks(atnet_workdir, vgnet_workdir,
                                               pca_path=pca)
  threads = threads or min(2, os.cpu_count() or 1)
  total = evaluate_lib.split_size(builder, split)
  total = min(total, max_clips) if max_clips else total
  with tqdm(total=total, unit="clip", desc=f"evaluate {split}",
            disable=not progress) as bar:
    results = evaluate_lib.evaluate(
        generator, evaluate_lib.read_clips(builder, split, max_clips),
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
