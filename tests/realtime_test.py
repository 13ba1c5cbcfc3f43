"""Tests of streaming generation (hcmtfg.inference.realtime) and its command line
(launch/stream.py), with tiny random networks."""

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import generate
from hcmtfg.inference import mfcc_stream
from hcmtfg.inference import networks
from hcmtfg.inference import realtime as realtime_lib
from hcmtfg.media import video as video_lib
from tests import tiny_networks

REPO = pathlib.Path(__file__).resolve().parents[1]
SECONDS = 1.3


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
  root = tmp_path_factory.mktemp("live")
  warm, atnet, vgnet = tiny_networks.warm_networks(root, shared_data)
  speech_path = tiny_networks.write_speech(root / "speech.wav", shared_data,
                                           SECONDS)
  return {"warm": warm, "atnet": atnet, "vgnet": vgnet,
          "speech_path": speech_path,
          "speech": audio_lib.load_audio(speech_path),
          "photo_path": shared_data / "faces" / "obama.jpg",
          "photo": warm.prepare_photo(shared_data / "faces" / "obama.jpg")}


class _ListSink:

  def __init__(self):
    self.frames, self.closed = [], False

  def write(self, frames):
    self.frames.append(np.array(frames))

  def close(self):
    self.closed = True


class _FakeTime:
  """A clock that moves only when slept (computing takes no time)."""

  def __init__(self):
    self.now = 100.0
    self.slept = 0.0

  def clock(self):
    return self.now

  def sleep(self, seconds):
    self.now += seconds
    self.slept += seconds


def test_stream_equals_batch_generation(setup):
  sink = _ListSink()
  report = realtime_lib.run(setup["warm"], setup["photo"], setup["speech"], sink,
                    chunk_frames=8, block_ms=30)
  expected = generate.generate(setup["warm"].generator, setup["photo"],
                               setup["speech"], chunk_frames=8).frames
  got = np.concatenate(sink.frames)
  assert sink.closed and got.shape == expected.shape
  assert np.abs(got.astype(int) - expected).max() <= 1
  assert report.frames == expected.shape[0] == 33
  assert not report.realtime


def test_realtime_pacing_and_latency(setup):
  fake = _FakeTime()
  sink = _ListSink()
  report = realtime_lib.run(setup["warm"], setup["photo"], setup["speech"], sink,
                    chunk_frames=8, paste_back=True, realtime=True,
                    block_ms=20, clock=fake.clock, sleep=fake.sleep)
  # Blocks were released at the speech's own pace.
  assert abs(fake.slept - setup["speech"].size / 16000) < 0.021
  # With free computation, latency is look-ahead + waiting for the chunk.
  lookahead = mfcc_stream.LOOKAHEAD_SAMPLES / 16000
  assert report.latency["p50"] >= lookahead - 0.02
  assert report.latency["max"] <= lookahead + 8 / 25 + 0.02
  assert report.frames == 33 and sink.frames[0].shape[1:] == (360, 640, 3)
  assert "latency audio in -> frame out" in report.summary()
  values = report.as_dict()
  assert values["frames_per_second"] > 0 and "capacity_fps" in values


def test_raw_writer_writes_frames_back_to_back():
  stream = io.BytesIO()
  writer = realtime_lib.RawWriter(stream)
  writer.write(np.zeros((2, 4, 6, 3), np.uint8))
  writer.write(np.ones((1, 4, 6, 3), np.uint8))
  writer.close()
  assert len(stream.getvalue()) == 3 * 4 * 6 * 3 and writer.shape == (4, 6)


@pytest.mark.slow
def test_stream_command(setup, tmp_path):
  base = [sys.executable, "-m", "launch.stream",
          f"--image={setup['photo_path']}", f"--audio={setup['speech_path']}",
          f"--atnet_workdir={setup['atnet']}",
          f"--vgnet_workdir={setup['vgnet']}",
          f"--compile_cache={tmp_path / 'cache'}"]
  env = {**os.environ, "HCMTFG_COMPILE_CACHE": "off"}
  raw = subprocess.run(base + ["--format=raw", "--output=-"], cwd=REPO,
                       capture_output=True, check=False, env=env)
  assert raw.returncode == 0, raw.stderr.decode()[-3000:]
  assert len(raw.stdout) == 33 * 32 * 32 * 3
  assert b"-video_size 32x32" in raw.stderr and b"latency" in raw.stderr
  out, report = tmp_path / "realtime_lib.mp4", tmp_path / "report.json"
  run = subprocess.run(base + [f"--output={out}", "--realtime", "--paste_back",
                               f"--report={report}"], cwd=REPO,
                       capture_output=True, text=True, check=False, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  info = video_lib.probe(out)
  assert info.has_audio and (info.width, info.height) == (640, 360)
  assert abs(info.duration - SECONDS) < 0.15
  values = json.loads(report.read_text())
  assert values["realtime"] and values["frames"] == 33
  assert values["compile_cache"]["compiled"] == 0  # the raw run compiled
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
  bad = subprocess.run(base[:3] + ["--image=/nonexistent.jpg"] + base[4:]
                       + ["--output=-"], cwd=REPO, capture_output=True,
                       text=True, check=False, env=env)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1].startswith("error: ")
