"""Synthetic talking-face corpus in LRW's layout (see corpus.py; CLI in __main__.py).

Real photos animated by articulatory tracks, with formant speech driven by the same
tracks, so mouth shape is predictable from the audio as in real speech.
"""

from data_pipelines.synthetic.corpus import Clip
from data_pipelines.synthetic.corpus import ClipInfo
from data_pipelines.synthetic.corpus import clip_info
from data_pipelines.synthetic.corpus import CorpusResult
from data_pipelines.synthetic.corpus import DEFAULT_SPLITS
from data_pipelines.synthetic.corpus import generate_clip
from data_pipelines.synthetic.corpus import generate_corpus
from data_pipelines.synthetic.corpus import parse_splits
from data_pipelines.synthetic.corpus import write_contact_sheet
