"""The speech's loudness per video frame: the envelope the sync proxy correlates.

Both give (T,) float64, about the RMS of the speech over each 1/25 s video frame
(`hcmtfg.evaluation.mouth_metrics` correlates it with the mouth's aperture):

* `rms_envelope`: from a waveform, the RMS of each frame's 1/25 s of samples
  (the demo's own video, real speech files);
* `mfcc_envelope`: from the stored MFCC of a dataset clip (`launch.evaluate`),
  whose c0 is the log energy of 25 ms windows every 10 ms after pre-emphasis
  (`hcmtfg.features.audio.mfcc`); the pre-emphasis is undone with the spectral shape
  that c1..c12 keep, and 4 rows per video frame give about the same RMS as
  `rms_envelope` of the waveform (r ~0.99 on real speech).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft

from hcmtfg.features import audio as audio_lib

# MFCC row of the *padded* signal whose 25 ms window starts 10 ms before video
# frame 0: rows 4t + 11 .. 4t + 14 are centred at 2.5, 12.5, 22.5, 32.5 ms
# into frame t (`audio.PAD_SAMPLES` = 12 rows of padding).
_FIRST_ROW = audio_lib.PAD_SAMPLES * audio_lib.MFCC_RATE // audio_lib.SAMPLE_RATE - 1


def rms_envelope(signal: np.ndarray, sample_rate: int = audio_lib.SAMPLE_RATE,
                 num_frames: int | None = None,
                 fps: float = audio_lib.VIDEO_FPS) -> np.ndarray:
  """RMS of each video frame's samples: frame t covers [t, t + 1) / fps s.

  Args:
    signal: (N,) float waveform (mono).
    sample_rate: Hz.
    num_frames: T; default ceil(N fps / sample_rate) (`audio.num_video_frames`,
      as the generated video). Frames past the end of the signal are silent
      (0); the last, partial frame is the RMS of the samples it has.
    fps: video frame rate.

  Returns:
    (T,) float64 in the waveform's units.
  """
  x = np.asarray(signal, np.float64)
  if x.ndim != 1:
    raise ValueError(f"expected a 1-D signal, got shape {x.shape}")
  if num_frames is None:
    num_frames = audio_lib.num_video_frames(x.shape[0], sample_rate, fps)
  bounds = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(int)
  bounds = np.minimum(bounds, x.shape[0])
  sums = np.concatenate([[0.0], np.cumsum(x * x)])[bounds]
  counts = np.diff(bounds)
  mean_square = np.diff(sums) / np.maximum(counts, 1)  # 0 for empty frames
  return np.sqrt(np.maximum(mean_square, 0.0))


@functools.lru_cache(maxsize=1)
def _filter_preemphasis_gains() -> np.ndarray:
  """(26,) power gain of the MFCC's pre-emphasis, averaged over each mel filter."""
  bank = audio_lib.mel_filterbank()
  omega = np.pi * np.arange(bank.shape[1]) / (bank.shape[1] - 1)
  gain = np.abs(1.0 - audio_lib.PREEMPHASIS * np.exp(-1j * omega))**2
  return (bank @ gain) / bank.sum(axis=1)


def mfcc_envelope(mfcc_Mx13: np.ndarray, num_frames: int, *,
                  undo_preemphasis: bool = True) -> np.ndarray:
  """The speech's RMS envelope at 25 fps from a clip's stored MFCC.

  The MFCC is `audio.mfcc(audio.pad_for_video(signal))`: 25 ms windows every
  10 ms, 12 rows of padding in front, and c0 = log(sum of the window's
  one-sided power spectrum / 512), which by Parseval is ~200x the window's mean
  square after pre-emphasis (x[n] - 0.97 x[n-1]: a power gain from ~0.001 at
  0 Hz to ~3.9 at 8 kHz). Per row:

  * undo_preemphasis (default): c1..c12 are unliftered and inverted (DCT-III,
    higher cepstra 0) into the smoothed log mel spectrum, whose 26 band
    energies are scaled to sum to exp(c0), divided by the pre-emphasis gain
    averaged over each band and summed: the window's power before
    pre-emphasis (on real speech r ~0.99 with, and within ~10% of, the
    waveform's `rms_envelope`);
  * otherwise exp(c0) itself (the pre-emphasised speech's power).

  Frame t averages the mean squares of rows 4t + 11 .. 4t + 14, whose windows
  are centred in it, and takes the square root; rows past the MFCC's end
  count as silence.

  Args:
    mfcc_Mx13: (M, 13) MFCC of the padded 16 kHz signal.
    num_frames: T video frames (t = 0 starts at the first real sample).
    undo_preemphasis: see above.

  Returns:
    (T,) float64, about the RMS of the (pre-emphasised, if not undone) speech.
  """
  m = np.asarray(mfcc_Mx13, np.float64)
  if m.ndim != 2 or m.shape[1] != audio_lib.NUM_CEPS:
    raise ValueError(f"expected an (M, {audio_lib.NUM_CEPS}) MFCC, got {m.shape}")
  power = np.exp(m[:, 0])
  if undo_preemphasis and m.shape[0]:
    n = np.arange(1, audio_lib.NUM_CEPS)
    lifter = 1.0 + (audio_lib.CEPLIFTER / 2.0) * np.sin(np.pi * n / audio_lib.CEPLIFTER)
    ceps = np.zeros((m.shape[0], audio_lib.NUM_FILTERS))
    ceps[:, 1:audio_lib.NUM_CEPS] = m[:, 1:] / lifter
    log_mel = scipy.fft.idct(ceps, type=2, axis=1, norm="ortho")
    mel = np.exp(log_mel - log_mel.max(axis=1, keepdims=True))
    share = mel / mel.sum(axis=1, keepdims=True)
    power = power * (share / _filter_preemphasis_gains()).sum(axis=1)
  frame_len = audio_lib.WINLEN_S * audio_lib.SAMPLE_RATE
  mean_square = power * 2.0 / frame_len
  rows = (_FIRST_ROW + audio_lib.ROWS_PER_FRAME * np.arange(num_frames)[:, None]
          + np.arange(audio_lib.ROWS_PER_FRAME)[None])
  if not num_frames:
    return np.zeros(0)
  padded = np.concatenate([mean_square,
                           np.zeros(max(rows.max() + 1 - m.shape[0], 0))])
  return np.sqrt(padded[rows].mean(axis=1))
