"""Tests of the generation path (hcmtfg.inference.generate, streaming, compose, checkpoint_io)
and batch generation (hcmtfg.inference.batch_generate, which launch.generate runs), with
tiny random networks.

The networks are tiny (32x32 frames) and their weights random, drawn at a scale
that keeps activations alive (the release's N(0, 0.02) init makes every frame
almost the same, which would hide a broken recurrence carry).
"""

import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile

from hcmtfg import models
from hcmtfg.errors import InputError
from hcmtfg.features import audio as audio_lib
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.inference import batch_generate as cli
from hcmtfg.inference import chunked as chunked_lib
from hcmtfg.inference import compose
from hcmtfg.inference import engine
from hcmtfg.inference import generate
from hcmtfg.inference import networks as networks_lib
from hcmtfg.inference import outputs
from hcmtfg.inference import photo as photo_lib
from hcmtfg.media import video as video_lib
from hcmtfg.train import checkpoints as checkpoints_lib
from hcmtfg.train import train_state as ts
from hcmtfg.weights import checkpoint_io

REPO = pathlib.Path(__file__).resolve().parents[1]
ATNET = dict(base_width=4, lmark_features=[8, 16], audio_features=[32, 8],
             lstm_features=8, lstm_layers=2)
VGNET = dict(image_size=32, base_width=8, bottleneck_features=8,
             convgru_features=16, num_res_blocks=1)


def random_variables(module, seed: int) -> dict:
  """Variables of `module.init`'s tree with lively random values (numpy)."""
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.key(0), *module.dummy_inputs(), train=False))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = path[-1].key
    if path[0].key == "batch_stats":
      values = (rng.uniform(0.5, 1.5, x.shape) if name == "var"
                else rng.normal(0, 0.1, x.shape))
    elif name == "scale":
      values = rng.uniform(0.8, 1.2, x.shape)
    elif len(x.shape) == 1:
      values = rng.normal(0, 0.1, x.shape)
    else:
      values = rng.normal(0, 1, x.shape) / np.sqrt(np.prod(x.shape[:-1]))
    return values.astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def write_training_workdir(workdir: pathlib.Path, name: str, variables: dict,
                           config: dict, pca=None) -> None:
  """A workdir as the training code writes it: config.json, checkpoints/<step>."""
  state = ts.TrainState(step=jnp.array(3, jnp.int32), rng=jax.random.PRNGKey(0),
                        g=ts.NetState.create(optax.adam(1e-3), variables))
  checkpointer = checkpoints_lib.Checkpointer(workdir / "checkpoints",
                                            async_save=False)
  checkpointer.save(3, state, {"epoch": 0}, force=True)
  checkpointer.close()
  (workdir / "config.json").write_text(json.dumps(config))
  if pca is not None:
    landmarks_lib.save_pca(workdir / "landmark_pca.npz", pca)


@pytest.fixture(scope="module")
def nets(tmp_path_factory, shared_data):
  """Tiny random networks saved in both layouts."""
  root = tmp_path_factory.mktemp("nets")
  atnet, vgnet = models.ATNet.from_config(ATNET), models.VGNet.from_config(VGNET)
  at_vars, vg_vars = random_variables(atnet, 0), random_variables(vgnet, 1)
  # Long memories, so that a broken carry between chunks shows: LSTM forget
  # gates (i, f, g, o order) and ConvGRU update gates (r, z, n) open.
  h, f = ATNET["lstm_features"], VGNET["convgru_features"]
  for layer in range(ATNET["lstm_layers"]):
    at_vars["params"]["lstm"][f"bias_ih_l{layer}"][h:2 * h] = 3.0
  vg_vars["params"]["convgru"]["bias_ih"][f:2 * f] = 3.0
  pca = landmarks_lib.load_release_pca(shared_data / "atvgnet_basics")
  write_training_workdir(root / "atnet", "atnet", at_vars,
                         {"seed": 0, "model": ATNET}, pca)
  write_training_workdir(root / "vgnet", "vgnet", vg_vars,
                         {"seed": 0, "model": {"generator": VGNET,
                                               "discriminator": {}}})
  checkpoint_io.save_converted(root / "converted", "atnet", at_vars,
                               atnet.to_config())
  checkpoint_io.save_converted(root / "converted", "vgnet", vg_vars,
                               vgnet.to_config())
  return {"root": root, "atnet": atnet, "vgnet": vgnet, "at_vars": at_vars,
          "vg_vars": vg_vars, "pca": pca}


