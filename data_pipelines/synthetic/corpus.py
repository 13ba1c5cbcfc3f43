"""Clips and corpora in LRW's on-disk layout, deterministic, parallel and resumable.

Layout: `<root>/<WORD>/<split>/<WORD>_<5-digit id>.mp4` (29 frames at 25 fps,
256x256 H.264, 16 kHz mono AAC) with the ground truth beside it in `.npz` under the
same stem. Clip `index` says `WORD = vocabulary[index % num_words]`, id =
`index // num_words + 1` (unique per word across splits), and its split comes from
a low-discrepancy sequence over the index, so every clip's path and content depend
only on (seed, index, num_words, splits, faces): parallelism and resumption change
nothing. A clip is finished when both its mp4 and npz exist under their final
names; both are written under hidden `.NAME.*.partial.*` names and renamed, so a
killed run leaves no half-written file under a final name, and a rerun deletes the
partial files and builds only the missing clips (run one generator per root at a
time: a run deletes the partial files it finds).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import multiprocessing
import os
import uuid
from typing import Sequence

import cv2
import numpy as np

from data_pipelines.synthetic import articulation as art_lib
from data_pipelines.synthetic import faces as faces_lib
from data_pipelines.synthetic import render
from data_pipelines.synthetic import speech
from hcmtfg.errors import InputError
from hcmtfg.media import video_writer

DEFAULT_SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_NUM_WORDS = 20
MANIFEST = "synthetic_corpus.json"
_GOLDEN = 0.6180339887498949
_X264 = dict(crf=20, preset="veryfast")


def parse_splits(text: str) -> tuple[tuple[str, float], ...]:
  """'train:0.8,val:0.1,test:0.1' -> (("train", 0.8), ...), fractions normalised."""
  pairs = []
  for item in text.split(","):
    name, _, frac = item.strip().partition(":")
    if name not in SPLIT_NAMES or not frac:
      raise ValueError(f"bad split {item!r}: expected NAME:FRACTION with NAME in "
                       f"{SPLIT_NAMES}")
    pairs.append((name, float(frac)))
  total = sum(f for _, f in pairs)
  if total <= 0 or any(f < 0 for _, f in pairs) or len({n for n, _ in pairs}) != len(pairs):
    raise ValueError(f"bad splits {text!r}: fractions must be >= 0, sum > 0, names unique")
  return tuple((n, f / total) for n, f in pairs)


@dataclasses.dataclass(frozen=True)
class ClipInfo:
  """Where clip `index` goes: word, split, id and path stem relative to the root."""
  index: int
  word: art_lib.Word
  split: str
  clip_id: int

  @property
  def stem(self) -> str:
    return os.path.join(self.word.label, self.split,
                        f"{self.word.label}_{self.clip_id:05d}")


def clip_info(index: int, num_words: int = DEFAULT_NUM_WORDS,
              splits: Sequence[tuple[str, float]] = DEFAULT_SPLITS) -> ClipInfo:
  """Word (round robin), split (golden-ratio sequence over the index) and id."""
  if index < 0:
    raise ValueError(f"clip index must be >= 0, got {index}")
  word = art_lib.make_vocabulary(num_words)[index % num_words]
  clip_id = index // num_words + 1
  if clip_id > 99999:
    raise ValueError(f"clip {index}: more than 99999 clips per word")
  u = (index * _GOLDEN + 0.5) % 1.0
  fractions = np.array([f for _, f in splits], np.float64)
  if fractions.sum() <= 0 or np.any(fractions < 0):
    raise ValueError(f"bad split fractions {splits!r}")
  cumulative = np.cumsum(fractions / fractions.sum())
  split = splits[min(int(np.searchsorted(cumulative, u, side="right")),
                     len(splits) - 1)][0]
  return ClipInfo(index, word, split, clip_id)


@dataclasses.dataclass(frozen=True)
class Clip:
  """A generated clip.

  Attributes:
    info: word, split, id.
    frames: (29, 256, 256, 3) uint8 RGB.
    audio: (18560,) float32 mono 16 kHz speech in [-1, 1].
    ground_truth: what goes into the .npz (see `generate_clip`).
  """
  info: ClipInfo
  frames: np.ndarray
  audio: np.ndarray
  ground_truth: dict[str, np.ndarray]


def generate_clip(index: int, seed: int,
                  faces: Sequence[str | os.PathLike] | None = None,
                  num_words: int = DEFAULT_NUM_WORDS,
                  splits: Sequence[tuple[str, float]] = DEFAULT_SPLITS) -> Clip:
  """Generates clip `index` of the corpus with `seed` (pure; no files written).

  Args:
    index: clip number >= 0.
    seed: corpus seed; the clip's randomness derives from (seed, index) only.
    faces: identity sources ("astronaut" or photo paths); default ["astronaut"].
    num_words: vocabulary size K.
    splits: (name, fraction) pairs.

  Returns:
    A Clip whose ground_truth holds: jaw, lip_open, rounding, blink (T,) float32
    (jaw/lip opening in [0, 1]; lip_open = inner-lip gap / (0.45 eye distance)
    before head pose;
    rounding in [-1, 1]); pose (T, 6) float32 (articulation.POSE_FIELDS);
    landmarks (T, 68, 2) float32 in the 256x256 frame; phones (P,) str and
    phone_times (P, 2) float32 seconds; f0 (T,) Hz; seed, index, word, split,
    identity, fps, sample_rate.
  """
  sources = [os.fspath(f) for f in faces] if faces else [faces_lib.ASTRONAUT]
  info = clip_info(index, num_words, splits)
  rng_speech, rng_face, rng_motion, rng_audio = (
      np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(4))
  source = sources[int(rng_face.integers(len(sources)))]
  identity = faces_lib.load_identity(source)
  appearance = render.random_appearance(rng_face)
  segments = art_lib.clip_timeline(info.word, rng_speech)
  voice = speech.random_voice(rng_speech)
  art = art_lib.articulate(segments, voice.base_f0, rng_speech)
  audio = speech.synthesize(art, voice, rng_audio)
  blink = art_lib.blink_track(rng_motion)
  pose = art_lib.pose_track(art, rng_motion)
  jaw, lip_open, rounding = (art.at_frames(k) for k in ("jaw", "lip_open", "rounding"))
  stage = render.make_stage(identity.image, identity.landmarks, appearance)
  points = render.animate_rest(stage.rest, stage.anchors, jaw, lip_open, rounding,
                               blink, pose)
  frames = render.render(stage, points)
  visible = [s for s in segments if s.end > 0 and s.start < art_lib.CLIP_SECONDS]
  truth = {
      "jaw": jaw, "lip_open": lip_open, "rounding": rounding, "blink": blink,
      "pose": pose, "pose_fields": np.array(art_lib.POSE_FIELDS),
      "landmarks": points[:, :68].astype(np.float32),
      "phones": np.array([s.phone.name for s in visible]),
      "phone_times": np.array([(s.start, s.end) for s in visible], np.float32),
      "f0": art.at_frames("f0"),
      "seed": np.int64(seed), "index": np.int64(index),
      "word": np.array(info.word.label), "split": np.array(info.split),
      "identity": np.array(identity.name + ("_mirrored" if appearance.mirror else "")),
      "fps": np.int64(art_lib.FPS), "sample_rate": np.int64(speech.SAMPLE_RATE),
  }
  return Clip(info, frames, audio, truth)


def clip_paths(output_dir: str | os.PathLike, info: ClipInfo) -> tuple[str, str]:
  """(mp4 path, npz path) of a clip."""
  stem = os.path.join(os.fspath(output_dir), info.stem)
  return stem + ".mp4", stem + ".npz"


def is_finished(output_dir: str | os.PathLike, info: ClipInfo) -> bool:
  """True when both the clip's mp4 and npz exist under their final names."""
  return all(os.path.exists(p) for p in clip_paths(output_dir, info))


