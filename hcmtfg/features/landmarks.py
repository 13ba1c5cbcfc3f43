"""Landmark normalisation (Procrustes), the release's `normLmarks`, and landmark PCA.

Shapes: 68 dlib landmarks (x, y) per frame; a flattened landmark vector has 136 values
(x0, y0, x1, y1, ...). A Procrustes-normalised shape is centred, scaled and rotated
onto a mean shape of unit Frobenius norm (coordinates roughly in [-0.2, 0.2]).

Mean shape. Our pipeline (`normalize_landmarks`: the datasets, a photo's example
landmarks) aligns every frame to `default_mean_shape()`: the face template of
`hcmtfg.features.align` (generalised-Procrustes mean of dlib landmarks over ten real
photos, our own data, shipped as constants in align.py). The release aligns to its
`mean_shape_img.npy` instead; pass it as `mean_shape_68x2` to use that one.
Procrustes normalisation ignores the target's position and size, so only its shape
matters. The x5 of the release's PCA convention is applied later (`Pca.scale`),
never stored.

PCA convention (the release's, whose LRW files `U_lrw1.npy` / `mean_lrw1.npy`
`load_release_pca` reads): coefficients are computed from the normalised
landmarks multiplied by `Pca.scale` (5 in the release):
  coef = (lmark136 * scale - mean) @ components
  lmark136 = (coef @ components.T + mean) / scale
The release's VG-net consumes the scaled vector `scale * lmark136`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from hcmtfg import atomic
from hcmtfg.errors import InputError

NUM_POINTS = 68
MOUTH_POINTS = slice(48, 68)
RELEASE_PCA_SCALE = 5.0


def _standardise(shapes_Tx68x2: np.ndarray) -> np.ndarray:
  """Centres each shape and scales it to unit Frobenius norm."""
  centred = shapes_Tx68x2 - shapes_Tx68x2.mean(axis=-2, keepdims=True)
  norm = np.linalg.norm(centred.reshape(centred.shape[0], -1), axis=-1)
  if np.any(norm == 0):
    raise ValueError("degenerate landmark shape (all points equal)")
  return centred / norm[:, None, None]


def procrustes_normalise(lmarks_Tx68x2: np.ndarray, mean_shape_68x2: np.ndarray,
                         allow_reflection: bool = False) -> np.ndarray:
  """Aligns every frame's landmarks to a mean shape (as scipy.spatial.procrustes).

  The mean shape is centred and scaled to unit norm; each frame is centred, scaled
  to unit norm, then rotated and scaled to best fit it (least squares), so a frame
  identical in shape to the mean comes out equal to the standardised mean.

  Args:
    lmarks_Tx68x2: landmarks in any pixel frame; a single (68, 2) shape is accepted.
    mean_shape_68x2: the target shape (e.g. the release's `mean_shape_img.npy`).
    allow_reflection: permit a mirror image in the fit (scipy and the release do).

  Returns:
    (T, 136) float64 normalised landmarks (x0, y0, x1, y1, ...).
  """
  lmarks = np.asarray(lmarks_Tx68x2, np.float64).reshape(-1, NUM_POINTS, 2)
  ref_68x2 = _standardise(np.asarray(mean_shape_68x2, np.float64)[None])[0]
  shapes = _standardise(lmarks)
  cross_Tx2x2 = np.einsum("ni,tnj->tij", ref_68x2, shapes)
  u, sing, vt = np.linalg.svd(cross_Tx2x2)
  if not allow_reflection:
    flip = np.linalg.det(u @ vt) < 0
    u[flip, :, -1] *= -1.0
    sing[flip, -1] *= -1.0
  rotation = u @ vt
  aligned = np.einsum("tnj,tij->tni", shapes, rotation) * sing.sum(-1)[:, None,
                                                                        None]
  return aligned.reshape(-1, 2 * NUM_POINTS)


def default_mean_shape() -> np.ndarray:
  """(68, 2) float64 Procrustes target of our pipeline (see the module docstring)."""
  # Lazy: align brings dlib, which the training path does not otherwise load.
  from hcmtfg.features import align  # pylint: disable=g-import-not-at-top
  return align.default_templates().open.copy()


def normalize_landmarks(lmarks_Tx68x2: np.ndarray,
                        mean_shape_68x2: np.ndarray | None = None) -> np.ndarray:
  """Procrustes-normalised (T, 136) float32 landmarks (no reflections).

  Args:
    lmarks_Tx68x2: landmarks in any pixel frame ((68, 2) accepted).
    mean_shape_68x2: Procrustes target; None = `default_mean_shape()`.
  """
  target = default_mean_shape() if mean_shape_68x2 is None else mean_shape_68x2
  return procrustes_normalise(lmarks_Tx68x2, target).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ReleaseShapeModel:
  """The release's normalisation artefacts (float64).

  Attributes:
    mean_shape_img: (68, 2) Procrustes target (`mean_shape_img.npy`).
    mean_shape_norm: (136,) canonical normalised shape (`mean_shape_norm.npy`).
    basis: (100, 136) orthonormal shape basis (`S.npy`).
  """
  mean_shape_img: np.ndarray
  mean_shape_norm: np.ndarray
  basis: np.ndarray


def load_release_shape_model(basics_dir: str | os.PathLike) -> ReleaseShapeModel:
  """Reads mean_shape_img.npy, mean_shape_norm.npy and S.npy from `basics_dir`."""
  arrays = [_load_npy(basics_dir, name) for name in
            ("mean_shape_img.npy", "mean_shape_norm.npy", "S.npy")]
  model = ReleaseShapeModel(arrays[0].reshape(NUM_POINTS, 2),
                            arrays[1].reshape(2 * NUM_POINTS), arrays[2])
  if model.basis.ndim != 2 or model.basis.shape[1] != 2 * NUM_POINTS:
    raise InputError(os.path.join(basics_dir, "S.npy"),
                     f"expected (K, 136), got {model.basis.shape}")
  return model


def release_normalise(lmarks_Tx68x2: np.ndarray,
                      model: ReleaseShapeModel) -> np.ndarray:
  """The release demo's `normLmarks`.

  Each frame is Procrustes-aligned to `mean_shape_img` (reflections allowed), its
  deviation from the clip's LAST frame is projected on the shape basis, a fixed
  open-mouth offset (coefficient 1 of the basis, -0.06, mouth points only) is
  subtracted, and the result is added to `mean_shape_norm`. With one frame the
  deviation is zero, so every face gives the same canonical open-mouth shape.

  Args:
    lmarks_Tx68x2: landmarks in pixels; a single (68, 2) shape is accepted.
    model: the release artefacts.

  Returns:
    (T, 136) float64, values roughly in [-0.2, 0.2].
  """
  basis = model.basis
  normalised_Tx136 = procrustes_normalise(lmarks_Tx68x2, model.mean_shape_img,
                                          allow_reflection=True)
  mouth_offset = np.zeros(2 * NUM_POINTS)
  mouth_offset[2 * MOUTH_POINTS.start:] = -0.06 * basis[1,
                                                        2 * MOUTH_POINTS.start:]
  open_mouth_params = basis @ mouth_offset
  params_TxK = (normalised_Tx136 - normalised_Tx136[-1]) @ basis.T
  return (params_TxK - open_mouth_params) @ basis + model.mean_shape_norm


@dataclasses.dataclass(frozen=True)
class Pca:
  """A landmark PCA in the scaled space (see the module docstring).

  Attributes:
    mean: (136,) float64 mean of the scaled landmarks.
    components: (136, k) float64 orthonormal basis, one component per column.
    explained_variance: (k,) variance of each coefficient on the fitting data,
      or None when unknown (the release's files).
    scale: the factor applied to normalised landmarks before the PCA.
  """
  mean: np.ndarray
  components: np.ndarray
  explained_variance: np.ndarray | None
  scale: float = RELEASE_PCA_SCALE

  @property
  def num_components(self) -> int:
    return self.components.shape[1]


def fit_pca(lmarks_Nx136: np.ndarray, num_components: int = 6,
            scale: float = RELEASE_PCA_SCALE) -> Pca:
  """Fits a PCA to N normalised landmark vectors (N >= 2).

  Component signs are fixed so that each component's largest-magnitude entry is
  positive (deterministic across runs and platforms).
  """
  x_Nx136 = np.asarray(lmarks_Nx136, np.float64).reshape(-1, 2 * NUM_POINTS)
  x_Nx136 = x_Nx136 * scale
  if x_Nx136.shape[0] < 2 or not 0 < num_components <= 2 * NUM_POINTS:
    raise ValueError(f"cannot fit {num_components} components to "
                     f"{x_Nx136.shape[0]} samples")
  mean = x_Nx136.mean(axis=0)
  _, sing, vt = np.linalg.svd(x_Nx136 - mean, full_matrices=False)
  components = vt[:num_components].T
  if components.shape[1] < num_components:
    pad = np.zeros((2 * NUM_POINTS, num_components - components.shape[1]))
    components = np.concatenate([components, pad], axis=1)
    sing = np.concatenate([sing, np.zeros(pad.shape[1])])
  peak = components[np.argmax(np.abs(components), axis=0),
                    np.arange(num_components)]
  components = components * np.where(peak < 0, -1.0, 1.0)
  variance = sing[:num_components]**2 / (x_Nx136.shape[0] - 1)
  return Pca(mean, components, variance, float(scale))


def project(pca: Pca, lmarks_x136: np.ndarray) -> np.ndarray:
  """(..., 136) normalised landmarks -> (..., k) coefficients."""
  return (np.asarray(lmarks_x136) * pca.scale - pca.mean) @ pca.components


def reconstruct(pca: Pca, coefs_xk: np.ndarray) -> np.ndarray:
  """(..., k) coefficients -> (..., 136) normalised (unscaled) landmarks."""
  return (np.asarray(coefs_xk) @ pca.components.T + pca.mean) / pca.scale


def save_pca(path: str | os.PathLike, pca: Pca) -> None:
  """Writes the PCA to an .npz file atomically (temporary file + rename)."""
  path = os.fspath(path)
  arrays = {"mean": pca.mean, "components": pca.components,
            "scale": np.float64(pca.scale)}
  if pca.explained_variance is not None:
    arrays["explained_variance"] = pca.explained_variance
  fd, tmp = atomic.temp_beside(path, suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_pca(path: str | os.PathLike) -> Pca:
  """Reads a PCA written by `save_pca`; InputError if missing or malformed."""
  try:
    with np.load(path) as data:
      mean, components = data["mean"], data["components"]
      variance = (data["explained_variance"]
                  if "explained_variance" in data else None)
      scale = float(data["scale"])
  except (OSError, ValueError, KeyError) as e:
    raise InputError(path, f"not a landmark PCA file: {e}") from e
  if mean.shape != (2 * NUM_POINTS,) or components.shape[0] != 2 * NUM_POINTS:
    raise InputError(path, f"bad PCA shapes: mean {mean.shape}, components "
                     f"{components.shape}")
  return Pca(mean, components, variance, scale)


def load_release_pca(basics_dir: str | os.PathLike, name: str = "lrw1",
                     num_components: int = 6) -> Pca:
  """The release's PCA: first columns of U_{name}.npy and mean_{name}.npy, scale 5."""
  u_matrix = _load_npy(basics_dir, f"U_{name}.npy")
  mean = _load_npy(basics_dir, f"mean_{name}.npy").reshape(-1)
  if u_matrix.shape[0] != 2 * NUM_POINTS or mean.shape != (2 * NUM_POINTS,):
    raise InputError(basics_dir, f"bad release PCA shapes {u_matrix.shape}, "
                     f"{mean.shape}")
  return Pca(mean, u_matrix[:, :num_components], None, RELEASE_PCA_SCALE)


def _load_npy(folder: str | os.PathLike, name: str) -> np.ndarray:
  path = os.path.join(folder, name)
  try:
    return np.asarray(np.load(path), np.float64)
  except (OSError, ValueError) as e:
    raise InputError(path, f"cannot read release artefact: {e}") from e
