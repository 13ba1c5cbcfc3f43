"""Does the generated face talk? Mouth-aperture and audio-visual sync metrics.

Inner-lip aperture (`inner_lip_aperture`). With the 68 points of dlib's scheme
(0-based: mouth corners 48 and 54, inner upper lip 61, 62, 63, inner lower lip
67, 66, 65, eyes 36..41 and 42..47), the aperture of a frame is the mean over
the three facing pairs (61, 67), (62, 66), (63, 65) of the lower point minus
the upper point projected on the mouth's vertical axis (the unit normal of the
corner-to-corner line 48 -> 54, oriented away from the nose tip 33). It is
signed (lips pressed together or crossing give about 0 or slightly below) and
does not depend on the face's rotation. It is divided by the same frame's
inter-ocular distance (between the two eye centres, each the mean of its six
points), so it is in inter-ocular units (IOD): a similarity transform of each
frame's landmarks (the per-frame Procrustes normalisation of the datasets, the
128x128 crop, any frame size) leaves it unchanged, and apertures (and their
standard deviations) of normalised landmarks and of dlib points found on frames
are directly comparable. For scale: the eyes of the 128x128 crops are ~53 px
apart, so 0.1 IOD is ~5 px of the crop.

Aperture correlation (`pearson`): Pearson's r between the aperture that dlib
finds on frames and the aperture of the landmarks that drove them; r is
undefined (NaN) for a constant sequence, e.g. a still video.

Audio-visual sync proxy (`lagged_correlation`, `sync_scores`): r between an
aperture sequence and the speech's RMS envelope at 25 fps, at lags of up to
+-`MAX_LAG` frames; lag L pairs the aperture of frame t + L with the envelope
of frame t (L > 0: the mouth moves L frames after the sound). It is a
weights-free stand-in for LSE (SyncNet's lip-sync error), NOT LSE: it only
asks whether the mouth opens when the speech is loud. The envelope comes from
the waveform or from a clip's stored MFCC (`hcmtfg.evaluation.speech_envelope`).

`talking_metrics` computes all of these for a generated video (frames, the
landmarks that drove it, its speech); `sequence_metrics` is the part that
needs no dlib. Everything returns NaN rather than raising or warning when a
quantity is undefined (constant sequences, too few frames, no face found).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from hcmtfg.evaluation import speech_envelope
from hcmtfg.features import audio as audio_lib

NUM_POINTS = 68
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # (upper, lower)
MOUTH_CORNERS = (48, 54)
NOSE_TIP = 33
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
MAX_LAG = 5  # frames (0.2 s at 25 fps)
MIN_FRAMES = 3  # fewer (finite) frame pairs than this: r is NaN
DLIB_SIZE = 128  # frames smaller than this are resized up before dlib

def as_points(landmarks: np.ndarray) -> np.ndarray:
  """(T, 68, 2) float64 view of (T, 136) (x0, y0, x1, ...) or (T, 68, 2)."""
  x = np.asarray(landmarks, np.float64)
  if x.ndim == 2 and x.shape[1] == 2 * NUM_POINTS:
    x = x.reshape(x.shape[0], NUM_POINTS, 2)
  if x.ndim != 3 or x.shape[1:] != (NUM_POINTS, 2):
    raise ValueError(f"expected (T, 136) or (T, 68, 2) landmarks, got "
                     f"{np.shape(landmarks)}")
  return x


def interocular_distance(landmarks: np.ndarray) -> np.ndarray:
  """(T,) distance between the eye centres (means of 36..41 and 42..47)."""
  p = as_points(landmarks)
  return np.linalg.norm(p[:, LEFT_EYE].mean(1) - p[:, RIGHT_EYE].mean(1), axis=-1)


def inner_lip_aperture(landmarks: np.ndarray, *, normalise: bool = True
                       ) -> np.ndarray:
  """Inner-lip aperture per frame (the module docstring defines it).

  Args:
    landmarks: (T, 136) or (T, 68, 2) in any similarity frame (normalised
      landmarks, with or without the x5 PCA scale, or pixels); frames with
      NaN points give NaN.
    normalise: divide by each frame's inter-ocular distance (IOD units);
      False: in the landmarks' own units.

  Returns:
    (T,) float64.
  """
  p = as_points(landmarks)
  corners = p[:, MOUTH_CORNERS[1]] - p[:, MOUTH_CORNERS[0]]
  with np.errstate(invalid="ignore", divide="ignore"):
    u = corners / np.linalg.norm(corners, axis=-1, keepdims=True)
    normal = np.stack([-u[:, 1], u[:, 0]], axis=-1)
    centre = p[:, MOUTH_CORNERS, :].mean(1)
    towards_nose = np.einsum("ti,ti->t", p[:, NOSE_TIP] - centre, normal)
    normal *= np.where(towards_nose > 0, -1.0, 1.0)[:, None]
    upper = p[:, [a for a, _ in INNER_LIP_PAIRS]]
    lower = p[:, [b for _, b in INNER_LIP_PAIRS]]
    aperture = np.einsum("tki,ti->t", lower - upper, normal) / len(
        INNER_LIP_PAIRS)
  if not normalise:
    return aperture
  iod = interocular_distance(p)
  return np.where(iod > 0, aperture / np.where(iod > 0, iod, 1.0), math.nan)


def pearson(a: np.ndarray, b: np.ndarray, min_frames: int = MIN_FRAMES
            ) -> float:
  """Pearson's r of two (T,) sequences over the frames where both are finite.

  NaN (never a warning) when fewer than `min_frames` such frames remain or
  either sequence is constant on them (relative spread below 1e-9).
  """
  x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f"expected two (T,) sequences, got {x.shape}, {y.shape}")
  keep = np.isfinite(x) & np.isfinite(y)
  if keep.sum() < max(min_frames, 2):
    return math.nan
  x, y = x[keep], y[keep]
  xc, yc = x - x.mean(), y - y.mean()
  nx, ny = np.linalg.norm(xc), np.linalg.norm(yc)
  flat = lambda norm, raw: norm <= 1e-9 * np.abs(raw).max() * math.sqrt(raw.size)
  if flat(nx, x) or flat(ny, y):
    return math.nan
  return float(np.clip(np.dot(xc, yc) / (nx * ny), -1.0, 1.0))


def lagged_correlation(video: np.ndarray, audio: np.ndarray,
                       max_lag: int = MAX_LAG) -> tuple[np.ndarray, np.ndarray]:
  """r(video[t + L], audio[t]) over the overlapping frames, L = -max_lag..max_lag.

  Args:
    video: (T,) e.g. the aperture of each frame.
    audio: (T,) e.g. the speech envelope of the same frames.
    max_lag: largest |L| in frames.

  Returns:
    lags (2 max_lag + 1,) int and r (2 max_lag + 1,) float64 (NaN where
    undefined, see `pearson`).
  """
  v, s = np.asarray(video, np.float64), np.asarray(audio, np.float64)
  if v.shape != s.shape or v.ndim != 1:
    raise ValueError(f"expected two (T,) sequences, got {v.shape}, {s.shape}")
  lags = np.arange(-max_lag, max_lag + 1)
  n = v.shape[0]
  r = np.array([pearson(v[max(lag, 0):n + min(lag, 0)],
                        s[max(-lag, 0):n - max(lag, 0)]) for lag in lags])
  return lags, r


def sync_scores(video: np.ndarray, audio: np.ndarray, max_lag: int = MAX_LAG
                ) -> dict[str, float]:
  """The sync proxy: {'sync_r': r at lag 0, 'sync_peak_r': the largest r over
  lags +-max_lag, 'sync_peak_lag': its lag in frames (the smallest |lag| among
  r within 1e-9 of the peak; > 0: video after audio)}, NaN when undefined."""
  lags, r = lagged_correlation(video, audio, max_lag)
  out = {"sync_r": float(r[max_lag]), "sync_peak_r": math.nan,
         "sync_peak_lag": math.nan}
  if np.isfinite(r).any():
    ties = np.flatnonzero(r >= np.nanmax(r) - 1e-9)  # NaN compares False
    best = ties[np.argmin(np.abs(lags[ties]))]
    out["sync_peak_r"], out["sync_peak_lag"] = float(r[best]), float(lags[best])
  return out


def sequence_metrics(aperture: np.ndarray, driving_aperture: np.ndarray | None,
                     envelope: np.ndarray | None, max_lag: int = MAX_LAG
                     ) -> dict[str, float]:
  """Per-sequence mouth metrics from (T,) apertures (no dlib here).

  Args:
    aperture: the aperture found on the frames (`inner_lip_aperture`).
    driving_aperture: the aperture of the landmarks that drove them, or None.
    envelope: the speech envelope of the same frames, or None.
    max_lag: the sync proxy's lag range in frames.

  Returns:
    'aperture_std' (population std over the finite frames) and, with the
    driving aperture, 'aperture_r' (Pearson r, NaN if either is constant) and
    'driving_aperture_std'; with the envelope, `sync_scores`'s keys.
  """
  a = np.asarray(aperture, np.float64)
  std = lambda x: float(np.std(x[np.isfinite(x)])) if np.isfinite(x).any() \
      else math.nan
  out = {"aperture_std": std(a)}
  if driving_aperture is not None:
    d = np.asarray(driving_aperture, np.float64)
    out["aperture_r"] = pearson(a, d)
    out["driving_aperture_std"] = std(d)
  if envelope is not None:
    out.update(sync_scores(a, envelope, max_lag))
  return out


def _resized(frames: np.ndarray, size: int) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  if frames.shape[1] >= size and frames.shape[2] >= size:
    return frames
  return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC)
                   for f in frames])


def frame_landmarks(frames: np.ndarray, analyzer,
                    fallback_boxes: Sequence[Any] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, list[Any]]:
  """dlib's 68 points on each frame (the largest detected face's).

  Args:
    frames: (T, H, W, 3) RGB uint8.
    analyzer: an `hcmtfg.features.face.FaceAnalyzer`.
    fallback_boxes: T boxes to run the predictor in where no face is detected;
      None: the box of the nearest frame in time where one was.

  Returns:
    (T, 68, 2) float64 (x, y) pixels (NaN where no box at all), (T,) bool
    detected, and the T boxes used (None where there was none).
  """
  frames = np.asarray(frames)
  n = frames.shape[0]
  boxes = [analyzer.detect_all(f) for f in frames]
  found = np.array([bool(b) for b in boxes], bool)
  chosen = [max(b, key=lambda x: (x.area, x.score)) if b else None for b in boxes]
  hits = np.flatnonzero(found)
  points = np.full((n, NUM_POINTS, 2), np.nan)
  for t in range(n):
    if chosen[t] is None and fallback_boxes is not None:
      chosen[t] = fallback_boxes[t]
    elif chosen[t] is None and hits.size:
      chosen[t] = chosen[hits[np.argmin(np.abs(hits - t))]]
    if chosen[t] is not None:
      points[t] = analyzer.landmarks(frames[t], chosen[t])
  return points, found, chosen


def talking_metrics(frames: np.ndarray, driving_landmarks: np.ndarray | None,
                    speech: np.ndarray | None,
                    sample_rate: int = audio_lib.SAMPLE_RATE, *,
                    analyzer=None, max_lag: int = MAX_LAG) -> dict[str, float]:
  """Mouth metrics of one generated video (e.g. the demo's).

  Frames smaller than 128x128 are resized to 128 (bicubic) for dlib, as the
  evaluation does. Where dlib finds no face, its predictor runs in the box of
  the nearest frame where it did, so identical frames give identical points:
  a still video has a constant aperture (std 0, every r NaN).

  Args:
    frames: (T, H, W, 3) RGB uint8, frame t at t / 25 s.
    driving_landmarks: (T, 136) or (T, 68, 2) the landmarks that drove the
      frames (e.g. `generate.Generation.landmarks`, normalised), or None.
    speech: (N,) waveform whose sample 0 is at frame 0's start, or None.
    sample_rate: the speech's rate in Hz.
    analyzer: a `hcmtfg.features.face.FaceAnalyzer` (default: a new one).
    max_lag: the sync proxy's lag range in frames.

  Returns:
    {'frames': T, 'detected': share of frames where dlib found a face,
     'aperture_mean', 'aperture_std' (IOD units, on the frames),
     and with driving landmarks 'aperture_r', 'driving_aperture_std',
     'driving_aperture_mean', 'std_ratio' (aperture_std / driving_aperture_std);
     with speech 'sync_r', 'sync_peak_r', 'sync_peak_lag' (`sync_scores`) of
     the frames and 'driving_sync_r', 'driving_sync_peak_r',
     'driving_sync_peak_lag' of the driving landmarks}. NaN where undefined.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} "
                     f"{frames.dtype}")
  n = frames.shape[0]
  if analyzer is None:
    from hcmtfg.features import face  # pylint: disable=g-import-not-at-top  (dlib)
    analyzer = face.FaceAnalyzer()
  points, found, _ = frame_landmarks(_resized(frames, DLIB_SIZE), analyzer)
  aperture = inner_lip_aperture(points)
  driving = None
  if driving_landmarks is not None:
    driving = inner_lip_aperture(driving_landmarks)
    if driving.shape[0] != n:
      raise ValueError(f"{driving.shape[0]} driving landmark sets for {n} frames")
  envelope = (None if speech is None else
              speech_envelope.rms_envelope(speech, sample_rate, num_frames=n))
  nan_mean = lambda x: float(np.mean(x[np.isfinite(x)])) if np.isfinite(
      x).any() else math.nan
  out = {"frames": n, "detected": float(found.mean()) if n else math.nan,
         "aperture_mean": nan_mean(aperture)}
  out.update(sequence_metrics(aperture, driving, envelope, max_lag))
  if driving is not None:
    out["driving_aperture_mean"] = nan_mean(driving)
    ratio = out["aperture_std"] / out["driving_aperture_std"] if (
        out["driving_aperture_std"] > 0) else math.nan
    out["std_ratio"] = float(ratio)
    if envelope is not None:
      out.update({f"driving_{k}": v for k, v in
                  sync_scores(driving, envelope, max_lag).items()})
  return out


def format_talking_metrics(m: dict[str, float]) -> str:
  """A few lines summarising `talking_metrics` for a log or a console."""
  f = lambda k, d=3: ("—" if not math.isfinite(m.get(k, math.nan))
                      else f"{m[k]:.{d}f}")
  lines = [f"mouth aperture (inner lips, inter-ocular units) on {int(m['frames'])}"
           f" frames (face found in {f('detected', 2)}): std {f('aperture_std')}"]
  if "aperture_r" in m:
    lines.append(f"  vs driving landmarks: r {f('aperture_r')}, their std "
                 f"{f('driving_aperture_std')} (ratio {f('std_ratio', 2)})")
  if "sync_r" in m:
    lag = m["sync_peak_lag"]
    lines.append(
        f"  sync proxy (r with the speech's RMS envelope; a weights-free "
        f"stand-in for LSE, not LSE): lag 0 {f('sync_r')}, peak {f('sync_peak_r')}"
        f" at {'—' if not math.isfinite(lag) else f'{lag:+.0f}'} frames")
    if "driving_sync_r" in m:
      lines.append(f"  driving landmarks' sync proxy: lag 0 "
                   f"{f('driving_sync_r')}, peak {f('driving_sync_peak_r')}")
  return "\n".join(lines)
