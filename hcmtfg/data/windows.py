"""The training window of one clip: which frames and features an example holds.

Two views of a clip, each sampling a window of `num_target_frames` (T, 16 by
default) frames per example from a seed (`WindowSampler`; the stream of seeds,
hosts and epochs is `hcmtfg.data.input_pipeline`'s):

* AT-net ('atnet'): example frame r drawn uniformly from [3, 7] (the release's range,
  clamped to the clip), targets r+1 .. r+T. Keys:
    'example_coef' (6,) float32  PCA coefficients of frame r's landmarks
    'mfcc'         (T, 28, 12) float32  MFCC windows of frames r+1 .. r+T
                                 (window of frame t: mfcc[4t:4t+28, 1:], rows past
                                 the end are zeros, as `audio.mfcc_windows`)
    'target_coef'  (T, 6) float32  PCA coefficients of frames r+1 .. r+T
* VG-net ('vgnet'): example frame uniformly anywhere in the clip, T consecutive
  target frames starting uniformly in [0, num_frames - T]. Keys:
    'example_image' (H, W, 3) float32 in [-1, 1]
    'example_lmark' (136,) float32  normalised landmarks x `landmark_scale` (5)
    'target_image'  (T, H, W, 3) float32 in [-1, 1]
    'target_lmark'  (T, 136) float32  same convention as example_lmark
    'target_mouth'  (T, 20, 2) float32  mouth points 48..67 (x, y) of the target
                                  frames in pixels of the H x W frame (for the
                                  mouth-weighted losses and mouth metrics)
  H = W = 128, or `image_size` when given (area-resized, for tiny configs). Only the
  17 frames used are JPEG/PNG-decoded.
Both views also give the sampled indices ('example_index', VG-net's
'target_start'), which the pipeline keeps only when asked for ids.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_datasets as tfds

from hcmtfg.features import landmarks as landmarks_lib

VIEWS = ("atnet", "vgnet")
EXAMPLE_RANGE = (3, 7)  # AT-net example frame r, inclusive (the release's).
MFCC_ROWS_PER_FRAME = 4
MFCC_WINDOW_ROWS = 28


class WindowSampler:
  """One example's window of a view, sampled from a seed and decoded.

  TF graph functions: `hcmtfg.data.input_pipeline` maps `__call__(seed_2, example)`
  over a dataset of clips (from `clip_dataset`), with a stateless seed (2,) int64.
  """

  def __init__(self, view: str, num_target_frames: int,
               pca: landmarks_lib.Pca | None, image_size: int | None,
               landmark_scale: float, example_range: tuple[int, int]):
    if view not in VIEWS:
      raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if view == "atnet" and pca is None:
      raise ValueError("the AT-net view needs a landmark PCA")
    self.view = view
    self.num_target_frames = int(num_target_frames)
    self.image_size = image_size
    self.landmark_scale = float(landmark_scale)
    self.example_range = example_range
    if pca is not None:
      self.pca_scale = float(pca.scale)
      self.pca_mean = tf.constant(pca.mean, tf.float32)
      self.pca_components = tf.constant(pca.components, tf.float32)

  @property
  def min_frames(self) -> int:
    return self.num_target_frames + (1 if self.view == "atnet" else 0)

  def _project(self, lmark_x136: tf.Tensor) -> tf.Tensor:
    return tf.matmul(lmark_x136 * self.pca_scale - self.pca_mean,
                     self.pca_components)

  def _atnet(self, example, seed_2):
    num_frames = tf.shape(example["normalized_landmarks"])[0]
    w = self.num_target_frames
    r_max = tf.minimum(self.example_range[1], num_frames - 1 - w)
    r_min = tf.minimum(self.example_range[0], r_max)
    r = tf.random.stateless_uniform([], seed_2, r_min, r_max + 1, tf.int32)
    lmarks = example["normalized_landmarks"]
    targets = tf.range(r + 1, r + 1 + w)
    ceps = example["mfcc"][:, 1:]
    ceps = tf.pad(ceps, [[0, MFCC_ROWS_PER_FRAME * (r + w) + MFCC_WINDOW_ROWS],
                         [0, 0]])
    rows = (MFCC_ROWS_PER_FRAME * targets[:, None]
            + tf.range(MFCC_WINDOW_ROWS)[None, :])
    return {
        "example_coef": self._project(lmarks[r][None])[0],
        "mfcc": tf.gather(ceps, rows),
        "target_coef": self._project(tf.gather(lmarks, targets)),
        "example_index": r,
    }

  def _decode(self, encoded_frames: tf.Tensor) -> tf.Tensor:
    images = tf.map_fn(
        lambda b: tf.io.decode_image(b, channels=3, expand_animations=False),
        encoded_frames, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    images = tf.cast(images, tf.float32)
    if self.image_size is not None:
      images = tf.image.resize(images, [self.image_size, self.image_size],
                               method="area")
    images = images / 127.5 - 1.0
    size = self.image_size or 128
    return tf.ensure_shape(images, [self.num_target_frames + 1, size, size, 3])

  def _vgnet(self, example, seed_2):
    lmarks = example["normalized_landmarks"] * self.landmark_scale
    num_frames = tf.shape(lmarks)[0]
    w = self.num_target_frames
    seeds = tf.random.experimental.stateless_split(seed_2, 2)
    e = tf.random.stateless_uniform([], seeds[0], 0, num_frames, tf.int32)
    s = tf.random.stateless_uniform([], seeds[1], 0, num_frames - w + 1, tf.int32)
    indices = tf.concat([[e], tf.range(s, s + w)], axis=0)
    images = self._decode(tf.gather(example["frames"], indices))
    # Crop landmarks are stored in pixels of the 128x128 crop (pixel centres
    # at integers); map them to the resized frame's pixels.
    mouth = tf.cast(tf.gather(example["landmarks"], indices[1:])[:, 48:68],
                    tf.float32)
    mouth = (mouth + 0.5) * ((self.image_size or 128) / 128.0) - 0.5
    return {
        "example_image": images[0],
        "example_lmark": lmarks[e],
        "target_image": images[1:],
        "target_lmark": tf.ensure_shape(tf.gather(lmarks, indices[1:]), [w, 136]),
        "target_mouth": tf.ensure_shape(mouth, [w, 20, 2]),
        "example_index": e,
        "target_start": s,
    }

  def __call__(self, seed_2: tf.Tensor, example: dict[str, tf.Tensor]):
    if self.view == "atnet":
      return self._atnet(example, seed_2)
    return self._vgnet(example, seed_2)


def clip_dataset(builder, split: str, view: str) -> tf.data.Dataset:
  """The features a view needs, in file order; frames stay encoded."""
  if view == "atnet":
    decoders = tfds.decode.PartialDecoding(
        {"normalized_landmarks": True, "mfcc": True, "clip_id": True})
  else:
    decoders = tfds.decode.PartialDecoding(
        {"frames": True, "landmarks": True, "normalized_landmarks": True,
         "clip_id": True},
        decoders={"frames": tfds.decode.SkipDecoding()})
  return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(add_tfds_id=False))
