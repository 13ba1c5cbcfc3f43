"""Tests of hcmtfg.media.video: mp4 round trips, frame-rate resampling, atomic writes."""

import os
import signal

import numpy as np
import pytest
import soundfile

from hcmtfg.media import video

from hcmtfg.errors import InputError
from hcmtfg.media import video_writer

SR = 16000


def _pattern(num_frames, height=64, width=64):
  """Smooth colour pattern that moves by a few pixels per frame, uint8."""
  y, x = np.mgrid[:height, :width].astype(np.float64)
  t = np.arange(num_frames, dtype=np.float64)[:, None, None]
  red = 128 + 100 * np.sin((x + 3 * t) / 10.0)
  green = 128 + 100 * np.cos((y - 2 * t) / 12.0)
  blue = np.broadcast_to(128 + 60 * np.sin((x + y) / 20.0), red.shape)
  return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def _tone(num_samples, hz=440.0):
  return (0.5 * np.sin(2 * np.pi * hz * np.arange(num_samples) / SR)).astype(np.float32)


def _leftovers(directory):
  return [name for name in os.listdir(directory) if "partial" in name]


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
  """29 frames of 64x64 at 25 fps with 1.16 s of a 440 Hz tone."""
  frames = _pattern(29)
  tone = _tone(29 * 640)
  path = tmp_path_factory.mktemp("video") / "talk.mp4"
  assert video_writer.write_video(path, frames, fps=25, audio=tone) == str(path)
  return path, frames, tone


def test_round_trip_frames(talking):
  path, frames, _ = talking
  clip = video.read_video(path)
  assert clip.frames.dtype == np.uint8 and clip.frames.shape == (29, 64, 64, 3)
  assert clip.fps == 25.0 and clip.num_frames == 29
  err_TxT = np.abs(clip.frames[:, None].astype(np.float32)
                   - frames[None].astype(np.float32)).mean(axis=(2, 3, 4))
  print(f"H.264 round trip: mean abs error {np.diag(err_TxT).mean():.2f} / 255")
  assert np.diag(err_TxT).max() < 8.0
  # Each decoded frame is closest to its own source frame (order and count kept).
  np.testing.assert_array_equal(err_TxT.argmin(axis=1), np.arange(29))


def test_round_trip_audio(talking):
  path, _, tone = talking
  clip = video.read_video(path, with_audio="required")
  assert clip.audio.dtype == np.float32 and clip.audio_sample_rate == SR
  assert abs(clip.audio.shape[0] / SR - clip.duration) < 0.05
  n = min(clip.audio.shape[0], tone.shape[0])
  corr = np.corrcoef(clip.audio[:n], tone[:n])[0, 1]
  print(f"AAC round trip: correlation with the tone {corr:.4f}")
  assert corr > 0.98  # also proves there is no time shift (1 sample costs ~0.015)
  assert abs(np.abs(clip.audio).max() - 0.5) < 0.05
  assert video.read_video(path, with_audio=False).audio is None


def test_probe(talking):
  path, _, _ = talking
  info = video.probe(path)
  assert info.has_video and info.has_audio
  assert (info.width, info.height, info.fps) == (64, 64, 25.0)
  assert abs(video.probe_duration(path) - 1.16) < 0.05


def test_frame_rate_resampling(tmp_path):
  # 45 frames at 30 fps (1.5 s) whose grey level encodes the frame index.
  grey = np.stack([np.full((32, 48, 3), 10 + 5 * k, np.uint8) for k in range(45)])
  path = tmp_path / "thirty.mp4"
  video_writer.write_video(path, grey, fps=30)
  clip = video.read_video(path, fps=25)
  assert clip.fps == 25.0 and clip.frames.shape == (38, 32, 48, 3)  # ceil(1.5 * 25)
  source_index = np.round((clip.frames[:, 16, 24, 0].astype(np.float64) - 10) / 5)
  np.testing.assert_array_equal(source_index, np.round(np.arange(38) * 30 / 25))
  native = video.read_video(path, fps=None)
  assert native.fps == 30.0 and native.frames.shape[0] == 45


