"""The generation cases of `benchmarks.benchmark`: speech -> frames, frames -> mp4."""

from __future__ import annotations

import tempfile

import jax.numpy as jnp
import numpy as np

from hcmtfg.features import audio
from hcmtfg.features import landmarks as landmarks_lib
from hcmtfg.inference import chunked
from hcmtfg.inference import engine
from hcmtfg.inference import generate
from hcmtfg.inference import networks
from hcmtfg.inference import outputs
from hcmtfg.inference import photo as photo_lib
from hcmtfg.models import at_net
from benchmarks import benchmark_setup as setup
from benchmarks.benchmark_setup import Case
from benchmarks.benchmark_setup import Options
from benchmarks.benchmark_setup import Side


def _speech(seconds: float, seed: int) -> np.ndarray:
  """Speech-like 16 kHz audio: voiced harmonics under a syllable envelope."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
  voice = sum(np.sin(2 * np.pi * hz * t) / k
              for k, hz in enumerate((130, 260, 650, 1100, 2400), start=1))
  noise = 0.02 * rng.standard_normal(t.shape)
  return np.clip(0.3 * envelope * voice + noise, -1, 1).astype(np.float32)


class _Generation:
  """Random-weight AT-net + VG-net, a PCA, a photo and 10 s of speech."""

  def __init__(self, options: Options):
    self.options = options
    self.nets, flax_side = setup.shared_networks(options, ("atnet", "vgnet"))
    rng = np.random.default_rng(options.seed)
    components, _ = np.linalg.qr(rng.standard_normal((136, 6)))
    self.pca = landmarks_lib.Pca(mean=rng.normal(0, 0.5, 136),
                                 components=components,
                                 explained_variance=None)
    size = setup.vg_sizes(options)["image_size"]
    image = rng.uniform(-1, 1, (size, size, 3)).astype(np.float32)
    self.photo = photo_lib.PreparedPhoto(
        image=image, crop=np.zeros((128, 128, 3), np.uint8),
        crop_landmarks=np.zeros((68, 2), np.float32),
        landmarks=rng.normal(0, 0.1, 136).astype(np.float32), transform=None,
        source_image=np.zeros((128, 128, 3), np.uint8))
    self.speech = _speech(options.speech_seconds, options.seed)
    self.num_frames = audio.num_video_frames(self.speech.shape[0])
    (atnet, at_vars), (vgnet, vg_vars) = flax_side["atnet"], flax_side["vgnet"]
    self.generator = networks.Generator(atnet, at_vars, vgnet, vg_vars,
                                        self.pca, release_coef_scaling=True)

  def ours(self) -> Side:
    """`generate.generate` end to end; FLOPs of its chunk functions."""
    gen, chunk = self.generator, engine.CHUNK_FRAMES
    num_chunks = -(-self.num_frames // chunk)
    at_fn = lambda v, c, e, m: chunked.atnet_chunk(gen.atnet, v, c, e, m)
    _, at_info = setup.compile_aot(
        at_fn, gen.atnet_variables, chunked.atnet_initial_carry(gen.atnet),
        jnp.zeros((1, gen.atnet.pca_dim)), jnp.zeros((1, chunk, 28, 12)),
        options=self.options, default_options=at_net.compiler_options)
    vg_fn = lambda v, c, *a: chunked.vgnet_chunk(gen.vgnet, v, c, *a)
    s = gen.image_size
    _, vg_info = setup.compile_aot(
        vg_fn, gen.vgnet_variables, chunked.vgnet_initial_carry(gen.vgnet),
        jnp.zeros((1, s, s, 3)), jnp.zeros((1, chunk, 136)),
        jnp.zeros((1, 136)), options=self.options)
    flops = num_chunks * (at_info["flops"] + vg_info["flops"])
    holder = {}

    def run():
      holder["frames"] = generate.generate(gen, self.photo, self.speech).frames
      return holder["frames"]

    return Side(run, lambda: setup.tree_bytes((gen.atnet_variables,
                                          gen.vgnet_variables, self.photo.image,
                                          self.speech)),
                flops, {"chunk_frames": chunk, "num_chunks": num_chunks,
                        "compile_s": at_info["compile_s"]
                                     + vg_info["compile_s"]})

  def release(self) -> Side:
    """The release demo's network path: MFCC, AT-net and VG-net on the whole
    utterance at once (N = 1), frames to uint8."""
    import python_speech_features  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    atnet, vgnet = self.nets["atnet"].eval(), self.nets["vgnet"].eval()
    pca = self.pca
    example_lmark = (landmarks_lib.project(pca, self.photo.landmarks)
                     @ pca.components.T + pca.mean).astype(np.float32)
    example_coef = torch.from_numpy(landmarks_lib.project(
        pca, self.photo.landmarks).astype(np.float32)[None])
    image = torch.from_numpy(setup.nchw(self.photo.image[None]))
    example = torch.from_numpy(example_lmark[None])
    gain = engine.RELEASE_COEF_GAIN

    def run():
      padded = np.pad(self.speech, audio.PAD_SAMPLES)
      mfcc = python_speech_features.mfcc(padded, audio.SAMPLE_RATE,
                                         winstep=0.01)
      windows = audio.mfcc_windows(mfcc.astype(np.float32), self.num_frames)
      with torch.no_grad():
        coefs = atnet(example_coef, torch.from_numpy(windows[None]))[0].numpy()
        coefs[:, 1:6] *= gain
        lmarks = (coefs @ pca.components.T + pca.mean).astype(np.float32)
        frames = vgnet(image, torch.from_numpy(lmarks[None]), example)[0][0]
        return ((frames.permute(0, 2, 3, 1) + 1.0) * 127.5).round().clamp(
            0, 255).to(torch.uint8).numpy()

    return Side(run, lambda: setup.torch_bytes(atnet, vgnet, image) + (
        self.speech.nbytes))

  def write(self) -> Side:
    """Writing the generated frames and the speech to an H.264/AAC mp4."""
    frames = generate.generate(self.generator, self.photo, self.speech).frames
    folder = tempfile.mkdtemp(prefix="hcmtfg_benchmark_")
    path = f"{folder}/generated.mp4"
    return Side(lambda: outputs.write_result(path, frames, self.speech),
                lambda: frames.nbytes + self.speech.nbytes,
                extra={"excludes": "the ffmpeg child process's memory"})


def generation_case(options: Options, write: bool) -> Case:
  """The generation path (named for 10 s of speech; 2 s when tiny)."""
  gen = _Generation(options)
  if write:
    return Case("generate_10s_write", "frames/s", gen.num_frames, gen.write,
                None)
  return Case("generate_10s", "frames/s", gen.num_frames, gen.ours,
              gen.release)
