"""Tests of hcmtfg.data.input_pipeline on the tiny synthetic dataset (built once per
session under pytest's base temp dir, shared with datasets_test.py)."""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import data_pipelines  # noqa: F401  (registers the builders)
from data_pipelines import build
from hcmtfg.data import input_pipeline
from hcmtfg.features import audio
from hcmtfg.features import landmarks as landmarks_lib

NUM_CLIPS = 10
T = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.getbasetemp() / "hcmtfg_datasets"
  return build.build_dataset("synthetic_talking_faces", root / "tfds", config="tiny",
                             num_clips=NUM_CLIPS, download_dir=root / "downloads")


@pytest.fixture(scope="module")
def clips(tiny) -> dict[bytes, dict]:
  """clip_id -> decoded train example."""
  return {ex["clip_id"]: ex
          for ex in tfds.as_numpy(tiny.as_dataset(split="train"))}


@pytest.fixture(scope="module")
def pca(tiny):
  return input_pipeline.load_dataset_pca(tiny)


def _iterator(tiny, view, **kwargs):
  kwargs.setdefault("global_batch_size", 4)
  kwargs.setdefault("process_index", 0)
  kwargs.setdefault("process_count", 1)
  return input_pipeline.make_train_iterator(tiny, view, **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_atnet_view_windows_match_the_clip(tiny, clips, pca):
  batches = _take(_iterator(tiny, "atnet", seed=3, with_ids=True), 6)
  b = batches[0]
  assert b["example_coef"].shape == (4, 6) and b["example_coef"].dtype == np.float32
  assert b["mfcc"].shape == (4, T, 28, 12) and b["mfcc"].dtype == np.float32
  assert b["target_coef"].shape == (4, T, 6)
  seen_r = set()
  for batch in batches:
    for i, clip_id in enumerate(batch["clip_id"]):
      clip = clips[clip_id]
      r = int(batch["example_index"][i])
      seen_r.add(r)
      assert 3 <= r <= 7
      lmarks = clip["normalized_landmarks"]
      np.testing.assert_allclose(batch["example_coef"][i],
                                 landmarks_lib.project(pca, lmarks[r]), atol=1e-4)
      np.testing.assert_allclose(batch["target_coef"][i],
                                 landmarks_lib.project(pca, lmarks[r + 1:r + 1 + T]),
                                 atol=1e-4)
      windows = audio.mfcc_windows(clip["mfcc"], int(clip["num_frames"]))
      np.testing.assert_array_equal(batch["mfcc"][i], windows[r + 1:r + 1 + T])
  assert len(seen_r) >= 3  # r is drawn, not fixed


def test_vgnet_view_frames_and_landmarks(tiny, clips):
  it = _iterator(tiny, "vgnet", seed=5, with_ids=True)
  batch = next(it)
  assert batch["example_image"].shape == (4, 128, 128, 3)
  assert batch["target_image"].shape == (4, T, 128, 128, 3)
  assert batch["example_lmark"].shape == (4, 136)
  assert batch["target_lmark"].shape == (4, T, 136)
  for key in ("example_image", "target_image"):
    assert batch[key].dtype == np.float32
    assert batch[key].min() >= -1.0 and batch[key].max() <= 1.0
    assert batch[key].min() < -0.5 and batch[key].max() > 0.5
  for i, clip_id in enumerate(batch["clip_id"]):
    clip = clips[clip_id]
    e, s = int(batch["example_index"][i]), int(batch["target_start"][i])
    assert 0 <= s <= clip["num_frames"] - T
    frames = clip["frames"].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(batch["example_image"][i], frames[e], atol=1e-5)
    np.testing.assert_allclose(batch["target_image"][i], frames[s:s + T], atol=1e-5)
    lmarks = clip["normalized_landmarks"] * 5.0
    np.testing.assert_allclose(batch["example_lmark"][i], lmarks[e], atol=1e-6)
    np.testing.assert_allclose(batch["target_lmark"][i], lmarks[s:s + T], atol=1e-6)
  small = next(_iterator(tiny, "vgnet", seed=5, image_size=32, num_target_frames=4))
  assert small["target_image"].shape == (4, 4, 32, 32, 3)
  assert small["example_image"].shape == (4, 32, 32, 3)
  assert small["target_image"].min() >= -1.0 and small["target_image"].max() <= 1.0


def test_deterministic_given_seed_and_shuffled(tiny):
  a = _take(_iterator(tiny, "atnet", seed=7), 4)
  b = _take(_iterator(tiny, "atnet", seed=7), 4)
  c = _take(_iterator(tiny, "atnet", seed=8), 4)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x["target_coef"], z["target_coef"])
             for x, z in zip(a, c))
  ids = [_take(_iterator(tiny, "atnet", seed=s, with_ids=True), 1)[0]["clip_id"]
         for s in (1, 2, 3)]
  assert len({tuple(i) for i in ids}) > 1  # order depends on the seed


