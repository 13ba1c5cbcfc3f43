r"""VG-net (landmarks + one photo -> video) GAN experiments.

Variants (the argument after ':'), each run with the one trainer:

  # The release's hyper-parameters on LRW: 128x128, batch 10 clips x 16 frames
  # (build the dataset first: python -m data_pipelines.build --dataset=lrw
  # --data_dir=DATA --manual_dir=LRW). The global batch must split over the
  # devices: on 8 devices add --config.batch_size=16.
  python -m launch.train --config=configs/vgnet.py:lrw --workdir=WORKDIR \
      --config.data.data_dir=DATA
  # The same networks on GRID:
  python -m launch.train --config=configs/vgnet.py:grid --workdir=WORKDIR \
      --config.data.data_dir=DATA
  # The 200-clip synthetic corpus at 64x64 with narrower networks (built on
  # demand; improves over its first evaluation within minutes on a CPU):
  python -m launch.train --config=configs/vgnet.py:synthetic --workdir=/tmp/vgnet
  # A few steps of tiny 32x32 networks on a tiny synthetic corpus (tests):
  python -m launch.train --config=configs/vgnet.py:tiny --workdir=/tmp/vgnet_tiny

Overrides: `--config.loss.pixel=l1` (the paper's plain-L1 ablation),
`--config.model.regress_landmarks=False` (plain sequence discriminator),
`--config.model.generator.use_attention=False` (no attention: colour output
only),
`--config.image_size=96` (changes the data and both networks), and
`--config.init_from=CONVERTED` to start from converted release weights
(vgnet/ and, if present, discriminator/ of launch.convert_checkpoint's output).
"""

import ml_collections

from configs import common

VARIANTS = common.VARIANTS


def defaults() -> ml_collections.ConfigDict:
  """Every field of a VG-net config at its default (the paper's recipe)."""
  c = common.base_config('vgnet')  # seed, dtype, data, optim, loop fields
  # Frame side S shared by the data and both networks (a multiple of 16).
  size = ml_collections.FieldReference(128)
  c.image_size = size
  c.data.shuffle_buffer = 256  # Clips in the shuffle buffer (~200 KB each).
  c.data.image_size = size  # Frames are area-resized to S (stored at 128).

  c.batch_size = 10  # Global batch of clips (all hosts); release 10.
  c.eval_batch_size = 10  # Global eval batch.

  c.model = ml_collections.ConfigDict()
  c.model.generator = ml_collections.ConfigDict()  # VGNet fields.
  c.model.generator.image_size = size  # S.
  c.model.generator.base_width = 64  # Encoder/decoder base width.
  c.model.generator.bottleneck_features = 128  # ConvGRU input channels.
  c.model.generator.convgru_features = 512  # ConvGRU / ResNet width.
  c.model.generator.convgru_kernel_size = 3  # ConvGRU kernel.
  c.model.generator.convgru_dilation = 2  # ConvGRU dilation.
  # True reproduces the release's ConvGRU bug (recurs over the batch axis);
  # False recurs over time as the paper intends.
  c.model.generator.convgru_over_batch_axis = False
  c.model.generator.num_res_blocks = 9  # ResNet blocks in generator1.
  c.model.generator.dropout_rate = 0.5  # Dropout in the ResNet blocks.
  c.model.generator.per_frame_batch_stats = True  # BatchNorm stats per frame.
  # 3x3 conv algorithm (hcmtfg.models.winograd): 'auto' (Winograd on CPU for
  # large batches), 'direct', 'winograd2', 'winograd4'. Same parameters.
  c.model.generator.conv_algorithm = 'auto'
  # True: frames blend the colour map with the photo by the attention map (the
  # paper); False: the paper's no-attention ablation, frames are the colour
  # map alone (same parameters, so release weights and checkpoints load).
  c.model.generator.use_attention = True
  c.model.discriminator = ml_collections.ConfigDict()  # Discriminator fields.
  c.model.discriminator.image_size = size  # S.
  c.model.discriminator.base_width = 64  # First frame conv width.
  c.model.discriminator.img_features = 512  # Per-frame feature width.
  c.model.discriminator.lmark_features = (256, 512)  # Example-landmark MLP.
  c.model.discriminator.lstm_features = 256  # LSTM hidden size.
  c.model.discriminator.lstm_layers = 3  # LSTM depth.
  c.model.discriminator.per_frame_batch_stats = True  # BatchNorm per frame.
  # True: the paper's regression discriminator (also regresses landmarks);
  # False: the plain sequence-discriminator ablation.
  c.model.regress_landmarks = True

  c.loss = ml_collections.ConfigDict()
  c.loss.pixel = 'dynamic'  # 'dynamic' (|fake-real|*(A+0.5)) | 'l1'.
  c.loss.pixel_weight = 10.0  # Weight of the pixel loss in the G loss.
  c.loss.mouth_weight = 100.0  # Landmark-loss weight on mouth y-coordinates.
  # True: the release's G step feeds D a detached fake (no adversarial or
  # landmark gradient reaches G); False: the paper's intent.
  c.loss.release_detached_gan = False
  # True: one generator forward per GAN step (its vjp reused for the G step;
  # ~1/3 less work); False: the release's two forwards.
  c.loss.fused_gan_step = False
  # Additions to the paper's recipe (0 = off, the paper; see WORKSPACE.md for
  # their measured effect). Extra pixel-loss weight inside each target
  # frame's mouth box (the mouth points' bounding box grown by mouth_box_pad
  # mouth widths): 1 + mouth_pixel_weight there, 1 elsewhere.
  c.loss.mouth_pixel_weight = 0.0
  c.loss.mouth_box_pad = 0.25
  # Weight of an auxiliary L1 between the colour map C and the target frame
  # (same pixel weights), so C learns the face even where the attention is
  # low; 0 = the paper (C is trained only through A * C).
  c.loss.colour_weight = 0.0
  # Where that L1 is taken: 'frame' (everywhere, with the pixel weights) or
  # 'mouth' (inside the mouth box only: the rest of the frame is left to the
  # attention, which then copies the sharp photo there).
  c.loss.colour_region = 'frame'
  # Steps at the start of a run that train the generator on the pixel terms
  # alone (no discriminator; a third of a GAN step's work); 0 = the paper.
  c.loss.warmup_steps = 0
  return c


