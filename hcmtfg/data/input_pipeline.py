"""tf.data input pipelines over the talking-face TFDS datasets (data_pipelines/).

Batches of training windows for AT-net ('atnet') or VG-net ('vgnet'): each key
of a view's window (`hcmtfg.data.windows`: which frames, which features, shapes)
with a leading batch axis B, e.g. 'mfcc' (B, T, 28, 12) or 'target_image'
(B, T, H, W, 3).

Determinism and resumption. Each host reads its own disjoint part of the split
(`tfds.even_splits(split, process_count)[process_index]`). Epoch e of a host is its
part shuffled with a buffer seeded by (seed, e); the window of the i-th example of
epoch e comes from stateless random numbers keyed by (seed, e, i). The stream is
therefore a pure function of the seed, and `TrainIterator.get_state()` -- a JSON-able
{'batches': n, ...} -- is enough to resume: `set_state` rebuilds the stream at epoch
n*B // N and skips the remaining examples before anything is decoded.

Eval view (`EvalData`): no shuffle, no repeat, the same per-example sampling with
epoch 0; every pass is identical. Hosts pad their last batch by repeating their own
examples, with 'mask' (B,) bool False on the padding, so every host yields the same
number of full batches.

Damaged shards. tf.data reports a corrupt or truncated TFRecord file without
naming it; on such an error the pipeline checks every shard of its split and
raises `InputError` naming the damaged file (default), or, with
`skip_corrupt_shards=True`, logs each damaged shard with the number of records
lost, leaves those shards out and carries on (the iterator's position then
counts examples of the remaining shards).

Batches are host-local numpy dicts with B = global_batch_size / process_count;
`to_global(batch, mesh)` assembles them into global jax.Arrays sharded over 'data'.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from hcmtfg.data import shards
from hcmtfg.data import windows
from hcmtfg.errors import InputError
from hcmtfg.features import landmarks as landmarks_lib

PCA_FILENAME = "landmark_pca.npz"
_STATE_VERSION = 2


def dataset_pca_path(builder: tfds.core.DatasetBuilder) -> str:
  """Where the dataset's landmark PCA lives: beside its TFRecord files."""
  return os.path.join(os.fspath(builder.data_dir), PCA_FILENAME)


def load_dataset_pca(builder: tfds.core.DatasetBuilder) -> landmarks_lib.Pca:
  """The landmark PCA fitted on the dataset's training split at build time."""
  return landmarks_lib.load_pca(dataset_pca_path(builder))


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, Any]:
  """Host-local numpy batch -> global jax.Arrays sharded over the 'data' axis."""
  from hcmtfg.runtime import sharding  # pylint: disable=g-import-not-at-top
  return sharding.host_local_to_global(batch, mesh)


def _process_defaults(process_index: int | None, process_count: int | None
                      ) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def host_split(split: str, process_index: int, process_count: int) -> str:
  """This host's disjoint part of `split` (all parts together cover it)."""
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count)[process_index]


