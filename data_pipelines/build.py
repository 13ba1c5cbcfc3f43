r"""Builds one of hcmtfg's TFDS datasets (a thin wrapper over TFDS's build).

  python -m data_pipelines.build --dataset=synthetic_talking_faces \
      --data_dir=/tmp/tfds [--config=tiny] [--num_clips=12] [--beam]
  python -m data_pipelines.build --dataset=lrw --data_dir=DIR \
      --manual_dir=LRW_DIR --beam_pipeline_options=runner=DirectRunner,\
direct_num_workers=2,direct_running_mode=multi_processing

Then `import data_pipelines; tfds.builder('synthetic_talking_faces', data_dir=DIR)`
reads the dataset (config 'default' unless --config was given). `--beam` runs the
example generation under Apache Beam (default options: DirectRunner, one worker
process per CPU); without it a plain Python loop builds the dataset.

TFDS's own CLI drives the same builders, from the repository root (the `tfds`
script does not put the current directory on the import path):
  PYTHONPATH=. tfds build synthetic_talking_faces --imports=data_pipelines \
      --config=tiny --data_dir=DIR [--beam_pipeline_options=...]

The entry points get their datasets here too: `prepare_dataset` (a training
config's, built on demand) and `load_builder` (an evaluation's, by name).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import sys

from absl import app
from absl import flags
from absl import logging
import tensorflow_datasets as tfds

import data_pipelines  # registers the builders.
from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.train import locking

DATASETS = ("synthetic_talking_faces", "lrw", "grid", "voxceleb2")


def default_beam_options() -> str:
  return (f"runner=DirectRunner,direct_num_workers={os.cpu_count() or 1},"
          "direct_running_mode=multi_processing")


def _beam_pipeline_options(options: str):
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  # Worker processes must import this package like the driver does.
  root = os.path.dirname(os.path.dirname(os.path.abspath(data_pipelines.__file__)))
  paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
  if root not in paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p])
  return pipeline_options.PipelineOptions(
      flags=[f"--{opt.strip()}" for opt in options.split(",") if opt.strip()])


def build_dataset(dataset: str, data_dir: str | os.PathLike, *,
                  config: str | None = None, num_clips: int | None = None,
                  manual_dir: str | os.PathLike | None = None,
                  download_dir: str | os.PathLike | None = None,
                  beam: bool = False, beam_pipeline_options: str | None = None,
                  max_examples_per_split: int | None = None
                  ) -> tfds.core.DatasetBuilder:
  """Builds (if not built yet) and returns the prepared TFDS builder.

  Directories may be relative, start with `~` or (data_dir) be gs:// URLs.

  Args:
    dataset: one of DATASETS.
    data_dir: TFDS data directory.
    config: builder config name; None = the builder's default.
    num_clips: synthetic_talking_faces only, overrides the config's corpus size.
    manual_dir: the manually downloaded corpus (lrw, grid, voxceleb2).
    download_dir: scratch dir; default `<data_dir>/downloads`.
    beam: generate examples with Apache Beam.
    beam_pipeline_options: 'k=v,k=v' Beam options (implies beam); default
      `default_beam_options()`.
    max_examples_per_split: debugging cap.
  """
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
  kwargs = {}
  if num_clips is not None:
    if dataset != "synthetic_talking_faces":
      raise ValueError("num_clips applies to synthetic_talking_faces only")
    kwargs["num_clips"] = num_clips
  builder = tfds.builder(dataset, data_dir=paths.user_path(data_dir),
                         config=config, **kwargs)
  beam_options = None
  if beam or beam_pipeline_options:
    beam_options = _beam_pipeline_options(beam_pipeline_options or
                                          default_beam_options())
  download_config = tfds.download.DownloadConfig(
      manual_dir=paths.user_path(manual_dir),
      beam_options=beam_options, max_examples_per_split=max_examples_per_split,
      try_download_gcs=False)
  prepare = functools.partial(
      builder.download_and_prepare,
      download_dir=paths.user_path(download_dir),
      download_config=download_config)
  config_dir = os.path.dirname(os.fspath(builder.data_dir))
  if paths.is_remote(config_dir):
    prepare()
    return builder
  os.makedirs(config_dir, exist_ok=True)
  # One build at a time per dataset: a second waits, then finds it built. What
  # is left of a killed build (TFDS's incomplete.* folder) is removed first.
  with locking.WorkdirLock(config_dir, blocking=True, name=".build.lock"):
    _remove_unfinished(config_dir)
    prepare()
  return builder


def _remove_unfinished(config_dir: str) -> None:
  """Deletes the temporary folders of killed builds (the caller holds the lock)."""
  for stale in glob.glob(os.path.join(glob.escape(config_dir), "incomplete.*")):
    logging.warning("removing %s, left by an interrupted build", stale)
    shutil.rmtree(stale, ignore_errors=True)


# ----------------------------------------------------------------------------
# The datasets the entry points read: a training config's (built on demand)
# and an evaluation's (by name).
# ----------------------------------------------------------------------------


def _build_command(data, data_dir: str) -> str:
  manual = f" --manual_dir={data.manual_dir or 'CORPUS_DIR'}"
  return (f"python -m data_pipelines.build --dataset={data.name} "
          f"--config={data.config} --data_dir={data_dir}"
          + ("" if data.name == "synthetic_talking_faces" else manual))


def prepare_dataset(data) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder of a training config's `config.data`.

  A missing dataset is built first when `data.build_if_missing` allows it:
  process 0 builds, the others wait and build only if they cannot see its
  result (e.g. on a per-host disk). `launch.train`, the demo and the learning
  study hand the result to the trainer (`hcmtfg.train.trainer.train`).

  Args:
    data: `config.data` of configs/atnet.py or configs/vgnet.py (name, config,
      data_dir, build_if_missing, num_clips, manual_dir, download_dir).

  Raises:
    InputError: the dataset is missing and may not (or cannot) be built here;
      the message gives the build command.
  """
  # pylint: disable=g-import-not-at-top  (the build CLI does not need JAX)
  import jax
  from jax.experimental import multihost_utils
  import tensorflow as tf
  # pylint: enable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # tf.data only; keep GPUs for JAX
  data_dir = paths.user_path(data.data_dir)
  make = lambda: tfds.builder(data.name, data_dir=data_dir, config=data.config)
  builder = make()
  if builder.is_prepared():
    return builder
  where = os.path.join(data_dir, data.name, data.config)
  if not data.build_if_missing:
    raise InputError(where, f"dataset not built; build it with: "
                     f"{_build_command(data, data_dir)}")

  def build_here():
    logging.info("building dataset %s/%s in %s", data.name, data.config,
                 data_dir)
    try:
      build_dataset(
          data.name, data_dir, config=data.config, num_clips=data.num_clips,
          manual_dir=paths.user_path(data.manual_dir),
          download_dir=paths.user_path(data.download_dir))
    except (FileNotFoundError, AssertionError) as e:
      raise InputError(where, f"cannot build the dataset ({e}); build it "
                       f"with: {_build_command(data, data_dir)}") from e

  if jax.process_index() == 0:
    build_here()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("hcmtfg: dataset built")
    if not make().is_prepared():  # process 0 built it on its own disk
      build_here()
  return make()


