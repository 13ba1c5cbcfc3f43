"""End-to-end test of the main job's quick path (launch/demo.py, launch/demo.sh).

Runs `python -m launch.demo --quick` in a temporary output directory (build a
10-clip corpus, a few training steps of the tiny networks, evaluation,
generation), checks its outputs, then runs it again and checks that every
stage is skipped.
"""

import math
import os
import pathlib
import subprocess
import sys

import cv2
import pytest
import soundfile

from hcmtfg import video as video_lib
from launch import demo_media

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_demo(output_dir: pathlib.Path) -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", "launch.demo", "--quick",
       f"--output_dir={output_dir}"], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=400, check=False)
  log = proc.stdout + proc.stderr
  assert proc.returncode == 0, log[-4000:]
  return proc.stdout


def test_demo_sh_rejects_unknown_arguments():
  proc = subprocess.run(["bash", str(REPO / "launch" / "demo.sh"), "--fast"],
                        capture_output=True, text=True, timeout=30, check=False)
  assert proc.returncode == 2 and "--quick" in proc.stderr


def test_sentence_speech_has_words_and_pauses():
  signal = demo_media.sentence_speech([0, 3, 7])
  frames = signal[:signal.size // 320 * 320].reshape(-1, 320)  # 20 ms
  loud = (frames**2).mean(1) > 1e-4
  starts = int((loud[1:] & ~loud[:-1]).sum()) + int(loud[0])
  assert 1.5 < signal.size / demo_media.SAMPLE_RATE < 4.0
  assert not loud[:10].any() and not loud[-10:].any()  # silent edges
  assert starts >= 3  # at least one burst of sound per word


@pytest.mark.slow
def test_quick_demo_end_to_end_and_resume(tmp_path):
  out = tmp_path / "demo"
  stdout = run_demo(out)
  video, sheet = out / "talking_face.mp4", out / "contact_sheet.png"
  speech, metrics = out / "speech.wav", out / "eval" / "metrics.md"
  for path in (video, out / "talking_face_intermediates.mp4", sheet, speech,
               metrics, out / "eval" / "metrics.json", out / "photo.png"):
    assert path.is_file(), path
  for path in (video, sheet, metrics):  # the demo says where they are
    assert f": {path}" in stdout, stdout[-2000:]

  info = video_lib.probe(video)
  assert info.has_video and info.has_audio
  seconds = soundfile.info(str(speech)).duration
  decoded = video_lib.read_video(video)
  assert decoded.num_frames == math.ceil(round(seconds * 25, 6))
  assert abs(decoded.audio.size / 16000 - seconds) < 0.05
  assert decoded.frames.shape[1:] == (512, 512, 3)  # pasted into the photo
  assert "| SSIM ↑ | release" in metrics.read_text()
  image = cv2.imread(str(sheet))
  assert image is not None and image.shape[1] == 5 * 128
  assert image.shape[0] >= 4 * 128 and image.std() > 10

  again = run_demo(out)
  assert again.count("already trained") == 2, again
  assert "metrics.md is up to date" in again and "mp4 is up to date" in again
  assert video_lib.read_video(video).num_frames == decoded.num_frames
