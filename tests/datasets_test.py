"""Tests of the TFDS builders in data_pipelines/ (synthetic, LRW, GRID, VoxCeleb2).

One tiny synthetic corpus (10 clips) is generated per test session under pytest's
base temp dir and reused: its mp4s also populate fake LRW, GRID and VoxCeleb2 trees
in each corpus's exact layout.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

import data_pipelines  # noqa: F401  (registers the builders)
from data_pipelines import build
from data_pipelines import common
from data_pipelines import synthetic_talking_faces
from hcmtfg.data import input_pipeline
from hcmtfg.features import audio
from hcmtfg.features import clip_features
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.media import video
from hcmtfg.media import video_writer

NUM_CLIPS = 10
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def build_tiny(root: pathlib.Path, name: str = "tfds", **kwargs):
  """The tiny synthetic dataset under root/name (built once, then reused)."""
  return build.build_dataset("synthetic_talking_faces", root / name,
                             config="tiny", num_clips=NUM_CLIPS,
                             download_dir=root / "downloads", **kwargs)


def read_all(builder) -> dict[str, list[dict]]:
  """split -> examples in file order, frames left encoded (bytes compared)."""
  out = {}
  for split in builder.info.splits:
    ds = builder.as_dataset(split=split, decoders={"frames": tfds.decode.SkipDecoding()})
    out[split] = list(tfds.as_numpy(ds))
  return out


def assert_same_examples(a: dict[str, list[dict]], b: dict[str, list[dict]]):
  assert sorted(a) == sorted(b)
  for split in a:
    assert len(a[split]) == len(b[split]), split
    for x, y in zip(a[split], b[split]):
      assert sorted(x) == sorted(y)
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=f"{split}/{key}")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.getbasetemp() / "hcmtfg_datasets"


@pytest.fixture(scope="module")
def tiny(root):
  return build_tiny(root)


@pytest.fixture(scope="module")
def corpus_clips(tiny, root) -> dict[str, list[common.ClipSource]]:
  corpus = synthetic_talking_faces.corpus_dir(root / "downloads", NUM_CLIPS, 0)
  return common.list_lrw_layout(corpus, synthetic_talking_faces.SPLITS)


def _no_face_clip(path: pathlib.Path) -> None:
  rng = np.random.default_rng(0)
  frames = rng.integers(90, 110, (29, 96, 96, 3), dtype=np.uint8)
  speech = 0.1 * rng.standard_normal(int(16000 * 1.16)).astype(np.float32)
  video_writer.write_video(path, frames, audio=speech)


@pytest.fixture(scope="module")
def lrw_tree(root, corpus_clips) -> pathlib.Path:
  """lipread_mp4/<WORD>/{train,val,test}/ with 2 + 1 + 2 good clips, a corrupt and
  a faceless one (in train)."""
  tree = root / "lrw_manual"
  if tree.exists():
    return tree
  picks = [(s, "train") for s in corpus_clips["train"][:2]]
  picks += [(corpus_clips["validation"][0], "val"), (corpus_clips["test"][0], "test"),
            (corpus_clips["train"][2], "test")]
  for source, split in picks:
    word = source.label
    dst = tree / "lipread_mp4" / word / split / os.path.basename(source.video_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source.video_path, dst)
  bad = tree / "lipread_mp4" / "BROKEN" / "train"
  bad.mkdir(parents=True)
  (bad / "BROKEN_00001.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
  _no_face_clip(bad / "BROKEN_00002.mp4")
  (bad / "BROKEN_00002.txt").write_text("metadata files are ignored")
  return tree


def test_tiny_build_reads_back(tiny, root):
  builder = tfds.builder("synthetic_talking_faces", data_dir=os.fspath(root / "tfds"),
                         config="tiny")
  assert builder.is_prepared()
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert set(splits) <= {"train", "validation", "test"}
  assert sum(splits.values()) == NUM_CLIPS and splits["train"] >= 6
  metadata = builder.info.metadata
  assert metadata["num_failed_clips"] == 0
  assert metadata["corpus"]["num_clips"] == NUM_CLIPS
  example = next(iter(tfds.as_numpy(builder.as_dataset(split="train"))))
  t = int(example["num_frames"])
  assert t == 29
  assert example["frames"].shape == (t, 128, 128, 3)
  assert example["frames"].dtype == np.uint8
  assert example["landmarks"].shape == (t, 68, 2)
  assert example["landmarks"].dtype == np.float32
  assert example["normalized_landmarks"].shape == (t, 136)
  assert example["mfcc"].dtype == np.float32 and example["mfcc"].shape[1] == 13
  # 1.16 s of audio: ~116 MFCC rows plus 24 of padding.
  assert 130 <= example["mfcc"].shape[0] <= 150
  assert example["frames"].std() > 20  # real image content, not blank crops
  word = example["label"].decode()
  assert example["clip_id"].decode().startswith(f"{word}/train/{word}_")
  # The face fills the crop.
  assert ((example["landmarks"] >= 0) & (example["landmarks"] < 128)).mean() > 0.95


def test_default_config_name_reads_what_build_wrote(tmp_path, root, tiny):
  # The documented command: build without --config, then tfds.builder(name).
  data_dir = tmp_path / "tfds"
  build.build_dataset("synthetic_talking_faces", data_dir, num_clips=NUM_CLIPS,
                      download_dir=root / "downloads", max_examples_per_split=1)
  builder = tfds.builder("synthetic_talking_faces", data_dir=os.fspath(data_dir))
  assert builder.builder_config.name == "default" and builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 1
  assert builder.info.metadata["corpus"]["num_clips"] == NUM_CLIPS


def test_landmark_pca_is_fitted_on_train_and_saved(tiny):
  pca = input_pipeline.load_dataset_pca(tiny)
  assert pca.components.shape == (136, 6) and pca.scale == 5.0
  train = tfds.as_numpy(tiny.as_dataset(split="train"))
  lmarks = np.concatenate([ex["normalized_landmarks"] for ex in train])
  expected = landmarks_lib.fit_pca(lmarks, 6)
  np.testing.assert_allclose(pca.mean, expected.mean, atol=1e-5)
  np.testing.assert_allclose(pca.explained_variance, expected.explained_variance,
                             rtol=1e-3)
  # Same subspace and signs (the sign convention is deterministic).
  np.testing.assert_allclose(np.abs(np.diag(pca.components.T @ expected.components)),
                             1.0, atol=1e-3)
  np.testing.assert_allclose(pca.components, expected.components, atol=2e-3)
  info = tiny.info.metadata["pca"]
  assert info["split"] == "train" and info["num_frames"] == lmarks.shape[0]
  assert 0.5 < info["explained_variance_fraction"] <= 1.0


@pytest.mark.slow
def test_beam_build_equals_python_build(tiny, root):
  beamed = build_tiny(
      root, name="tfds_beam", beam_pipeline_options=(
          "runner=DirectRunner,direct_num_workers=2,"
          "direct_running_mode=multi_processing"))
  assert_same_examples(read_all(tiny), read_all(beamed))
  for key in ("failed_clips", "processed_clips", "num_failed_clips"):
    assert beamed.info.metadata[key] == tiny.info.metadata[key]
  assert sum(beamed.info.metadata["processed_clips"].values()) == NUM_CLIPS
  a, b = input_pipeline.load_dataset_pca(tiny), input_pipeline.load_dataset_pca(beamed)
  np.testing.assert_array_equal(a.components, b.components)


def test_lrw_layout_and_failures_are_counted(lrw_tree, root):
  builder = build.build_dataset("lrw", root / "tfds_lrw", manual_dir=lrw_tree)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert splits == {"train": 2, "validation": 1, "test": 2}
  metadata = builder.info.metadata
  assert metadata["failed_clips"] == {
      "train": {clip_features.UNREADABLE: 1, clip_features.NO_FACE: 1}}
  assert metadata["num_failed_clips"] == 2
  assert metadata["processed_clips"] == {"train": 2, "validation": 1, "test": 2}
  # metadata.json on disk says the same (what a reader sees later).
  stored = json.loads((pathlib.Path(builder.data_dir) / "metadata.json").read_text())
  assert stored["failed_clips"] == metadata["failed_clips"]
  ids = {ex["clip_id"].decode() for ex in tfds.as_numpy(
      builder.as_dataset(split="validation"))}
  assert len(ids) == 1 and "/val/" in ids.pop()


def test_png_config_stores_lossless_crops(lrw_tree, root, tmp_path):
  jpeg = build.build_dataset("lrw", root / "tfds_lrw", manual_dir=lrw_tree)
  png = build.build_dataset("lrw", tmp_path / "tfds", config="png",
                            manual_dir=lrw_tree, max_examples_per_split=1)
  assert png.info.features["frames"].encoding_format == "png"
  a = next(iter(tfds.as_numpy(jpeg.as_dataset(split="validation"))))
  b = next(iter(tfds.as_numpy(png.as_dataset(split="validation"))))
  assert a["clip_id"] == b["clip_id"]
  np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
  error = np.abs(a["frames"].astype(float) - b["frames"]).mean()
  assert 0 < error < 3  # JPEG is close to the lossless PNG crops, not equal
  raw = tfds.as_numpy(png.as_dataset(split="validation", decoders={
      "frames": tfds.decode.SkipDecoding()}))
  assert next(iter(raw))["frames"][0].startswith(b"\x89PNG")


def test_killed_build_restarts_cleanly(lrw_tree, root, tmp_path, monkeypatch):
  clean = build.build_dataset("lrw", root / "tfds_lrw", manual_dir=lrw_tree)
  data_dir = tmp_path / "tfds"
  final_dir = data_dir / "lrw" / "default" / "1.0.0"
  original = clip_features.extract_clip
  calls = []

  class SimulatedKill(BaseException):
    pass

  def dying_extract(*args, **kwargs):
    # Dies at the first clip processed after the train split was written.
    calls.append(args[0])
    if list(data_dir.glob("lrw/default/incomplete.*/lrw-train.tfrecord*")):
      assert not final_dir.exists()
      raise SimulatedKill()
    return original(*args, **kwargs)

  monkeypatch.setattr(clip_features, "extract_clip", dying_extract)
  with pytest.raises(SimulatedKill):
    build.build_dataset("lrw", data_dir, manual_dir=lrw_tree)
  assert 5 <= len(calls) < 8  # it died mid-way
  monkeypatch.setattr(clip_features, "extract_clip", original)
  assert not final_dir.exists()
  assert not tfds.builder("lrw", data_dir=os.fspath(data_dir)).is_prepared()
  # What a SIGKILL leaves behind: an incomplete dir holding complete-looking files.
  leftover = final_dir.parent / "incomplete.KILLED_1.0.0"
  shutil.copytree(clean.data_dir, leftover)
  rebuilt = build.build_dataset("lrw", data_dir, manual_dir=lrw_tree)
  assert rebuilt.is_prepared() and final_dir.is_dir()
  assert_same_examples(read_all(clean), read_all(rebuilt))
  assert rebuilt.info.metadata["failed_clips"] == clean.info.metadata["failed_clips"]


def _to_mpeg1(src: str, dst: pathlib.Path) -> None:
  """GRID-like .mpg: MPEG-1 video only (the audio goes to a separate .wav)."""
  subprocess.run([video.ffmpeg_exe(), "-loglevel", "error", "-y", "-i", src, "-an",
                  "-c:v", "mpeg1video", "-q:v", "3", os.fspath(dst)], check=True)


def test_grid_layout_unseen_speaker_split(root, corpus_clips, tmp_path):
  clips = corpus_clips["train"]
  tree = tmp_path / "grid"
  layout = {"s1": (clips[0], "bbaf2n"), "s29": (clips[1], "lgwa1s")}
  layout["s2"] = (clips[2], "pwij3p")
  for speaker, (source, stem) in layout.items():
    (tree / speaker).mkdir(parents=True)
    _to_mpeg1(source.video_path, tree / speaker / f"{stem}.mpg")
    signal = audio.resample(video.read_audio(source.video_path), 16000, 25000)
    wav_dir = tree / "audio_25k" / speaker if speaker != "s2" else tree / speaker
    wav_dir.mkdir(parents=True, exist_ok=True)  # s2: the wav beside the video
    soundfile.write(wav_dir / f"{stem}.wav", signal, 25000, subtype="PCM_16")
  builder = build.build_dataset("grid", tmp_path / "tfds", manual_dir=tree)
  assert builder.info.metadata["num_failed_clips"] == 0
  examples = {split: list(tfds.as_numpy(builder.as_dataset(split=split)))
              for split in ("train", "test")}
  assert sorted(ex["clip_id"].decode() for ex in examples["train"]) == [
      "s1/bbaf2n", "s2/pwij3p"]
  assert [ex["label"].decode() for ex in examples["test"]] == ["s29"]
  # The MFCC comes from the 25 kHz wav (resampled back to 16 kHz).
  reference = clip_features.extract_clip(clips[1].video_path,
                                         analyzer=common.worker_analyzer())
  ours = examples["test"][0]["mfcc"]
  n = min(len(ours), len(reference.mfcc))
  assert np.corrcoef(ours[:n, 1:].ravel(), reference.mfcc[:n, 1:].ravel())[0, 1] > 0.95
  seen = tfds.builder("grid", data_dir=os.fspath(tmp_path / "tfds"), config="seen")
  assert seen.builder_config.test_speakers == ()


def test_voxceleb2_layout_via_the_command_line(root, corpus_clips, tmp_path):
  tree = tmp_path / "vox"
  picks = {("dev", "id00012", "21Uxsk56VDQ", "00001"): corpus_clips["train"][0],
           ("dev", "id00012", "21Uxsk56VDQ", "00002"): corpus_clips["train"][1],
           ("test", "id00017", "01dfn2spqyE", "00001"): corpus_clips["test"][0]}
  for (folder, speaker, vid, clip), source in picks.items():
    dst = tree / folder / "mp4" / speaker / vid / f"{clip}.mp4"
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source.video_path, dst)
  data_dir = tmp_path / "tfds"
  env = dict(os.environ, PYTHONPATH=os.fspath(REPO_ROOT))
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.build", "--dataset=voxceleb2",
       f"--data_dir={data_dir}", f"--manual_dir={tree}", "--config=first_3s"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout[result.stdout.index("{"):])
  assert summary["splits"] == {"train": 2, "test": 1}
  builder = tfds.builder("voxceleb2", data_dir=os.fspath(data_dir), config="first_3s")
  test = list(tfds.as_numpy(builder.as_dataset(split="test")))
  assert test[0]["clip_id"].decode() == "id00017/01dfn2spqyE/00001"
  assert test[0]["label"].decode() == "id00017"


def test_build_cli_from_another_directory(root, tiny, tmp_path):
  """--data_dir under `~`, --download_dir relative to the current directory
  (the shared corpus, reused), both with spaces."""
  home, cwd = tmp_path / "home", tmp_path / "my work"
  home.mkdir()
  cwd.mkdir()
  (cwd / "down loads").symlink_to(root / "downloads", target_is_directory=True)
  env = dict(os.environ, PYTHONPATH=os.fspath(REPO_ROOT), HOME=str(home))
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.build",
       "--dataset=synthetic_talking_faces", "--config=tiny",
       f"--num_clips={NUM_CLIPS}", "--data_dir=~/tfds data",
       "--download_dir=down loads", "--max_examples_per_split=2"],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout[result.stdout.index("{"):])
  assert summary["data_dir"].startswith(str(home / "tfds data"))
  builder = tfds.builder("synthetic_talking_faces", config="tiny",
                         data_dir=os.fspath(home / "tfds data"))
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 2
  assert os.listdir(cwd) == ["down loads"]  # no folder named '~'


def test_missing_manual_data_says_where_to_get_it(tmp_path):
  with pytest.raises(Exception, match="lipread_mp4"):
    build.build_dataset("lrw", tmp_path / "tfds", manual_dir=tmp_path)


@pytest.mark.slow
def test_tfds_cli_builds_and_the_pipeline_reads_it(tmp_path, root):
  # TFDS's own command line (it needs mlcroissant) drives the same builder.
  tfds_cli = pathlib.Path(sys.executable).parent / "tfds"
  data_dir = tmp_path / "cli"
  env = dict(os.environ, PYTHONPATH=os.fspath(REPO_ROOT))
  done = subprocess.run(
      [os.fspath(tfds_cli), "build", "synthetic_talking_faces",
       "--imports=data_pipelines", "--config=tiny", f"--data_dir={data_dir}",
       f"--download_dir={root / 'downloads'}", "--max_examples_per_split=3"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  builder = tfds.builder("synthetic_talking_faces/tiny", data_dir=os.fspath(data_dir))
  assert builder.is_prepared()
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 3, "validation": 2, "test": 2}
  batch = next(input_pipeline.make_train_iterator(
      builder, "atnet", global_batch_size=2, process_index=0, process_count=1))
  assert batch["target_coef"].shape[0] == 2 and np.isfinite(
      batch["target_coef"]).all()
