r"""Measures how many examples per second the input pipeline delivers; prints JSON.

  python -m benchmarks.benchmark_input --data_dir=/tmp/tfds            # tiny synthetic
  python -m benchmarks.benchmark_input --data_dir=DIR --dataset=lrw --batch_size=32

The dataset is read with `tfds.builder(dataset, data_dir=...)`; for the synthetic
dataset it is built first (config --config, --num_clips clips) when missing. For each
view ('atnet', 'vgnet' at 128x128, 'vgnet' at --small_size) the script draws
--warmup batches, then times --batches batches of --batch_size examples (one
process, host-local numpy batches, nothing on the accelerator) and reports
examples/s and frames/s (examples x num_target_frames).
"""

import gc
import json
import os
import time

from absl import app
from absl import flags
import tensorflow_datasets as tfds

import data_pipelines  # noqa: F401  (registers the builders)
from data_pipelines import build
from hcmtfg import paths
from hcmtfg.data import input_pipeline

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_DATASET = flags.DEFINE_string("dataset", "synthetic_talking_faces", "Dataset name.")
_CONFIG = flags.DEFINE_string("config", "tiny", "Builder config.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", None,
                                  "Synthetic only: clips if it must be built.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to read.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Examples per batch.")
_BATCHES = flags.DEFINE_integer("batches", 50, "Timed batches per view.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed batches per view.")
_FRAMES = flags.DEFINE_integer("num_target_frames", 16, "Frames per window.")
_SMALL = flags.DEFINE_integer("small_size", 64, "Image size of the small VG view.")


def _measure(iterator, warmup: int, batches: int) -> float:
  """Seconds for `batches` batches after `warmup` untimed ones."""
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return time.perf_counter() - start


def main(argv):
  del argv
  if not _DATA_DIR.value:
    raise app.UsageError("--data_dir is required")
  data_dir = paths.user_path(_DATA_DIR.value)
  builder = tfds.builder(_DATASET.value, data_dir=data_dir, config=_CONFIG.value)
  if not builder.is_prepared():
    if _DATASET.value != "synthetic_talking_faces":
      raise app.UsageError(f"{_DATASET.value} is not built in {data_dir}")
    builder = build.build_dataset(_DATASET.value, data_dir,
                                  config=_CONFIG.value, num_clips=_NUM_CLIPS.value)
  views = [("atnet", None), ("vgnet", None), ("vgnet", _SMALL.value)]
  result = {"dataset": builder.name, "config": builder.builder_config.name,
            "split": _SPLIT.value, "num_examples":
                builder.info.splits[_SPLIT.value].num_examples,
            "batch_size": _BATCH_SIZE.value, "batches": _BATCHES.value,
            "num_target_frames": _FRAMES.value, "cpus": os.cpu_count(),
            "views": {}}
  for view, size in views:
    iterator = input_pipeline.make_train_iterator(
        builder, view, split=_SPLIT.value, global_batch_size=_BATCH_SIZE.value,
        seed=0, num_target_frames=_FRAMES.value, image_size=size,
        process_index=0, process_count=1)
    seconds = _measure(iterator, _WARMUP.value, _BATCHES.value)
    del iterator  # stops its prefetch threads before the next view is timed
    gc.collect()
    examples = _BATCHES.value * _BATCH_SIZE.value
    name = view if size is None else f"{view}_{size}px"
    result["views"][name] = {
        "examples_per_s": round(examples / seconds, 1),
        "frames_per_s": round(examples * _FRAMES.value / seconds, 1),
        "seconds": round(seconds, 3)}
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
