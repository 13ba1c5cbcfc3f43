"""The learning study's report: its numbers, the markdown table and the plot.

`hcmtfg.evaluation.learning_study` runs the study and writes one evaluation file
per variant and checkpoint (`eval_path`) and the baseline's (`BASELINE_JSON`);
`collect` reads them back into curves, `format_markdown` makes the table
(learning_study.md) and `plot` a panel per metric against steps
(learning_study.png). `METRICS` are the metrics shown, read from the `PATH`
entries of `hcmtfg.evaluation.evaluate`'s results (the baseline's from
`BASELINE_PATH`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

from hcmtfg import atomic
from hcmtfg.errors import InputError


@dataclasses.dataclass(frozen=True)
class Metric:
  """A shown metric: its key under a path in `evaluate`'s results, its label,
  and whether higher is better (None: neither)."""
  key: str
  label: str
  higher_is_better: bool | None


METRICS = (
    Metric("plain/psnr", "plain PSNR dB", True),
    Metric("plain/ssim", "plain SSIM", True),
    Metric("lmd", "mouth LMD px", False),
    Metric("aperture_r", "aperture r", True),
    Metric("aperture_std", "aperture std", None),
    Metric("sync_peak_r", "sync proxy r", True),
)
PATH = "gt_landmarks"  # VG-net alone, from the true landmarks
BASELINE_PATH = "copy_example"
STUDY_JSON = "learning_study.json"
STUDY_MD = "learning_study.md"
STUDY_PNG = "learning_study.png"
BASELINE_JSON = "baseline.json"


def override_flags(overrides: dict[str, Any]) -> str:
  """The overrides as `launch.train` flags."""
  return " ".join(f"--config.{k}={v}" for k, v in overrides.items())


def read_json(path: str) -> Any:
  """A JSON file written by `atomic.write_json`, or None if absent."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(path, f"cannot read it ({e}); remove it to redo it") from e


def eval_path(output_dir: str, variant: str, step: int) -> str:
  """Where one checkpoint's evaluation goes."""
  return os.path.join(output_dir, variant, "eval", f"step_{step:08d}.json")


def _mean_std(summary: dict[str, Any] | None) -> tuple[float, float]:
  """(mean, std) of an `evaluate.aggregate` entry (NaN when undefined)."""
  if not summary:
    return math.nan, math.nan
  nan = lambda v: math.nan if v is None else float(v)
  return nan(summary.get("mean")), nan(summary.get("std"))


def format_cell(mean: float, std: float) -> str:
  """'mean ± std' with 4 decimals below 1 in magnitude, else 2; '—' for an
  undefined value (e.g. the aperture r of a still video)."""
  if not math.isfinite(mean):
    return "—" if math.isnan(mean) else str(mean)
  digits = 4 if abs(mean) < 1 else 2
  if not math.isfinite(std):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_line(results: dict[str, Any], path: str) -> str:
  """One evaluation's means of `METRICS` under `path`, for a progress line."""
  parts = []
  for m in METRICS:
    mean, _ = _mean_std(results["metrics"].get(f"{path}/{m.key}"))
    parts.append(f"{m.label} {format_cell(mean, math.nan)}")
  return ", ".join(parts)


