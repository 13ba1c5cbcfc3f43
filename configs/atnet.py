r"""AT-net (audio -> landmark PCA coefficients) experiments.

Variants (the argument after ':'), each run with the one trainer:

  # The release's hyper-parameters on LRW (build the dataset first:
  # python -m data_pipelines.build --dataset=lrw --data_dir=DATA --manual_dir=LRW):
  python -m launch.train --config=configs/atnet.py:lrw --workdir=WORKDIR \
      --config.data.data_dir=DATA
  # The same network on GRID (unseen-speaker split, GRID's own PCA):
  python -m launch.train --config=configs/atnet.py:grid --workdir=WORKDIR \
      --config.data.data_dir=DATA
  # The 200-clip synthetic corpus (built on demand; learns in minutes on a CPU):
  python -m launch.train --config=configs/atnet.py:synthetic --workdir=/tmp/atnet
  # A few steps of a tiny network on a tiny synthetic corpus (tests, smoke runs):
  python -m launch.train --config=configs/atnet.py:tiny --workdir=/tmp/atnet_tiny

Any field can be overridden on the command line, e.g.
`--config.optim.learning_rate=1e-4 --config.num_train_steps=100`, and
`--config.init_from=CONVERTED` starts from converted release weights
(`python -m launch.convert_checkpoint ... --output_dir=CONVERTED`).
"""

import ml_collections

from configs import common

VARIANTS = common.VARIANTS


def defaults() -> ml_collections.ConfigDict:
  """Every field of an AT-net config at its default (the release's recipe)."""
  c = common.base_config('atnet')  # seed, dtype, data, optim, loop fields
  c.data.shuffle_buffer = 512  # Training examples in the shuffle buffer.

  c.batch_size = 16  # Global batch (all hosts); release 16.
  c.eval_batch_size = 16  # Global eval batch.

  c.model = ml_collections.ConfigDict()  # hcmtfg.models.at_net.ATNet fields.
  c.model.pca_dim = 6  # PCA coefficients in and out.
  c.model.base_width = 64  # First audio conv width (others are multiples).
  c.model.lmark_features = (256, 512)  # Example-landmark MLP widths.
  c.model.audio_features = (2048, 256)  # MLP after the audio convs.
  c.model.lstm_features = 256  # LSTM hidden size.
  c.model.lstm_layers = 3  # LSTM depth.
  c.model.mfcc_window = (28, 12)  # One frame's MFCC window (rows, coefs).
  c.model.per_frame_batch_stats = True  # BatchNorm statistics per frame
  #   (the release's per-frame loop); False pools them over B*T.
  # 3x3 conv algorithm (hcmtfg.models.winograd): 'auto' (Winograd on CPU for
  # large batches), 'direct', 'winograd2', 'winograd4'. Same parameters.
  c.model.conv_algorithm = 'auto'

  c.summaries.image_size = 96  # Side of each landmark plot, pixels.
  return c


def get_config(arg: str = 'synthetic') -> ml_collections.ConfigDict:
  """The AT-net config of one variant ('lrw' | 'grid' | 'synthetic' | 'tiny')."""
  common.check_variant(arg, 'AT-net')
  c = defaults()
  common.apply_shared_variant(c, arg)
  if arg == 'synthetic':
    c.model.base_width = 16
    c.model.lmark_features = (64, 128)
    c.model.audio_features = (256, 64)
    c.model.lstm_features = 64
    c.model.lstm_layers = 2
    c.optim.learning_rate = 1e-3  # small network, few steps: a larger step
    c.num_train_steps = 600
    c.log_every_steps = 25
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 200
  elif arg == 'tiny':
    c.model.base_width = 4
    c.model.lmark_features = (16, 32)
    c.model.audio_features = (32, 16)
    c.model.lstm_features = 16
    c.model.lstm_layers = 1
    c.summaries.image_size = 48
  return c
