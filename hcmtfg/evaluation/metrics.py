"""Image-quality and lip-sync metrics of talking-face generation, batched numpy.

Two labelled conventions for SSIM and PSNR:

* release (`release_ssim`, `release_psnr`): what the ATVGnet release's
  evaluation script computes. Both images are resized to 256x256 with
  cv2.INTER_AREA (uint8); SSIM is skimage's `compare_ssim(multichannel=True)`
  on RGB: 7x7 uniform window, sample covariance, data range 255, K1 0.01,
  K2 0.03, mean over the map minus a 3-pixel border, averaged over channels;
  PSNR is on the grayscale uint8 images (cv2 luma), 20 log10(255 / sqrt(MSE)),
  100 when the MSE is 0. The release subtracts and squares the uint8 arrays
  directly, so every difference wraps modulo 256 (d -> (d mod 256)^2 mod 256,
  hence MSE <= 255 and PSNR >= 24.05 dB always); `uint8_wraparound=True` (the
  default here, to reproduce its numbers) keeps that, False gives the true MSE.
* plain (`plain_ssim`, `plain_psnr`): full resolution RGB, no resize; SSIM
  with the same window settings (skimage's `structural_similarity` defaults);
  PSNR of the RGB float MSE with max 255, +inf when identical.

Training's quick summaries use a third convention, in JAX: `hcmtfg.train.image_metrics`.

LMD (`lmd`): the release's landmark distance. dlib's mouth points 48..67 are
found on the real and the generated frame, each set is centred on its own mean,
and the Euclidean distances between corresponding points are SUMMED over the 20
points (the release's `np.sum(dis, axis=0)`); the result is averaged over the
frames where both faces were found. Units: pixels of the frames given (128x128
for the paper's numbers). `points_reduction='mean'` gives the per-point mean.

CPBD (`cpbd`): cumulative probability of blur detection (Narvekar & Karam,
IEEE TIP 2011), the release's settings: 64x64 blocks, a block counts when more
than 0.2 % of its pixels are Canny edges, edge widths of vertical Sobel edges
measured along the row between the local extrema around the edge (Marziliano;
`release_plateaus=True` reproduces a one-sided plateau quirk of the release's
port, which we checked against a loop transcription of it),
just-noticeable-blur width 5 for block contrast <= 50 else 3, beta 3.6, and
CPBD = the share of edge pixels with blur probability below 63 % (rounded to a
percent, <= 62 %). In [0, 1]; sharper is higher.

AT-net landmark error (`atnet_errors`): MSE in PCA-coefficient space and mean
point distance in pixels, mapping normalised landmarks back to the frame with
the similarity that takes the real frame's normalised landmarks to its pixels.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage
from skimage import feature
from skimage.metrics import structural_similarity

from hcmtfg.features import landmarks as landmarks_lib

RELEASE_SIZE = 256
MOUTH = landmarks_lib.MOUTH_POINTS  # slice(48, 68)
CPBD_BLOCK = 64
CPBD_EDGE_THRESHOLD = 0.002
CPBD_BETA = 3.6
CPBD_JNB_PERCENT = 63
_SOBEL_VERTICAL = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64) / 8.0
_SOBEL_THRESHOLD = 4.0  # on the squared response, as the release's port
_MAX_WIDTH_STEPS = 100


def _batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
  """(N, H, W, C) view of an (H, W, C) or (N, H, W, C) array; was it single?"""
  x = np.asarray(images)
  if x.ndim == 3:
    return x[None], True
  if x.ndim != 4:
    raise ValueError(f"expected (H, W, C) or (N, H, W, C) images, got {x.shape}")
  return x, False


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
  (a4, single), (b4, _) = _batch(a), _batch(b)
  if a4.shape != b4.shape:
    raise ValueError(f"image shapes differ: {np.shape(a)} vs {np.shape(b)}")
  return a4, b4, single


def plain_ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0
               ) -> np.ndarray | float:
  """Mean SSIM per image: skimage's `structural_similarity(a, b,
  channel_axis=-1, data_range=...)` (7x7 uniform window, sample covariance).

  Args:
    a, b: (N, H, W, C) or (H, W, C) images (any numeric dtype; C = 1 for gray),
      H, W >= 7.
    data_range: value range of the images (255 for uint8).

  Returns:
    (N,) float64 SSIM in [-1, 1], or a float for a single image.
  """
  a4, b4, single = _pair(a, b)
  values = np.array([
      structural_similarity(x, y, channel_axis=-1, data_range=data_range)
      for x, y in zip(a4.astype(np.float64), b4.astype(np.float64))])
  return float(values[0]) if single else values


def plain_psnr(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0
               ) -> np.ndarray | float:
  """Plain PSNR per image in dB over all pixels and channels; +inf if identical."""
  a4, b4, single = _pair(a, b)
  mse = np.mean(np.square(a4.astype(np.float64) - b4.astype(np.float64)),
                axis=(1, 2, 3))
  with np.errstate(divide="ignore"):
    values = 10.0 * np.log10(data_range**2 / mse)
  return float(values[0]) if single else values


def _release_resize(images_NxHxWx3: np.ndarray) -> np.ndarray:
  x = np.asarray(images_NxHxWx3)
  if x.dtype != np.uint8:
    raise ValueError(f"the release convention takes uint8 frames, got {x.dtype}")
  if x.shape[1:3] == (RELEASE_SIZE, RELEASE_SIZE):
    return x
  return np.stack([cv2.resize(np.ascontiguousarray(f), (RELEASE_SIZE, RELEASE_SIZE),
                              interpolation=cv2.INTER_AREA) for f in x])


def release_ssim(real: np.ndarray, fake: np.ndarray) -> np.ndarray | float:
  """The release's SSIM: RGB uint8 resized to 256x256 (INTER_AREA), 7x7 window."""
  a4, b4, single = _pair(real, fake)
  values = plain_ssim(_release_resize(a4), _release_resize(b4), data_range=255.0)
  return float(values[0]) if single else values


def release_psnr(real: np.ndarray, fake: np.ndarray, *,
                 uint8_wraparound: bool = True) -> np.ndarray | float:
  """The release's PSNR: 256x256 grayscale uint8, 100 when identical.

  Args:
    real, fake: (N, H, W, 3) or (H, W, 3) RGB uint8 frames.
    uint8_wraparound: square the differences in uint8 arithmetic as the release
      does (see the module docstring); False uses the true squared differences.
  """
  a4, b4, single = _pair(real, fake)
  gray = lambda x: np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
                             for f in _release_resize(x)])
  ga, gb = gray(a4), gray(b4)
  if uint8_wraparound:
    diff = (gb.astype(np.int64) - ga.astype(np.int64)) % 256
    squared = (diff * diff) % 256
  else:
    squared = np.square(gb.astype(np.float64) - ga.astype(np.float64))
  mse = squared.mean(axis=(1, 2)).astype(np.float64)
  with np.errstate(divide="ignore"):
    values = np.where(mse == 0, 100.0, 20.0 * np.log10(255.0 / np.sqrt(mse)))
  return float(values[0]) if single else values


def frame_metrics(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
  """Means over frames of both conventions: 'release/ssim', 'release/psnr',
  'release/psnr_true_mse' (no uint8 wraparound), 'plain/ssim', 'plain/psnr'."""
  return {
      "release/ssim": float(np.mean(release_ssim(real, fake))),
      "release/psnr": float(np.mean(release_psnr(real, fake))),
      "release/psnr_true_mse": float(np.mean(
          release_psnr(real, fake, uint8_wraparound=False))),
      "plain/ssim": float(np.mean(plain_ssim(real, fake))),
      "plain/psnr": float(np.mean(plain_psnr(real, fake))),
  }


# ----------------------------------------------------------------------------
# Landmark distance.
# ----------------------------------------------------------------------------


def mouth_landmarks(frames: np.ndarray, analyzer) -> tuple[np.ndarray, np.ndarray]:
  """dlib mouth points of every frame, as the release's LMD script finds them.

  Args:
    frames: (T, H, W, 3) RGB uint8.
    analyzer: an `hcmtfg.features.face.FaceAnalyzer` (detector upsampling 1, as the
      release); with several faces the largest is used.

  Returns:
    (T, 20, 2) float64 (x, y) pixels (NaN where no face) and (T,) bool found.
  """
  frames = np.asarray(frames)
  points = np.full((frames.shape[0], 20, 2), np.nan)
  found = np.zeros(frames.shape[0], bool)
  for t, frame in enumerate(frames):
    boxes = analyzer.detect_all(frame)
    if boxes:
      box = max(boxes, key=lambda b: (b.area, b.score))
      points[t] = analyzer.landmarks(frame, box)[MOUTH]
      found[t] = True
  return points, found


def lmd(real: np.ndarray, fake: np.ndarray, valid: np.ndarray | None = None, *,
        points_reduction: str = "sum") -> float:
  """Landmark distance: mean over frames of the summed mouth-point distances.

  Args:
    real, fake: (T, 20, 2) mouth points or (T, 68, 2) full sets (x, y), pixels.
    valid: (T,) bool frames to use (default: frames without NaN in either).
    points_reduction: 'sum' over the 20 points (the release) or 'mean'.

  Returns:
    LMD in pixels (NaN when no frame is valid).
  """
  r, f = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if r.shape != f.shape or r.ndim != 3 or r.shape[1:] not in ((20, 2), (68, 2)):
    raise ValueError(f"expected (T, 20|68, 2) point sets, got {r.shape}, {f.shape}")
  if r.shape[1] == 68:
    r, f = r[:, MOUTH], f[:, MOUTH]
  if valid is None:
    valid = np.isfinite(r).all(axis=(1, 2)) & np.isfinite(f).all(axis=(1, 2))
  valid = np.asarray(valid, bool)
  if not valid.any():
    return float("nan")
  r, f = r[valid], f[valid]
  r = r - r.mean(axis=1, keepdims=True)
  f = f - f.mean(axis=1, keepdims=True)
  dist_TxP = np.linalg.norm(r - f, axis=-1)
  if points_reduction == "sum":
    per_frame = dist_TxP.sum(axis=1)
  elif points_reduction == "mean":
    per_frame = dist_TxP.mean(axis=1)
  else:
    raise ValueError(f"points_reduction must be 'sum' or 'mean', got "
                     f"{points_reduction!r}")
  return float(per_frame.mean())


# ----------------------------------------------------------------------------
# CPBD.
# ----------------------------------------------------------------------------


def _runs(steps: np.ndarray, reverse: bool) -> np.ndarray:
  """Length of the run of True in `steps` (..., L) starting at each index,
  going right (or left when `reverse`)."""
  length = steps.shape[-1]
  s = steps[..., ::-1] if reverse else steps
  index = np.arange(length)
  stop = np.where(s, length, index)  # first False at or after each index
  stop = np.minimum.accumulate(stop[..., ::-1], axis=-1)[..., ::-1]
  runs = stop - index
  return runs[..., ::-1] if reverse else runs


def _edge_widths(img: np.ndarray, edges: np.ndarray,
                 release_plateaus: bool = False) -> np.ndarray:
  """Marziliano widths (H, W) of horizontal-gradient edge pixels; 0 elsewhere.

  From an edge pixel c the profile is followed along the row, on each side up
  to 100 steps, while it keeps rising (towards the bright side) or falling
  (towards the dark side) strictly; width = steps on both sides + 2.
  `release_plateaus` copies the release's port, which on the dark side of an
  edge rising to the left also walks through flat runs (non-strict fall).
  """
  h, w = img.shape
  gy, gx = np.gradient(img)
  with np.errstate(invalid="ignore", divide="ignore"):
    angle = np.where(gx != 0, np.degrees(np.arctan2(gy, gx)), 0.0)
  angle = 45.0 * np.round(angle / 45.0)
  pad = np.zeros((h, 1), bool)
  # steps[j] compares pixels j and j+1 (or j-1 and j), padded to width W.
  up_right = np.concatenate([img[:, 1:] > img[:, :-1], pad], 1)      # A[j+1] > A[j]
  down_right = np.concatenate([(img[:, 1:] <= img[:, :-1]) if release_plateaus
                               else (img[:, 1:] < img[:, :-1]), pad], 1)
  down_left = np.concatenate([pad, img[:, :-1] < img[:, 1:]], 1)     # A[j-1] < A[j]
  up_left = np.concatenate([pad, img[:, :-1] > img[:, 1:]], 1)       # A[j-1] > A[j]
  cap = lambda runs: 1 + np.minimum(runs, _MAX_WIDTH_STEPS)
  shift_r = lambda x: np.concatenate([x[:, 1:], np.zeros((h, 1), x.dtype)], 1)
  shift_l = lambda x: np.concatenate([np.zeros((h, 1), x.dtype), x[:, :-1]], 1)
  # Rising to the right (angle 0): climb right from c+1, descend left from c-1.
  width_0 = cap(shift_r(_runs(up_right, False))) + cap(shift_l(_runs(down_left, True)))
  # Rising to the left (angle +-180): climb left from c-1, fall right from c+1.
  width_180 = cap(shift_l(_runs(up_left, True))) + cap(shift_r(_runs(down_right,
                                                                    False)))
  interior = np.zeros((h, w), bool)
  interior[1:-1, 1:-1] = True
  use = edges & interior
  return np.where(use & (angle == 0), width_0,
                  np.where(use & (np.abs(angle) == 180), width_180, 0))


def _cpbd_one(img: np.ndarray, release_plateaus: bool) -> float:
  h, w = img.shape
  canny = feature.canny(img)
  response = ndimage.correlate(img, _SOBEL_VERTICAL)
  widths = _edge_widths(img, response * response > _SOBEL_THRESHOLD,
                        release_plateaus)
  bh, bw = h // CPBD_BLOCK, w // CPBD_BLOCK
  if bh == 0 or bw == 0:
    return 0.0
  crop = lambda x: x[:bh * CPBD_BLOCK, :bw * CPBD_BLOCK].reshape(
      bh, CPBD_BLOCK, bw, CPBD_BLOCK).swapaxes(1, 2).reshape(bh, bw, -1)
  blocks_img, blocks_canny, blocks_w = crop(img), crop(canny), crop(widths)
  is_edge_block = blocks_canny.sum(-1) > CPBD_BLOCK * CPBD_BLOCK * CPBD_EDGE_THRESHOLD
  contrast = blocks_img.max(-1) - blocks_img.min(-1)
  jnb = np.where(contrast <= 50, 5.0, 3.0)[..., None]
  counted = (blocks_w > 0) & is_edge_block[..., None]
  total = int(counted.sum())
  if total == 0:
    return 0.0
  prob = 1.0 - np.exp(-np.power(np.abs(blocks_w / jnb), CPBD_BETA))
  percent = np.floor(prob * 100.0 + 0.5)  # Python 2 round(), half away from 0
  sharp = counted & (percent <= CPBD_JNB_PERCENT - 1)
  return float(sharp.sum()) / total


def cpbd(images: np.ndarray, *, release_plateaus: bool = False
         ) -> np.ndarray | float:
  """CPBD sharpness per image (see the module docstring), in [0, 1].

  Args:
    images: (N, H, W, 3) RGB or (N, H, W) gray, uint8 (0..255 values), or one
      image (H, W, 3) / (H, W). RGB is converted with cv2's luma weights.
    release_plateaus: measure edge widths exactly as the release's Python port
      (see `_edge_widths`); False follows the paper (strict extrema).

  Returns:
    (N,) float64, or a float for one image (0 when it has no edge block).
  """
  x = np.asarray(images)
  single = x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3)
  if single:
    x = x[None]
  if x.ndim == 4:
    if x.shape[-1] != 3:
      raise ValueError(f"expected RGB images, got {x.shape}")
    x = np.stack([cv2.cvtColor(np.ascontiguousarray(f.astype(np.uint8)),
                               cv2.COLOR_RGB2GRAY) for f in x])
  if x.ndim != 3:
    raise ValueError(f"expected (N, H, W[, 3]) images, got {np.shape(images)}")
  # float32 as the release's implementation (Canny and Sobel run on it).
  values = np.array([_cpbd_one(f.astype(np.float32), release_plateaus)
                     for f in x])
  return float(values[0]) if single else values


# ----------------------------------------------------------------------------
# AT-net landmark error.
# ----------------------------------------------------------------------------


def _similarities(src_Tx68x2: np.ndarray, dst_Tx68x2: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame least-squares similarity (Umeyama): (T, 2, 2) A and (T, 2) b."""
  src_mean = src_Tx68x2.mean(1, keepdims=True)
  dst_mean = dst_Tx68x2.mean(1, keepdims=True)
  sc, dc = src_Tx68x2 - src_mean, dst_Tx68x2 - dst_mean
  cov = np.einsum("tni,tnj->tij", dc, sc) / sc.shape[1]
  u, sing, vt = np.linalg.svd(cov)
  sign = np.ones_like(sing)
  sign[:, -1] = np.where(np.linalg.det(u) * np.linalg.det(vt) < 0, -1.0, 1.0)
  rotation = np.einsum("tij,tj,tjk->tik", u, sign, vt)
  scale = (sing * sign).sum(-1) / np.mean(np.sum(sc**2, -1), axis=1)
  a = scale[:, None, None] * rotation
  b = dst_mean[:, 0] - np.einsum("tij,tj->ti", a, src_mean[:, 0])
  return a, b


def atnet_errors(pred_coefs: np.ndarray, target_coefs: np.ndarray,
                 pca: landmarks_lib.Pca,
                 target_pixels: np.ndarray | None = None) -> dict[str, float]:
  """AT-net errors in PCA space and (optionally) in pixels.

  Args:
    pred_coefs, target_coefs: (..., T, k) PCA coefficients (x-scale convention).
    pca: the PCA they live in.
    target_pixels: (..., T, 68, 2) the real landmarks in frame pixels (e.g.
      `ClipExample.landmarks`, 128x128 crops), for the pixel errors.

  Returns:
    'pca/mse': mean squared coefficient error; with target_pixels also
    'pixels/mean' (mean point distance over the 68 points) and 'pixels/mouth'
    (over points 48..67), both mapping the normalised landmarks to pixels with
    the similarity that takes the target's normalised shape to target_pixels.
  """
  pred = np.asarray(pred_coefs, np.float64)
  target = np.asarray(target_coefs, np.float64)
  if pred.shape != target.shape:
    raise ValueError(f"coefficient shapes differ: {pred.shape} vs {target.shape}")
  out = {"pca/mse": float(np.mean(np.square(pred - target)))}
  if target_pixels is None:
    return out
  pix = np.asarray(target_pixels, np.float64).reshape(-1, 68, 2)
  pred_norm = landmarks_lib.reconstruct(pca, pred).reshape(-1, 68, 2)
  target_norm = landmarks_lib.reconstruct(pca, target).reshape(-1, 68, 2)
  if pix.shape[0] != pred_norm.shape[0]:
    raise ValueError(f"{pix.shape[0]} pixel landmark sets for "
                     f"{pred_norm.shape[0]} frames")
  a, b = _similarities(target_norm, pix)
  to_pixels = lambda p: np.einsum("tij,tnj->tni", a, p) + b[:, None]
  dist = np.linalg.norm(to_pixels(pred_norm) - to_pixels(target_norm), axis=-1)
  out["pixels/mean"] = float(dist.mean())
  out["pixels/mouth"] = float(dist[:, MOUTH].mean())
  return out