def write_clip(clip: Clip, output_dir: str | os.PathLike) -> tuple[str, str]:
  """Writes the clip's mp4, then its npz, each atomically; returns both paths."""
  mp4, npz = clip_paths(output_dir, clip.info)
  os.makedirs(os.path.dirname(mp4), exist_ok=True)
  video_writer.write_video(mp4, clip.frames, fps=art_lib.FPS, audio=clip.audio,
                    audio_sample_rate=speech.SAMPLE_RATE, **_X264)
  directory, name = os.path.split(npz)
  tmp = os.path.join(directory, f".{name[:-4]}.{uuid.uuid4().hex[:8]}.partial.npz")
  try:
    np.savez(tmp, **clip.ground_truth)
    os.replace(tmp, npz)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return mp4, npz


def remove_partials(output_dir: str | os.PathLike) -> list[str]:
  """Deletes partial files (`.NAME.*.partial.EXT`) left by a killed run."""
  pattern = os.path.join(os.fspath(output_dir), "*", "*", ".*.partial.*")
  removed = sorted(glob.glob(pattern))
  for path in removed:
    os.remove(path)
  return removed


def write_contact_sheet(clip: Clip, path: str | os.PathLike, columns: int = 6) -> str:
  """A PNG grid of the clip's frames, each labelled with its frame number and lip_open."""
  frames = clip.frames.copy()
  for t, frame in enumerate(frames):
    text = f"{t} open {clip.ground_truth['lip_open'][t]:.2f}"
    cv2.putText(frame, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1,
                cv2.LINE_AA)
  rows = -(-len(frames) // columns)
  pad = rows * columns - len(frames)
  frames = np.concatenate([frames, np.zeros((pad,) + frames.shape[1:], np.uint8)])
  h, w = frames.shape[1:3]
  sheet = frames.reshape(rows, columns, h, w, 3).transpose(0, 2, 1, 3, 4)
  sheet = sheet.reshape(rows * h, columns * w, 3)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if not cv2.imwrite(os.fspath(path), np.ascontiguousarray(sheet[..., ::-1])):
    raise OSError(f"could not write {path}")
  return os.fspath(path)


def _check_manifest(output_dir: str, config: dict) -> None:
  """Refuses a root built with other settings, then records this run's settings."""
  path = os.path.join(output_dir, MANIFEST)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    for key in ("seed", "num_words", "splits", "faces", "version"):
      if old.get(key) != config[key]:
        raise InputError(path, f"the corpus there was built with {key}={old.get(key)!r}"
                         f", not {config[key]!r}; use another --output_dir")
  os.makedirs(output_dir, exist_ok=True)
  tmp = path + ".partial"
  with open(tmp, "w") as f:
    json.dump(config, f, indent=1)
  os.replace(tmp, path)


def _build(task: tuple) -> int:
  """Worker: generates and writes one clip; returns its index."""
  index, seed, faces, num_words, splits, output_dir = task
  write_clip(generate_clip(index, seed, faces, num_words, splits), output_dir)
  return index


def _init_worker(identities: dict[str, faces_lib.Identity]) -> None:
  """Worker set-up: one OpenCV thread per process; photos prepared by the parent."""
  cv2.setNumThreads(1)
  faces_lib.preload(identities)


@dataclasses.dataclass(frozen=True)
class CorpusResult:
  """What a `generate_corpus` call did: clip indices built and skipped."""
  built: tuple[int, ...]
  skipped: tuple[int, ...]
  removed_partials: tuple[str, ...]


def generate_corpus(output_dir: str | os.PathLike, num_clips: int, seed: int,
                    faces: Sequence[str | os.PathLike] | None = None,
                    splits: Sequence[tuple[str, float]] = DEFAULT_SPLITS,
                    num_words: int = DEFAULT_NUM_WORDS, num_workers: int | None = None,
                    progress: bool = False) -> CorpusResult:
  """Builds (or completes) clips 0..num_clips-1 under `output_dir`.

  Args:
    output_dir: corpus root (created). A manifest records seed, vocabulary size,
      splits and faces; reusing a root with different ones raises InputError.
    num_clips: number of clips N.
    seed: corpus seed.
    faces: identity sources ("astronaut" and/or photo paths); default astronaut.
    splits: (name, fraction) pairs.
    num_words: vocabulary size K.
    num_workers: processes; default os.cpu_count(); 1 builds in this process.
    progress: show a tqdm progress bar.
  """
  output_dir = os.fspath(output_dir)
  if num_clips < 0:
    raise ValueError(f"num_clips must be >= 0, got {num_clips}")
  faces = [os.fspath(f) for f in faces] if faces else [faces_lib.ASTRONAUT]
  # Detect every photo's landmarks once, here (fails early on an unusable photo).
  identities = {source: faces_lib.load_identity(source) for source in faces}
  splits = tuple((str(n), float(f)) for n, f in splits)
  _check_manifest(output_dir, {
      "version": 1, "seed": int(seed), "num_words": int(num_words),
      "splits": [list(s) for s in splits],
      "faces": [os.path.basename(f) for f in faces], "num_clips": int(num_clips)})
  removed = remove_partials(output_dir)
  infos = [clip_info(i, num_words, splits) for i in range(num_clips)]
  todo = [i.index for i in infos if not is_finished(output_dir, i)]
  skipped = tuple(sorted(set(range(num_clips)) - set(todo)))
  tasks = [(i, int(seed), faces, num_words, splits, output_dir) for i in todo]
  num_workers = max(1, min(num_workers or os.cpu_count() or 1, max(len(tasks), 1)))
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=num_clips, initial=len(skipped), unit="clip")
  built = []
  if num_workers == 1:
    for task in tasks:
      built.append(_build(task))
      if bar:
        bar.update()
  else:
    with multiprocessing.get_context("spawn").Pool(num_workers, _init_worker,
                                                    (identities,)) as pool:
      for index in pool.imap_unordered(_build, tasks):
        built.append(index)
        if bar:
          bar.update()
  if bar:
    bar.close()
  return CorpusResult(tuple(sorted(built)), skipped, tuple(removed))