def load_builder(name: str, data_dir: str, config: str | None
                 ) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder of dataset `name` (never builds it).

  Raises:
    InputError: an unknown dataset or config, or a dataset not built yet (the
      message gives the build command).
  """
  data_dir = paths.user_path(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir, config=config)
  except Exception as e:  # pylint: disable=broad-except  (unknown name/config)
    raise InputError(data_dir, f"no dataset {name!r} (config {config!r}): {e}"
                     ) from e
  if not builder.is_prepared():
    raise InputError(os.path.join(data_dir, name), "dataset not built; build it "
                     f"with: python -m data_pipelines.build --dataset={name} "
                     f"--data_dir={data_dir}"
                     + (f" --config={config}" if config else ""))
  return builder


def _define_flags() -> dict[str, flags.FlagHolder]:
  """The command-line flags, defined only when run as a program (importing
  `build_dataset` must not claim flag names such as --data_dir)."""
  return {
      "dataset": flags.DEFINE_enum("dataset", None, DATASETS, "Dataset to build."),
      "data_dir": flags.DEFINE_string("data_dir", None, "TFDS data directory."),
      "config": flags.DEFINE_string(
          "config", None, "Builder config name (default: the builder's)."),
      "num_clips": flags.DEFINE_integer(
          "num_clips", None, "synthetic_talking_faces only: corpus size, "
          "overriding the config's (the dataset keeps the config's name).",
          lower_bound=1),
      "manual_dir": flags.DEFINE_string(
          "manual_dir", None, "Where the manually downloaded corpus is."),
      "download_dir": flags.DEFINE_string(
          "download_dir", None, "Scratch dir (default <data_dir>/downloads); the "
          "synthetic corpus is generated here."),
      "beam": flags.DEFINE_bool("beam", False,
                                "Generate examples with Apache Beam."),
      "beam_pipeline_options": flags.DEFINE_string(
          "beam_pipeline_options", None, "Comma-separated Beam options (implies "
          "--beam); default with --beam: runner=DirectRunner,"
          "direct_num_workers=<CPUs>,direct_running_mode=multi_processing"),
      "max_examples_per_split": flags.DEFINE_integer(
          "max_examples_per_split", None,
          "Debugging: stop each split after N examples."),
  }


def main(argv, flag_holders: dict[str, flags.FlagHolder]):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  values = {name: holder.value for name, holder in flag_holders.items()}
  dataset, data_dir = values.pop("dataset"), values.pop("data_dir")
  if not dataset or not data_dir:
    raise app.UsageError("--dataset and --data_dir are required")
  builder = build_dataset(dataset, data_dir, **values)
  info = builder.info
  summary = {
      "dataset": builder.name, "config": builder.builder_config.name,
      "data_dir": os.fspath(builder.data_dir),
      "splits": {k: v.num_examples for k, v in info.splits.items()},
      "failed_clips": dict(info.metadata or {}).get("failed_clips", {}),
  }
  logging.info("built %s", summary)
  print(json.dumps(summary, indent=1))
  sys.stdout.flush()


if __name__ == "__main__":
  _HOLDERS = _define_flags()
  app.run(functools.partial(main, flag_holders=_HOLDERS))
