"""Tests of the synthetic talking-face corpus generator (data_pipelines/synthetic).

One small corpus (24 real clips: 256x256, 29 frames, H.264 + AAC) is generated per
session with two worker processes and read back through the real feature pipeline:
dlib tracking on the decoded mp4 and MFCC windows of its decoded audio track.
"""

import glob
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data_pipelines.synthetic import articulation
from data_pipelines.synthetic import corpus
from data_pipelines.synthetic import faces as faces_lib
from data_pipelines.synthetic import render
from data_pipelines.synthetic import speech
from hcmtfg.errors import InputError
from hcmtfg.features import audio as audio_lib
from hcmtfg.features import face as face_lib
from hcmtfg.media import video

SEED = 7
NUM_CLIPS = 24
NUM_WORDS = 6
SPLITS = (("train", 0.7), ("test", 0.3))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic_corpus")
  result = corpus.generate_corpus(root, NUM_CLIPS, SEED, splits=SPLITS,
                                  num_words=NUM_WORDS, num_workers=2)
  assert result.built == tuple(range(NUM_CLIPS))
  return root


def _clips(root, split=None):
  infos = [corpus.clip_info(i, NUM_WORDS, SPLITS) for i in range(NUM_CLIPS)]
  return [corpus.clip_paths(root, i) for i in infos if split in (None, i.split)]


def test_lrw_layout_and_format(corpus_dir):
  mp4s = sorted(glob.glob(os.path.join(corpus_dir, "*", "*", "*.mp4")))
  assert len(mp4s) == NUM_CLIPS
  labels = {w.label for w in articulation.make_vocabulary(NUM_WORDS)}
  for path in mp4s:
    word, split, name = os.path.relpath(path, corpus_dir).split(os.sep)
    assert word in labels and split in ("train", "test")
    assert name.startswith(word + "_") and len(name) == len(word) + 10  # _00001.mp4
    assert os.path.exists(path[:-4] + ".npz")
  clip = video.read_video(mp4s[0])
  assert clip.frames.shape == (29, 256, 256, 3)
  assert abs(clip.audio.shape[0] - 18560) <= 160  # 1.16 s at 16 kHz.
  info = subprocess.run([video.ffmpeg_exe(), "-hide_banner", "-i", mp4s[0]],
                        capture_output=True, text=True).stderr
  assert "Video: h264" in info and "Audio: aac" in info and "16000 Hz" in info
  truth = np.load(mp4s[0][:-4] + ".npz")
  assert truth["landmarks"].shape == (29, 68, 2)
  assert truth["pose"].shape == (29, 6)
  for key in ("jaw", "lip_open", "rounding", "blink"):
    assert truth[key].shape == (29,)
  assert str(truth["word"]) == os.path.basename(mp4s[0]).split("_")[0]
  assert int(truth["seed"]) == SEED
  splits = [corpus.clip_info(i, NUM_WORDS, SPLITS).split for i in range(NUM_CLIPS)]
  assert 0.55 < splits.count("train") / NUM_CLIPS < 0.85


def test_dlib_tracking_recovers_mouth_opening(corpus_dir):
  analyzer = face_lib.FaceAnalyzer()
  gaps, truths = [], []
  for mp4, npz in _clips(corpus_dir)[:10]:
    lm = analyzer.track(video.read_video(mp4, with_audio=False).frames).landmarks
    eye_dist = np.linalg.norm(lm[:, 36:42].mean(1) - lm[:, 42:48].mean(1), axis=1)
    inner_gap = np.linalg.norm(lm[:, [61, 62, 63]] - lm[:, [67, 66, 65]], axis=2)
    gaps.append(inner_gap.mean(1) / eye_dist)
    truth = np.load(npz)
    truths.append(truth["lip_open"])
    # dlib finds the face where we drew it.
    assert np.median(np.abs(lm - truth["landmarks"])) < 3.0
  r = np.corrcoef(np.concatenate(gaps), np.concatenate(truths))[0, 1]
  print(f"Pearson r(dlib inner-lip gap, ground-truth lip opening) = {r:.3f}")
  assert r >= 0.9


def _features(pairs):
  x, y = [], []
  for mp4, npz in pairs:
    _, windows_Tx28x12 = audio_lib.speech_features(mp4, num_frames=29)
    x.append(windows_Tx28x12.reshape(29, -1))
    y.append(np.load(npz)["lip_open"])
  return np.stack(x), np.stack(y)


def _ridge_r2(x_train, y_train, x_test, y_test, lam=100.0):
  mean, std = x_train.mean(0), x_train.std(0) + 1e-6
  a, b = (x_train - mean) / std, (x_test - mean) / std
  w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y_train - y_train.mean()))
  pred = b @ w + y_train.mean()
  return 1 - np.sum((y_test - pred) ** 2) / np.sum((y_test - y_test.mean()) ** 2)


