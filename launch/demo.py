r"""The main job: train ATVGnet on a synthetic corpus, evaluate it, make a video.

  bash launch/demo.sh [--quick] [--output_dir=DIR]     (sets up ./.venv first)
  python -m launch.demo [--quick] [--output_dir=DIR]   (inside the environment)

Stages (each prints its wall time; a re-run skips what is already done):
  1. data      build the synthetic talking-face corpus as a TFDS dataset
               (DIR/data; 200 clips, or 10 with --quick);
  2. atnet     train AT-net on it for a few minutes (DIR/atnet_synthetic, or
               DIR/atnet_tiny with --quick);
  3. vgnet     train VG-net (DIR/vgnet_synthetic or DIR/vgnet_tiny);
  4. evaluate  both networks on the test split (as launch.evaluate does:
               DIR/eval/metrics.md, metrics.json);
  5. inputs    a real photo (scikit-image's astronaut, DIR/photo.png) and a
               sentence of synthetic speech (DIR/speech.wav);
  6. generate  the talking-face video (as launch.generate with --paste_back
               and --save_intermediates: DIR/talking_face.mp4, DIR/talking_face_
               intermediates.mp4), a contact sheet of its frames
               (DIR/contact_sheet.png) and the video's mouth metrics
               (DIR/talking_metrics.json, printed): the inner-lip aperture
               dlib finds on it against AT-net's landmarks and against the
               speech's loudness (`hcmtfg.evaluation.mouth_metrics`).

Training runs in this process with the configs' `synthetic` (`tiny` with
--quick) variants and the overrides printed at the start of the stage, which
are also the command line reproducing it with launch.train. Training resumes
from its newest checkpoint and is skipped when that is at the target step;
evaluation and generation are redone only when the checkpoints they used
changed (stamps in DIR/.stamps).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any, Iterator

from absl import app
from absl import flags

from hcmtfg import atomic
from hcmtfg import paths
from hcmtfg.runtime import compile_cache

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "demo_output",
                                  "Where everything goes.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run (~2 min): tiny corpus, "
                           "tiny networks, a handful of steps.")
_ATNET_STEPS = flags.DEFINE_integer("atnet_steps", None, "AT-net training "
                                    "steps (default: per mode).")
_VGNET_STEPS = flags.DEFINE_integer("vgnet_steps", None, "VG-net training "
                                    "steps (default: per mode).")
_CACHE = compile_cache.define_flag()

# Per mode: dataset builder config and corpus size, config variant and
# overrides of each stage (eval_every_steps 0: no evaluation while training),
# and the words of the demo sentence.
MODES = {
    "full": {
        "data_config": "default", "num_clips": None,
        "atnet": ("synthetic", {"num_train_steps": 300, "eval_every_steps": 300,
                                "checkpoint_every_steps": 150,
                                "log_every_steps": 50}),
        # The variant's fast talking recipe: 800 reconstruction warm-up
        # steps, then 200 GAN steps (configs/vgnet.py).
        "vgnet": ("synthetic", {"num_train_steps": 1000,
                                "eval_every_steps": 1000,
                                "checkpoint_every_steps": 500,
                                "log_every_steps": 50}),
        "words": (0, 3, 7, 11, 15, 19),
    },
    "quick": {
        "data_config": "tiny", "num_clips": 10,
        "atnet": ("tiny", {"num_train_steps": 6, "eval_every_steps": 0,
                           "checkpoint_every_steps": 6, "log_every_steps": 2}),
        "vgnet": ("tiny", {"num_train_steps": 4, "eval_every_steps": 0,
                           "checkpoint_every_steps": 4, "log_every_steps": 2}),
        "words": (0, 3),
    },
}


def say(text: str) -> None:
  print(f"==> {text}", flush=True)


@contextlib.contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
  say(f"[{name}] ...")
  start = time.monotonic()
  yield
  timings[name] = time.monotonic() - start
  say(f"[{name}] {timings[name]:.0f} s")


def latest_step(workdir: str) -> int | None:
  """Newest checkpoint step in `workdir/checkpoints` (None if none)."""
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return None
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()
           and os.path.isdir(os.path.join(folder, n, "state"))]
  return max(steps) if steps else None


def stage_config(name: str, mode: dict[str, Any], data_dir: str,
                 steps: int | None):
  """The training config of `name` ('atnet' | 'vgnet') and its override flags."""
  from configs import atnet as atnet_config  # pylint: disable=g-import-not-at-top
  from configs import vgnet as vgnet_config  # pylint: disable=g-import-not-at-top
  variant, overrides = mode[name]
  overrides = dict(overrides)
  config = (atnet_config if name == "atnet" else vgnet_config).get_config(variant)
  if steps is not None:
    overrides.update(num_train_steps=steps, checkpoint_every_steps=steps,
                     eval_every_steps=steps if overrides["eval_every_steps"]
                     else 0)
    if config.optim.decay_steps:  # The schedule spans the run...
      overrides["optim.decay_steps"] = steps
    if name == "vgnet" and config.loss.warmup_steps:  # ...and so does the
      # warm-up, in the same proportion.
      overrides["loss.warmup_steps"] = max(1, round(
          steps * config.loss.warmup_steps / config.num_train_steps))
  overrides.update({
      "data.data_dir": data_dir, "data.config": mode["data_config"],
      "data.download_dir": os.path.join(data_dir, "downloads")})
  if mode["num_clips"] is not None:
    overrides["data.num_clips"] = mode["num_clips"]
  for key, value in overrides.items():
    parent = config
    *path, leaf = key.split(".")
    for part in path:
      parent = parent[part]
    parent[leaf] = value
  flags_text = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
  return config, f"--config=configs/{name}.py:{variant} {flags_text}"


def _stamp_path(out: str, name: str) -> str:
  return os.path.join(out, ".stamps", f"{name}.json")


def is_stamped(out: str, name: str, key: dict[str, Any], *outputs: str) -> bool:
  """Whether stage `name` finished with the same key and its outputs exist."""
  try:
    with open(_stamp_path(out, name), encoding="utf-8") as f:
      same = json.load(f) == key
  except (OSError, ValueError):
    return False
  return same and all(os.path.exists(p) for p in outputs)


def stamp(out: str, name: str, key: dict[str, Any]) -> None:
  atomic.write_json(_stamp_path(out, name), key)


def video_talking_metrics(workdirs: dict[str, str], photo: str, speech: str,
                          video: str) -> dict[str, float]:
  """Mouth metrics of the generated video against AT-net's landmarks and the
  speech (`hcmtfg.evaluation.mouth_metrics.talking_metrics`); dlib reads the pasted-back
  frames, where the face has the photo's resolution."""
  # pylint: disable=g-import-not-at-top
  from hcmtfg.features import audio as audio_lib
  from hcmtfg.features import face as face_lib
  from hcmtfg.inference import generate
  from hcmtfg.inference import networks
  from hcmtfg.inference import photo as photo_lib
  from hcmtfg.evaluation import mouth_metrics
  from hcmtfg.media import video as video_lib
  # pylint: enable=g-import-not-at-top
  generator = networks.load_generator_networks(workdirs["atnet"],
                                               workdirs["vgnet"])
  analyzer = face_lib.FaceAnalyzer()
  prepared = photo_lib.prepare_photo(photo, analyzer,
                                     image_size=generator.image_size)
  signal = audio_lib.load_audio(speech)
  driving = generate.predict_landmarks(generator, prepared, signal).landmarks
  frames = video_lib.read_video(video, with_audio=False).frames
  n = min(len(frames), len(driving))
  return mouth_metrics.talking_metrics(frames[:n], driving[:n], signal,
                                       audio_lib.SAMPLE_RATE, analyzer=analyzer)


