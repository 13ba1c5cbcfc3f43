"""Phones, pseudo-words and the articulatory tracks that drive both face and voice.

A clip is a pseudo-word said inside a short random carrier ("...ta BAMOSI de..."),
cut to LRW's 29 frames (1.16 s). Each phone has articulatory targets (jaw opening,
lip closure, lip rounding, tongue frontness) and source targets (voicing, frication).
The targets form a step function on a 200 Hz control grid which is smoothed with a
Gaussian per track (coarticulation). The same smoothed tracks move the landmarks
(render.py) and set the formants and sources of the synthesiser (speech.py), so the
mouth shape is predictable from the audio as in real speech.

Visual-only tracks (blinks, head pose) live here too: they are motion, not pixels.
All randomness comes from the `np.random.Generator` passed in.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.ndimage

FPS = 25
NUM_FRAMES = 29  # LRW clip length.
CLIP_SECONDS = NUM_FRAMES / FPS  # 1.16 s.
CONTROL_RATE = 200  # Hz; one control frame = 5 ms = 80 samples at 16 kHz.
STEPS_PER_FRAME = CONTROL_RATE // FPS  # 8 control frames per video frame.
NUM_STEPS = NUM_FRAMES * STEPS_PER_FRAME  # 232 control frames per clip.
_MARGIN_S = 0.4  # timeline margin on both sides so smoothing sees real context.
WORD_CENTRE_S = CLIP_SECONDS / 2


@dataclasses.dataclass(frozen=True)
class Phone:
  """Targets of one phone.

  Attributes:
    name: lower-case symbol ("a", "sh", "sil").
    jaw: jaw opening target in [0, 1].
    closure: lip closure in [0, 1]; lip opening target = jaw * (1 - closure).
    rounding: lip shape in [-1, 1]: -1 spread, +1 rounded/protruded.
    front: tongue frontness in [-1, 1] (raises F2; acoustic only).
    voicing: amplitude of the voiced source in [0, 1].
    frication: amplitude of the frication noise in [0, 1].
    noise_band: (low, high) Hz of the frication / release-burst noise.
    stop: True for plosives: silent or murmured closure, then a release burst.
    duration: (min, max) seconds at tempo 1.
  """
  name: str
  jaw: float
  closure: float
  rounding: float
  front: float
  voicing: float
  frication: float = 0.0
  noise_band: tuple[float, float] = (1000.0, 4000.0)
  stop: bool = False
  duration: tuple[float, float] = (0.06, 0.09)

  @property
  def is_vowel(self) -> bool:
    return self.name in VOWELS

  @property
  def lip_open(self) -> float:
    return self.jaw * (1.0 - self.closure)


_V = (0.09, 0.14)  # vowel durations.
PHONES: dict[str, Phone] = {p.name: p for p in [
    Phone("a", jaw=1.00, closure=0.0, rounding=0.0, front=-0.3, voicing=1.0,
          duration=_V),
    Phone("e", jaw=0.55, closure=0.0, rounding=-0.4, front=0.6, voicing=1.0,
          duration=_V),
    Phone("i", jaw=0.22, closure=0.0, rounding=-1.0, front=1.0, voicing=0.9,
          duration=_V),
    Phone("o", jaw=0.60, closure=0.0, rounding=0.7, front=-0.6, voicing=1.0,
          duration=_V),
    Phone("u", jaw=0.25, closure=0.0, rounding=1.0, front=-0.8, voicing=0.9,
          duration=_V),
    Phone("p", 0.10, 1.00, 0.0, -0.2, 0.0, stop=True, noise_band=(400, 2500)),
    Phone("b", 0.10, 1.00, 0.0, -0.2, 0.15, stop=True, noise_band=(400, 2500)),
    Phone("m", 0.12, 1.00, 0.0, -0.2, 0.35, duration=(0.06, 0.09)),
    Phone("f", 0.10, 0.80, -0.2, 0.0, 0.0, 0.20, (1500, 7500), duration=(0.08, 0.11)),
    Phone("v", 0.10, 0.80, -0.2, 0.0, 0.30, 0.10, (1500, 7500), duration=(0.06, 0.09)),
    Phone("s", 0.08, 0.60, -0.5, 0.5, 0.0, 0.55, (4200, 7800), duration=(0.08, 0.12)),
    Phone("z", 0.08, 0.60, -0.5, 0.5, 0.30, 0.30, (4200, 7800), duration=(0.07, 0.10)),
    Phone("sh", 0.12, 0.50, 0.6, 0.3, 0.0, 0.50, (2000, 5500), duration=(0.08, 0.12)),
    Phone("t", 0.15, 0.30, 0.0, 0.5, 0.0, stop=True, noise_band=(3000, 7000)),
    Phone("d", 0.15, 0.30, 0.0, 0.5, 0.15, stop=True, noise_band=(3000, 7000)),
    Phone("k", 0.20, 0.20, 0.0, 0.2, 0.0, stop=True, noise_band=(1500, 3500)),
    Phone("g", 0.20, 0.20, 0.0, 0.2, 0.15, stop=True, noise_band=(1500, 3500)),
    Phone("n", 0.15, 0.30, 0.0, 0.5, 0.40, duration=(0.05, 0.08)),
    Phone("l", 0.30, 0.10, 0.0, 0.4, 0.60, duration=(0.05, 0.08)),
    Phone("w", 0.15, 0.40, 1.0, -0.5, 0.55, duration=(0.05, 0.08)),
    Phone("sil", 0.02, 1.00, 0.0, 0.0, 0.0, duration=(0.05, 0.2)),
]}
VOWELS = ("a", "e", "i", "o", "u")
CONSONANTS = ("p", "b", "m", "f", "v", "s", "z", "sh", "t", "d", "k", "g", "n",
              "l", "w")
_VOCABULARY_SEED = 4  # the vocabulary is a constant of the corpus format.


@dataclasses.dataclass(frozen=True)
class Word:
  """A pseudo-word: an upper-case label and its fixed phone sequence."""
  label: str
  phones: tuple[str, ...]
  stressed_syllable: int


@functools.lru_cache(maxsize=8)
def make_vocabulary(num_words: int) -> tuple[Word, ...]:
  """The first `num_words` pseudo-words (fixed; independent of any corpus seed).

  Words are 2-3 CV syllables with an optional final consonant, e.g. BAMOSI.
  Vocabularies of different sizes share their prefix.
  """
  if not 1 <= num_words <= 2000:
    raise ValueError(f"num_words must be in [1, 2000], got {num_words}")
  rng = np.random.default_rng(_VOCABULARY_SEED)
  words, labels = [], set()
  while len(words) < num_words:
    num_syllables = int(rng.choice([2, 2, 3]))
    phones = []
    for _ in range(num_syllables):
      phones += [str(rng.choice(CONSONANTS)), str(rng.choice(VOWELS))]
    if rng.random() < 0.3:
      phones.append(str(rng.choice(["m", "n", "s", "t", "k", "l"])))
    label = "".join(phones).upper()
    if label in labels:
      continue
    labels.add(label)
    words.append(Word(label, tuple(phones), int(rng.integers(num_syllables))))
  return tuple(words)


@dataclasses.dataclass(frozen=True)
class Segment:
  """A phone occurrence on the clip's time axis (seconds; may start before 0)."""
  phone: Phone
  start: float
  end: float
  stressed: bool = False
  in_word: bool = False