def test_audio_predicts_mouth_opening(corpus_dir):
  x_train, y_train = _features(_clips(corpus_dir, "train"))
  x_test, y_test = _features(_clips(corpus_dir, "test"))
  assert len(x_train) >= 12 and len(x_test) >= 5
  r2 = _ridge_r2(x_train.reshape(-1, 336), y_train.reshape(-1),
                 x_test.reshape(-1, 336), y_test.reshape(-1))
  # Control: the same regression with each test clip's audio paired with another
  # clip's mouth track must fail, or the test above could pass for a wrong reason.
  r2_shuffled = _ridge_r2(x_train.reshape(-1, 336), y_train.reshape(-1),
                          x_test.reshape(-1, 336), np.roll(y_test, 1, axis=0).reshape(-1))
  print(f"ridge MFCC -> lip opening: test R^2 = {r2:.3f} (mismatched: {r2_shuffled:.3f})")
  assert r2 >= 0.6
  assert r2_shuffled < 0.2


def test_deterministic_and_independent_of_workers(corpus_dir):
  """Same (seed, index) -> identical audio and ground truth, in any process.

  The mp4 bytes are not compared: the x264/AAC encoders may thread differently
  from run to run; the arrays that define the content are compared instead.
  """
  a = corpus.generate_clip(5, SEED, num_words=NUM_WORDS, splits=SPLITS)
  b = corpus.generate_clip(5, SEED, num_words=NUM_WORDS, splits=SPLITS)
  np.testing.assert_array_equal(a.audio, b.audio)
  np.testing.assert_array_equal(a.frames, b.frames)
  assert a.ground_truth.keys() == b.ground_truth.keys()
  for key in a.ground_truth:
    np.testing.assert_array_equal(a.ground_truth[key], b.ground_truth[key])
  # The clip written by a worker process of the corpus run has the same content.
  written = np.load(corpus.clip_paths(corpus_dir, a.info)[1])
  for key in a.ground_truth:
    np.testing.assert_array_equal(written[key], a.ground_truth[key])
  other = corpus.generate_clip(5, SEED + 1, num_words=NUM_WORDS, splits=SPLITS)
  assert not np.array_equal(other.audio, a.audio)
  assert not np.array_equal(other.ground_truth["landmarks"], a.ground_truth["landmarks"])


def test_resumes_only_missing_clips(tmp_path):
  root = tmp_path / "corpus"
  first = corpus.generate_corpus(root, 3, SEED, num_words=2, num_workers=1)
  assert first.built == (0, 1, 2)
  paths = [corpus.clip_paths(root, corpus.clip_info(i, 2)) for i in range(3)]
  mtimes = {p: os.stat(p).st_mtime_ns for pair in paths for p in pair}
  os.remove(paths[1][0])  # clip 1 lost its mp4: unfinished.
  partial = os.path.join(os.path.dirname(paths[0][0]), ".STALE_00001.0badf00d.partial.mp4")
  with open(partial, "wb") as f:
    f.write(b"half an mp4")
  second = corpus.generate_corpus(root, 3, SEED, num_words=2, num_workers=1)
  assert second.built == (1,)
  assert second.skipped == (0, 2)
  assert second.removed_partials == (partial,)
  assert not os.path.exists(partial)
  for i in (0, 2):
    for p in paths[i]:
      assert os.stat(p).st_mtime_ns == mtimes[p]
  assert os.path.exists(paths[1][0])
  with pytest.raises(InputError, match="seed"):
    corpus.generate_corpus(root, 3, SEED + 1, num_words=2, num_workers=1)


def test_cli_builds_corpus_and_contact_sheet(tmp_path):
  sheet = tmp_path / "sheet.png"
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.synthetic",
       f"--output_dir={tmp_path / 'cli'}", "--num_clips=2", "--seed=3",
       "--num_workers=1", "--num_words=2", f"--contact_sheet={sheet}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert len(glob.glob(str(tmp_path / "cli" / "*" / "*" / "*.mp4"))) == 2
  image = cv2.imread(str(sheet))
  assert image.shape == (5 * 256, 6 * 256, 3)
  assert image[:256, :256].std() > 20  # a real frame, not a blank tile.


def test_cli_from_another_directory(shared_data, tmp_path):
  """--output_dir under `~`, --faces_dir and --contact_sheet relative to the
  current directory, all with spaces."""
  home, cwd = tmp_path / "home", tmp_path / "my work"
  home.mkdir()
  (cwd / "my faces").mkdir(parents=True)
  shutil.copy(shared_data / "faces" / "obama.jpg", cwd / "my faces")
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.synthetic",
       "--output_dir=~/synthetic corpus", "--num_clips=1", "--seed=3",
       "--num_workers=1", "--num_words=2", "--faces_dir=my faces",
       "--contact_sheet=sheets/contact sheet.png"],
      cwd=cwd, env=dict(os.environ, HOME=str(home), PYTHONPATH=REPO_ROOT),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert str(home / "synthetic corpus") in result.stdout
  assert len(glob.glob(str(home / "synthetic corpus" / "*" / "*" / "*.mp4"))) == 1
  assert cv2.imread(str(cwd / "sheets" / "contact sheet.png")) is not None
  assert sorted(os.listdir(cwd)) == ["my faces", "sheets"]  # no folder '~'


