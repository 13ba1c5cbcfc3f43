"""Fields and variant settings shared by the AT-net and VG-net configs.

`base_config` holds what both stages have (seed, dtype, dataset, optimiser,
loop, summaries); `apply_shared_variant` the parts of the 'lrw', 'grid' and
'tiny' variants that are the same for both. Each stage's config module adds
its own network, loss and batch fields on top, in its `defaults()`.

The configs are the one place where a field's default is stated: the training
code reads every field directly. A config written before a field existed (or
one built by hand, with only some fields) gets the missing ones from its
stage's `defaults()` through `fill_missing`.
"""

import copy

import ml_collections
from ml_collections import config_dict

VARIANTS = ('lrw', 'grid', 'synthetic', 'tiny')


def check_variant(arg: str, what: str) -> None:
  if arg not in VARIANTS:
    raise ValueError(f'unknown {what} variant {arg!r}; expected one of '
                     f'{VARIANTS}')


def base_config(stage: str) -> ml_collections.ConfigDict:
  """The fields both stages share, at their defaults."""
  c = ml_collections.ConfigDict()
  c.stage = stage  # Which network the launcher trains ('atnet' | 'vgnet').
  c.seed = 0  # Initial parameters, dropout and the data order/windows.
  c.compute_dtype = 'float32'  # 'float32' | 'bfloat16' (params stay float32).
  # A converted release checkpoint directory (launch.convert_checkpoint output)
  # to start from instead of random weights; None = random.
  c.init_from = config_dict.placeholder(str)
  # XLA without LLVM optimisation: quicker to compile, slower to run (tests).
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
  c.data.num_target_frames = 16  # T: frames per example (release 16).
  # A landmark PCA: AT-net uses it instead of the dataset's, VG-net only copies
  # it into the workdir (a save_pca .npz file, or a folder with the release's
  # U_lrw1.npy + mean_lrw1.npy); None = the dataset's.
  c.data.pca_path = config_dict.placeholder(str)
  # On a damaged TFRecord shard: False stops naming the file; True logs it
  # with the number of records lost and trains on without it.
  c.data.skip_corrupt_shards = False

  c.eval_max_batches = 0  # Eval batches per evaluation (0 = whole split).

  c.optim = ml_collections.ConfigDict()  # Adam, as the release.
  c.optim.learning_rate = 2e-4  # Constant learning rate.
  c.optim.b1 = 0.5  # Adam beta1.
  c.optim.b2 = 0.999  # Adam beta2.
  # Cosine decay of the learning rate over this many steps (0 = constant, as
  # the release), down to final_learning_rate.
  c.optim.decay_steps = 0
  c.optim.final_learning_rate = 0.0

  c.num_train_steps = 300_000  # Stop after this many steps.
  c.log_every_steps = 100  # Average and write train metrics every N steps.
  c.eval_every_steps = 5000  # Evaluate (and write images) every N steps.
  c.checkpoint_every_steps = 5000  # Save every N steps (and at the end).
  c.keep_checkpoints = 3  # Newest checkpoints kept.

  c.summaries = ml_collections.ConfigDict()
  c.summaries.num_examples = 3  # Eval examples drawn in the image summaries.
  c.summaries.num_frames = 6  # Frames per example in them.
  return c


def apply_shared_variant(c: ml_collections.ConfigDict, arg: str) -> None:
  """The settings of variant `arg` that both stages share."""
  if arg in ('lrw', 'grid'):
    c.data.name = arg
    c.data.build_if_missing = False
  if arg == 'lrw':
    c.eval_max_batches = 100
  elif arg == 'grid':
    c.data.eval_split = 'test'  # GRID has no validation split.
    c.num_train_steps = 100_000
  elif arg == 'tiny':
    c.data.config = 'tiny'
    c.data.num_clips = 10
    c.data.num_target_frames = 4
    c.data.shuffle_buffer = 16
    c.batch_size = 8
    c.eval_batch_size = 8
    c.fast_compile = True
    c.num_train_steps = 2
    c.log_every_steps = 1
    c.eval_every_steps = 2
    c.checkpoint_every_steps = 2
    c.summaries.num_examples = 2
    c.summaries.num_frames = 2


def fill_missing(config: ml_collections.ConfigDict,
                 defaults: ml_collections.ConfigDict
                 ) -> ml_collections.ConfigDict:
  """A copy of `config` with every field of `defaults` it lacks added.

  Nested groups are filled field by field; fields `config` has keep their
  values (also where `defaults` has none), and `config` itself is unchanged.
  """
  filled = copy.deepcopy(config)
  with filled.unlocked():
    _fill(filled, defaults)
  return filled


def _fill(config: ml_collections.ConfigDict,
          defaults: ml_collections.ConfigDict) -> None:
  for name, value in defaults.items():
    if name not in config:
      config[name] = copy.deepcopy(value)
    elif (isinstance(value, ml_collections.ConfigDict)
          and isinstance(config[name], ml_collections.ConfigDict)):
      _fill(config[name], value)
