"""A source-filter (Klatt-style cascade formant) speech synthesiser.

The voiced source is a Rosenberg glottal-flow pulse train, differentiated (lip
radiation), with the speaker's pitch contour, a little jitter/shimmer and breath
noise; it drives a cascade of five two-pole resonators whose frequencies follow the
articulatory tracks: F1 rises with the lip/jaw opening, F2 with tongue frontness and
falls with lip rounding, every formant scales with the speaker's vocal-tract length.
Frication (band-passed noise per fricative), stop release bursts and aspiration are
added from the phone timeline with sample accuracy. Silences (closed mouth) are
silent but for a faint room tone.

The resonators are time-varying: coefficients are updated every control step (5 ms,
80 samples) and the filter state is carried across steps with `scipy.signal.lfilter`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.signal

from data_pipelines.synthetic import articulation as art_lib

SAMPLE_RATE = 16000
SAMPLES_PER_STEP = SAMPLE_RATE // art_lib.CONTROL_RATE  # 80
NUM_SAMPLES = art_lib.NUM_STEPS * SAMPLES_PER_STEP  # 18560 = 1.16 s
_BANDWIDTHS_HZ = np.array([80.0, 100.0, 140.0, 200.0, 260.0])
_F4_HZ, _F5_HZ = 3500.0, 4500.0


@dataclasses.dataclass(frozen=True)
class Voice:
  """A synthetic speaker.

  Attributes:
    base_f0: mean pitch in Hz (about 90-130 low voices, 170-240 high voices).
    tract_scale: formant multiplier; > 1 for a shorter vocal tract.
    breathiness: aspiration noise mixed into voicing, in [0, 0.3].
    gain: peak level relative to the nominal 0.47 (linear, about +-4 dB).
  """
  base_f0: float
  tract_scale: float
  breathiness: float
  gain: float


def random_voice(rng: np.random.Generator) -> Voice:
  """A random low or high voice with matching vocal-tract length."""
  if rng.random() < 0.5:
    f0, scale = rng.uniform(90, 135), rng.uniform(0.90, 1.02)
  else:
    f0, scale = rng.uniform(170, 240), rng.uniform(1.05, 1.18)
  return Voice(base_f0=float(f0), tract_scale=float(scale),
               breathiness=float(rng.uniform(0.02, 0.2)),
               gain=float(10 ** (rng.uniform(-4, 4) / 20)))


def formant_tracks(articulation: art_lib.Articulation, voice: Voice) -> np.ndarray:
  """(NUM_STEPS, 5) formant frequencies in Hz from the articulatory tracks."""
  lip = articulation.lip_open
  rnd = articulation.rounding
  front = articulation.front
  f1 = 240.0 + 600.0 * lip ** 1.3 + 60.0 * articulation.jaw
  f2 = np.clip(1450.0 + 600.0 * front - 350.0 * rnd, 650.0, 2500.0)
  f3 = 2600.0 + 250.0 * front - 250.0 * rnd
  f4 = np.full_like(f1, _F4_HZ)
  f5 = np.full_like(f1, _F5_HZ)
  lowering = 1.0 - 0.05 * np.maximum(rnd, 0.0)  # protrusion lengthens the tract.
  freqs = np.stack([f1, f2, f3, f4, f5], axis=1) * (lowering * voice.tract_scale)[:, None]
  return np.minimum(freqs, 0.46 * SAMPLE_RATE)


def _per_sample(track_S: np.ndarray) -> np.ndarray:
  """Linear interpolation of a control-rate track to (NUM_SAMPLES,)."""
  t_step = (np.arange(track_S.shape[0]) + 0.5) * SAMPLES_PER_STEP
  return np.interp(np.arange(NUM_SAMPLES), t_step, track_S)


def glottal_source(f0_N: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """(N,) differentiated Rosenberg glottal flow at per-sample pitch f0_N (Hz)."""
  jitter = 1.0 + 0.01 * rng.standard_normal(f0_N.shape[0])
  phase = np.cumsum(f0_N * jitter / SAMPLE_RATE)
  period_index = np.floor(phase).astype(np.int64)
  phi = phase - period_index
  opening, closing = 0.40, 0.16
  flow = np.where(phi < opening, 0.5 * (1 - np.cos(np.pi * phi / opening)),
                  np.where(phi < opening + closing,
                           np.cos(0.5 * np.pi * (phi - opening) / closing), 0.0))
  shimmer = 1.0 + 0.05 * rng.standard_normal(period_index[-1] + 1)
  flow = flow * shimmer[period_index]
  return np.diff(flow, prepend=0.0) * 8.0


def _cascade(source_N: np.ndarray, freqs_SxK: np.ndarray) -> np.ndarray:
  """Time-varying cascade of two-pole resonators (unity gain at 0 Hz)."""
  out = source_N
  radius_K = np.exp(-np.pi * _BANDWIDTHS_HZ / SAMPLE_RATE)
  for k in range(freqs_SxK.shape[1]):
    theta_S = 2 * np.pi * freqs_SxK[:, k] / SAMPLE_RATE
    a1_S = -2 * radius_K[k] * np.cos(theta_S)
    a2 = radius_K[k] ** 2
    gain_S = 1 + a1_S + a2
    state = np.zeros(2)
    y = np.empty_like(out)
    for s in range(freqs_SxK.shape[0]):
      block = slice(s * SAMPLES_PER_STEP, (s + 1) * SAMPLES_PER_STEP)
      y[block], state = scipy.signal.lfilter(
          [gain_S[s]], [1.0, a1_S[s], a2], out[block], zi=state)
    out = y
  return out


def _envelope(start: float, end: float, ramp: float) -> tuple[slice, np.ndarray]:
  """Sample range and raised-cosine-edged envelope of [start, end] seconds."""
  i0 = int(np.floor((start - ramp) * SAMPLE_RATE))
  i1 = int(np.ceil((end + ramp) * SAMPLE_RATE))
  t = np.arange(i0, i1) / SAMPLE_RATE
  env = np.clip(np.minimum(t - (start - ramp), (end + ramp) - t) / (2 * ramp), 0, 1)
  env = 0.5 - 0.5 * np.cos(np.pi * env)
  lo = min(max(i0, 0), NUM_SAMPLES)
  hi = max(min(i1, NUM_SAMPLES), lo)
  return slice(lo, hi), env[lo - i0:hi - i0]


def _bandpass_noise(num: int, band: tuple[float, float], tract_scale: float,
                    rng: np.random.Generator) -> np.ndarray:
  low = min(band[0] * tract_scale, 0.45 * SAMPLE_RATE)
  high = min(band[1] * tract_scale, 0.48 * SAMPLE_RATE)
  sos = scipy.signal.butter(2, [low, high], btype="bandpass", fs=SAMPLE_RATE,
                            output="sos")
  return scipy.signal.sosfilt(sos, rng.standard_normal(num + 256))[256:]


def synthesize(articulation: art_lib.Articulation, voice: Voice,
               rng: np.random.Generator) -> np.ndarray:
  """The clip's speech.

  Args:
    articulation: control-rate tracks and the phone timeline.
    voice: the speaker.
    rng: random generator (source jitter, noise).

  Returns:
    (NUM_SAMPLES,) float32 mono audio at SAMPLE_RATE, in [-1, 1].
  """
  f0_N = _per_sample(articulation.f0)
  voicing_N = _per_sample(articulation.voicing)
  excitation = glottal_source(f0_N, rng) * voicing_N
  excitation += voice.breathiness * voicing_N * rng.standard_normal(NUM_SAMPLES)
  # Aspiration after voiceless stop releases goes through the vocal tract too.
  for seg in articulation.segments:
    if seg.phone.stop and seg.phone.voicing == 0.0:
      where, env = _envelope(seg.end + 0.02, seg.end + 0.05, 0.015)
      excitation[where] += 0.5 * env * rng.standard_normal(env.shape[0])
  speech = _cascade(excitation, formant_tracks(articulation, voice))
  # Frication and release bursts are added after the tract (parallel branch).
  for seg in articulation.segments:
    p = seg.phone
    if p.frication > 0:
      where, env = _envelope(seg.start + 0.01, seg.end - 0.01, 0.015)
      if env.size:
        speech[where] += 0.25 * p.frication * env * _bandpass_noise(
            env.shape[0], p.noise_band, voice.tract_scale, rng)
    if p.stop:
      where, env = _envelope(seg.end, seg.end + 0.012, 0.003)
      if env.size:
        decay = np.exp(-np.arange(env.shape[0]) / (0.006 * SAMPLE_RATE))
        level = 0.5 if p.voicing == 0.0 else 0.25
        speech[where] += level * env * decay * _bandpass_noise(
            env.shape[0], p.noise_band, voice.tract_scale, rng)
  # Peak-normalise (recordings are levelled), then the speaker's gain: peak 0.3-0.75.
  speech = speech * (0.47 * voice.gain / max(float(np.abs(speech).max()), 1e-3))
  room_tone = scipy.signal.lfilter([1.0], [1.0, -0.9], rng.standard_normal(NUM_SAMPLES))
  speech += 10 ** (rng.uniform(-62, -52) / 20) * room_tone
  return np.clip(speech, -1.0, 1.0).astype(np.float32)