def test_articulation_is_visible_in_landmarks_and_audio():
  """Wide vowel vs closed lips: the landmarks and the spectrum both show it."""
  rng = np.random.default_rng(0)
  def vowel_clip(name):
    segs = [articulation.Segment(articulation.PHONES["sil"], -0.4, 0.1),
            articulation.Segment(articulation.PHONES[name], 0.1, 1.0),
            articulation.Segment(articulation.PHONES["sil"], 1.0, 1.6)]
    art = articulation.articulate(segs, 120.0, rng)
    voice = speech.Voice(base_f0=120.0, tract_scale=1.0, breathiness=0.05, gain=1.0)
    return art, speech.synthesize(art, voice, rng)
  art_a, audio_a = vowel_clip("a")
  art_i, audio_i = vowel_clip("i")
  def f1_band_ratio(x):
    spectrum = np.abs(np.fft.rfft(x[4000:12000]))
    freqs = np.fft.rfftfreq(8000, 1 / speech.SAMPLE_RATE)
    return (spectrum[(freqs > 600) & (freqs < 1000)].sum()
            / spectrum[(freqs > 150) & (freqs < 450)].sum())
  assert f1_band_ratio(audio_a) > 2 * f1_band_ratio(audio_i)  # F1 rises with opening.
  rms = lambda x: float(np.sqrt(np.mean(x ** 2)))
  assert rms(audio_a[:800]) < 0.05 * rms(audio_a[4000:12000])  # silence: room tone only.
  assert np.abs(audio_a).max() <= 0.8  # levelled, not clipped.
  assert art_a.at_frames("lip_open")[12] > 0.9 and art_i.at_frames("lip_open")[12] < 0.3
  # Geometry: no motion = rest landmarks; lip_open sets the inner-lip gap.
  identity = faces_lib.load_identity(faces_lib.ASTRONAUT)
  stage = render.make_stage(identity.image, identity.landmarks,
                            render.random_appearance(rng))
  zeros, pose = np.zeros(3), np.tile([0, 0, 0, 0, 0, 1.0], (3, 1))
  open_ = np.array([0.0, 0.5, 1.0])
  points = render.animate_rest(stage.rest, stage.anchors, open_, open_, zeros, zeros, pose)
  np.testing.assert_allclose(points[0, :68], stage.rest, atol=1e-9)
  _, _, unit = render.face_axes(stage.rest)
  gap = points[:, 66, 1] - points[:, 62, 1]
  np.testing.assert_allclose(gap, render.MAX_GAP * unit * open_, atol=0.05 * unit)
  frames = render.render(stage, points)
  mouth_box = np.s_[int(stage.rest[62, 1]) - 2:int(stage.rest[66, 1] + gap[2]),
                    int(stage.rest[60, 0]):int(stage.rest[64, 0])]
  assert frames[2][mouth_box].mean() < frames[0][mouth_box].mean() - 20  # dark mouth.
  far = np.s_[:40, :]  # away from the face the warp is the identity.
  assert np.abs(frames[2][far].astype(int) - stage.image[far]).mean() < 1.0


def test_vocabulary_and_splits():
  words = articulation.make_vocabulary(50)
  assert len({w.label for w in words}) == 50
  assert [w.label for w in articulation.make_vocabulary(10)] == [w.label for w in words[:10]]
  assert all(w.label == "".join(w.phones).upper() for w in words)
  assert corpus.parse_splits("train:8,val:1,test:1") == (
      ("train", 0.8), ("val", 0.1), ("test", 0.1))
  with pytest.raises(ValueError):
    corpus.parse_splits("train:0.8,dev:0.2")
  counts = {}
  for i in range(2000):
    split = corpus.clip_info(i, 20).split
    counts[split] = counts.get(split, 0) + 1
  assert abs(counts["train"] / 2000 - 0.8) < 0.02
  assert abs(counts["test"] / 2000 - 0.1) < 0.02


def test_faces_dir_photos_become_speakers(shared_data):
  """Real photos of shared_data/faces animate as well as the astronaut."""
  sources = faces_lib.list_faces(shared_data / "faces")
  assert len(sources) == 11 and sources[0] == faces_lib.ASTRONAUT
  analyzer = face_lib.FaceAnalyzer()
  names, gaps, truths = set(), [], []
  for index in range(6):
    clip = corpus.generate_clip(index, SEED, faces=sources[1:])
    names.add(str(clip.ground_truth["identity"]).replace("_mirrored", ""))
    truth = clip.ground_truth
    lm = analyzer.track(clip.frames).landmarks
    assert np.median(np.abs(lm - truth["landmarks"])) < 3.0
    eye_dist = np.linalg.norm(lm[:, 36:42].mean(1) - lm[:, 42:48].mean(1), axis=1)
    gaps.append(np.linalg.norm(lm[:, [61, 62, 63]] - lm[:, [67, 66, 65]], axis=2).mean(1)
                / eye_dist)
    truths.append(truth["lip_open"])
  assert len(names) >= 3
  assert names <= {os.path.splitext(os.path.basename(s))[0] for s in sources[1:]}
  r = np.corrcoef(np.concatenate(gaps), np.concatenate(truths))[0, 1]
  print(f"Pearson r over {len(names)} photo identities = {r:.3f}")
  assert r >= 0.9