def _syllable_durations(phones: list[str] | tuple[str, ...], stressed_vowel: int,
                        tempo: float, rng: np.random.Generator) -> list[float]:
  """Random durations (s) of the phones; the stressed vowel is 35% longer."""
  durations = []
  for i, name in enumerate(phones):
    lo, hi = PHONES[name].duration
    d = rng.uniform(lo, hi) * tempo
    if i == stressed_vowel:
      d *= 1.35
    durations.append(d)
  return durations


def _random_syllables(num: int, rng: np.random.Generator) -> list[str]:
  """Phones of `num` random CV carrier syllables."""
  phones = []
  for _ in range(num):
    phones += [str(rng.choice(CONSONANTS)), str(rng.choice(VOWELS))]
  return phones


def clip_timeline(word: Word, rng: np.random.Generator) -> list[Segment]:
  """Phone segments of one clip: carrier syllables, the word, carrier, silences.

  The word is centred near the clip centre (jitter +-0.08 s, tempo 0.8-1.2); the
  timeline covers [-0.4, 1.56] s so smoothing has context and the clip may start or
  end mid-speech, as LRW clips do.
  """
  tempo = rng.uniform(0.8, 1.2)
  vowel_positions = [i for i, p in enumerate(word.phones) if p in VOWELS]
  stressed_vowel = vowel_positions[min(word.stressed_syllable,
                                       len(vowel_positions) - 1)]
  word_d = _syllable_durations(word.phones, stressed_vowel, tempo, rng)
  start = WORD_CENTRE_S - sum(word_d) / 2 + rng.uniform(-0.08, 0.08)
  segments = []
  t = start
  for i, (name, d) in enumerate(zip(word.phones, word_d)):
    segments.append(Segment(PHONES[name], t, t + d, i == stressed_vowel, True))
    t += d
  # Carrier after the word: optional pause, 0-2 syllables, then silence.
  if rng.random() < 0.5:
    d = rng.uniform(0.04, 0.12)
    segments.append(Segment(PHONES["sil"], t, t + d))
    t += d
  post = _random_syllables(int(rng.integers(0, 3)), rng)
  for name, d in zip(post, _syllable_durations(post, -1, tempo, rng)):
    segments.append(Segment(PHONES[name], t, t + d))
    t += d
  segments.append(Segment(PHONES["sil"], t, max(t, CLIP_SECONDS) + _MARGIN_S))
  # Carrier before the word, built backwards from the word start.
  t = start
  before = []
  if rng.random() < 0.5:
    d = rng.uniform(0.04, 0.12)
    before.append(Segment(PHONES["sil"], t - d, t))
    t -= d
  pre = _random_syllables(int(rng.integers(0, 3)), rng)
  for name, d in reversed(list(zip(pre, _syllable_durations(pre, -1, tempo, rng)))):
    before.append(Segment(PHONES[name], t - d, t))
    t -= d
  before.append(Segment(PHONES["sil"], min(t, 0.0) - _MARGIN_S, t))
  return before[::-1] + segments