def collect(output_dir: str, variants: Sequence[str], steps: Sequence[int]
            ) -> dict[str, Any]:
  """The study's numbers from the evaluation files on disk.

  Returns:
    {'curves': {variant: {'steps': [...], metric key: {'mean': [...],
    'std': [...]}}}, 'baseline': {metric key: {'mean', 'std'}},
    'real': {...the same for the real frames}, 'num_clips', 'image_size'};
    a variant's steps are those evaluated so far.
  """
  curves, num_clips, image_size = {}, None, None
  for variant in variants:
    curve = {"steps": [], **{m.key: {"mean": [], "std": []} for m in METRICS}}
    for step in steps:
      results = read_json(eval_path(output_dir, variant, step))
      if results is None:
        continue
      num_clips, image_size = results["num_clips"], results["image_size"]
      curve["steps"].append(step)
      for m in METRICS:
        mean, std = _mean_std(results["metrics"].get(f"{PATH}/{m.key}"))
        curve[m.key]["mean"].append(mean)
        curve[m.key]["std"].append(std)
    curves[variant] = curve
  baseline, real = {}, {}
  results = read_json(os.path.join(output_dir, BASELINE_JSON))
  if results is not None:
    for m in METRICS:
      for out, key in ((baseline, f"{BASELINE_PATH}/{m.key}"),
                       (real, f"real/{m.key}")):
        mean, std = _mean_std(results["metrics"].get(key))
        out[m.key] = {"mean": mean, "std": std}
  return {"curves": curves, "baseline": baseline, "real": real,
          "num_clips": num_clips, "image_size": image_size}


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds} s"
  if seconds < 3600:
    return f"{seconds // 60} min {seconds % 60:02d} s"
  return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_markdown(study: dict[str, Any], numbers: dict[str, Any],
                    variants: Mapping[str, Any]) -> str:
  """The study as markdown: the table (variant x step, each metric), the
  baseline and real-frame rows, the variants' overrides, the command and
  the wall time.

  Args:
    study: the learning_study.json record (settings, runs, variants).
    numbers: `collect`'s result.
    variants: name -> its `title` and `overrides` (`learning_study.VARIANTS`),
      for every variant the record names.
  """
  s = study["settings"]
  arrow = {True: " ↑", False: " ↓", None: ""}
  lines = [
      "# Learning study: the paper's ablation", "",
      f"VG-net alone on the true landmarks (`hcmtfg.evaluation.evaluate`, path "
      f"`{PATH}`) of the `{s['split']}` split of {s['dataset']} "
      f"({numbers['num_clips'] or '–'} clip"
      f"{'' if numbers['num_clips'] == 1 else 's'}"
      + (f", at most {s['max_clips']}" if s["max_clips"] else "")
      + f"; frames {numbers['image_size'] or '–'}×{numbers['image_size'] or '–'}), "
      f"evaluated every {s['eval_every']} training steps of "
      f"`{s['config']}`; mean ± std over clips.", "",
      "| variant | step | " + " | ".join(
          m.label + arrow[m.higher_is_better] for m in METRICS) + " |",
      "|---|---:|" + "---:|" * len(METRICS)]
  for variant, curve in numbers["curves"].items():
    if not curve["steps"]:
      lines.append(f"| {variant} | not evaluated yet |" + " |" * len(METRICS))
    for i, step in enumerate(curve["steps"]):
      cells = [format_cell(curve[m.key]["mean"][i], curve[m.key]["std"][i])
               for m in METRICS]
      lines.append(f"| {variant} | {step} | " + " | ".join(cells) + " |")
  for title, row in (("example frame repeated (baseline)", numbers["baseline"]),
                     ("real frames", numbers["real"])):
    if row:
      cells = [format_cell(row[m.key]["mean"], row[m.key]["std"])
               if m.key in row else "–" for m in METRICS]
      lines.append(f"| {title} | – | " + " | ".join(cells) + " |")
  lines += [
      "", "Metrics (`hcmtfg.evaluation.evaluate` documents each): plain PSNR and SSIM "
      "on RGB frames at the generator's size; mouth LMD, the release's "
      "landmark distance of dlib's mouth points on 128×128 frames; aperture r, "
      "the Pearson r per clip between the inner-lip aperture dlib finds on "
      "the generated frames and that of the driving (true) landmarks; "
      "aperture std, that aperture's standard deviation over a clip "
      "(inter-ocular units); sync proxy r, the aperture's best r with the "
      "speech's RMS envelope within ±5 frames (a stand-in for LSE, not LSE). "
      "— : undefined (a still video has no aperture r). Real frames: dlib on "
      "the real frames (the ceiling of the mouth metrics).", "",
      f"Plot: [{STUDY_PNG}]({STUDY_PNG}).", "", "## Variants", ""]
  for name in study["variants"]:
    v = variants[name]
    flags = override_flags(v.overrides)
    lines.append(f"- `{name}`: {v.title}" + (f" (`{flags}`)" if flags else ""))
  runs = study["runs"]
  total = sum(r["seconds"] for r in runs)
  train = study.get("train_seconds", {})
  evals = study.get("eval_seconds", {})
  lines += [
      "", "Each variant is trained as", "",
      "```",
      f"python -m launch.train --config={s['config']} "
      f"{override_flags(s['overrides'])} <variant's overrides> "
      f"--workdir={s['output_dir']}/<variant>", "```", "",
      "## How it was made", "", "```", runs[-1]["command"], "```", "",
      f"Wall time: {_duration(total)} in {len(runs)} run"
      f"{'s' if len(runs) != 1 else ''} of the study (a re-run continues "
      "where the previous one stopped), started "
      + ", ".join(r["started"] for r in runs) + ".",
      "Training: " + (", ".join(f"{k} {_duration(v)}" for k, v in train.items())
                      or "–")
      + "; evaluation: " + (", ".join(f"{k} {_duration(v)}"
                                      for k, v in evals.items()) or "–") + ".",
      ""]
  return "\n".join(lines)


def plot(numbers: dict[str, Any], path: str, title: str = "") -> None:
  """One panel per metric against training steps, one line per variant, the
  baseline dashed and the real frames dotted; a PNG written atomically."""
  # pylint: disable=g-import-not-at-top  (matplotlib only when plotting)
  from matplotlib import figure as figure_lib
  from matplotlib import ticker
  from matplotlib.backends import backend_agg
  # pylint: enable=g-import-not-at-top
  columns = 3
  rows = math.ceil(len(METRICS) / columns)
  fig = figure_lib.Figure(figsize=(4.2 * columns, 3.2 * rows + 0.8), dpi=100)
  backend_agg.FigureCanvasAgg(fig)
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  handles = {}
  last = max((max(c["steps"]) for c in numbers["curves"].values()
              if c["steps"]), default=1)
  for ax, m in zip(axes, METRICS):
    for i, (variant, curve) in enumerate(numbers["curves"].items()):
      if curve["steps"]:
        handles[variant], = ax.plot(curve["steps"], curve[m.key]["mean"],
                                    marker="o", markersize=3, color=f"C{i}",
                                    label=variant)
    for label, row, style in (("example frame repeated", numbers["baseline"],
                               "--"), ("real frames", numbers["real"], ":")):
      value = row.get(m.key, {}).get("mean", math.nan)
      if math.isfinite(value):
        handles[label] = ax.axhline(value, color="0.35", linestyle=style,
                                    linewidth=1.2, label=label)
    arrow = {True: " (higher is better)", False: " (lower is better)",
             None: ""}[m.higher_is_better]
    ax.set_title(m.label + arrow, fontsize=10)
    ax.set_xlabel("training step", fontsize=9)
    ax.set_xlim(0, last * 1.04)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
  for ax in axes[len(METRICS):]:
    ax.set_visible(False)
  if handles:
    fig.legend(list(handles.values()), list(handles), loc="lower center",
               ncol=min(len(handles), 6), fontsize=9, frameon=False)
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout(rect=(0, 0.07, 1, 0.95 if title else 1))
  atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
