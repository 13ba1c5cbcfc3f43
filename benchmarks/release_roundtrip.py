r"""Release-checkpoint round trip: the most complete pipeline of the foundation.

  python -m benchmarks.release_roundtrip --output_dir=demo_output/release_roundtrip

1. builds the release's three PyTorch networks (our declaration in
   benchmarks/release_torch.py) with random weights and saves their state_dicts the
   way the release did (`nn.DataParallel`, keys prefixed with 'module.');
2. converts them with `python -m launch.convert_checkpoint` (Orbax checkpoints);
3. restores the converted checkpoints, runs AT-net on MFCC windows of a speech
   signal, VG-net on scikit-image's astronaut photo and the discriminator on
   the generated frames, jitted, and compares every output with PyTorch's;
4. prints shapes, compile and run times, and the relative errors.

Needs the PyTorch extras (requirements-torch.txt). `--tiny` shrinks the
networks for a quick smoke run.
"""

import json
import pathlib
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from hcmtfg import models
from hcmtfg import paths
from hcmtfg.features import audio
from hcmtfg.weights import checkpoint_io
from hcmtfg.weights import convert_torch

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "demo_output/release_roundtrip",
    "Where the random release-layout .pth files and the converted Orbax "
    "checkpoints are written.")
_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per clip (T).")
_TINY = flags.DEFINE_bool(
    "tiny", False, "Shrunk networks (64x64 images, base width 16, 2 ResNet "
    "blocks) for a quick smoke run; the converter then gets the same sizes.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of weights and inputs.")

_RELEASE_NAMES = {"atnet": "atnet_lstm_0.pth", "vgnet": "generator_0.pth",
                  "discriminator": "discriminator_0.pth"}


def _speech(num_frames: int) -> np.ndarray:
  """A vowel-like 16 kHz signal covering `num_frames` video frames."""
  t = np.arange(num_frames * 640) / audio.SAMPLE_RATE
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
  voice = sum(np.sin(2 * np.pi * f * t) / k
              for k, f in enumerate((140, 280, 700, 1200, 2500), start=1))
  return (0.3 * envelope * voice).astype(np.float32)


def _astronaut(size: int) -> np.ndarray:
  """The astronaut's face, (size, size, 3) float32 in [-1, 1]."""
  import cv2  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  face = skimage.data.astronaut()[20:240, 110:330]
  face = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
  return face.astype(np.float32) / 127.5 - 1.0


