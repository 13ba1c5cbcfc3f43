r"""Benchmarks audio feature extraction (MFCC + AT-net windows); prints one JSON line.

  python -m benchmarks.benchmark_features                       # 30 s of synthetic audio
  python -m benchmarks.benchmark_features --audio=speech.wav    # a real file

Reported speeds are seconds of audio processed per second of compute (median of
--repeats runs, after one warm-up). When python_speech_features is installed (a test
dependency) its speed on the same signal is reported too, with the max difference.
The face-landmark half of the feature benchmark is benchmarks/benchmark_landmarks.py.
"""

import json
import time

from absl import app
from absl import flags
import numpy as np

from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.features import audio

_AUDIO = flags.DEFINE_string("audio", None, "Speech file; default: 30 s synthetic.")
_SECONDS = flags.DEFINE_float("seconds", 30.0, "Length of the synthetic audio.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement.")


def _synthetic_speechlike(seconds: float, seed: int = 0) -> np.ndarray:
  """Noise plus amplitude-modulated tones, (N,) float32 in [-1, 1] at 16 kHz."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
  tones = sum(np.sin(2 * np.pi * hz * t) for hz in (150.0, 420.0, 1300.0, 2700.0))
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)  # ~syllable rate
  x = 0.15 * envelope * tones + 0.05 * rng.standard_normal(t.shape)
  return np.clip(x, -1, 1).astype(np.float32)


def _median_seconds(fn, repeats: int) -> float:
  fn()  # warm-up (imports, caches)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  result = {}
  if _AUDIO.value:
    start = time.perf_counter()
    try:
      signal = audio.load_audio(paths.user_path(_AUDIO.value))
    except InputError as e:
      raise SystemExit(f"error: {e}") from e
    result["load_s"] = time.perf_counter() - start
    result["audio"] = _AUDIO.value
  else:
    signal = _synthetic_speechlike(_SECONDS.value)
    result["audio"] = f"synthetic {_SECONDS.value:g} s"
  seconds = signal.shape[0] / audio.SAMPLE_RATE
  padded = audio.pad_for_video(signal)
  num_frames = audio.num_video_frames(signal.shape[0])
  mfcc_Mx13 = audio.mfcc(padded)

  mfcc_s = _median_seconds(lambda: audio.mfcc(padded), _REPEATS.value)
  windows_s = _median_seconds(lambda: audio.mfcc_windows(mfcc_Mx13, num_frames),
                              _REPEATS.value)
  total_s = _median_seconds(lambda: audio.speech_features(signal), _REPEATS.value)
  result.update({
      "audio_seconds": seconds,
      "video_frames": num_frames,
      "mfcc_rows": int(mfcc_Mx13.shape[0]),
      "mfcc_s": mfcc_s,
      "mfcc_audio_s_per_s": seconds / mfcc_s,
      "windows_s": windows_s,
      "speech_features_s": total_s,
      "speech_features_audio_s_per_s": seconds / total_s,
  })
  try:
    import python_speech_features as psf  # pylint: disable=g-import-not-at-top
  except ImportError:
    psf = None
  if psf is not None:
    ref_s = _median_seconds(lambda: psf.mfcc(padded, 16000, winstep=0.01),
                            _REPEATS.value)
    ref = psf.mfcc(padded, 16000, winstep=0.01)
    diff = float(np.abs(mfcc_Mx13 - ref).max())
    result.update({
        "psf_mfcc_s": ref_s,
        "psf_mfcc_audio_s_per_s": seconds / ref_s,
        "max_abs_diff_vs_psf": diff,
        "max_rel_diff_vs_psf": diff / float(np.abs(ref).max()),
    })
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