# Smoothing widths (seconds) of the step-function targets.
_SIGMA_S = {"jaw": 0.025, "lip_open": 0.018, "rounding": 0.030, "front": 0.022,
            "voicing": 0.006}


@dataclasses.dataclass(frozen=True)
class Articulation:
  """Smoothed tracks on the control grid t_k = k / CONTROL_RATE, k in [0, NUM_STEPS).

  Attributes:
    jaw, lip_open: (NUM_STEPS,) in [0, 1]; lip_open = inner-lip gap / max gap.
    rounding, front: (NUM_STEPS,) in [-1, 1].
    voicing: (NUM_STEPS,) voiced-source amplitude in [0, 1].
    f0: (NUM_STEPS,) pitch in Hz.
    segments: the phone timeline (for frication and bursts, sample-accurate).
  """
  jaw: np.ndarray
  lip_open: np.ndarray
  rounding: np.ndarray
  front: np.ndarray
  voicing: np.ndarray
  f0: np.ndarray
  segments: tuple[Segment, ...]

  def at_frames(self, name: str) -> np.ndarray:
    """(NUM_FRAMES,) float32 track sampled at video frame centres (t + 0.5) / FPS."""
    track = getattr(self, name)
    return track[STEPS_PER_FRAME // 2::STEPS_PER_FRAME].astype(np.float32)


def articulate(segments: list[Segment], base_f0: float,
               rng: np.random.Generator) -> Articulation:
  """Targets of the segments -> smoothed control-rate tracks and a pitch contour.

  Args:
    segments: from `clip_timeline`.
    base_f0: the speaker's mean pitch in Hz (e.g. 90-250).
    rng: random generator (pitch accents and drift).
  """
  margin = int(_MARGIN_S * CONTROL_RATE)
  n = NUM_STEPS + 2 * margin
  t = (np.arange(n) - margin + 0.5) / CONTROL_RATE
  targets = {k: np.zeros(n) for k in _SIGMA_S}
  for seg in segments:
    sel = (t >= seg.start) & (t < seg.end)
    p = seg.phone
    targets["jaw"][sel] = p.jaw
    targets["lip_open"][sel] = p.lip_open
    targets["rounding"][sel] = p.rounding
    targets["front"][sel] = p.front
    targets["voicing"][sel] = p.voicing
  tracks = {k: scipy.ndimage.gaussian_filter1d(v, _SIGMA_S[k] * CONTROL_RATE,
                                               mode="nearest")
            for k, v in targets.items()}
  # Pitch: declination, an accent on each stressed or carrier vowel, slow drift.
  f0 = base_f0 * (1.08 - 0.16 * (t + _MARGIN_S) / (CLIP_SECONDS + 2 * _MARGIN_S))
  for seg in segments:
    if seg.phone.is_vowel:
      amp = rng.uniform(0.12, 0.22) if seg.stressed else rng.uniform(0.0, 0.08)
      mid = 0.5 * (seg.start + seg.end)
      f0 = f0 * (1 + amp * np.exp(-0.5 * ((t - mid) / 0.07) ** 2))
  drift = scipy.ndimage.gaussian_filter1d(rng.normal(0, 1, n), 0.08 * CONTROL_RATE)
  f0 = f0 * (1 + 0.25 * drift)
  crop = slice(margin, margin + NUM_STEPS)
  return Articulation(
      jaw=np.clip(tracks["jaw"][crop], 0, 1),
      lip_open=np.clip(tracks["lip_open"][crop], 0, 1),
      rounding=np.clip(tracks["rounding"][crop], -1, 1),
      front=np.clip(tracks["front"][crop], -1, 1),
      voicing=np.clip(tracks["voicing"][crop], 0, 1),
      f0=f0[crop],
      segments=tuple(segments))


def blink_track(rng: np.random.Generator, num_frames: int = NUM_FRAMES) -> np.ndarray:
  """(T,) float32 eyelid closure in [0, 1]: 0-2 blinks (fast close, slower open)."""
  t = (np.arange(num_frames) + 0.5) / FPS
  blink = np.zeros(num_frames)
  num_blinks = int(rng.choice([0, 1, 1, 2], p=[0.45, 0.25, 0.2, 0.1]))
  for _ in range(num_blinks):
    t0 = rng.uniform(-0.1, t[-1])
    close = rng.uniform(0.05, 0.08)
    hold = rng.uniform(0.02, 0.06)
    open_ = rng.uniform(0.10, 0.16)
    x = np.interp(t, [t0 - close, t0, t0 + hold, t0 + hold + open_],
                  [0, 1, 1, 0], left=0, right=0)
    blink = np.maximum(blink, 0.5 - 0.5 * np.cos(np.pi * x))
  return blink.astype(np.float32)


POSE_FIELDS = ("yaw_deg", "pitch_deg", "roll_deg", "tx_px", "ty_px", "scale")


def pose_track(articulation: Articulation, rng: np.random.Generator,
               num_frames: int = NUM_FRAMES) -> np.ndarray:
  """(T, 6) float32 head motion, columns POSE_FIELDS, around the clip's rest pose.

  Slow sinusoidal sway (|yaw| <~ 4 deg, |pitch| <~ 3, |roll| <~ 2.5, |t| <~ 4 px,
  scale 1 +- 2%) plus a small nod following the jaw, as speakers do.
  """
  t = (np.arange(num_frames) + 0.5) / FPS
  amps = np.array([3.0, 1.8, 2.0, 3.0, 2.5, 0.015])
  cols = []
  for amp in amps:
    freq = rng.uniform(0.3, 1.2)
    phase = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(-0.3, 0.3)
    cols.append(amp * rng.uniform(0.3, 1.0) * (np.sin(2 * np.pi * freq * t + phase)
                                               + offset))
  pose = np.stack(cols, axis=1)
  pose[:, 1] += 1.5 * articulation.at_frames("jaw")  # nod down when opening.
  pose[:, 5] += 1.0
  return pose.astype(np.float32)
