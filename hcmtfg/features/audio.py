"""Speech loading and the release's audio features (MFCC and per-frame windows).

The original ATVGnet release turns speech into AT-net inputs like this:
resample to 16 kHz mono, pad 1920 zero samples (0.12 s = 3 video frames = 12 MFCC
rows) at both ends, compute 13 MFCCs every 10 ms with `python_speech_features`'
defaults, and give AT-net, for each 25-fps video frame, the 28×12 block of MFCC rows
spanning 7 video frames centred on it (c0 dropped).

Index convention. `mfcc_windows` takes the MFCC of the *padded* signal. The window of
video frame t (t = 0 is the frame starting at the first real audio sample) is

    windows[t] = mfcc_padded[4t : 4t + 28, 1:]

which is the release's `mfcc[(ind - 3) * 4 : (ind + 4) * 4, 1:]` with ind = t + 3 (the
release's loop starts at ind = 3), i.e. rows (t - 3) * 4 ... (t + 4) * 4 in the time
axis of the unpadded audio. Thanks to the 12 rows of front padding every window starts
in range, so the first frames need no extra padding. The release's loop stops at
ind = M // 4 - 4, which drops the last video frame of an audio whose length is a
multiple of 640 samples; we keep every frame and fill rows past the end of the MFCC
with zeros. Zero rows are what the release's own zero-sample padding produces: for an
all-zero 25 ms frame every mel energy is floored to the same epsilon, so cepstral
coefficients 1..12 are 0 (to ~1e-14). Windows are therefore exactly the release's
wherever the release defines them, and equal to "more silence" elsewhere.

Everything here is pure numpy (float64 inside, float32 out) and vectorised.
"""

from __future__ import annotations

import decimal
import functools
import math
import os
from typing import Union

import numpy as np
import scipy.fft

from hcmtfg import errors
from hcmtfg.errors import InputError

SAMPLE_RATE = 16000  # Hz; everything downstream assumes 16 kHz mono.
VIDEO_FPS = 25
PAD_SECONDS = 0.12  # the release pads 1920 samples = 3 video frames at each end.
PAD_SAMPLES = 1920
MFCC_RATE = 100  # MFCC rows per second (10 ms step).
ROWS_PER_FRAME = MFCC_RATE // VIDEO_FPS  # 4 MFCC rows per video frame.
CONTEXT_FRAMES = 3  # video frames of context on each side of the centre frame.
WINDOW_ROWS = (2 * CONTEXT_FRAMES + 1) * ROWS_PER_FRAME  # 28
NUM_CEPS = 13

# MFCC parameters of python_speech_features.mfcc(signal, 16000, winstep=0.01)
# (`hcmtfg.evaluation.speech_envelope.mfcc_envelope` inverts part of it).
WINLEN_S = 0.025
WINSTEP_S = 0.01
NFFT = 512
NUM_FILTERS = 26
PREEMPHASIS = 0.97
CEPLIFTER = 22

PathOrSignal = Union[str, os.PathLike, np.ndarray]


def _round_half_up(x: float) -> int:
  return int(decimal.Decimal(x).quantize(decimal.Decimal(1), decimal.ROUND_HALF_UP))


