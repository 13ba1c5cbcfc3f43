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
from ml_collections import config_dict

VARIANTS = ('lrw', 'grid', 'synthetic', 'tiny')


def get_config(arg: str = 'synthetic') -> ml_collections.ConfigDict:
  """The AT-net config of one variant ('lrw' | 'grid' | 'synthetic' | 'tiny')."""
  if arg not in VARIANTS:
    raise ValueError(f'unknown AT-net variant {arg!r}; expected one of '
                     f'{VARIANTS}')
  c = ml_collections.ConfigDict()
  c.stage = 'atnet'  # Which network the launcher trains ('atnet' | 'vgnet').
  c.seed = 0  # Initial parameters, dropout and the data order/windows.
  c.compute_dtype = 'float32'  # 'float32' | 'bfloat16' (params stay float32).
  # A converted release checkpoint directory (launch.convert_checkpoint output,
  # holding atnet/) to start from instead of random weights; None = random.
  c.init_from = config_dict.placeholder(str)
  # XLA without LLVM optimisation: compiles ~2.5x faster, runs slower (tests).
  c.fast_compile = False

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic_talking_faces'  # TFDS builder (data_pipelines/).
  c.data.config = 'default'  # Builder config name.
  c.data.data_dir = '~/tensorflow_datasets'  # TFDS data directory.
  # Build the dataset there when it is missing (synthetic corpora only; real
  # corpora also need data.manual_dir).
  c.data.build_if_missing = True
  c.data.num_clips = config_dict.placeholder(int)  # Synthetic corpus size
  #   override at build time (None: the builder config's).
  c.data.manual_dir = config_dict.placeholder(str)  # Downloaded corpus (real
  #   datasets), used only when building.
  c.data.download_dir = config_dict.placeholder(str)  # Build scratch space
  #   (the synthetic corpus is generated there); None: <data_dir>/downloads.
  c.data.train_split = 'train'  # TFDS split trained on.
  c.data.eval_split = 'validation'  # TFDS split evaluated on.
  c.data.num_target_frames = 16  # T: frames predicted per example (release 16).
  c.data.shuffle_buffer = 512  # Training examples in the shuffle buffer.
  # A landmark PCA to use instead of the dataset's (a save_pca .npz file, or a
  # folder with the release's U_lrw1.npy + mean_lrw1.npy); None = dataset's.
  c.data.pca_path = config_dict.placeholder(str)
  # On a damaged TFRecord shard: False stops naming the file; True logs it
  # with the number of records lost and trains on without it.
  c.data.skip_corrupt_shards = False

  c.batch_size = 16  # Global batch (all hosts); release 16.
  c.eval_batch_size = 16  # Global eval batch.
  c.eval_max_batches = 0  # Eval batches per evaluation (0 = whole split).

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

  c.optim = ml_collections.ConfigDict()  # Adam, as the release.
  c.optim.learning_rate = 2e-4  # Constant learning rate.
  c.optim.b1 = 0.5  # Adam beta1.
  c.optim.b2 = 0.999  # Adam beta2.

  c.num_train_steps = 300_000  # Stop after this many steps (~10 LRW epochs).
  c.log_every_steps = 100  # Average and write train metrics every N steps.
  c.eval_every_steps = 5000  # Evaluate (and write images) every N steps.
  c.checkpoint_every_steps = 5000  # Save every N steps (and at the end).
  c.keep_checkpoints = 3  # Newest checkpoints kept.

  c.summaries = ml_collections.ConfigDict()
  c.summaries.num_examples = 3  # Eval examples drawn in the landmark plots.
  c.summaries.num_frames = 6  # Frames per example in the plots.
  c.summaries.image_size = 96  # Side of each landmark plot, pixels.

  if arg == 'lrw':
    c.data.name = 'lrw'
    c.data.build_if_missing = False
    c.eval_max_batches = 100
  elif arg == 'grid':
    c.data.name = 'grid'
    c.data.build_if_missing = False
    c.data.eval_split = 'test'  # GRID has no validation split.
    c.num_train_steps = 100_000
  elif arg == 'synthetic':
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
    c.data.config = 'tiny'
    c.data.num_clips = 10
    c.data.num_target_frames = 4
    c.data.shuffle_buffer = 16
    c.batch_size = 8
    c.eval_batch_size = 8
    c.model.base_width = 4
    c.model.lmark_features = (16, 32)
    c.model.audio_features = (32, 16)
    c.model.lstm_features = 16
    c.model.lstm_layers = 1
    c.fast_compile = True
    c.num_train_steps = 2
    c.log_every_steps = 1
    c.eval_every_steps = 2
    c.checkpoint_every_steps = 2
    c.summaries.num_examples = 2
    c.summaries.num_frames = 2
    c.summaries.image_size = 48
  return c
