r"""Builds the synthetic talking-face corpus (LRW layout) from the command line.

  python -m data_pipelines.synthetic --output_dir=/tmp/synthetic --num_clips=200 \
      --seed=0 [--faces_dir=DIR] [--splits=train:0.8,val:0.1,test:0.1] \
      [--num_words=20] [--num_workers=N] [--contact_sheet=/tmp/sheet.png]

Re-running with the same flags skips finished clips (resumable).
"""

import sys
import time

from absl import app
from absl import flags

from data_pipelines.synthetic import corpus
from data_pipelines.synthetic import faces as faces_lib
from hcmtfg import paths
from hcmtfg.errors import InputError

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Corpus root directory.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 200, "Number of clips.", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Corpus seed (clip i uses (seed, i)).")
_FACES_DIR = flags.DEFINE_string(
    "faces_dir", None, "Folder of face photos added to the built-in astronaut.")
_SPLITS = flags.DEFINE_string("splits", "train:0.8,val:0.1,test:0.1",
                              "Split fractions NAME:FRACTION,...")
_NUM_WORDS = flags.DEFINE_integer("num_words", corpus.DEFAULT_NUM_WORDS,
                                  "Vocabulary size (pseudo-words).", lower_bound=1)
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None,
                                    "Worker processes (default: os.cpu_count()).")
_CONTACT_SHEET = flags.DEFINE_string(
    "contact_sheet", None, "Write a PNG grid of one clip's frames here.")
_CONTACT_SHEET_CLIP = flags.DEFINE_integer("contact_sheet_clip", 0,
                                           "Clip index shown on the contact sheet.")
flags.mark_flag_as_required("output_dir")


def main(argv):
  del argv
  try:
    splits = corpus.parse_splits(_SPLITS.value)
  except ValueError as e:
    raise app.UsageError(str(e))
  output_dir, faces_dir, contact_sheet = (
      paths.user_path(flag.value)
      for flag in (_OUTPUT_DIR, _FACES_DIR, _CONTACT_SHEET))
  try:
    faces = faces_lib.list_faces(faces_dir)
    start = time.time()
    result = corpus.generate_corpus(
        output_dir, _NUM_CLIPS.value, _SEED.value, faces=faces, splits=splits,
        num_words=_NUM_WORDS.value, num_workers=_NUM_WORKERS.value, progress=True)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"built {len(result.built)} clips, skipped {len(result.skipped)} finished ones,"
        f" removed {len(result.removed_partials)} partial files in "
        f"{time.time() - start:.1f} s -> {output_dir}")
  if contact_sheet:
    clip = corpus.generate_clip(_CONTACT_SHEET_CLIP.value, _SEED.value, faces,
                                _NUM_WORDS.value, splits)
    path = corpus.write_contact_sheet(clip, contact_sheet)
    print(f"contact sheet of {clip.info.stem} -> {path}")
  return 0


if __name__ == "__main__":
  app.run(main)
