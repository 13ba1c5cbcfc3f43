"""Talking-face videos from photo + speech: one, or a batch from a pairs CSV.

`run(Options(...))` generates one video (image, audio, output) or every row of
a pairs CSV (`read_pairs`: image,audio,output per line, paths relative to the
CSV's folder), and returns the exit code (0: every row succeeded). Each output
is an H.264 mp4 at 25 fps with the speech as its audio track: 128x128 face
crops, or the whole photo with the face composited back (`paste_back`);
`save_intermediates` adds OUTPUT_intermediates.mp4 (predicted landmarks |
attention | colour | result).

Outputs are written atomically (`hcmtfg.media.video.VideoWriter`), so a batch can be
run again after an interruption: rows whose outputs exist are skipped
(`overwrite` redoes them) and the hidden partial files of a killed run are
removed. A bad row (no face, unreadable photo or audio, ...) is reported and
the others still run. `launch.generate` (the command line) and `launch.demo`
use this module.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import sys
import time

from absl import logging

from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import compose
from hcmtfg.inference import engine
from hcmtfg.inference import face_prefetch
from hcmtfg.inference import generate
from hcmtfg.inference import networks
from hcmtfg.inference import outputs
from hcmtfg.inference import photo as photo_lib
from hcmtfg.inference import warm as warm_lib
from hcmtfg.media import video as video_lib
from hcmtfg.media import video_writer
from hcmtfg.runtime import compile_cache

@dataclasses.dataclass(frozen=True)
class Options:
  """Everything `run` needs (the flags, without absl)."""
  atnet_workdir: str
  vgnet_workdir: str
  image: str | None = None
  audio: str | None = None
  output: str | None = None
  pairs: str | None = None
  pca: str | None = None
  release_basics_dir: str | None = None
  save_intermediates: bool = False
  paste_back: bool = False
  release_coef_scaling: bool | None = None
  chunk_frames: int = engine.CHUNK_FRAMES
  min_face_size: int = photo_lib.MIN_FACE_SIZE
  overwrite: bool = False
  progress: bool = True
  preset: str = video_writer.FAST_PRESET


# Options holding a path or URL (see `with_user_paths`).
_PATH_OPTIONS = ("atnet_workdir", "vgnet_workdir", "image", "audio", "output",
                 "pairs", "pca", "release_basics_dir")


def with_user_paths(options: Options) -> Options:
  """`options` with every path absolute and `~` expanded (URLs kept)."""
  return dataclasses.replace(options, **{
      name: paths.user_path(getattr(options, name)) for name in _PATH_OPTIONS})


@dataclasses.dataclass(frozen=True)
class Job:
  image: str
  audio: str
  output: str
  line: int = 0


def read_pairs(path: str) -> tuple[list[Job], list[tuple[str, str]]]:
  """Jobs of a pairs CSV, and (where, problem) for its malformed lines.

  Paths in the rows are relative to the CSV's folder unless absolute or
  starting with `~`.
  """
  path = paths.user_path(path)
  if not os.path.isfile(path):
    raise InputError(path, "pairs file not found")
  folder = os.path.dirname(path)

  def resolve(cell: str) -> str:
    cell = os.path.expanduser(cell)
    return cell if os.path.isabs(cell) else os.path.join(folder, cell)
  jobs, bad = [], []
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise InputError(path, f"cannot read the pairs CSV: {e}") from e
  for number, row in enumerate(rows, start=1):
    cells = [c.strip() for c in row]
    if not any(cells) or cells[0].startswith("#"):
      continue
    if number == 1 and [c.lower() for c in cells] == ["image", "audio", "output"]:
      continue
    if len(cells) != 3 or not all(cells):
      bad.append((f"{path}:{number}", f"expected 'image,audio,output', got {row}"))
      continue
    jobs.append(Job(resolve(cells[0]), resolve(cells[1]), resolve(cells[2]), number))
  return jobs, bad


def is_complete(job: Job, options: Options) -> bool:
  """Whether the job's outputs exist as readable videos with an audio track."""
  paths = [job.output] + ([outputs.intermediates_path(job.output)]
                          if options.save_intermediates else [])
  for path in paths:
    if not os.path.isfile(path):
      return False
    try:
      info = video_lib.probe(path)
    except InputError:
      return False
    if not (info.has_video and info.has_audio):
      return False
  return True


