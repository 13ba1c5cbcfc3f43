"""A sentence of the synthetic corpus's pseudo-words, said by its voice.

The demo's speech (`launch.demo`): vocabulary words of
`articulation.make_vocabulary` said by the formant synthesiser
(`speech.synthesize`) of the corpus, so a network trained on the corpus has
heard such words. Each word is synthesised alone, centred in a silent 1.16 s
clip, and the clips are cut in their silences and joined, so the sentence has
short pauses between words.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from data_pipelines.synthetic import articulation as art_lib
from data_pipelines.synthetic import speech as speech_lib

SAMPLE_RATE = speech_lib.SAMPLE_RATE
WORD_MARGIN_S = 0.1  # silence kept on each side of a word (> 4 smoothing sigmas)
EDGE_S = 0.3  # silence before the first and after the last word


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