def run(out: str, quick: bool, atnet_steps: int | None = None,
        vgnet_steps: int | None = None) -> dict[str, str]:
  """Runs (or resumes) every stage; returns the paths of the results."""
  start = time.monotonic()
  # pylint: disable=g-import-not-at-top  (heavy imports after flag parsing)
  from data_pipelines import build
  from data_pipelines.synthetic import sentence
  from hcmtfg.inference import batch_generate
  from hcmtfg.inference import demo_media
  from hcmtfg.inference import outputs
  from hcmtfg.evaluation import report
  from hcmtfg.media import image_io
  from hcmtfg.evaluation import mouth_metrics
  from hcmtfg.train import summaries
  from hcmtfg.train import trainer
  from hcmtfg.media import video as video_lib
  # pylint: enable=g-import-not-at-top
  summaries.quiet_library_logs()
  # A re-run, or a later launch.generate / launch.serve, loads what this run
  # compiles.
  compile_cache.enable(_CACHE.value)
  mode = MODES["quick" if quick else "full"]
  out = paths.user_path(out)
  data_dir = os.path.join(out, "data")
  timings: dict[str, float] = {}
  say(f"demo ({'quick' if quick else 'full'}) in {out}")

  with stage("data", timings):
    builder = build.build_dataset(
        "synthetic_talking_faces", data_dir, config=mode["data_config"],
        num_clips=mode["num_clips"], download_dir=os.path.join(data_dir,
                                                               "downloads"))
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    say(f"dataset {builder.data_dir}: {splits}")

  workdirs = {}
  for name, steps in (("atnet", atnet_steps), ("vgnet", vgnet_steps)):
    # One workdir per variant: --quick and full runs may share DIR.
    workdir = workdirs[name] = os.path.join(out, f"{name}_{mode[name][0]}")
    config, command = stage_config(name, mode, data_dir, steps)
    with stage(name, timings):
      done = latest_step(workdir)
      if done is not None and done >= config.num_train_steps:
        say(f"{workdir} is at step {done}: already trained")
        continue
      say(f"python -m launch.train {command} --workdir={workdir}")
      trainer.train(config, workdir, build.prepare_dataset(config.data))

  checkpoints = {n: f"{w}@{latest_step(w)}" for n, w in workdirs.items()}
  eval_dir = os.path.join(out, "eval")
  metrics_md = os.path.join(eval_dir, "metrics.md")
  with stage("evaluate", timings):
    key = {**checkpoints, "split": "test"}
    if is_stamped(out, "evaluate", key, metrics_md):
      say(f"{metrics_md} is up to date")
      with open(metrics_md, encoding="utf-8") as f:
        print(f.read())
    else:
      report.run(workdirs["atnet"], workdirs["vgnet"], eval_dir,
                            load_builder=build.load_builder,
                            dataset="synthetic_talking_faces",
                            data_dir=data_dir, config=mode["data_config"],
                            split="test")
      stamp(out, "evaluate", key)

  photo = os.path.join(out, "photo.png")
  speech = os.path.join(out, "speech.wav")
  with stage("inputs", timings):
    if not os.path.exists(photo):
      demo_media.write_photo(photo)
    if not os.path.exists(speech):
      demo_media.write_wav(speech, sentence.sentence_speech(mode["words"]),
                           sentence.SAMPLE_RATE)
    say(f"photo {photo}; speech {speech}: "
        f"\"{sentence.sentence_text(mode['words'])}\"")

  video = os.path.join(out, "talking_face.mp4")
  side = outputs.intermediates_path(video)
  sheet = os.path.join(out, "contact_sheet.png")
  talking_json = os.path.join(out, "talking_metrics.json")
  with stage("generate", timings):
    key = {**checkpoints, "words": list(mode["words"])}
    if is_stamped(out, "generate", key, video, side, sheet, talking_json):
      say(f"{video} is up to date")
      with open(talking_json, encoding="utf-8") as f:
        talking = json.load(f)
    else:
      code = batch_generate.run(batch_generate.Options(
          atnet_workdir=workdirs["atnet"], vgnet_workdir=workdirs["vgnet"],
          image=photo, audio=speech, output=video, save_intermediates=True,
          paste_back=True))
      if code:
        raise SystemExit(code)
      demo_media.contact_sheet(
          video_lib.read_video(side, with_audio=False).frames,
          video_lib.read_video(video, with_audio=False).frames,
          image_io.load_image(photo), sheet)
      talking = video_talking_metrics(workdirs, photo, speech, video)
      atomic.write_json(talking_json, talking)  # NaN as null
      stamp(out, "generate", key)
    say("the video's mouth:\n" + mouth_metrics.format_talking_metrics(
        {k: math.nan if v is None else v for k, v in talking.items()}))

  say("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
      + f"; total {time.monotonic() - start:.0f} s (+ start-up)")
  results = {"video": video, "intermediates": side, "metrics": metrics_md,
             "contact_sheet": sheet, "talking_metrics": talking_json,
             "photo": photo, "speech": speech}
  for name, path in results.items():
    say(f"{name:>15}: {path}")
  say("try your own photo and speech in a browser with these networks (they "
      "stay loaded; Ctrl-C stops):")
  say(f"  python -m launch.serve --atnet_workdir={workdirs['atnet']} "
      f"--vgnet_workdir={workdirs['vgnet']}")
  say("  then open http://127.0.0.1:8000/")
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from hcmtfg.errors import InputError  # pylint: disable=g-import-not-at-top
  try:
    run(_OUTPUT_DIR.value, _QUICK.value, _ATNET_STEPS.value, _VGNET_STEPS.value)
  except InputError as e:
    raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
  app.run(main)