@pytest.fixture(scope="module")
def generator(nets):
  return networks_lib.load_generator_networks(nets["root"] / "atnet",
                                          nets["root"] / "vgnet")


@pytest.fixture(scope="module")
def analyzer():
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
  return face.FaceAnalyzer()


@pytest.fixture(scope="module")
def media(tmp_path_factory, shared_data):
  """Short speech crops in several formats, and a few photos."""
  d = tmp_path_factory.mktemp("media")
  speech, rate = soundfile.read(shared_data / "speech" / "test.wav", dtype="float32")
  stereo, stereo_rate = soundfile.read(shared_data / "speech" / "mocle_cut.wav",
                                       dtype="float32")
  files = {
      "speech": d / "speech_1s.wav", "stereo": d / "stereo_44k.wav",
      "8k": d / "speech_8k.wav", "silent": d / "silent.wav",
      "tenth": d / "tenth.wav", "hundredth": d / "hundredth.wav",
      "text": d / "notes.txt", "no_face": d / "no_face.png",
  }
  soundfile.write(files["speech"], speech[:int(1.0 * rate)], rate)
  soundfile.write(files["stereo"], stereo[:int(0.8 * stereo_rate)], stereo_rate)
  soundfile.write(files["8k"], audio_lib.resample(speech[:int(0.7 * rate)], rate,
                                                  8000), 8000)
  soundfile.write(files["silent"], np.zeros(8000, np.float32), 16000)
  soundfile.write(files["tenth"], np.asarray(speech[:4410]), rate)
  soundfile.write(files["hundredth"], np.asarray(speech[:441]), rate)
  files["text"].write_text("this is not audio\n" * 20)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  smooth = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.uint8)
  Image.fromarray(smooth).resize((160, 160), Image.BICUBIC).save(files["no_face"])
  files["obama"] = shared_data / "faces" / "obama.jpg"
  files["test1"] = shared_data / "faces" / "test1.jpg"
  files["about"] = shared_data / "faces" / "ABOUT_00001_00001.jpg"
  files["full_speech"] = shared_data / "speech" / "audio_sample.wav"
  return files


def _frame_count_and_duration(path) -> tuple[int, float, video_lib.MediaInfo]:
  decoded = video_lib.read_video(path, fps=None, with_audio=False)
  return decoded.num_frames, decoded.num_frames / 25.0, video_lib.probe(path)


def _check_video(path, audio_path, size) -> None:
  frames, seconds, info = _frame_count_and_duration(path)
  audio_seconds = soundfile.info(str(audio_path)).duration
  assert abs(seconds - audio_seconds) <= 1 / 25 + 1e-6
  assert info.has_audio and (info.width, info.height) == size
  assert abs(info.duration - audio_seconds) <= 0.1


def _options(nets, **kwargs) -> cli.Options:
  return cli.Options(atnet_workdir=str(nets["root"] / "atnet"),
                     vgnet_workdir=str(nets["root"] / "vgnet"), progress=False,
                     **kwargs)


# ----------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------