def get_config(arg: str = 'synthetic') -> ml_collections.ConfigDict:
  """The VG-net config of one variant ('lrw' | 'grid' | 'synthetic' | 'tiny')."""
  common.check_variant(arg, 'VG-net')
  c = defaults()
  common.apply_shared_variant(c, arg)
  if arg in ('synthetic', 'tiny'):
    apply_fast_talking_recipe(c)
  if arg == 'synthetic':
    c.image_size = 64
    c.data.num_target_frames = 8
    c.batch_size = 8
    c.eval_batch_size = 8
    c.model.generator.base_width = 16
    c.model.generator.bottleneck_features = 32
    c.model.generator.convgru_features = 64
    c.model.generator.num_res_blocks = 3
    c.model.discriminator.base_width = 16
    c.model.discriminator.img_features = 128
    c.model.discriminator.lmark_features = (64, 128)
    c.model.discriminator.lstm_features = 64
    c.model.discriminator.lstm_layers = 1
    c.num_train_steps = 1000
    c.loss.warmup_steps = 800
    c.optim.decay_steps = 1000
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.summaries.num_frames = 4
  elif arg == 'tiny':
    c.image_size = 32
    c.model.generator.base_width = 4
    c.model.generator.bottleneck_features = 8
    c.model.generator.convgru_features = 8
    c.model.generator.num_res_blocks = 1
    c.model.discriminator.base_width = 4
    c.model.discriminator.img_features = 16
    c.model.discriminator.lmark_features = (16, 16)
    c.model.discriminator.lstm_features = 16
    c.model.discriminator.lstm_layers = 1
    # Its 2-step smoke runs take GAN steps only (one step function to
    # compile); tests/vgnet_learning_test.py trains it with a warm-up.
    c.loss.warmup_steps = 0
  return c


def apply_fast_talking_recipe(c: ml_collections.ConfigDict) -> None:
  """The recipe that makes VG-net move the mouth within minutes on a CPU.

  With the paper's recipe from scratch, the attention collapses to "copy the
  photo" before the colour map has learnt anything: the colour head's
  gradient is scaled by the attention, which the pixel loss drives down
  everywhere first (WORKSPACE.md, "Why VG-net needs a warm-up", has the
  measurements). This recipe trains the generator on the pixel terms alone
  first (with an L1 on the colour map itself and the mouth box weighted
  more), at a larger, decaying learning rate and without dropout, then
  switches to the GAN. The lrw and grid variants keep the paper's recipe.
  """
  c.optim.learning_rate = 1e-3
  c.optim.final_learning_rate = 1e-4
  c.model.generator.dropout_rate = 0.0
  c.loss.colour_weight = 1.0
  c.loss.mouth_pixel_weight = 10.0
