"""End-to-end test of the main job's quick path (launch/demo.py, launch/demo.sh).

Runs `bash launch/demo.sh --quick` from a temporary directory with a relative
output directory (build a 10-clip corpus, a few training steps of the tiny
networks, evaluation, generation), checks its outputs, then runs
`python -m launch.demo --quick` again on the same directory given under `~` and
checks that every stage is skipped; last, `launch.generate` runs on the demo's
networks by relative paths, as a user would next.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import conftest
import cv2
import pytest
import soundfile

# The demo's speech (the test's name for the module it came from).
from data_pipelines.synthetic import sentence as demo_media
from hcmtfg.media import video as video_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_demo(command: list[str], cwd: pathlib.Path, home: pathlib.Path) -> str:
  """Runs a command of the demo from `cwd` with HOME=`home`; returns stdout."""
  env = dict(os.environ, XLA_FLAGS=conftest.xla_flags(None))  # one device
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", HOME=str(home),
             PYTHONPATH=str(REPO))
  proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True,
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
  # Run from elsewhere with a relative --output_dir: it lands there, not in
  # the repository (demo.sh changes to the repository's root).
  caller, home = tmp_path / "my work", tmp_path / "home"
  caller.mkdir()
  home.mkdir()
  out = caller / "demo out"
  stdout = run_demo(["bash", str(REPO / "launch" / "demo.sh"), "--quick",
                     "--output_dir=demo out"], cwd=caller, home=home)
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
  # The mouth metrics, for the test split and for the demo's own video (the
  # quick networks do not learn, so only their presence and form are checked
  # here; tests/vgnet_learning_test.py checks that training moves the mouth).
  assert "| aperture r ↑ |" in metrics.read_text()
  scores = json.loads((out / "eval" / "metrics.json").read_text())["metrics"]
  for path in ("cascade", "gt_landmarks", "real"):
    assert f"{path}/aperture_r" in scores and f"{path}/sync_r" in scores, path
  talking = json.loads((out / "talking_metrics.json").read_text())
  assert talking["frames"] == decoded.num_frames
  assert talking["detected"] > 0.9  # dlib finds the face in the video
  assert talking["driving_aperture_std"] > 0  # AT-net's landmarks were read
  for key in ("aperture_std", "aperture_r", "std_ratio", "sync_r",
              "sync_peak_lag", "driving_sync_r"):
    assert key in talking, key
  assert "the video's mouth:" in stdout and "sync proxy" in stdout
  assert "python -m launch.serve --atnet_workdir=" in stdout
  image = cv2.imread(str(sheet))
  assert image is not None and image.shape[1] == 5 * 128
  assert image.shape[0] >= 4 * 128 and image.std() > 10

  # The same folder under `~`: every stage is found done.
  again = run_demo([sys.executable, "-m", "launch.demo", "--quick",
                    "--output_dir=~/demo out"], cwd=tmp_path, home=caller)
  assert again.count("already trained") == 2, again
  assert "metrics.md is up to date" in again and "mp4 is up to date" in again
  assert video_lib.read_video(video).num_frames == decoded.num_frames
  assert "~" not in os.listdir(tmp_path) and "~" not in os.listdir(caller)
  assert not (REPO / "demo out").exists()

  # The demo's networks by relative paths, as a user's next command.
  run_demo([sys.executable, "-m", "launch.generate",
            "--image=demo out/photo.png", "--audio=demo out/speech.wav",
            "--atnet_workdir=demo out/atnet_tiny",
            "--vgnet_workdir=demo out/vgnet_tiny", "--output=mine.mp4"],
           cwd=caller, home=home)
  assert video_lib.read_video(caller / "mine.mp4").num_frames == (
      decoded.num_frames)
