"""Training data: stored dataset clips -> batches of training windows.

  input_pipeline.py  TFDS/TFRecord -> per-host batches -> global jax.Arrays
  windows.py         one clip -> one AT-net or VG-net training window
  shards.py          damaged TFRecord shards of a split, and the split without them

Imports: `features`, `runtime` and the root modules.
"""
