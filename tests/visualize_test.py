"""Tests of hcmtfg.train.visualize (summary image grids)."""

import numpy as np
import pytest

from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.train import visualize


def face_136(rs, n):
  """n plausible normalised 68-point shapes (a circle of points + noise)."""
  angle = np.linspace(0, 2 * np.pi, 68, endpoint=False)
  base = np.stack([0.2 * np.cos(angle), 0.2 * np.sin(angle)], -1)
  return (base[None] + 0.01 * rs.randn(n, 68, 2)).reshape(n, 136)


def colour_pixels(image, colour):
  return np.all(np.abs(image.astype(int) - colour) < 40, axis=-1).sum()


def test_grid_layout_and_to_uint8():
  rows = [np.full((3, 4, 5, 3), v, np.uint8) for v in (10, 200)]
  out = visualize.grid(rows, border=2)
  assert out.shape == (2 * 6 + 2, 3 * 7 + 2, 3)
  assert (out[2:6, 2:7] == 10).all() and (out[8:12, 9:14] == 200).all()
  assert (out[0] == 255).all()
  with pytest.raises(ValueError, match='row 1'):
    visualize.grid([rows[0], rows[1][:2]])
  np.testing.assert_array_equal(
      visualize.to_uint8(np.array([[-1.0, 0.0, 1.0, 3.0]])[..., None])[..., 0],
      [[0, 128, 255, 255]])


def test_landmark_plots_show_both_sets_where_they_differ():
  rs = np.random.RandomState(0)
  target = face_136(rs, 2)
  same = visualize.landmark_plots(
      [(target, visualize.TARGET_COLOUR), (target, visualize.PREDICTED_COLOUR)],
      64)
  assert same.shape == (2, 64, 64, 3)
  # Identical sets: the later (predicted) drawing covers the target.
  assert colour_pixels(same, visualize.PREDICTED_COLOUR) > 100
  assert colour_pixels(same, visualize.TARGET_COLOUR) < 10
  shifted = target.copy()
  shifted[:, 1::2] += 0.1  # y down by a quarter of the face
  both = visualize.landmark_plots(
      [(target, visualize.TARGET_COLOUR), (shifted, visualize.PREDICTED_COLOUR)],
      64)
  assert colour_pixels(both, visualize.TARGET_COLOUR) > 100
  assert colour_pixels(both, visualize.PREDICTED_COLOUR) > 100


def test_stage_grids_have_one_block_per_clip():
  rs = np.random.RandomState(1)
  k, t, s = 2, 5, 32
  outputs = {'frames': rs.uniform(-1, 1, (k, t, s, s, 3)),
             'attention': rs.uniform(0, 1, (k, t, s, s, 1)),
             'colour': rs.uniform(-1, 1, (k, t, s, s, 3)),
             'lmark_attention': rs.uniform(0, 1, (k, t, s // 4, s // 4, 1))}
  batch = {'target_image': rs.uniform(-1, 1, (k, t, s, s, 3)),
           'target_lmark': 5 * face_136(rs, k * t).reshape(k, t, 136),
           'example_lmark': 5 * face_136(rs, k)}
  grids = visualize.vgnet_grids(outputs, batch, num_frames=3)
  cell = s + 2
  assert grids['images/real_vs_generated'].shape == (2 * k * cell + 2,
                                                     3 * cell + 2, 3)
  for tag in ('images/attention', 'images/colour',
              'images/landmark_attention', 'images/landmarks'):
    assert grids[tag].shape == (k * cell + 2, 3 * cell + 2, 3), tag
  np.testing.assert_array_equal(visualize.frame_indices(5, 3), [0, 2, 4])

  shapes = face_136(rs, 50)
  shapes[:, 1::2] += rs.uniform(-0.1, 0.1, (50, 1))  # vertical moves in the PCA
  pca = landmarks_lib.fit_pca(shapes)
  target = face_136(rs, k * t)
  shifted = target.copy()
  shifted[:, 1::2] += 0.1
  coef = landmarks_lib.project(pca, target).reshape(k, t, 6)
  pred = landmarks_lib.project(pca, shifted).reshape(k, t, 6)
  grid = visualize.atnet_grids(
      pred, {'target_coef': coef, 'example_coef': coef[:, 0]}, pca,
      num_frames=2, size=40)['images/landmarks']
  assert grid.shape == (k * 42 + 2, 2 * 42 + 2, 3)
  assert colour_pixels(grid, visualize.PREDICTED_COLOUR) > 50
  assert colour_pixels(grid, visualize.TARGET_COLOUR) > 50