def _rel_err(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference)
  return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def _timed(fn, *args, repeats: int = 3):
  """(result, first-call seconds incl. compile, median of later calls)."""
  start = time.perf_counter()
  result = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return result, first, float(np.median(times))


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import release_torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(_SEED.value)
  torch.set_num_threads(max(1, len(jax.devices("cpu"))))
  sizes = (dict(image_size=64, base_width=16, num_res_blocks=2)
           if _TINY.value else {})
  torch_nets = {
      "atnet": release_torch.ATNetTorch(),
      "vgnet": release_torch.VGNetTorch(**sizes),
      "discriminator": release_torch.DiscriminatorTorch(
          **{k: v for k, v in sizes.items() if k != "num_res_blocks"}),
  }
  out = pathlib.Path(paths.user_path(_OUTPUT_DIR.value))
  release_dir = out / "release"
  release_dir.mkdir(parents=True, exist_ok=True)
  for name, net in torch_nets.items():
    net.eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save(state, release_dir / _RELEASE_NAMES[name])
    print(f"saved random release-layout {name}: "
          f"{sum(p.numel() for p in net.parameters()):,} parameters")

  if _TINY.value:
    # The converter's CLI builds release-size modules; tiny ones go through
    # the library with explicitly sized modules.
    converted = out / "converted"
    modules = {
        "atnet": models.ATNet(),
        "vgnet": models.VGNet(
            image_size=64, base_width=16, bottleneck_features=32,
            convgru_features=128, num_res_blocks=2,
            convgru_over_batch_axis=True),
        "discriminator": models.RegressionDiscriminator(
            image_size=64, base_width=16, img_features=512),
    }
    converters = {"atnet": convert_torch.convert_atnet,
                  "vgnet": convert_torch.convert_vgnet,
                  "discriminator": convert_torch.convert_discriminator}
    for name, module in modules.items():
      state = convert_torch.load_state_dict(release_dir / _RELEASE_NAMES[name])
      checkpoint_io.save_converted(converted, name,
                                   converters[name](state, module=module),
                                   module.to_config())
  else:
    converted = out / "converted"
    command = [sys.executable, "-m", "launch.convert_checkpoint",
               f"--atnet_pth={release_dir / _RELEASE_NAMES['atnet']}",
               f"--vgnet_pth={release_dir / _RELEASE_NAMES['vgnet']}",
               "--discriminator_pth="
               f"{release_dir / _RELEASE_NAMES['discriminator']}",
               f"--output_dir={converted}"]
    print("$", " ".join(command))
    subprocess.run(command, check=True)

  restored = {}
  for name in _RELEASE_NAMES:
    variables, config = checkpoint_io.load_converted(converted, name)
    restored[name] = (variables, config)
  nets = models.build_models({k: c for k, (_, c) in restored.items()})
  variables = {k: v for k, (v, _) in restored.items()}

  t_frames = _FRAMES.value
  rng = np.random.default_rng(_SEED.value)
  _, windows = audio.speech_features(_speech(t_frames), num_frames=t_frames)
  mfcc_1xTx28x12 = windows[None].astype(np.float32)
  example_coef_1x6 = rng.normal(0, 0.1, (1, 6)).astype(np.float32)
  size = nets.vgnet.image_size
  image_1xSxSx3 = _astronaut(size)[None]
  example_lmark_1x136 = rng.normal(0, 0.3, (1, 136)).astype(np.float32)
  target_lmark_1xTx136 = (example_lmark_1x136[:, None]
                          + rng.normal(0, 0.05, (1, t_frames, 136))
                          ).astype(np.float32)

  at_fn = jax.jit(lambda v, c, m: nets.atnet.apply(v, c, m, train=False))
  vg_fn = jax.jit(lambda v, i, t, e: nets.vgnet.apply(v, i, t, e, train=False))
  d_fn = jax.jit(lambda v, f, e: nets.discriminator.apply(v, f, e,
                                                          train=False))
  coef, at_first, at_run = _timed(at_fn, variables["atnet"], example_coef_1x6,
                                  mfcc_1xTx28x12)
  vg, vg_first, vg_run = _timed(vg_fn, variables["vgnet"], image_1xSxSx3,
                                target_lmark_1xTx136, example_lmark_1x136)
  dis, d_first, d_run = _timed(d_fn, variables["discriminator"], vg.frames,
                               example_lmark_1x136)

  with torch.no_grad():
    t = torch.from_numpy
    coef_t = torch_nets["atnet"](t(example_coef_1x6), t(mfcc_1xTx28x12))
    frames_t, att_t, colour_t, latt_t = torch_nets["vgnet"](
        t(np.ascontiguousarray(image_1xSxSx3.transpose(0, 3, 1, 2))),
        t(target_lmark_1xTx136), t(example_lmark_1x136))
    frames_nchw = np.ascontiguousarray(
        np.asarray(vg.frames).transpose(0, 1, 4, 2, 3))
    prob_t, lmark_t = torch_nets["discriminator"](
        t(frames_nchw), t(example_lmark_1x136))[:2]

  def nhwc(x):
    return x.numpy().transpose(0, 1, 3, 4, 2)

  report = {
      "atnet": {"output": list(coef.shape), "compile_s": at_first,
                "run_s": at_run, "frames_per_s": t_frames / at_run,
                "rel_err_vs_torch": _rel_err(coef, coef_t.numpy())},
      "vgnet": {"frames": list(vg.frames.shape),
                "attention": list(vg.attention.shape),
                "colour": list(vg.colour.shape),
                "lmark_attention": list(vg.lmark_attention.shape),
                "compile_s": vg_first, "run_s": vg_run,
                "frames_per_s": t_frames / vg_run,
                "rel_err_vs_torch": {
                    "frames": _rel_err(vg.frames, nhwc(frames_t)),
                    "attention": _rel_err(vg.attention, nhwc(att_t)),
                    "colour": _rel_err(vg.colour, nhwc(colour_t)),
                    "lmark_attention": _rel_err(vg.lmark_attention,
                                                nhwc(latt_t))}},
      "discriminator": {"prob": list(dis.prob.shape),
                        "landmarks": list(dis.landmarks.shape),
                        "compile_s": d_first, "run_s": d_run,
                        "rel_err_vs_torch": {
                            "prob": _rel_err(dis.prob, prob_t.numpy()),
                            "landmarks": _rel_err(dis.landmarks,
                                                  lmark_t.numpy())}},
  }
  print(f"{'network':<14} {'output shapes':<58} {'compile s':>9} "
        f"{'run s':>8} {'max rel err':>11}")
  for name, entry in report.items():
    shapes = ", ".join(f"{k}={tuple(v)}" for k, v in entry.items()
                       if isinstance(v, list))
    errs = entry["rel_err_vs_torch"]
    err = max(errs.values()) if isinstance(errs, dict) else errs
    print(f"{name:<14} {shapes:<58} {entry['compile_s']:>9.2f} "
          f"{entry['run_s']:>8.3f} {err:>11.2e}")
  (out / "report.json").write_text(json.dumps(report, indent=2))
  worst = max([report["atnet"]["rel_err_vs_torch"],
               *report["vgnet"]["rel_err_vs_torch"].values(),
               *report["discriminator"]["rel_err_vs_torch"].values()])
  print(f"worst relative error vs PyTorch: {worst:.2e}; "
        f"wrote {out / 'report.json'}")
  if worst > 1e-4:
    sys.exit(f"converted networks disagree with PyTorch ({worst:.2e} > 1e-4)")


if __name__ == "__main__":
  app.run(main)
