r"""Landmark extraction speed on one CPU core: detect every frame vs tracking.

Prints one JSON object: frames/s of both modes, the speed-up, detector calls, and
the mean / worst-frame pixel distance between the two modes' landmarks.

  python -m benchmarks.benchmark_landmarks                       # synthetic clip
  python -m benchmarks.benchmark_landmarks --video=talk.mp4 --max_frames=250

Without --video the clip is a real face (skimage's astronaut photo) drifting and
zooming slowly inside a 256x256 frame, so it runs with no data set.
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
import cv2
import numpy as np
from skimage import data as sk_data

from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.features import face

_VIDEO = flags.DEFINE_string("video", None, "Video to read (default: synthetic).")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", 125, "Frames to process.")
_REDETECT_EVERY = flags.DEFINE_integer("redetect_every", 25,
                                       "Tracking: frames between detections.")
_DRIFT = flags.DEFINE_float("drift_threshold", 0.25,
                            "Tracking: re-detect beyond this box drift.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Alternating runs of both modes; the fastest of each is kept "
    "(robust to other processes sharing the machine).")
_ONE_CORE = flags.DEFINE_bool("one_core", True, "Pin the process to one core.")


def synthetic_face_video(num_frames: int, size: int = 256) -> np.ndarray:
  """(T, size, size, 3) uint8: the astronaut's face moving ~1-2 px and 0.2% zoom/frame.

  The face (about 100 px wide) drifts along slow sinusoids (±16 px, ±10 px) and
  zooms by ±6%, like a talking head in a fixed camera.
  """
  photo = sk_data.astronaut()  # 512x512; face box near (175..265, 76..166).
  cx, cy, base_scale = 220.0, 125.0, size / 230.0
  frames = []
  for t in range(num_frames):
    scale = base_scale * (1.0 + 0.06 * np.sin(2 * np.pi * t / 60))
    dx = 16.0 * np.sin(2 * np.pi * t / 50)
    dy = 10.0 * np.sin(2 * np.pi * t / 37)
    matrix = np.array([[scale, 0.0, size / 2 - scale * cx + dx],
                       [0.0, scale, size / 2 - scale * cy + dy]])
    frames.append(cv2.warpAffine(photo, matrix, (size, size),
                                 flags=cv2.INTER_AREA,
                                 borderMode=cv2.BORDER_REFLECT))
  return np.stack(frames)


def _timed_track(analyzer: face.FaceAnalyzer, frames: np.ndarray, **kwargs):
  start = time.perf_counter()
  result = analyzer.track(frames, **kwargs)
  return result, time.perf_counter() - start


def main(argv):
  del argv
  if _ONE_CORE.value and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  cv2.setNumThreads(1)
  if _VIDEO.value:
    from hcmtfg.media import video  # pylint: disable=g-import-not-at-top
    try:
      frames = video.read_video(paths.user_path(_VIDEO.value),
                                with_audio=False).frames
    except InputError as e:
      raise SystemExit(f"error: {e}") from e
    frames = frames[:_MAX_FRAMES.value]
  else:
    frames = synthetic_face_video(_MAX_FRAMES.value)
  analyzer = face.FaceAnalyzer()
  analyzer.detect_landmarks(frames[0])  # warm-up
  every_s = tracked_s = float("inf")
  for _ in range(_REPEATS.value):
    every, seconds = _timed_track(analyzer, frames, redetect_every=1)
    every_s = min(every_s, seconds)
    tracked, seconds = _timed_track(analyzer, frames,
                                    redetect_every=_REDETECT_EVERY.value,
                                    drift_threshold=_DRIFT.value)
    tracked_s = min(tracked_s, seconds)
  dist_TxN = np.linalg.norm(every.landmarks - tracked.landmarks, axis=-1)
  num_frames = len(frames)
  result = {
      "video": _VIDEO.value or "synthetic astronaut face",
      "frames": num_frames,
      "frame_size": list(frames.shape[1:3]),
      "detect_every_frame": {"fps": round(num_frames / every_s, 2),
                             "detector_calls": every.num_detector_calls},
      "tracking": {"fps": round(num_frames / tracked_s, 2),
                   "detector_calls": tracked.num_detector_calls,
                   "redetect_every": _REDETECT_EVERY.value,
                   "drift_threshold": _DRIFT.value},
      "speedup": round(every_s / tracked_s, 2),
      "repeats": _REPEATS.value,
      "mean_px_difference": round(float(dist_TxN.mean()), 4),
      "worst_frame_mean_px_difference": round(float(dist_TxN.mean(1).max()), 4),
      "missing_frames": {"detect_every_frame": every.missing.tolist(),
                         "tracking": tracked.missing.tolist()},
  }
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