@pytest.mark.parametrize("view", ["atnet", "vgnet"])
def test_resume_continues_with_the_next_batch(tiny, view):
  # 8 train clips, batches of 3: batch 3 starts one example into epoch 1.
  full = _take(_iterator(tiny, view, seed=11, global_batch_size=3), 6)
  first = _iterator(tiny, view, seed=11, global_batch_size=3)
  _take(first, 3)
  state = json.loads(json.dumps(first.get_state()))
  assert state["batches"] == 3
  resumed = _iterator(tiny, view, seed=11, global_batch_size=3, state=state)
  for expected in full[3:]:
    got = next(resumed)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  fresh = next(_iterator(tiny, view, seed=11, global_batch_size=3))
  assert not np.array_equal(fresh[list(fresh)[0]], full[3][list(fresh)[0]])
  with pytest.raises(ValueError, match="seed"):
    _iterator(tiny, view, seed=12, global_batch_size=3, state=state)


def test_epochs_cover_every_clip_once(tiny, clips):
  it = _iterator(tiny, "atnet", seed=2, global_batch_size=2, with_ids=True)
  epoch0 = np.concatenate([next(it)["clip_id"] for _ in range(4)])
  epoch1 = np.concatenate([next(it)["clip_id"] for _ in range(4)])
  assert sorted(epoch0) == sorted(clips) == sorted(epoch1)
  assert list(epoch0) != list(epoch1)  # reshuffled each epoch


def test_position_is_json_and_the_same_on_every_host(tiny):
  hosts = [_iterator(tiny, "vgnet", seed=4, global_batch_size=4,
                     process_index=i, process_count=2) for i in range(2)]
  for it in hosts:
    _take(it, 3)
  states = [json.loads(json.dumps(it.get_state())) for it in hosts]
  assert states[0] == states[1]
  assert states[0]["split"] == "train" and states[0]["process_count"] == 2
  # Host 1 resumes from process 0's position (the one a checkpoint keeps) and
  # continues exactly as its uninterrupted self.
  resumed = _iterator(tiny, "vgnet", seed=4, global_batch_size=4,
                      process_index=1, process_count=2, state=states[0])
  expected, got = next(hosts[1]), next(resumed)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  with pytest.raises(ValueError, match="process_count"):
    _iterator(tiny, "vgnet", seed=4, global_batch_size=4, process_index=0,
              process_count=1, state=states[0])


def test_two_hosts_read_disjoint_parts_covering_the_split(tiny, clips):
  per_host = []
  for index in range(2):
    data = input_pipeline.make_eval_data(
        tiny, "atnet", split="train", global_batch_size=4, process_index=index,
        process_count=2, with_ids=True)
    ids = [cid for batch in data for cid, ok in zip(batch["clip_id"], batch["mask"])
           if ok]
    assert len(data) == len(list(data))
    per_host.append(set(ids))
    train = _iterator(tiny, "atnet", seed=0, global_batch_size=4,
                      process_index=index, process_count=2, with_ids=True)
    streamed = {cid for _ in range(6) for cid in next(train)["clip_id"]}
    assert streamed == set(ids)
    assert next(train)["clip_id"].shape == (2,)  # host batch = global / hosts
  assert not per_host[0] & per_host[1]
  assert per_host[0] | per_host[1] == set(clips)


def test_eval_view_is_deterministic_and_padded(tiny, clips):
  data = input_pipeline.make_eval_data(tiny, "vgnet", split="train",
                                       global_batch_size=3, process_index=0,
                                       process_count=1, with_ids=True,
                                       image_size=32)
  first, second = list(data), list(data)
  assert len(first) == len(data) == 3  # 8 clips -> 3 batches of 3, one padded
  for x, y in zip(first, second):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  mask = np.concatenate([b["mask"] for b in first])
  assert mask.sum() == len(clips) and not mask[-1]
  real = np.concatenate([b["clip_id"] for b in first])[mask]
  assert sorted(real) == sorted(clips)


def test_to_global_shards_over_the_data_axis(tiny):
  devices = jax.devices()
  assert len(devices) == 8
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  # process_index / process_count default to jax's (0 of 1 here).
  batch = next(input_pipeline.make_train_iterator(tiny, "atnet",
                                                  global_batch_size=8))
  global_batch = input_pipeline.to_global(batch, mesh)
  array = global_batch["mfcc"]
  assert isinstance(array, jax.Array) and array.shape == (8, T, 28, 12)
  assert array.sharding.spec == jax.sharding.PartitionSpec("data")
  assert len(array.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(array), batch["mfcc"])


def test_long_windows_clamp_the_example_frame(tiny):
  # 24 targets after r need r <= 29 - 1 - 24 = 4; the build kept clips of >= 24
  # frames, so the pipeline counts the usable ones itself.
  it = _iterator(tiny, "atnet", seed=4, num_target_frames=24, with_ids=True)
  assert it.num_host_examples == 8
  rs = np.concatenate([next(it)["example_index"] for _ in range(6)])
  assert set(rs) <= {3, 4} and len(set(rs)) == 2


def test_eval_refuses_a_host_without_examples(tiny):
  """More hosts than clips would leave a host with no batch, hanging the rest."""
  with pytest.raises(ValueError, match="too few for 16 hosts"):
    input_pipeline.make_eval_data(tiny, "atnet", split="train",
                                  global_batch_size=16, process_index=0,
                                  process_count=16)