def test_both_layouts_load_the_same_weights(nets, generator):
  converted = networks_lib.load_generator_networks(
      nets["root"] / "converted", nets["root"] / "converted" / "vgnet",
      pca_path=nets["root"] / "atnet" / "landmark_pca.npz")
  for a, b in ((generator.atnet_variables, converted.atnet_variables),
               (generator.vgnet_variables, converted.vgnet_variables),
               (generator.vgnet_variables, nets["vg_vars"])):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  assert generator.atnet == nets["atnet"] and converted.vgnet == nets["vgnet"]
  assert not generator.release_coef_scaling and converted.release_coef_scaling
  np.testing.assert_array_equal(generator.pca.components,
                                nets["pca"].components)


def test_checkpoint_problems_are_clear_input_errors(nets, tmp_path):
  root = nets["root"]
  with pytest.raises(InputError, match="not found"):
    checkpoint_io.load_network(tmp_path / "nowhere", "atnet")
  with pytest.raises(InputError, match="neither a training workdir"):
    checkpoint_io.load_network(tmp_path, "atnet")
  with pytest.raises(InputError, match="is a VG-net training workdir"):
    checkpoint_io.load_network(root / "vgnet", "atnet")
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.json").write_text(json.dumps({"model": ATNET}))
  with pytest.raises(InputError, match="no saved checkpoint"):
    checkpoint_io.load_network(tmp_path / "empty", "atnet")
  with pytest.raises(InputError, match="no landmark PCA"):
    networks_lib.load_generator_networks(root / "converted", root / "converted")
  # Weights saved for one config, loaded with another.
  bad = tmp_path / "bad"
  bad.mkdir()
  os.symlink(root / "atnet" / "checkpoints", bad / "checkpoints")
  (bad / "config.json").write_text(json.dumps(
      {"model": dict(ATNET, lstm_features=12)}))
  with pytest.raises(InputError) as error:
    checkpoint_io.load_network(bad, "atnet")
  message = str(error.value)
  assert "state" in message and "config.json" in message
  assert "params/lstm/kernel_hh_l0: (8, 32) in the weights, (12, 48)" in message


def test_relative_and_home_paths_load(nets, tmp_path, monkeypatch):
  # Orbax refuses relative paths, and nothing below expands `~`: the loader
  # resolves both against the current directory and HOME.
  monkeypatch.setenv("HOME", str(nets["root"]))
  monkeypatch.chdir(nets["root"].parent)
  for directory in (os.path.join(nets["root"].name, "atnet"), "~/atnet",
                    "~/converted"):
    loaded = checkpoint_io.load_network(directory, "atnet")
    jax.tree.map(np.testing.assert_array_equal, loaded.variables,
                 nets["at_vars"])
  assert loaded.path == str(nets["root"] / "converted" / "atnet")
  pca = checkpoint_io.load_pca_from("~/atnet/landmark_pca.npz")
  np.testing.assert_array_equal(pca.components, nets["pca"].components)
  spaced = tmp_path / "my runs" / "vg net"
  shutil.copytree(nets["root"] / "vgnet", spaced)
  monkeypatch.chdir(tmp_path)
  loaded = checkpoint_io.load_network("my runs/vg net", "vgnet")
  assert loaded.step == 3
  assert loaded.path == str(spaced / "checkpoints" / "3" / "state")
  jax.tree.map(np.testing.assert_array_equal, loaded.variables,
               nets["vg_vars"])