class _Stream:
  """Shared set-up of the training and eval views for one host.

  The keyword arguments, with their defaults, are those of every
  `make_train_iterator` / `make_eval_data` call (documented there).
  """

  def __init__(self, builder, split: str, view: str, *, global_batch_size: int,
               seed: int = 0, num_target_frames: int = 16,
               pca: landmarks_lib.Pca | None = None,
               image_size: int | None = None,
               landmark_scale: float = landmarks_lib.RELEASE_PCA_SCALE,
               example_range: tuple[int, int] = windows.EXAMPLE_RANGE,
               process_index: int | None = None,
               process_count: int | None = None, with_ids: bool = False,
               skip_corrupt_shards: bool = False):
    if view == "atnet" and pca is None:
      pca = load_dataset_pca(builder)
    self.process_index, self.process_count = _process_defaults(process_index,
                                                               process_count)
    if global_batch_size % self.process_count:
      raise ValueError(f"global batch {global_batch_size} does not split over "
                       f"{self.process_count} processes")
    self.batch_size = global_batch_size // self.process_count
    self.seed = int(seed)
    self.view = view
    self.full_split = split
    self.split = host_split(split, self.process_index, self.process_count)
    self.sampler = windows.WindowSampler(view, num_target_frames, pca,
                                         image_size, landmark_scale,
                                         example_range)
    self.with_ids = with_ids
    self.builder = builder
    self.skip_corrupt_shards = bool(skip_corrupt_shards)
    self.dropped: dict[str, int] = {}  # skipped shard -> records lost
    self.read_split = self.split
    self.base = self._filtered(windows.clip_dataset(builder, self.split, view))

  def _filtered(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    return ds.filter(lambda ex: tf.shape(ex["normalized_landmarks"])[0]
                     >= self.sampler.min_frames)

  @property
  def records_lost(self) -> int:
    """Records of this host's part left out with skipped damaged shards."""
    return sum(self.dropped.values())

  def recover(self, error: Exception) -> None:
    """Handles a read error: names the damaged shard, or skips it.

    Raises:
      InputError: naming the damaged file (unless skipping shards).
      error: itself, when no shard of the split is found damaged.
    """
    damaged = {path: v for path, v in shards.find_damaged_shards(
        self.builder, self.split).items() if path not in self.dropped}
    if not damaged:
      raise error
    if not self.skip_corrupt_shards:
      path, (readable, total, problem) = sorted(damaged.items())[0]
      more = (f"; {len(damaged) - 1} more damaged shard(s) in split "
              f"{self.full_split}" if len(damaged) > 1 else "")
      raise InputError(path, f"damaged TFRecord shard ({problem}; {readable} "
                       f"of its {total} records readable){more}. Rebuild the "
                       "dataset, or skip damaged shards (skip_corrupt_shards, "
                       "--config.data.skip_corrupt_shards=True)") from error
    takes = {fi.filename: fi.take for fi in shards.file_instructions(self.builder,
                                                               self.split)}
    for path, (readable, total, problem) in sorted(damaged.items()):
      self.dropped[path] = takes[path]
      logging.warning("input: skipping damaged TFRecord shard %s (%s): %d "
                      "records lost (%d of its %d were readable)", path,
                      problem, takes[path], readable, total)
    logging.warning("input: %d records lost in %d skipped shard(s) of %s",
                    self.records_lost, len(self.dropped), self.full_split)
    self.read_split = shards.split_without(self.builder, self.split,
                                           set(self.dropped))
    self.base = self._filtered(windows.clip_dataset(self.builder,
                                                    self.read_split, self.view))

  def sample(self, epoch: tf.Tensor, ds: tf.data.Dataset,
             skip: tf.Tensor | int = 0) -> tf.data.Dataset:
    """Numbers an epoch's examples, drops the first `skip` (before anything is
    decoded) and samples each remaining one's window."""
    def fn(index, example):
      seed_2 = tf.stack([tf.cast(self.seed, tf.int64),
                         tf.cast(epoch, tf.int64) * (1 << 32) + index])
      out = self.sampler(seed_2, example)
      if self.with_ids:
        out["clip_id"] = example["clip_id"]
      else:
        out = {k: v for k, v in out.items()
               if k not in ("example_index", "target_start")}
      return out
    return ds.enumerate().skip(skip).map(fn, num_parallel_calls=tf.data.AUTOTUNE,
                                         deterministic=True)


class TrainIterator:
  """Endless, shuffled, prefetched host-local batches with a resumable position.

  Iterating yields dicts of numpy arrays (see the module docstring for keys).
  """

  def __init__(self, stream: _Stream, shuffle_buffer: int, prefetch: int | None):
    self._stream = stream
    self._shuffle_buffer = int(shuffle_buffer)
    self._prefetch = prefetch
    self._num_examples = None
    self._batches = 0
    self._iterator = None

  @property
  def num_host_examples(self) -> int:
    """Usable examples in this host's part of the split (those long enough)."""
    if self._num_examples is None:
      stream = self._stream
      built_min = getattr(stream.builder.builder_config, "min_frames", 0) or 0
      if built_min >= stream.sampler.min_frames:  # every stored clip is usable
        count = (stream.builder.info.splits[stream.split].num_examples
                 - stream.records_lost)
      else:  # count the long-enough clips, reading only their frame counts
        while True:
          lengths = stream.builder.as_dataset(
              split=stream.read_split, decoders=tfds.decode.PartialDecoding(
                  {"num_frames": True}))
          try:
            count = int(lengths.reduce(np.int64(0), lambda n, ex: n + tf.cast(
                ex["num_frames"] >= stream.sampler.min_frames,
                tf.int64)).numpy())
            break
          except shards.READ_ERRORS as e:
            stream.recover(e)
      if count == 0:
        raise ValueError(f"no example of {stream.split} has at least "
                         f"{stream.sampler.min_frames} frames")
      self._num_examples = int(count)
    return self._num_examples

  def _build(self) -> Iterator[dict[str, np.ndarray]]:
    stream = self._stream
    consumed = self._batches * stream.batch_size
    first_epoch, offset = divmod(consumed, self.num_host_examples)

    def epoch_ds(epoch):
      ds = stream.base.shuffle(
          self._shuffle_buffer, seed=stream.seed * 1000003 + epoch,
          reshuffle_each_iteration=False)
      skip = tf.where(epoch == first_epoch, np.int64(offset), np.int64(0))
      return stream.sample(epoch, ds, skip)

    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
    ds = ds.flat_map(epoch_ds).batch(stream.batch_size, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE if self._prefetch is None else self._prefetch)
    return ds.as_numpy_iterator()

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    while True:
      if self._iterator is None:
        self._iterator = self._build()
      try:
        batch = next(self._iterator)
        break
      except shards.READ_ERRORS as e:
        self._stream.recover(e)  # Raises, or skips the damaged shards.
        self._iterator, self._num_examples = None, None
    self._batches += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """JSON-able position: resuming from it yields the next batch, not the first."""
    s = self._stream
    # The whole split's name and the host count, not this host's part: every
    # host consumes the same number of batches, so one position (process 0's,
    # in the checkpoint) resumes them all.
    return {"version": _STATE_VERSION, "batches": self._batches, "seed": s.seed,
            "view": s.view, "split": s.full_split, "batch_size": s.batch_size,
            "process_count": s.process_count}

  def set_state(self, state: dict[str, Any]) -> None:
    """Moves to a position from `get_state` (same seed, view, split, batch, hosts)."""
    mine = self.get_state()
    for key in ("version", "seed", "view", "split", "process_count",
                "batch_size"):
      if state.get(key) != mine[key]:
        raise ValueError(f"iterator state {key}={state.get(key)!r} does not match "
                         f"this pipeline's {mine[key]!r}")
    self._batches = int(state["batches"])
    self._iterator = None


def make_train_iterator(builder, view: str, *, split: str = "train",
                        shuffle_buffer: int = 512, prefetch: int | None = None,
                        state: dict[str, Any] | None = None,
                        **stream_args) -> TrainIterator:
  """The training view `view` ('atnet' | 'vgnet') of a built dataset.

  Args:
    builder: a prepared TFDS builder of data_pipelines (e.g.
      `tfds.builder('synthetic_talking_faces', data_dir=...)`).
    view: 'atnet' or 'vgnet' (see `hcmtfg.data.windows`).
    split: TFDS split name.
    shuffle_buffer: examples in the shuffle buffer (encoded frames, ~200 KB each).
    prefetch: batches to prefetch (None: autotune).
    state: a position from `get_state()` to resume from.
    **stream_args: the batch, window and host options, shared with
      `make_eval_data`:
      global_batch_size: examples per step over all processes (required).
      seed: determines the order and every sampled window (default 0).
      num_target_frames: T, frames per training window (default 16).
      pca: the landmark PCA (AT-net); None (default) =
        `load_dataset_pca(builder)` for AT-net.
      image_size: VG-net output size (default None: 128).
      landmark_scale: factor on normalised landmarks for VG-net (default: the
        release's 5).
      example_range: AT-net example frame range, inclusive (default: the
        release's (3, 7)).
      process_index, process_count: this host and the number of hosts
        (default: jax.process_index(), jax.process_count()).
      with_ids: also return 'clip_id' and the sampled indices (tests,
        debugging; default False).
      skip_corrupt_shards: on a damaged TFRecord shard, log it with the
        records lost and go on without it (default False: raise InputError
        naming it).
  """
  iterator = TrainIterator(_Stream(builder, split, view, **stream_args),
                           shuffle_buffer, prefetch)
  if state is not None:
    iterator.set_state(state)
  return iterator


class EvalData:
  """A deterministic, finite view; each `iter()` is a fresh, identical pass."""

  def __init__(self, stream: _Stream):
    self._stream = stream
    counts = [stream.builder.info.splits[
        host_split(stream.full_split, i, stream.process_count)].num_examples
              for i in range(stream.process_count)]
    if min(counts) == 0:
      # A host with nothing to read would yield no batch while the others wait
      # for it in the evaluation's collectives: refuse instead of hanging.
      raise ValueError(
          f"split {stream.full_split!r} of {stream.builder.name} has "
          f"{sum(counts)} examples, too few for {stream.process_count} hosts "
          f"(per host: {counts}); evaluate on a larger split or fewer hosts")
    self.num_batches = -(-max(counts) // stream.batch_size)
    self._host_total = self.num_batches * stream.batch_size

  def _batches(self, skip: int) -> Iterator[dict[str, np.ndarray]]:
    stream = self._stream
    real = stream.sample(tf.constant(0, tf.int64), stream.base).map(
        lambda ex: {**ex, "mask": tf.constant(True)})
    pad = real.map(lambda ex: {**ex, "mask": tf.constant(False)}).repeat()
    ds = real.concatenate(pad).take(self._host_total)
    ds = ds.batch(stream.batch_size, drop_remainder=True).skip(skip)
    return ds.prefetch(2).as_numpy_iterator()

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    done = 0
    while True:
      try:
        for batch in self._batches(done):
          yield batch
          done += 1
        return
      except shards.READ_ERRORS as e:
        self._stream.recover(e)  # Raises, or skips the damaged shards.

  def __len__(self) -> int:
    return self.num_batches


def make_eval_data(builder, view: str, *, split: str = "test",
                   **stream_args) -> EvalData:
  """The eval view of a split; `stream_args` as for `make_train_iterator`.

  Batches carry 'mask' (B,) bool: False on padding (repeated examples) that fills
  the last batch, so every host yields `len(eval_data)` full batches.
  """
  return EvalData(_Stream(builder, split, view, **stream_args))