def _hz_to_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, num_filters: int = NUM_FILTERS,
                   nfft: int = NFFT) -> np.ndarray:
  """Triangular mel filters on FFT bins, (num_filters, nfft // 2 + 1) float64.

  Band edges are evenly spaced in mel from 0 Hz to sample_rate / 2 and snapped to
  bins with floor((nfft + 1) * hz / sample_rate); each filter rises linearly from 0
  at its lower edge to 1 at its centre bin and falls back towards 0 before its upper
  edge (the upper edge bin itself gets 0). The returned array is read-only.
  """
  mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), num_filters + 2)
  edges = np.floor((nfft + 1) * _mel_to_hz(mels) / sample_rate)
  lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  k = np.arange(nfft // 2 + 1, dtype=np.float64)[None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    rising = np.where((k >= lo) & (k < mid), (k - lo) / (mid - lo), 0.0)
    falling = np.where((k >= mid) & (k < hi), (hi - k) / (hi - mid), 0.0)
  bank = rising + falling
  bank.flags.writeable = False
  return bank


def _frame(signal: np.ndarray, frame_len: int, step: int) -> np.ndarray:
  """(num_frames, frame_len) frames; the last one zero-padded (psf's framing)."""
  n = signal.shape[0]
  num_frames = 1 if n <= frame_len else 1 + -(-(n - frame_len) // step)
  padded = np.zeros((num_frames - 1) * step + frame_len, np.float64)
  padded[:n] = signal
  windows = np.lib.stride_tricks.sliding_window_view(padded, frame_len)
  return windows[::step]


def mfcc(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """The release's MFCC: `python_speech_features.mfcc(signal, sr, winstep=0.01)`.

  25 ms rectangular frames every 10 ms (round-half-up sample counts; the frame count
  is 1 + ceil((n - frame_len) / step) and the last frame is zero-padded), pre-emphasis
  0.97, power spectrum |rfft_512|^2 / 512, 26 mel filters 0..sr/2, natural log (zero
  energies replaced by float64 eps), orthonormal DCT-II, first 13 coefficients,
  sinusoidal lifter 22, then coefficient 0 replaced by the log total frame energy.

  Args:
    signal: (N,) float audio, N >= 1, nominally in [-1, 1], at `sample_rate`.
    sample_rate: Hz (16000 in this project).

  Returns:
    (M, 13) float32, M = 1 + ceil((N - 400) / 160) at 16 kHz (1 when N <= 400).
    Column 0 is log energy (about -36 for digital silence), columns 1..12 cepstra.
  """
  x = np.asarray(signal, dtype=np.float64)
  if x.ndim != 1:
    raise ValueError(f"mfcc expects a 1-D signal, got shape {x.shape}")
  if x.size == 0:
    raise ValueError("mfcc: the signal is empty")
  if not np.all(np.isfinite(x)):
    raise ValueError("mfcc: the signal contains NaN or infinite samples")
  x = np.concatenate([x[:1], x[1:] - PREEMPHASIS * x[:-1]])
  frames = _frame(x, _round_half_up(WINLEN_S * sample_rate),
                  _round_half_up(WINSTEP_S * sample_rate))
  power = np.square(np.abs(np.fft.rfft(frames, NFFT, axis=1))) / NFFT
  eps = np.finfo(np.float64).eps
  energy = power.sum(axis=1)
  energy = np.where(energy == 0, eps, energy)
  mel = power @ mel_filterbank(sample_rate, NUM_FILTERS, NFFT).T
  mel = np.where(mel == 0, eps, mel)
  ceps = scipy.fft.dct(np.log(mel), type=2, axis=1, norm="ortho")[:, :NUM_CEPS]
  n = np.arange(NUM_CEPS)
  ceps *= 1.0 + (CEPLIFTER / 2.0) * np.sin(np.pi * n / CEPLIFTER)
  ceps[:, 0] = np.log(energy)
  return ceps.astype(np.float32)


def pad_for_video(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """The release's padding: 0.12 s of zeros at both ends (1920 samples at 16 kHz).

  Args:
    signal: (N,) float audio.
    sample_rate: Hz.

  Returns:
    (N + 2 * pad,) float32 with pad = 0.12 * sample_rate.
  """
  pad = _round_half_up(PAD_SECONDS * sample_rate)
  x = np.asarray(signal, dtype=np.float32)
  if x.ndim != 1:
    raise ValueError(f"pad_for_video expects a 1-D signal, got shape {x.shape}")
  return np.pad(x, (pad, pad))


def num_video_frames(num_samples: int, sample_rate: int = SAMPLE_RATE,
                     fps: float = VIDEO_FPS) -> int:
  """Number of video frames covering `num_samples` of audio: ceil(duration * fps).

  At 16 kHz and 25 fps a frame is 640 samples; 641 samples give 2 frames.
  """
  if num_samples < 0:
    raise ValueError(f"num_samples must be >= 0, got {num_samples}")
  # Rounding to 6 decimals keeps float noise (e.g. 29.97 fps) from adding a frame.
  return int(math.ceil(round(num_samples * fps / sample_rate, 6)))


def mfcc_windows(mfcc_Mx13: np.ndarray, num_frames: int) -> np.ndarray:
  """Per-video-frame AT-net inputs from the MFCC of the *padded* signal.

  windows[t] = mfcc_Mx13[4t : 4t + 28, 1:] for t in [0, num_frames) (the release's
  window of its frame ind = t + 3); rows past the end of the MFCC are zeros (the
  cepstra of digital silence, see the module docstring). With `pad_for_video` audio
  the windows start in range for every t, including t = 0.

  Args:
    mfcc_Mx13: (M, 13) MFCC of `pad_for_video(signal)`.
    num_frames: T >= 0, number of 25-fps video frames.

  Returns:
    (T, 28, 12) float32.
  """
  m = np.asarray(mfcc_Mx13, dtype=np.float32)
  if m.ndim != 2 or m.shape[1] != NUM_CEPS:
    raise ValueError(f"expected an (M, {NUM_CEPS}) MFCC, got shape {m.shape}")
  if num_frames < 0:
    raise ValueError(f"num_frames must be >= 0, got {num_frames}")
  rows_TxW = (ROWS_PER_FRAME * np.arange(num_frames)[:, None]
              + np.arange(WINDOW_ROWS)[None, :])
  needed = ROWS_PER_FRAME * max(num_frames - 1, 0) + WINDOW_ROWS
  ceps = m[:, 1:]
  if needed > ceps.shape[0]:
    ceps = np.concatenate(
        [ceps, np.zeros((needed - ceps.shape[0], NUM_CEPS - 1), np.float32)])
  return ceps[rows_TxW]


def _read_with_soundfile(path: str) -> tuple[np.ndarray, int] | None:
  """(N, C) float32 samples and rate, or None when libsndfile can't parse it."""
  import soundfile  # pylint: disable=g-import-not-at-top
  try:
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError):
    return None
  return data, int(rate)


def resample(signal: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE
             ) -> np.ndarray:
  """Deterministic band-limited resampling: soxr 'HQ' (librosa's default method).

  Equal to `librosa.resample(signal, orig_sr=..., target_sr=...)` without librosa's
  slow import: the output is trimmed or zero-padded to ceil(N * target_sr / orig_sr).

  Args:
    signal: (N,) float audio at orig_sr.
    orig_sr: input rate in Hz.
    target_sr: output rate in Hz.

  Returns:
    (ceil(N * target_sr / orig_sr),) float32.
  """
  x = np.asarray(signal, dtype=np.float32)
  if orig_sr == target_sr:
    return x
  import soxr  # pylint: disable=g-import-not-at-top
  n_out = int(math.ceil(x.shape[0] * target_sr / orig_sr))
  y = np.asarray(soxr.resample(x, orig_sr, target_sr, quality="HQ"), np.float32)
  if y.shape[0] >= n_out:
    return y[:n_out]
  return np.pad(y, (0, n_out - y.shape[0]))


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Reads speech as mono float32 at `sample_rate`.

  WAV/FLAC/OGG/MP3 (any rate, 8/16/24/32-bit int or float, mono or multi-channel)
  are read with soundfile; anything else ffmpeg can decode (the audio track of an
  .mp4/.mkv/.m4a/.aac ...) is extracted through `hcmtfg.media.video.read_audio`. Channels
  are averaged, the result is resampled (soxr HQ) and clipped to [-1, 1].

  Args:
    path: audio or video file.
    sample_rate: output rate in Hz.

  Returns:
    (N,) float32 in [-1, 1], N >= sample_rate / 25 (one 25-fps video frame).

  Raises:
    InputError: missing, empty, unreadable or corrupt file; not audio; no audio
      track; non-finite samples; zero samples; shorter than one video frame.
  """
  path = os.fspath(path)
  errors.check_readable_file(path, "an audio file")
  read = _read_with_soundfile(path)
  if read is not None:
    data_NxC, rate = read
    if data_NxC.shape[0] == 0:
      raise InputError(path, "the audio contains no samples")
    signal = resample(data_NxC.mean(axis=1), rate, sample_rate)
  else:
    from hcmtfg.media import video  # pylint: disable=g-import-not-at-top
    signal = video.read_audio(path, sample_rate=sample_rate)
  if signal.size == 0:
    raise InputError(path, "the audio contains no samples")
  if not np.all(np.isfinite(signal)):
    raise InputError(path, "the audio contains NaN or infinite samples")
  min_samples = sample_rate // VIDEO_FPS
  if signal.size < min_samples:
    raise InputError(
        path, f"the audio is {signal.size / sample_rate:.4f} s long, shorter than "
        f"one video frame ({1 / VIDEO_FPS:.2f} s)")
  return np.clip(signal, -1.0, 1.0).astype(np.float32)


def speech_features(path_or_signal: PathOrSignal, num_frames: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """MFCC and per-frame windows of a whole utterance, the release's way.

  Args:
    path_or_signal: a file for `load_audio`, or a (N,) float signal at 16 kHz.
    num_frames: T; default: the 25-fps frames covering the audio
      (`num_video_frames(N)`). Pass a video's frame count to align with it.

  Returns:
    mfcc_Mx13: (M, 13) float32 MFCC of the padded signal (M = N / 160 + 23 or so).
    windows_Tx28x12: (T, 28, 12) float32, see `mfcc_windows`.
  """
  if isinstance(path_or_signal, np.ndarray):
    signal = np.asarray(path_or_signal, dtype=np.float32)
    if signal.ndim != 1:
      raise ValueError(f"expected a 1-D signal, got shape {signal.shape}")
  else:
    signal = load_audio(path_or_signal)
  if num_frames is None:
    num_frames = num_video_frames(signal.shape[0])
  mfcc_Mx13 = mfcc(pad_for_video(signal))
  return mfcc_Mx13, mfcc_windows(mfcc_Mx13, num_frames)