def test_unreadable_train_state_names_the_cause(nets, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(nets["root"] / "atnet", broken)
  state = broken / "checkpoints" / "3" / "state"
  (state / "_METADATA").unlink()
  with pytest.raises(InputError) as info:
    checkpoint_io.load_network(broken, "atnet")
  message = str(info.value)
  assert message.startswith(f"{state}: cannot read the train state: "), message
  assert "_METADATA" in message and "not a train state" not in message
  # A readable checkpoint that holds something else is reported as such.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  other = tmp_path / "other"
  (other / "checkpoints" / "3").mkdir(parents=True)
  shutil.copy(nets["root"] / "atnet" / "config.json", other / "config.json")
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(other / "checkpoints" / "3" / "state",
                      {"params": {"w": np.zeros(2, np.float32)}})
  with pytest.raises(InputError, match=r"state: is not a train state: it "
                     r"holds no 'g' network \(found \['params'\]\)"):
    checkpoint_io.load_network(other, "atnet")


def test_cli_reports_a_mismatched_checkpoint(nets, media, tmp_path, capsys):
  bad = tmp_path / "bad_vgnet"
  bad.mkdir()
  os.symlink(nets["root"] / "vgnet" / "checkpoints", bad / "checkpoints")
  (bad / "config.json").write_text(json.dumps(
      {"model": {"generator": dict(VGNET, bottleneck_features=4)}}))
  options = cli.Options(atnet_workdir=str(nets["root"] / "atnet"),
                        vgnet_workdir=str(bad), image=str(media["obama"]),
                        audio=str(media["speech"]), output=str(tmp_path / "o.mp4"),
                        progress=False)
  assert cli.run(options) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ")
  assert "does not match the model config" in err[0]
  assert ("params/bottle_neck/conv/kernel: (3, 3, 128, 8) in the weights, "
          "(3, 3, 128, 4) from the config") in err[0]
  assert not (tmp_path / "o.mp4").exists()


# ----------------------------------------------------------------------------
# Generation.
# ----------------------------------------------------------------------------


def test_chunked_generation_equals_one_pass(generator, analyzer, media,
                                             max_chunk_traces):
  photo = photo_lib.prepare_photo(media["obama"], analyzer, image_size=32)
  speech = audio_lib.load_audio(media["speech"])  # 1 s: 25 frames
  with max_chunk_traces(1):  # each step compiled at most once for chunks of 7
    chunked = generate.generate(generator, photo, speech, chunk_frames=7,
                                intermediates=True)
    assert chunked.frames.shape == (25, 32, 32, 3) and chunked.frames.dtype == np.uint8
    # Another length, same chunk size: nothing is compiled again.
    generate.generate(generator, photo, speech[:9000], chunk_frames=7)
  # The check is live: a new chunk size has to compile, so it fails.
  with pytest.raises(AssertionError, match="traced > 0 times"):
    with max_chunk_traces(0):
      generate.generate(generator, photo, speech[:9000], chunk_frames=5)

  # The modules' own forward over the whole sequence at once.
  _, windows = audio_lib.speech_features(speech)
  example_coef = jnp.asarray(
      landmarks_lib.project(generator.pca, photo.landmarks)[None], jnp.float32)
  apply = lambda module: jax.jit(functools.partial(
      module.apply, train=False, mutable=["intermediates"]))
  coefs, at_inter = apply(generator.atnet)(
      generator.atnet_variables, example_coef, jnp.asarray(windows[None]))
  np.testing.assert_allclose(
      chunked.landmarks, landmarks_lib.reconstruct(generator.pca, coefs[0]),
      atol=1e-5)
  scale = generator.pca.scale
  image = jnp.asarray(photo.image[None])
  example = jnp.asarray(
      engine.FrameStream.for_photo(generator, photo).example_landmarks)
  np.testing.assert_allclose(  # the photo's landmarks through the PCA
      example[0], landmarks_lib.reconstruct(generator.pca, example_coef[0]) * scale,
      atol=1e-5)
  target = jnp.asarray(chunked.landmarks[None] * scale)
  out, vg_inter = apply(generator.vgnet)(generator.vgnet_variables, image, target,
                                         example)
  whole = np.asarray(jnp.clip(jnp.round((out.frames[0] + 1) * 127.5), 0, 255))
  diff = np.abs(whole - chunked.frames)
  assert diff.max() <= 1 and diff.mean() < 0.01
  np.testing.assert_allclose(chunked.attention, out.attention[0, ..., 0], atol=1e-4)

  # The carries handed from chunk to chunk are the one-pass recurrent states at
  # the chunk ends; restarting from zeros instead would leave a seam.
  lstm_TxH = at_inter["intermediates"]["lstm_out"][0][0]
  gru_TxHxWxF = vg_inter["intermediates"]["convgru_out"][0][0]
  at_carry = chunked_lib.atnet_initial_carry(generator.atnet)
  vg_carry = chunked_lib.vgnet_initial_carry(generator.vgnet)
  for end in (7, 14):
    restart_at = engine.atnet_chunk_step(generator)(
        generator.atnet_variables,
        chunked_lib.atnet_initial_carry(generator.atnet), example_coef,
        jnp.asarray(windows[None, end - 7:end]))[1]
    at_carry = engine.atnet_chunk_step(generator)(
        generator.atnet_variables, at_carry, example_coef,
        jnp.asarray(windows[None, end - 7:end]))[1]
    chunk_coefs = jnp.asarray(coefs[:, end - 7:end])
    step = lambda carry: engine.vgnet_chunk_step(generator)(
        generator.vgnet_variables, carry, image, chunk_coefs,
        example, generator.pca_components, generator.pca_mean)[-1]
    restart_vg = step(chunked_lib.vgnet_initial_carry(generator.vgnet))
    vg_carry = step(vg_carry)
    np.testing.assert_allclose(at_carry[-1][0][0], lstm_TxH[end - 1], atol=1e-5)
    np.testing.assert_allclose(vg_carry[0], gru_TxHxWxF[end - 1], atol=1e-5)
  seam = lambda a, b: float(jnp.abs(a - b).max() / jnp.abs(b).max())
  assert seam(restart_at[-1][0][0], lstm_TxH[13]) > 0.05
  assert seam(restart_vg[0], gru_TxHxWxF[13]) > 0.2


def test_write_result_streams_chunks_with_the_speech(generator, analyzer, media,
                                                     tmp_path):
  photo = photo_lib.prepare_photo(media["test1"], analyzer, image_size=32)
  speech = audio_lib.load_audio(media["8k"])  # 0.7 s: 18 frames
  track, rate = outputs.output_audio(media["8k"], speech)
  assert rate == 8000 and track.shape == (5600, 1)
  path = tmp_path / "sub" / "result.mp4"
  stream = engine.FrameStream.for_photo(generator, photo, chunk_frames=7)
  written = outputs.write_result(path, stream.run(
      generate.speech_windows(speech)), track, audio_sample_rate=rate)
  assert written == 18
  _check_video(path, media["8k"], (32, 32))
  frames = generate.generate(generator, photo, speech, chunk_frames=7).frames
  decoded = video_lib.read_video(path, with_audio=False).frames
  assert np.abs(decoded.astype(int) - frames).mean() < 6  # H.264 at crf 18


def test_release_coefficient_scaling(generator, analyzer, media):
  photo = photo_lib.prepare_photo(media["test1"], analyzer, image_size=32)
  speech = audio_lib.load_audio(media["speech"])
  plain = generate.predict_landmarks(generator, photo, speech)
  scaled = generate.predict_landmarks(generator, photo, speech,
                                      release_coef_scaling=True)
  np.testing.assert_array_equal(plain.raw_coefs, scaled.raw_coefs)
  np.testing.assert_allclose(scaled.coefs[:, 0], plain.coefs[:, 0])
  gain = 2 * np.array([1.1, 1.2, 1.3, 1.4, 1.5])
  np.testing.assert_allclose(scaled.coefs[:, 1:], plain.coefs[:, 1:] * gain,
                             rtol=1e-6)
  np.testing.assert_allclose(
      scaled.landmarks, landmarks_lib.reconstruct(generator.pca, scaled.coefs),
      atol=1e-6)


def test_photo_landmarks_normalised_like_the_datasets(analyzer, media):
  photo = photo_lib.prepare_photo(media["obama"], analyzer)
  assert photo.crop.shape == (128, 128, 3) and photo.image.shape == (128, 128, 3)
  np.testing.assert_allclose(photo.image, photo.crop / 127.5 - 1, atol=1e-6)
  np.testing.assert_allclose(
      photo.landmarks, landmarks_lib.normalize_landmarks(photo.crop_landmarks)[0])
  back = photo.landmarks_to_crop(photo.landmarks[None])[0]
  np.testing.assert_allclose(back, photo.crop_landmarks, atol=0.05)


def test_paste_back_restores_the_photo_geometry(analyzer, media):
  photo = photo_lib.prepare_photo(media["obama"], analyzer)
  paster = compose.PasteBack(photo.source_image, photo.transform, 128)
  pasted = paster(photo.crop)
  assert pasted.shape == photo.source_image.shape
  y0, y1, x0, x1 = paster.roi
  outside = np.ones(photo.source_image.shape[:2], bool)
  outside[y0:y1, x0:x1] = False
  np.testing.assert_array_equal(pasted[outside], photo.source_image[outside])
  # Where the mask is 1, the pasted crop is the photo, blurred by the crop's
  # resampling; moving the photo by one pixel makes the match clearly worse.
  inner = paster._alpha[..., 0] > 0.99  # pylint: disable=protected-access
  original = photo.source_image.astype(np.float32)
  region = lambda img: img[y0:y1, x0:x1][inner]
  errors = {shift: np.abs(region(pasted) - region(np.roll(original, shift, (0, 1)))
                          ).mean() for shift in ((0, 0), (1, 0), (0, 1), (-1, 0),
                                                 (0, -1))}
  assert errors[(0, 0)] < 2.0
  assert all(errors[(0, 0)] < 0.8 * e for s, e in errors.items() if s != (0, 0))


def test_intermediates_panels(analyzer, media):
  photo = photo_lib.prepare_photo(media["obama"], analyzer, image_size=32)
  frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  attention = np.stack([np.zeros((32, 32)), np.ones((32, 32))]).astype(np.float32)
  panels = compose.intermediates_frames(
      photo.crop, np.stack([photo.crop_landmarks] * 2), attention, frames, frames)
  assert panels.shape == (2, 128, 512, 3)
  # Landmark panel: bright points where the landmarks are, dimmed photo elsewhere.
  x, y = np.rint(photo.crop_landmarks[30]).astype(int)
  assert panels[0, y, x].min() > 200
  # Attention panel: JET blue for 0, red for 1 (away from the label).
  assert panels[0, 10, 128 + 64, 2] > 100 and panels[0, 10, 128 + 64, 0] < 50
  assert panels[1, 10, 128 + 64, 0] > 100 and panels[1, 10, 128 + 64, 2] < 50
  # Result panel: the frame, enlarged 4x (nearest).
  np.testing.assert_array_equal(panels[0, 0:4, 384:388], np.broadcast_to(
      frames[0, 0, 0], (4, 4, 3)))


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------


def test_batch_mode_skips_bad_rows_and_resumes(nets, media, tmp_path, capsys):
  out = tmp_path / "out"
  rows = [
      "image,audio,output",
      f"{media['obama']},{media['speech']},out/obama.mp4",
      f"{media['test1']},{media['stereo']},out/test1.mp4",
      f"missing.jpg,{media['speech']},out/missing.mp4",
      f"{media['obama']},{media['text']},out/text_audio.mp4",
      f"{media['no_face']},{media['speech']},out/no_face.mp4",
      "only,two",
  ]
  pairs = tmp_path / "pairs.csv"
  pairs.write_text("\n".join(rows) + "\n")
  assert cli.run(_options(nets, pairs=str(pairs))) == 1
  err = capsys.readouterr().err
  assert "2 generated, 0 already done, 4 failed" in err
  for line, problem in ((4, "image file not found"), (5, "not a readable media"),
                        (6, "no face found"), (7, "expected 'image,audio,output'")):
    assert f"pairs.csv:{line}" in err and problem in err
  _check_video(out / "obama.mp4", media["speech"], (32, 32))
  _check_video(out / "test1.mp4", media["stereo"], (32, 32))
  assert video_lib.probe(out / "test1.mp4").has_audio
  assert sorted(p.name for p in out.iterdir()) == ["obama.mp4", "test1.mp4"]

  # Resume: finished rows are skipped, a missing output is made again.
  first_mtime = (out / "obama.mp4").stat().st_mtime_ns
  (out / "test1.mp4").unlink()
  assert cli.run(_options(nets, pairs=str(pairs))) == 1
  assert "1 generated, 1 already done, 4 failed" in capsys.readouterr().err
  assert (out / "obama.mp4").stat().st_mtime_ns == first_mtime
  _check_video(out / "test1.mp4", media["stereo"], (32, 32))


def test_single_inputs_that_work(nets, media, tmp_path, caplog):
  for key, frames in (("silent", 13), ("tenth", 3), ("8k", 18), ("stereo", 20)):
    output = tmp_path / f"{key}.mp4"
    assert cli.run(_options(nets, image=str(media["obama"]), audio=str(media[key]),
                            output=str(output))) == 0, key
    assert _frame_count_and_duration(output)[0] == frames, key
    _check_video(output, media[key], (32, 32))
  # Two faces: the larger one is used and the choice is logged.
  from hcmtfg.features import face  # pylint: disable=g-import-not-at-top
  from hcmtfg.media import image_io  # pylint: disable=g-import-not-at-top
  big = image_io.load_image(media["about"])
  small = np.zeros_like(big)
  small[64:192, 64:192] = big[::2, ::2]
  two_faces = np.concatenate([small, big], axis=1)
  with caplog.at_level("WARNING"):
    photo = photo_lib.prepare_photo(two_faces, face.FaceAnalyzer())
  assert "2 faces found; using the largest" in caplog.text
  assert photo.transform.left > 200  # the big face, right half


def test_paths_resolve_against_the_cwd_the_csv_and_home(tmp_path,
                                                         monkeypatch):
  home, elsewhere, batch = (tmp_path / d for d in ("home", "else", "batch dir"))
  elsewhere.mkdir()
  batch.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.chdir(elsewhere)
  options = cli.with_user_paths(cli.Options(
      atnet_workdir="gs://bucket/runs/atnet", vgnet_workdir="~/runs/vg net",
      image="photo.png", audio="../speech.wav", output="out dir/v.mp4",
      pca=None))
  assert options.atnet_workdir == "gs://bucket/runs/atnet"  # a URL stays one
  assert options.vgnet_workdir == str(home / "runs" / "vg net")
  assert (options.image, options.audio, options.output) == (
      str(elsewhere / "photo.png"), str(tmp_path / "speech.wav"),
      str(elsewhere / "out dir" / "v.mp4"))
  assert options.pca is None
  # Rows of a pairs CSV are relative to the CSV's folder; `~` is HOME.
  (batch / "pairs.csv").write_text(
      "image,audio,output\n"
      "photos/a b.png,~/speech.wav,out/a.mp4\n"
      f"{tmp_path / 'c.png'},../d.wav,~/videos/e.mp4\n")
  jobs, bad = cli.read_pairs("../batch dir/pairs.csv")
  assert not bad
  assert [(j.image, j.audio, j.output) for j in jobs] == [
      (str(batch / "photos" / "a b.png"), str(home / "speech.wav"),
       str(batch / "out" / "a.mp4")),
      (str(tmp_path / "c.png"), os.path.join(batch, "..", "d.wav"),
       str(home / "videos" / "e.mp4"))]


@pytest.mark.parametrize("case, problem", [
    ("not_an_image", "not an image file"),
    ("no_face", "no face found"),
    ("tiny_face", "the face is too small ("),
    ("small_face", "the face is too small (107 px high; at least 200 px needed)"),
    ("not_audio", "not a readable media file"),
    ("missing_audio", "file not found"),
    ("too_short", "shorter than one video frame"),
])
def test_bad_single_inputs_fail_with_one_clear_message(nets, media, tmp_path,
                                                       capsys, case, problem):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image, speech, extra = media["obama"], media["speech"], {}
  if case == "not_an_image":
    image = media["text"]
  elif case == "no_face":
    image = media["no_face"]
  elif case == "tiny_face":
    image = tmp_path / "tiny.png"
    Image.open(media["about"]).resize((77, 77), Image.LANCZOS).save(image)
  elif case == "small_face":
    extra = {"min_face_size": 200}
  elif case == "not_audio":
    speech = media["text"]
  elif case == "missing_audio":
    speech = tmp_path / "nothing.wav"
  elif case == "too_short":
    speech = media["hundredth"]
  output = tmp_path / "out.mp4"
  assert cli.run(_options(nets, image=str(image), audio=str(speech),
                          output=str(output), **extra)) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and problem in err[0]
  assert not output.exists() and not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_full_file_with_paste_back_and_intermediates(nets, media, tmp_path):
  output = tmp_path / "full.mp4"
  assert cli.run(_options(nets, image=str(media["obama"]),
                          audio=str(media["full_speech"]), output=str(output),
                          paste_back=True, save_intermediates=True)) == 0
  frames, _, info = _frame_count_and_duration(output)
  assert frames == 150  # 6.0 s at 25 fps
  _check_video(output, media["full_speech"], (640, 360))  # the photo's size
  _check_video(outputs.intermediates_path(str(output)), media["full_speech"],
               (512, 128))


@pytest.mark.slow
def test_cli_process_exit_codes(nets, media, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  base = [sys.executable, "-m", "launch.generate", "--audio", str(media["speech"]),
          "--output", str(tmp_path / "o.mp4"), "--vgnet_workdir",
          str(nets["root"] / "vgnet")]
  result = subprocess.run(
      base + ["--image", str(media["no_face"]), "--atnet_workdir",
              str(nets["root"] / "atnet")],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1
  assert f"error: {media['no_face']}: no face found" in result.stderr
  assert "Traceback" not in result.stderr
  result = subprocess.run(
      base + ["--image", str(media["obama"]), "--atnet_workdir",
              str(tmp_path / "no_such_run")],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1
  assert "no_such_run: AT-net checkpoint directory not found" in result.stderr
  assert not (tmp_path / "o.mp4").exists()


def test_cli_from_another_directory_with_relative_and_home_paths(nets, media,
                                                                 tmp_path):
  """The issue's command: workdirs, speech and output relative to the current
  directory (a folder with spaces), the photo under `~`."""
  home, cwd = tmp_path / "home", tmp_path / "some folder"
  home.mkdir()
  for name in ("atnet", "vgnet"):
    shutil.copytree(nets["root"] / name, cwd / "runs" / f"{name} run")
  shutil.copy(media["obama"], home / "photo.jpg")
  shutil.copy(media["speech"], cwd / "speech 1s.wav")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             HOME=str(home))
  result = subprocess.run(
      [sys.executable, "-m", "launch.generate", "--image=~/photo.jpg",
       "--audio=speech 1s.wav", "--atnet_workdir=runs/atnet run",
       "--vgnet_workdir=runs/vgnet run", "--output=videos/talking face.mp4"],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  written = cwd / "videos" / "talking face.mp4"
  _check_video(written, media["speech"], (32, 32))
  assert sorted(os.listdir(cwd)) == ["runs", "speech 1s.wav", "videos"]
  # Ended by quick_exit: its log still reached stderr; x264 stored the
  # settings of the default preset, veryfast (medium would be ref=3 subme=7).
  assert f"wrote {written}" in result.stderr
  settings = written.read_bytes()
  assert b" ref=1 " in settings and b" subme=2 " in settings