def remove_partial_outputs(job: Job) -> list[str]:
  """Deletes what a killed run left of a job's outputs (hidden *.partial files).

  Returns:
    The files removed.
  """
  return [partial for output in (job.output, outputs.intermediates_path(job.output))
          for partial in video_writer.remove_partial_files(output)]


def run_one(warm: warm_lib.WarmNetworks, job: Job, options: Options
            ) -> dict[str, float]:
  """Generates one video; returns {'frames', 'seconds'}. Raises InputError."""
  start = time.time()
  speech = audio_lib.load_audio(job.audio)
  photo = warm.prepare_photo(job.image)
  windows = generate.speech_windows(speech)
  track, rate = outputs.output_audio(job.audio, speech)
  stream = warm.frame_stream(photo, chunk_frames=options.chunk_frames)
  renderer = compose.Renderer(photo, warm.image_size,
                              paste_back=options.paste_back,
                              intermediates=options.save_intermediates)
  with contextlib.ExitStack() as stack:
    videos = stack.enter_context(outputs.VideoOutputs(
        job.output, renderer, audio=track, audio_sample_rate=rate,
        preset=options.preset))
    bar = None
    if options.progress and options.pairs is None:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      bar = stack.enter_context(tqdm(total=windows.shape[0], unit="frame",
                                     desc=os.path.basename(job.output)))
    for chunk in stream.run(windows):
      videos.write(chunk)
      if bar is not None:
        bar.update(chunk.frames.shape[0])
    frames = videos.num_frames
  return {"frames": frames, "seconds": time.time() - start}


def run(options: Options) -> int:
  """Runs one job or a batch; returns the exit code (0 = every row succeeded)."""
  options = with_user_paths(options)
  failures: list[tuple[str, str]] = []
  # One video: dlib finds the face in a child process while the networks load.
  prefetch = (face_prefetch.PrefetchedAnalyzer(options.image)
              if not options.pairs and options.image else None)
  try:
    if options.pairs:
      jobs, failures = read_pairs(options.pairs)
    else:
      jobs = [Job(options.image, options.audio, options.output)]
    warm = warm_lib.WarmNetworks.load(networks.NetworkOptions(
        options.atnet_workdir, options.vgnet_workdir, pca=options.pca,
        release_basics_dir=options.release_basics_dir,
        release_coef_scaling=options.release_coef_scaling,
        min_face_size=options.min_face_size), analyzer=prefetch)
  except InputError as e:
    if prefetch is not None:
      prefetch.close()
    print(f"error: {e}", file=sys.stderr)
    return 1
  done = skipped = 0
  iterator = jobs
  if options.pairs and options.progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    iterator = tqdm(jobs, unit="video", desc="generate")
  for job in iterator:
    where = f"{options.pairs}:{job.line}" if options.pairs else job.output
    if options.pairs and not options.overwrite and is_complete(job, options):
      skipped += 1
      logging.info("%s: %s exists, skipped", where, job.output)
      continue
    if options.pairs:
      for partial in remove_partial_outputs(job):
        logging.info("%s: removed %s, left by an interrupted run", where,
                     partial)
    try:
      info = run_one(warm, job, options)
      done += 1
      logging.info("%s: wrote %s (%d frames, %.1f s)", where, job.output,
                   info["frames"], info["seconds"])
    except InputError as e:
      failures.append((where, str(e)))
      if options.pairs:
        logging.warning("%s: failed: %s", where, e)
    except Exception as e:  # pylint: disable=broad-except  (keep the batch going)
      logging.exception("%s: unexpected failure", where)
      failures.append((where, f"{type(e).__name__}: {e}"))
    if failures and not options.pairs:
      break
  if prefetch is not None:
    prefetch.close()
  for where, problem in failures:
    print(f"error: {problem}" if not options.pairs else
          f"error: {where}: {problem}", file=sys.stderr)
  if options.pairs:
    print(f"{done} generated, {skipped} already done, {len(failures)} failed",
          file=sys.stderr)
  logging.info("%s", compile_cache.STATS.summary())
  return 1 if failures else 0