def test_streaming_writer_in_chunks(tmp_path):
  frames = _pattern(20, 48, 32)
  path = tmp_path / "stream.mp4"
  with video_writer.VideoWriter(path, fps=25) as writer:
    writer.write(frames[0])  # a single (H, W, 3) frame
    writer.write(frames[1:7])
    writer.write(frames[7:7])  # empty chunk
    writer.write(frames[7:])
    assert not path.exists()  # nothing under the final name before close
  assert writer.num_frames == 20
  clip = video.read_video(path)
  assert clip.frames.shape == (20, 48, 32, 3) and clip.audio is None
  assert np.abs(clip.frames.astype(np.float32) - frames).mean() < 8.0
  # write_video also takes an iterable (a generator of frames).
  video_writer.write_video(tmp_path / "gen.mp4", (f for f in frames), fps=25)
  assert video.read_video(tmp_path / "gen.mp4").num_frames == 20
  assert not _leftovers(tmp_path)


def test_odd_size_is_padded_to_even(tmp_path):
  frames = _pattern(3, 33, 47)
  video_writer.write_video(tmp_path / "odd.mp4", frames)
  clip = video.read_video(tmp_path / "odd.mp4")
  assert clip.frames.shape == (3, 34, 48, 3)
  assert np.abs(clip.frames[:, :33, :47].astype(np.float32) - frames).mean() < 8.0


def test_failed_ffmpeg_leaves_nothing(tmp_path):
  path = tmp_path / "out.mp4"
  path.write_bytes(b"previous content")
  with pytest.raises(RuntimeError, match="ffmpeg"):
    video_writer.write_video(path, _pattern(5), preset="no-such-preset")
  assert path.read_bytes() == b"previous content"  # the old file is untouched
  assert not _leftovers(tmp_path)


def test_killed_ffmpeg_leaves_nothing(tmp_path):
  path = tmp_path / "killed.mp4"
  writer = video_writer.VideoWriter(path, fps=25, audio=_tone(SR))
  writer.write(_pattern(5))
  os.kill(writer._proc.pid, signal.SIGKILL)  # pylint: disable=protected-access
  writer._proc.wait()  # pylint: disable=protected-access
  with pytest.raises(RuntimeError):
    writer.write(_pattern(200))
    writer.close()
  assert not path.exists() and not _leftovers(tmp_path)


def test_exception_in_block_leaves_nothing(tmp_path):
  path = tmp_path / "aborted.mp4"
  with pytest.raises(KeyError):
    with video_writer.VideoWriter(path) as writer:
      writer.write(_pattern(4))
      raise KeyError("generator crashed")
  assert not path.exists() and not _leftovers(tmp_path)


def test_bad_frames_are_rejected(tmp_path):
  path = tmp_path / "bad.mp4"
  with pytest.raises(ValueError, match="uint8"):
    video_writer.write_video(path, _pattern(3).astype(np.float32))
  with pytest.raises(ValueError, match="differs"):
    video_writer.write_video(path, [_pattern(2, 32, 32), _pattern(2, 16, 16)])
  with pytest.raises(ValueError, match="no frames"):
    video_writer.write_video(path, np.zeros((0, 8, 8, 3), np.uint8))
  assert not path.exists() and not _leftovers(tmp_path)


def _expect_input_error(path, fragment, **kwargs):
  with pytest.raises(InputError) as info:
    video.read_video(path, **kwargs)
  assert info.value.path == str(path)
  assert fragment in info.value.problem, info.value.problem


def test_bad_inputs(tmp_path, talking):
  _expect_input_error(tmp_path / "missing.mp4", "not found")
  (tmp_path / "empty.mp4").write_bytes(b"")
  _expect_input_error(tmp_path / "empty.mp4", "empty")
  (tmp_path / "notes.mp4").write_text("not a video at all\n" * 100)
  _expect_input_error(tmp_path / "notes.mp4", "not a readable media file")
  # An mp4 whose header is overwritten with noise.
  data = bytearray(talking[0].read_bytes())
  data[:4096] = np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()
  (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
  with pytest.raises(InputError):
    video.read_video(tmp_path / "corrupt.mp4")
  soundfile.write(str(tmp_path / "speech.wav"), _tone(SR), SR)
  _expect_input_error(tmp_path / "speech.wav", "no video stream")
  video_writer.write_video(tmp_path / "mute.mp4", _pattern(3))
  _expect_input_error(tmp_path / "mute.mp4", "no audio track", with_audio="required")
  assert video.read_video(tmp_path / "mute.mp4").audio is None
  with pytest.raises(ValueError):
    video.read_video(tmp_path / "mute.mp4", with_audio="yes")
