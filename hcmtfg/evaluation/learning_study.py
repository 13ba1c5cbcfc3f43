"""The paper's ablation as a learning study: VG-net variants scored over steps.

Variants (`VARIANTS`), each a few config overrides on one base VG-net config:

  full           the paper's model: dynamic pixel-wise loss, regression
                 discriminator, attention;
  l1             plain L1 instead of the dynamic pixel-wise loss
                 (loss.pixel='l1');
  no_regression  a plain sequence discriminator, no landmark regression
                 (model.regress_landmarks=False);
  no_attention   colour output only (model.generator.use_attention=False).

`run` trains each variant with the real trainer (`trainer_lib.train`), on the
dataset its caller's `prepare_dataset` gives, in its own workdir
`<output_dir>/<variant>`, saving a checkpoint every `eval_every` steps
(all of them kept; the trainer's own validation evals are off), then scores
each of those checkpoints with `hcmtfg.evaluation.evaluate`: VG-net alone on the true
landmarks of a split (the 'gt_landmarks' path, what the ablation is about; no
AT-net is involved), and once the example frame repeated ('copy_example'), the
baseline. It writes:

  <output_dir>/<variant>/eval/step_<N>.json  one checkpoint's evaluation
                                             (launch.evaluate's metrics.json
                                             format, per-clip values included)
  <output_dir>/baseline.json                 the baseline's evaluation
  <output_dir>/learning_study.json           settings, each run's command and
                                             wall time, the plotted numbers
  <output_dir>/learning_study.md             the table (`format_markdown`)
  <output_dir>/learning_study.png            a panel per metric vs steps
                                             (`plot`)

The report is rewritten after every evaluation. Running the study again
continues it: training resumes from each workdir's newest checkpoint (a
variant already at the target step is not trained), finished evaluations are
read back, and a larger `steps` extends the curves. A workdir trained with a
different config, or an output folder made with another split, clip count or
evaluation interval, is refused with an `InputError` instead of being mixed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Sequence

from absl import logging
import ml_collections

from hcmtfg import atomic
from hcmtfg.weights import checkpoint_io
from hcmtfg.evaluation import evaluate as evaluate_lib
from hcmtfg.errors import InputError


@dataclasses.dataclass(frozen=True)
class Variant:
  """One arm of the ablation: a name, what it is, and its config overrides."""
  name: str
  title: str
  overrides: dict[str, Any]


VARIANTS = {v.name: v for v in (
    Variant("full", "the full model", {}),
    Variant("l1", "plain L1 instead of the dynamic pixel-wise loss",
            {"loss.pixel": "l1"}),
    Variant("no_regression", "no landmark regression in the discriminator",
            {"model.regress_landmarks": False}),
    Variant("no_attention", "no attention (colour output only)",
            {"model.generator.use_attention": False}),
)}


@dataclasses.dataclass(frozen=True)
class Metric:
  """A plotted metric: its key under a path in `evaluation`'s results, its
  label, and whether higher is better (None: neither)."""
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
# Config fields a continued study may change without retraining from scratch.
_RESUMABLE_FIELDS = ("num_train_steps", "keep_checkpoints")
STUDY_JSON = "learning_study.json"
STUDY_MD = "learning_study.md"
STUDY_PNG = "learning_study.png"
BASELINE_JSON = "baseline.json"


def eval_steps(steps: int, every: int) -> list[int]:
  """The evaluated steps: every `every` steps, and the last one."""
  if steps < 1 or every < 1:
    raise ValueError(f"steps and eval_every must be >= 1, got {steps}, {every}")
  return sorted(set(range(every, steps + 1, every)) | {steps})


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> None:
  """Sets dotted fields ('loss.pixel') of `config` that must exist."""
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    parent = config
    for part in path:
      parent = parent[part]
    if leaf not in parent:
      raise KeyError(f"the config has no field {key!r}")
    parent[leaf] = value


def override_flags(overrides: dict[str, Any]) -> str:
  """The overrides as `launch.train` flags."""
  return " ".join(f"--config.{k}={v}" for k, v in overrides.items())


def schedule_overrides(config: ml_collections.ConfigDict, steps: int,
                       every: int) -> dict[str, Any]:
  """What the study sets on every variant: the number of steps, a checkpoint
  at each evaluated step, all kept (with room for the extra steps a run saves:
  its first step, preemptions), and no validation evals inside the trainer
  (the study evaluates)."""
  return {"num_train_steps": steps, "checkpoint_every_steps": every,
          "keep_checkpoints": max(int(config.keep_checkpoints),
                                  len(eval_steps(steps, every)) + 5),
          "eval_every_steps": 0}


def data_overrides(data_dir: str) -> dict[str, str]:
  """The data directory and its downloads/ (the build scratch space)."""
  return {"data.data_dir": data_dir,
          "data.download_dir": os.path.join(data_dir, "downloads")}


def variant_config(base: ml_collections.ConfigDict, variant: str, steps: int,
                   every: int, data_dir: str | None = None
                   ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """The training config of `variant` and the overrides made to `base`.

  Args:
    base: a VG-net config (configs/vgnet.py), with any user overrides.
    variant: a key of `VARIANTS`.
    steps: training steps.
    every: evaluate (and checkpoint) every N steps.
    data_dir: the TFDS data directory (its downloads/ is the build scratch
      space); None keeps the config's.
  """
  if base.get("stage") != "vgnet":
    raise ValueError("the learning study trains VG-net: give a configs/"
                     f"vgnet.py config (this one's stage is {base.get('stage')!r})")
  config = base.copy_and_resolve_references()
  overrides = schedule_overrides(config, steps, every)
  if data_dir is not None:
    overrides.update(data_overrides(data_dir))
  overrides.update(VARIANTS[variant].overrides)
  apply_overrides(config, overrides)
  return config, overrides


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict
                         ) -> None:
  """Refuses to continue a workdir whose config.json differs from `config` in
  anything but the number of steps and checkpoints kept.

  Raises:
    InputError: naming the config file and the first differing fields.
  """
  path = os.path.join(workdir, checkpoint_io.CONFIG_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path, encoding="utf-8") as f:
      old = _flatten(json.load(f))
  except (OSError, ValueError) as e:
    raise InputError(path, f"cannot read the workdir's config: {e}") from e
  new = _flatten(json.loads(config.to_json_best_effort()))
  differ = [k for k in sorted(set(old) | set(new))
            if k not in _RESUMABLE_FIELDS and old.get(k) != new.get(k)]
  if differ:
    shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
                      for k in differ[:5])
    raise InputError(path, f"this workdir was trained with another config "
                     f"({shown}{' ...' if len(differ) > 5 else ''}); use "
                     "another output folder, or remove the workdir to "
                     "retrain it")


# ----------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# The report.
# ----------------------------------------------------------------------------


def _mean_std(summary: dict[str, Any] | None) -> tuple[float, float]:
  """(mean, std) of an `evaluate_lib.aggregate` entry (NaN when undefined)."""
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


def format_markdown(study: dict[str, Any], numbers: dict[str, Any]) -> str:
  """The study as markdown: the table (variant x step, each metric), the
  baseline and real-frame rows, the variants' overrides, the command and
  the wall time.

  Args:
    study: the learning_study.json record (settings, runs, variants).
    numbers: `collect`'s result.
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
    v = VARIANTS[name]
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


