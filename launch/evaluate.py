r"""Evaluates trained AT-net + VG-net on every clip of a dataset split.

  python -m launch.evaluate --atnet_workdir=runs/atnet --vgnet_workdir=runs/vgnet \
      --dataset=synthetic_talking_faces --data_dir=~/tensorflow_datasets \
      --split=test --output_dir=runs/eval [--config=default] [--max_clips=N]

Each clip is generated from its first frame and its audio, through the whole
cascade (AT-net -> VG-net) and, separately, by VG-net from the true landmarks;
SSIM/PSNR (the release's conventions and plain RGB), LMD, CPBD, AT-net's
landmark errors, the mouth aperture's correlation with the driving landmarks
and a lip-sync proxy (`hcmtfg.evaluation.mouth_metrics`) are reported as mean +- std over
clips (`hcmtfg.evaluation.evaluate` documents every convention). Writes
OUTPUT_DIR/metrics.json (per-clip values included) and OUTPUT_DIR/metrics.md,
and prints the table.

--dataset, --data_dir and --config (the dataset's builder config, e.g. 'tiny')
default to the ones recorded in the AT-net workdir's config.json. Paths may be
relative, start with `~` or contain spaces; workdirs and --data_dir may be
gs:// URLs.

The work is done by `hcmtfg.evaluation.report`; this module is its command
line.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from data_pipelines import build
from hcmtfg.errors import InputError
from hcmtfg.evaluation import report
from hcmtfg.runtime import compile_cache

_ATNET = flags.DEFINE_string(
    "atnet_workdir", None, "AT-net training workdir or converted checkpoint "
    "folder.")
_VGNET = flags.DEFINE_string(
    "vgnet_workdir", None, "VG-net training workdir or converted checkpoint "
    "folder.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "TFDS dataset name (synthetic_talking_faces, lrw, grid, "
    "voxceleb2).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_CONFIG = flags.DEFINE_string(
    "config", None, "The dataset's builder config (e.g. default, tiny).")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where metrics.json and metrics.md go.")
_MAX_CLIPS = flags.DEFINE_integer(
    "max_clips", None, "Evaluate only the first N clips of the split.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "Clips per network call.")
_CHUNK_FRAMES = flags.DEFINE_integer("chunk_frames", 32,
                                     "Frames per network call.")
_THREADS = flags.DEFINE_integer(
    "threads", None, "Threads scoring clips (default: 2, or 1 on one core).")
_PCA = flags.DEFINE_string(
    "pca", None, "Landmark PCA when none is stored with the AT-net weights "
    "(as launch.generate).")
_COEF_SCALING = flags.DEFINE_bool(
    "release_coef_scaling", None, "Scale AT-net coefficients 1..5 as the "
    "release demo (default: on for converted release weights only).")
_CACHE = compile_cache.define_flag()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compile_cache.enable(_CACHE.value)
  if not (_ATNET.value and _VGNET.value and _OUTPUT_DIR.value):
    raise app.UsageError("give --atnet_workdir, --vgnet_workdir and --output_dir")
  if _BATCH_SIZE.value < 1 or _CHUNK_FRAMES.value < 1 or (
      _THREADS.value is not None and _THREADS.value < 1):
    raise app.UsageError("--batch_size, --chunk_frames, --threads must be >= 1")
  try:
    report.run(
        _ATNET.value, _VGNET.value, _OUTPUT_DIR.value,
        load_builder=build.load_builder, dataset=_DATASET.value,
        data_dir=_DATA_DIR.value, config=_CONFIG.value, split=_SPLIT.value,
        max_clips=_MAX_CLIPS.value, batch_size=_BATCH_SIZE.value,
        chunk_frames=_CHUNK_FRAMES.value, threads=_THREADS.value,
        pca=_PCA.value, release_coef_scaling=_COEF_SCALING.value)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
