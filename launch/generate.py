r"""Generates talking-face videos from a photo and speech with AT-net + VG-net.

Paths may be relative, start with `~` or contain spaces; the workdirs may be
gs:// URLs.

One video:
  python -m launch.generate --image=PHOTO.jpg --audio=SPEECH.wav \
      --atnet_workdir=runs/atnet --vgnet_workdir=runs/vgnet --output=out.mp4 \
      [--save_intermediates] [--paste_back] [--release_coef_scaling] \
      [--chunk_frames=32] [--preset=veryfast]

Many videos (one line per video: image,audio,output; a header line
`image,audio,output` is optional; relative paths are relative to the CSV file
and `~` is expanded;
blank lines and lines starting with '#' are ignored):
  python -m launch.generate --pairs=pairs.csv --atnet_workdir=... --vgnet_workdir=...

The output is an H.264 mp4 at 25 fps with the speech as its audio track, as
long as the audio (+- 1 frame): 128x128 face crops, or the whole photo with the
face composited back (--paste_back). --save_intermediates also writes
OUTPUT_intermediates.mp4: predicted landmarks | attention | colour | result.
Outputs are written atomically, so a batch can be re-run after an interruption:
rows whose outputs exist are skipped (--overwrite redoes them) and the hidden
partial files of a killed run are removed. A bad row (no
face, unreadable photo or audio, ...) is reported and the others still run;
the exit code is 1 if any row failed.

Weights: a training workdir (config.json + checkpoints/ + landmark_pca.npz;
local or gs://) or a folder of converted release weights
(launch.convert_checkpoint; then --pca or --release_basics_dir provide the PCA,
and the release's coefficient scaling is on unless --norelease_coef_scaling).

The work is done by `hcmtfg.inference.batch_generate`; this module is its command line.
"""

from __future__ import annotations

from absl import app
from absl import flags

from hcmtfg.inference import batch_generate
from hcmtfg.inference import engine
from hcmtfg.inference import networks as networks_lib
from hcmtfg.inference import photo as photo_lib
from hcmtfg.media import video_writer
from hcmtfg.runtime import allocator
from hcmtfg.runtime import compile_cache
from hcmtfg.runtime import quick_exit

_IMAGE = flags.DEFINE_string("image", None, "Face photo (any format PIL reads).")
_AUDIO = flags.DEFINE_string("audio", None, "Speech (wav/flac/mp3/..., any rate, "
                             "or a video's audio track).")
_OUTPUT = flags.DEFINE_string("output", None, "Output video (.mp4).")
_PAIRS = flags.DEFINE_string("pairs", None, "CSV of image,audio,output rows "
                             "(batch mode; replaces --image/--audio/--output).")
_ATNET = flags.DEFINE_string("atnet_workdir", None, "AT-net training workdir or "
                             "converted checkpoint folder.")
_VGNET = flags.DEFINE_string("vgnet_workdir", None, "VG-net training workdir or "
                             "converted checkpoint folder.")
_PCA = flags.DEFINE_string("pca", None, "Landmark PCA (.npz from save_pca, or a "
                           "folder with U_lrw1.npy/mean_lrw1.npy) when none is "
                           "stored with the AT-net weights.")
_BASICS = flags.DEFINE_string(
    "release_basics_dir", None, "Folder with the release's artefacts "
    "(base_68*.npy, mean_shape_img.npy, mean_shape_norm.npy, S.npy, U_lrw1.npy, "
    "mean_lrw1.npy): crop and normalise the photo exactly as the release demo "
    "(for converted release weights).")
_SAVE_INTERMEDIATES = flags.DEFINE_bool(
    "save_intermediates", False, "Also write OUTPUT_intermediates.mp4 (landmarks "
    "| attention | colour | result).")
_PASTE_BACK = flags.DEFINE_bool("paste_back", False, "Composite the generated "
                                "face into the full photo.")
_COEF_SCALING = flags.DEFINE_bool(
    "release_coef_scaling", None, "Scale AT-net coefficients 1..5 by "
    "2*[1.1..1.5] as the release demo does (default: on for converted release "
    "weights, off for trained ones).")
_CHUNK_FRAMES = flags.DEFINE_integer("chunk_frames", engine.CHUNK_FRAMES,
                                     "Frames per network call (memory bound).")
_MIN_FACE = flags.DEFINE_integer("min_face_size", photo_lib.MIN_FACE_SIZE,
                                 "Smallest face box height accepted, pixels.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Batch mode: regenerate "
                               "outputs that already exist (single mode always "
                               "writes).")
_PRESET = flags.DEFINE_enum(
    "preset", video_writer.FAST_PRESET, video_writer.X264_PRESETS,
    "x264 preset of the videos (ultrafast ... veryslow: slower makes smaller "
    "files at the same quality).")
_CACHE = compile_cache.define_flag()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  single = [_IMAGE.value, _AUDIO.value, _OUTPUT.value]
  if _PAIRS.value and any(single):
    raise app.UsageError("give either --pairs or --image/--audio/--output")
  if not _PAIRS.value and not all(single):
    raise app.UsageError("give --image, --audio and --output (or --pairs)")
  if not (_ATNET.value and _VGNET.value):
    raise app.UsageError("give --atnet_workdir and --vgnet_workdir")
  if _CHUNK_FRAMES.value < 1:
    raise app.UsageError("--chunk_frames must be >= 1")
  allocator.keep_freed_memory()  # before the networks run: no page faults
  networks_lib.split_cpu_device()  # AT-net beside VG-net
  compile_cache.enable(_CACHE.value)
  return batch_generate.run(batch_generate.Options(
      atnet_workdir=_ATNET.value, vgnet_workdir=_VGNET.value, image=_IMAGE.value,
      audio=_AUDIO.value, output=_OUTPUT.value, pairs=_PAIRS.value,
      pca=_PCA.value, release_basics_dir=_BASICS.value,
      save_intermediates=_SAVE_INTERMEDIATES.value, paste_back=_PASTE_BACK.value,
      release_coef_scaling=_COEF_SCALING.value, chunk_frames=_CHUNK_FRAMES.value,
      min_face_size=_MIN_FACE.value, overwrite=_OVERWRITE.value,
      preset=_PRESET.value))


if __name__ == "__main__":
  app.run(quick_exit.run_then_exit(main))
