"""Inputs and pictures of the demo: a real photo, synthetic speech, a contact sheet.

* The photo is scikit-image's `astronaut()` (Eileen Collins, NASA; public
  domain), shipped inside the scikit-image package: nothing is downloaded.
* The speech is a sentence of pseudo-words of the synthetic corpus's vocabulary
  said by our formant synthesiser (`data_pipelines.synthetic`): each word is
  synthesised alone, centred in a silent 1.16 s clip, and the clips are cut in
  their silences and joined, so the sentence has short pauses between words.
* The contact sheet shows sampled frames of the generated video: one row per
  frame, [predicted landmarks | attention | colour | result | pasted back]
  (the last panel zoomed on the face in the full photo).
"""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from data_pipelines.synthetic import articulation as art_lib
from data_pipelines.synthetic import speech as speech_lib
from hcmtfg import atomic

SAMPLE_RATE = speech_lib.SAMPLE_RATE
WORD_MARGIN_S = 0.1  # silence kept on each side of a word (> 4 smoothing sigmas)
EDGE_S = 0.3  # silence before the first and after the last word


def _atomic_path(path: str) -> tuple[int, str]:
  return atomic.temp_beside(path, suffix=os.path.splitext(path)[1])


def write_photo(path: str) -> str:
  """Writes scikit-image's astronaut photo (512x512 RGB) as a PNG."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  fd, tmp = _atomic_path(path)
  os.close(fd)
  if not cv2.imwrite(tmp, cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)):
    raise OSError(f"cannot write {path}")
  os.replace(tmp, path)
  return path


def _word_clip(word: art_lib.Word, voice: speech_lib.Voice,
               rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
  """One word alone in silence: (1.16 s of speech, word start s, word end s)."""
  durations = []
  vowels = [i for i, p in enumerate(word.phones) if p in art_lib.VOWELS]
  stressed = vowels[min(word.stressed_syllable, len(vowels) - 1)]
  for i, name in enumerate(word.phones):
    low, high = art_lib.PHONES[name].duration
    durations.append(rng.uniform(low, high) * (1.35 if i == stressed else 1.0))
  start = art_lib.WORD_CENTRE_S - sum(durations) / 2
  silence = art_lib.PHONES["sil"]
  segments = [art_lib.Segment(silence, -1.0, start)]
  t = start
  for i, (name, d) in enumerate(zip(word.phones, durations)):
    segments.append(art_lib.Segment(art_lib.PHONES[name], t, t + d,
                                    i == stressed, True))
    t += d
  segments.append(art_lib.Segment(silence, t, art_lib.CLIP_SECONDS + 1.0))
  articulation = art_lib.articulate(segments, voice.base_f0, rng)
  return speech_lib.synthesize(articulation, voice, rng), start, t


def sentence_speech(word_indices: Sequence[int], seed: int = 0,
                    num_words: int = 20) -> np.ndarray:
  """(N,) float32 16 kHz speech: the vocabulary words `word_indices` in a row.

  Args:
    word_indices: indices into `articulation.make_vocabulary(num_words)`.
    seed: voice and phone durations.
    num_words: vocabulary size (the corpus's, 20 by default).
  """
  vocabulary = art_lib.make_vocabulary(num_words)
  rng = np.random.default_rng(seed)
  voice = speech_lib.random_voice(rng)
  edge = np.zeros(int(EDGE_S * SAMPLE_RATE), np.float32)
  pieces = [edge]
  for index in word_indices:
    audio, start, end = _word_clip(vocabulary[index % num_words], voice, rng)
    lo = max(int((start - WORD_MARGIN_S) * SAMPLE_RATE), 0)
    hi = min(int((end + WORD_MARGIN_S) * SAMPLE_RATE), audio.shape[0])
    piece = audio[lo:hi].copy()
    fade = min(80, piece.shape[0] // 2)  # 5 ms ramps: no clicks at the cuts
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    piece[:fade] *= ramp
    piece[piece.shape[0] - fade:] *= ramp[::-1]
    pieces.append(piece)
  pieces.append(edge)
  return np.concatenate(pieces).astype(np.float32)


def sentence_text(word_indices: Sequence[int], num_words: int = 20) -> str:
  vocabulary = art_lib.make_vocabulary(num_words)
  return " ".join(vocabulary[i % num_words].label for i in word_indices)


def write_wav(path: str, signal: np.ndarray, sample_rate: int = SAMPLE_RATE
              ) -> str:
  """Writes 16-bit PCM WAV atomically."""
  import soundfile  # pylint: disable=g-import-not-at-top
  fd, tmp = _atomic_path(path)
  os.close(fd)
  soundfile.write(tmp, np.clip(signal, -1.0, 1.0), sample_rate, subtype="PCM_16",
                  format="WAV")
  os.replace(tmp, path)
  return path


def _label(image: np.ndarray, text: str) -> None:
  for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
    cv2.putText(image, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour,
                width, cv2.LINE_AA)


def face_square(photo: np.ndarray) -> tuple[int, int, int]:
  """(x, y, side) of a square around the photo's largest face (dlib), 1.8x the
  detection box; the whole photo if no face is found."""
  from hcmtfg import face  # pylint: disable=g-import-not-at-top  (dlib)
  h, w = photo.shape[:2]
  boxes = face.FaceAnalyzer().detect_all(photo)
  if not boxes:
    return 0, 0, min(h, w)
  box = max(boxes, key=lambda b: b.area)
  side = min(int(1.8 * max(box.width, box.height)), h, w)
  cx, cy = box.center
  x = int(np.clip(cx - side / 2, 0, w - side))
  y = int(np.clip(cy - side / 2, 0, h - side))
  return x, y, side


def contact_sheet(intermediates: np.ndarray, pasted: np.ndarray,
                  photo: np.ndarray, path: str, rows: int = 8,
                  fps: float = 25.0) -> str:
  """Writes a PNG: `rows` evenly spaced frames, one per row:
  [landmarks | attention | colour | result | the face pasted back].

  Args:
    intermediates: (T, P, 4P, 3) uint8 frames of the intermediates video.
    pasted: (T, H, W, 3) uint8 frames of the main (pasted-back) video.
    photo: (H, W, 3) uint8 the photo the face was pasted into (to find it).
    path: output PNG.
    rows: frames shown.
    fps: to label frames with their time.
  """
  total = min(intermediates.shape[0], pasted.shape[0])
  picks = np.unique(np.linspace(0, total - 1, rows).round().astype(int))
  p = intermediates.shape[1]
  x, y, side = face_square(photo)
  lines = []
  for t in picks:
    face = cv2.resize(pasted[t, y:y + side, x:x + side], (p, p),
                      interpolation=cv2.INTER_AREA if side > p
                      else cv2.INTER_CUBIC)
    strip = np.concatenate([intermediates[t], face], axis=1).copy()
    _label(strip, f"frame {t}  {t / fps:.2f} s")
    lines.append(strip)
  sheet = np.concatenate(lines, axis=0)
  fd, tmp = _atomic_path(path)
  os.close(fd)
  if not cv2.imwrite(tmp, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
    raise OSError(f"cannot write {path}")
  os.replace(tmp, path)
  return path
