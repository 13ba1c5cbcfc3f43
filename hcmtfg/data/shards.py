"""Damaged TFRecord shards of a TFDS split: find them, or read around them.

`tf.data` reports a damaged record as a bare `DataLossError` from deep inside
the runtime; `find_damaged_shards` reads each file of a split through and says
which file is damaged and how many of its records are readable, and
`split_without` is the split less some files (a `tfds.core.ReadInstruction`),
so a pipeline can name the file or skip it (`hcmtfg.data.input_pipeline`).
"""

from __future__ import annotations

import functools
import operator
import os
import re
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from hcmtfg.errors import InputError

# What reading a damaged or vanished TFRecord file raises.
READ_ERRORS = (tf.errors.DataLossError, tf.errors.NotFoundError)


def file_instructions(builder, split) -> list[Any]:
  return list(builder.info.splits[split].file_instructions)


def find_damaged_shards(builder, split) -> dict[str, tuple[int, int, str]]:
  """Reads every TFRecord file of `split` through, checking each record's CRC.

  Returns:
    path -> (records readable before the damage, records the dataset info
    gives the shard, what is wrong), for each damaged or missing file.
  """
  damaged = {}
  for path in dict.fromkeys(fi.filename for fi in
                            file_instructions(builder, split)):
    expected = next(fi.examples_in_shard for fi in
                    file_instructions(builder, split) if fi.filename == path)
    count = 0
    try:
      for _ in tf.data.TFRecordDataset(path, buffer_size=1 << 22):
        count += 1
    except READ_ERRORS as e:
      message = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", e.message).strip()
      damaged[path] = (count, expected, message.splitlines()[0])
      continue
    if count != expected:
      damaged[path] = (count, expected, f"{count} records, {expected} expected")
  return damaged


def split_without(builder, split, dropped: set[str]):
  """`split` less the examples of the files in `dropped` (a ReadInstruction)."""
  where = {}  # file name -> (split name, first example of the file in it)
  for name, info in builder.info.splits.items():
    start = 0
    for filename, length in zip(info.filenames, info.shard_lengths):
      where[filename] = (name, start)
      start += length
  ranges = []
  for fi in file_instructions(builder, split):
    if fi.filename in dropped:
      continue
    name, first = where[os.path.basename(fi.filename)]
    start = first + fi.skip
    if ranges and ranges[-1][0] == name and ranges[-1][2] == start:
      ranges[-1][2] = start + fi.take
    else:
      ranges.append([name, start, start + fi.take])
  if not ranges:
    raise InputError(os.fspath(builder.data_dir),
                     f"every shard of split {split} is damaged")
  return functools.reduce(operator.add, [
      tfds.core.ReadInstruction(name, from_=a, to=b, unit="abs")
      for name, a, b in ranges])