# ----------------------------------------------------------------------------
# The study.
# ----------------------------------------------------------------------------


def evaluate_checkpoint(workdir: str, step: int,
                        clips: Callable[[], Iterable[evaluate_lib.Clip]],
                        analyzers: Sequence[Any], *, paths: Sequence[str],
                        batch_size: int = 4) -> dict[str, Any]:
  """`evaluate_lib.evaluate` of `paths` with a VG-net checkpoint of a training
  workdir (no AT-net); returns its results plus 'checkpoint' and 'step'."""
  from hcmtfg.inference import generate  # pylint: disable=g-import-not-at-top
  generator = generate.load_vgnet_generator(workdir, step=step)
  results = evaluate_lib.evaluate(generator, clips(), analyzers=analyzers,
                                batch_size=batch_size, paths=paths)
  checkpoint = os.path.relpath(generator.sources["vgnet"], workdir)
  return {"checkpoint": checkpoint, "step": step, **results}


def _summary_line(results: dict[str, Any], path: str) -> str:
  parts = []
  for m in METRICS:
    mean, _ = _mean_std(results["metrics"].get(f"{path}/{m.key}"))
    parts.append(f"{m.label} {format_cell(mean, math.nan)}")
  return ", ".join(parts)


def run(base: ml_collections.ConfigDict, output_dir: str, *,
        prepare_dataset: Callable[[ml_collections.ConfigDict], Any],
        variants: Sequence[str] = tuple(VARIANTS), steps: int | None = None,
        eval_every: int | None = None, data_dir: str | None = None,
        split: str = "test", max_clips: int | None = None,
        batch_size: int = 4, threads: int | None = None,
        config_name: str = "configs/vgnet.py", command: str = "",
        say: Callable[[str], None] = print) -> dict[str, str]:
  """Trains and evaluates every variant (or continues); writes the report.

  Args:
    base: a VG-net config (configs/vgnet.py and any user overrides).
    output_dir: where the workdirs, evaluations and the report go.
    prepare_dataset: `config.data -> prepared TFDS builder`, building a
      missing synthetic corpus (`data_pipelines.build.prepare_dataset`); every
      variant trains on that dataset and its `split` is evaluated.
    variants: keys of `VARIANTS`, in the order they run.
    steps: training steps (None: the config's num_train_steps).
    eval_every: evaluate every N steps (None: the config's eval_every_steps,
      or only at the end when that is 0).
    data_dir: the TFDS data directory (built on demand for synthetic
      corpora); None: the config's.
    split: the split evaluated.
    max_clips: evaluate only the first N clips of the split (None: all).
    batch_size: clips per network call in the evaluations.
    threads: clip-scoring threads (None: 2, or 1 on one core).
    config_name: how the base config was given (for the report).
    command: the command line that started this run (for the report).
    say: progress lines.

  Returns:
    {'md', 'png', 'json'}: the report's paths.

  Raises:
    InputError: missing dataset, a workdir or output folder made with other
      settings, an unreadable checkpoint.
  """
  # pylint: disable=g-import-not-at-top  (heavy: TensorFlow, dlib)
  from hcmtfg.features import face
  from hcmtfg.train import trainer as trainer_lib
  # pylint: enable=g-import-not-at-top
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown or not variants:
    raise ValueError(f"variants must be some of {tuple(VARIANTS)}, got "
                     f"{tuple(variants)}")
  start = time.monotonic()
  steps = int(steps or base.num_train_steps)
  every = int(eval_every or base.eval_every_steps or steps)
  evaluated = eval_steps(steps, every)
  # The report shows the folders as given (no machine's absolute paths).
  shown = schedule_overrides(base, steps, every)
  if data_dir is not None:
    shown.update(data_overrides(data_dir))
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  display_dir = output_dir
  output_dir = os.path.abspath(os.path.expanduser(output_dir))
  os.makedirs(output_dir, exist_ok=True)
  configs = {v: variant_config(base, v, steps, every, data_dir)[0]
             for v in variants}
  first_config = configs[variants[0]]
  settings = {"config": config_name, "overrides": shown,
              "dataset": f"{first_config.data.name}/{first_config.data.config}",
              "split": split, "max_clips": max_clips, "eval_every": every,
              "output_dir": display_dir}

  json_path = os.path.join(output_dir, STUDY_JSON)
  study = read_json(json_path) or {"runs": []}
  old = study.get("settings")
  fixed = ("dataset", "split", "max_clips", "eval_every")
  if old and any(old.get(k) != settings[k] for k in fixed):
    raise InputError(json_path, "this study was made with " + ", ".join(
        f"{k}={old.get(k)!r}" for k in fixed) + "; now " + ", ".join(
            f"{k}={settings[k]!r}" for k in fixed) + ": use another output "
        "folder")
  study["settings"] = settings
  study["variants"] = list(dict.fromkeys(study.get("variants", []) + list(variants)))
  study["steps"] = evaluated
  study.setdefault("train_seconds", {})
  study.setdefault("eval_seconds", {})
  this_run = {"command": command,
              "started": datetime.datetime.now().astimezone().isoformat(
                  timespec="seconds"), "seconds": 0.0}
  study["runs"].append(this_run)
  paths = {"md": os.path.join(output_dir, STUDY_MD),
           "png": os.path.join(output_dir, STUDY_PNG), "json": json_path}

  def report():
    this_run["seconds"] = time.monotonic() - start
    numbers = collect(output_dir, study["variants"], evaluated)
    study["numbers"] = numbers
    atomic.write_json(json_path, study)
    atomic.write_text(paths["md"], format_markdown(study, numbers))
    plot(numbers, paths["png"],
         f"{settings['dataset']} {split}: VG-net on the true landmarks")

  builder = prepare_dataset(first_config.data)
  if split not in builder.info.splits:
    raise InputError(os.fspath(builder.data_dir), f"no split {split!r} (it has "
                     f"{', '.join(sorted(builder.info.splits))})")
  clips = lambda: evaluate_lib.read_clips(builder, split, max_clips)
  threads = threads or min(2, os.cpu_count() or 1)
  analyzers = [face.FaceAnalyzer() for _ in range(threads)]
  for variant in variants:
    config = configs[variant]
    workdir = os.path.join(output_dir, variant)
    check_workdir_config(workdir, config)
    saved = checkpoint_io.saved_steps(workdir)
    if saved and saved[-1] >= steps:
      say(f"[{variant}] trained to step {saved[-1]}")
    else:
      say(f"[{variant}] training to step {steps}: python -m launch.train "
          f"--config={config_name} "
          f"{override_flags({**shown, **VARIANTS[variant].overrides})} "
          f"--workdir={os.path.join(display_dir, variant)}")
      t = time.monotonic()
      trainer_lib.train(config, workdir, builder)
      study["train_seconds"][variant] = (study["train_seconds"].get(variant, 0.0)
                                         + time.monotonic() - t)
      report()
    for step in evaluated:
      target = eval_path(output_dir, variant, step)
      if os.path.exists(target):
        continue
      t = time.monotonic()
      results = evaluate_checkpoint(workdir, step, clips, analyzers,
                                    paths=(PATH,), batch_size=batch_size)
      if not results["num_clips"]:
        raise InputError(os.fspath(builder.data_dir), f"split {split!r} has "
                         "no clip of 2 frames or more")
      seconds = time.monotonic() - t
      os.makedirs(os.path.dirname(target), exist_ok=True)
      atomic.write_json(target, {"variant": variant, "split": split,
                                 "seconds": seconds, **results})
      study["eval_seconds"][variant] = (study["eval_seconds"].get(variant, 0.0)
                                        + seconds)
      say(f"[{variant}] step {step}: {_summary_line(results, PATH)}")
      baseline = os.path.join(output_dir, BASELINE_JSON)
      if not os.path.exists(baseline):
        results = evaluate_checkpoint(workdir, step, clips, analyzers,
                                      paths=(BASELINE_PATH,),
                                      batch_size=batch_size)
        atomic.write_json(baseline, {"split": split, **results})
        say(f"[baseline] {_summary_line(results, BASELINE_PATH)}")
      report()
  report()
  logging.info("learning study written to %s", output_dir)
  return paths
