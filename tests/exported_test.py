"""Tests of hcmtfg.runtime.exported: steps stored with jax.export beside the
compilation cache give the same frames, and a later process does not trace
the networks again."""

import os

import numpy as np
import pytest

from hcmtfg import models
from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import generate
from hcmtfg.inference import networks as networks_lib
from hcmtfg.inference import photo as photo_lib
from hcmtfg.runtime import compile_cache
from hcmtfg.runtime import exported
from tests import generate_test


@pytest.fixture(scope="module")
def parts(shared_data):
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
  from hcmtfg.features import landmarks as landmarks_lib  # pylint: disable=g-import-not-at-top
  atnet = models.ATNet.from_config(generate_test.ATNET)
  vgnet = models.VGNet.from_config(generate_test.VGNET)
  pca = landmarks_lib.load_release_pca(shared_data / "atvgnet_basics")
  photo = photo_lib.prepare_photo(shared_data / "faces" / "obama.jpg",
                                 face.FaceAnalyzer(), image_size=32)
  speech = audio_lib.load_audio(shared_data / "speech" / "audio_sample.wav")
  return {"atnet": atnet, "vgnet": vgnet, "pca": pca, "photo": photo,
          "speech": speech[:16000],
          "at_vars": generate_test.random_variables(atnet, 0),
          "vg_vars": generate_test.random_variables(vgnet, 1)}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """One cache for the module's tests (each new folder means compiling)."""
  return tmp_path_factory.mktemp("compile_cache")


def _frames(parts) -> np.ndarray:
  generator = networks_lib.Generator(parts["atnet"], parts["at_vars"],
                                 parts["vgnet"], parts["vg_vars"],
                                 parts["pca"], release_coef_scaling=True)
  return generate.generate(generator, parts["photo"], parts["speech"],
                           chunk_frames=8).frames


def test_exported_steps_match_and_skip_tracing(parts, cache_dir,
                                                max_chunk_traces):
  plain = _frames(parts)  # cache off: the jitted functions
  try:
    compile_cache.enable(str(cache_dir))
    first = _frames(parts)
    stored = sorted(p.name.split("-")[0] for p in
                    (cache_dir / exported.SUBDIR).iterdir())
    assert stored == ["atnet_chunk", "kernel_transforms", "kernel_transforms",
                      "vgnet_chunk"]
    # A new process: nothing in memory, everything on disk.
    exported._BY_MODULE.clear()  # pylint: disable=protected-access
    with max_chunk_traces(0):  # no step is traced again
      second = _frames(parts)
  finally:
    compile_cache.enable("off")
    exported._BY_MODULE.clear()  # pylint: disable=protected-access
  np.testing.assert_array_equal(first, second)
  assert np.abs(first.astype(int) - plain).max() <= 1


def test_unreadable_export_is_traced_again(parts, cache_dir):
  try:
    compile_cache.enable(str(cache_dir))
    first = _frames(parts)
    folder = cache_dir / exported.SUBDIR
    for path in folder.iterdir():
      if path.name.startswith("vgnet_chunk"):
        path.write_bytes(b"garbage")
    exported._BY_MODULE.clear()  # pylint: disable=protected-access
    again = _frames(parts)
    assert all(p.stat().st_size > 100 for p in folder.iterdir())
  finally:
    compile_cache.enable("off")
    exported._BY_MODULE.clear()  # pylint: disable=protected-access
  np.testing.assert_array_equal(first, again)


def test_variable_shapes_are_stored(parts, tmp_path):
  traced = exported.variable_shapes(parts["vgnet"])
  try:
    compile_cache.enable(str(tmp_path / "cache"))
    exported.variable_shapes(parts["vgnet"])
    stored = exported.variable_shapes(parts["vgnet"])
    assert [p for p in os.listdir(tmp_path / "cache" / exported.SUBDIR)
            if p.startswith("shapes-")]
  finally:
    compile_cache.enable("off")
  assert {k: (v.shape, v.dtype) for k, v in stored.items()} == {
      k: (v.shape, v.dtype) for k, v in traced.items()}
  assert len(exported.code_fingerprint()) == 64
