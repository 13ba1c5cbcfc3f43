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
each of those checkpoints with `hcmtfg.evaluation.evaluate`: VG-net alone on
the true landmarks of a split (the 'gt_landmarks' path, what the ablation is
about; no AT-net is involved), and once the example frame repeated
('copy_example'), the baseline. It writes (`hcmtfg.evaluation.study_report`
reads the evaluations back and makes the table and the plot):

  <output_dir>/<variant>/eval/step_<N>.json  one checkpoint's evaluation
                                             (launch.evaluate's metrics.json
                                             format, per-clip values included)
  <output_dir>/baseline.json                 the baseline's evaluation
  <output_dir>/learning_study.json           settings, each run's command and
                                             wall time, the plotted numbers
  <output_dir>/learning_study.md             the table
                                             (`study_report.format_markdown`)
  <output_dir>/learning_study.png            a panel per metric vs steps
                                             (`study_report.plot`)

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
import os
import time
from typing import Any, Callable, Iterable, Sequence

from absl import logging
from flax import traverse_util
import ml_collections

from hcmtfg import atomic
from hcmtfg.errors import InputError
from hcmtfg.evaluation import evaluate as evaluate_lib
from hcmtfg.evaluation import study_report as report_lib
from hcmtfg.weights import checkpoint_io


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

# Config fields a continued study may change without retraining from scratch.
_RESUMABLE_FIELDS = ("num_train_steps", "keep_checkpoints")


def eval_steps(steps: int, every: int) -> list[int]:
  """The evaluated steps: every `every` steps, and the last one."""
  if steps < 1 or every < 1:
    raise ValueError(f"steps and eval_every must be >= 1, got {steps}, {every}")
  return sorted(set(range(every, steps + 1, every)) | {steps})


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> None:
  """Sets dotted fields ('loss.pixel') of `config`, as `--config.FIELD=VALUE`
  flags do; a field the config lacks raises KeyError (locked meanwhile)."""
  was_locked = config.is_locked
  config.lock()
  try:
    config.update_from_flattened_dict(overrides)
  finally:
    if not was_locked:
      config.unlock()


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
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(path, f"cannot read the workdir's config: {e}") from e
  if not isinstance(old, dict):
    raise InputError(path, "the workdir's config is not a JSON object")
  old = traverse_util.flatten_dict(old, sep=".")
  new = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()),
                                   sep=".")
  differ = [k for k in sorted(set(old) | set(new))
            if k not in _RESUMABLE_FIELDS and old.get(k) != new.get(k)]
  if differ:
    shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
                      for k in differ[:5])
    raise InputError(path, f"this workdir was trained with another config "
                     f"({shown}{' ...' if len(differ) > 5 else ''}); use "
                     "another output folder, or remove the workdir to "
                     "retrain it")


def evaluate_checkpoint(workdir: str, step: int,
                        clips: Callable[[], Iterable[evaluate_lib.Clip]],
                        analyzers: Sequence[Any], *, paths: Sequence[str],
                        batch_size: int = 4) -> dict[str, Any]:
  """`evaluate_lib.evaluate` of `paths` with a VG-net checkpoint of a training
  workdir (no AT-net); returns its results plus 'checkpoint' and 'step'."""
  from hcmtfg.inference import networks  # pylint: disable=g-import-not-at-top
  generator = networks.load_vgnet_generator(workdir, step=step)
  results = evaluate_lib.evaluate(generator, clips(), analyzers=analyzers,
                                  batch_size=batch_size, paths=paths)
  checkpoint = os.path.relpath(generator.sources["vgnet"], workdir)
  return {"checkpoint": checkpoint, "step": step, **results}


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

  json_path = os.path.join(output_dir, report_lib.STUDY_JSON)
  study = report_lib.read_json(json_path) or {"runs": []}
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
  paths = {"md": os.path.join(output_dir, report_lib.STUDY_MD),
           "png": os.path.join(output_dir, report_lib.STUDY_PNG),
           "json": json_path}

  def report():
    this_run["seconds"] = time.monotonic() - start
    numbers = report_lib.collect(output_dir, study["variants"], evaluated)
    study["numbers"] = numbers
    atomic.write_json(json_path, study)
    atomic.write_text(paths["md"],
                      report_lib.format_markdown(study, numbers, VARIANTS))
    report_lib.plot(numbers, paths["png"], f"{settings['dataset']} {split}: "
                    "VG-net on the true landmarks")

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
      flags = report_lib.override_flags({**shown, **VARIANTS[variant].overrides})
      say(f"[{variant}] training to step {steps}: python -m launch.train "
          f"--config={config_name} {flags} "
          f"--workdir={os.path.join(display_dir, variant)}")
      t = time.monotonic()
      trainer_lib.train(config, workdir, builder)
      study["train_seconds"][variant] = (study["train_seconds"].get(variant, 0.0)
                                         + time.monotonic() - t)
      report()
    for step in evaluated:
      target = report_lib.eval_path(output_dir, variant, step)
      if os.path.exists(target):
        continue
      t = time.monotonic()
      results = evaluate_checkpoint(workdir, step, clips, analyzers,
                                    paths=(report_lib.PATH,),
                                    batch_size=batch_size)
      if not results["num_clips"]:
        raise InputError(os.fspath(builder.data_dir), f"split {split!r} has "
                         "no clip of 2 frames or more")
      seconds = time.monotonic() - t
      os.makedirs(os.path.dirname(target), exist_ok=True)
      atomic.write_json(target, {"variant": variant, "split": split,
                                 "seconds": seconds, **results})
      study["eval_seconds"][variant] = (study["eval_seconds"].get(variant, 0.0)
                                        + seconds)
      say(f"[{variant}] step {step}: "
          f"{report_lib.summary_line(results, report_lib.PATH)}")
      baseline = os.path.join(output_dir, report_lib.BASELINE_JSON)
      if not os.path.exists(baseline):
        results = evaluate_checkpoint(workdir, step, clips, analyzers,
                                      paths=(report_lib.BASELINE_PATH,),
                                      batch_size=batch_size)
        atomic.write_json(baseline, {"split": split, **results})
        say("[baseline] "
            f"{report_lib.summary_line(results, report_lib.BASELINE_PATH)}")
      report()
  report()
  logging.info("learning study written to %s", output_dir)
  return paths
