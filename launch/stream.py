r"""Streams a talking face: frames come out while the speech is still going in.

  # Watch it while it is made (a fragmented mp4 on stdout):
  python -m launch.stream --image=PHOTO --audio=SPEECH \
      --atnet_workdir=runs/atnet --vgnet_workdir=runs/vgnet --output=- | ffplay -
  # Raw frames for any player:
  python -m launch.stream ... --format=raw --output=- | \
      ffplay -f rawvideo -pixel_format rgb24 -video_size SxS -framerate 25 -
  # Like a live microphone: speech released at its own pace, latency reported:
  python -m launch.stream ... --realtime --paste_back --output=realtime_lib.mp4

The speech is fed in 20-ms blocks (--block_ms); every chunk of --chunk_frames
frames is generated as soon as its speech (plus the method's 135 ms
look-ahead) has arrived, rendered (--paste_back) and written. The run ends
with a line on stderr giving the frames per second and the latency from
audio in to frame out (p50 / p95 / max; --report=FILE.json saves it all).
With --output=FILE the fragmented mp4 is written under a hidden name and
renamed when complete. Network flags are those of launch.generate; paths
may be relative, start with `~` or contain spaces.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags

from hcmtfg import atomic
from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import compose
from hcmtfg.inference import networks as networks_lib
from hcmtfg.inference import outputs
from hcmtfg.inference import photo as photo_lib
from hcmtfg.inference import realtime as realtime_lib
from hcmtfg.inference import warm as warm_lib
from hcmtfg.runtime import allocator
from hcmtfg.runtime import compile_cache
from hcmtfg.runtime import quick_exit

_IMAGE = flags.DEFINE_string("image", None, "Face photo.")
_AUDIO = flags.DEFINE_string("audio", None, "Speech (any format ffmpeg reads).")
_OUTPUT = flags.DEFINE_string("output", None, "Fragmented mp4 file, or '-' "
                              "for stdout.")
_FORMAT = flags.DEFINE_enum("format", "mp4", ["mp4", "raw"], "mp4: fragmented "
                            "H.264/AAC; raw: rgb24 frames (stdout only).")
_ATNET = flags.DEFINE_string("atnet_workdir", None, "AT-net training workdir or "
                             "converted checkpoint folder.")
_VGNET = flags.DEFINE_string("vgnet_workdir", None, "VG-net training workdir or "
                             "converted checkpoint folder.")
_PCA = flags.DEFINE_string("pca", None, "Landmark PCA when none is stored with "
                           "the AT-net weights.")
_BASICS = flags.DEFINE_string("release_basics_dir", None, "The release's "
                              "artefacts (converted release weights).")
_COEF_SCALING = flags.DEFINE_bool("release_coef_scaling", None, "The release "
                                  "demo's coefficient scaling (default: on for "
                                  "converted release weights).")
_MIN_FACE = flags.DEFINE_integer("min_face_size", photo_lib.MIN_FACE_SIZE,
                                 "Smallest face box height accepted, pixels.")
_PASTE_BACK = flags.DEFINE_bool("paste_back", False, "Composite the face into "
                                "the whole photo.")
_REALTIME = flags.DEFINE_bool("realtime", False, "Release the speech at its own "
                              "pace, like a live microphone.")
_CHUNK = flags.DEFINE_integer("chunk_frames", 8, "Frames per network call "
                              "(smaller: lower latency, lower throughput).")
_FIRST_CHUNK = flags.DEFINE_integer("first_chunk_frames", None, "Frames of the "
                                    "first call (default: --chunk_frames).")
_BLOCK_MS = flags.DEFINE_float("block_ms", 20.0, "Speech block size, ms.")
_REPORT = flags.DEFINE_string("report", None, "Write the measurements here "
                              "(JSON).")
_CACHE = compile_cache.define_flag()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not (_IMAGE.value and _AUDIO.value and _OUTPUT.value and _ATNET.value
          and _VGNET.value):
    raise app.UsageError("give --image, --audio, --output, --atnet_workdir and "
                         "--vgnet_workdir")
  if _FORMAT.value == "raw" and _OUTPUT.value != "-":
    raise app.UsageError("--format=raw writes to stdout: give --output=-")
  if _CHUNK.value < 1 or (_FIRST_CHUNK.value or 1) < 1 or _BLOCK_MS.value <= 0:
    raise app.UsageError("--chunk_frames, --first_chunk_frames and --block_ms "
                         "must be positive")
  start = time.perf_counter()
  allocator.keep_freed_memory()  # before the networks run: no page faults
  networks_lib.split_cpu_device()  # AT-net beside VG-net
  compile_cache.enable(_CACHE.value)
  image, audio, report_path = (paths.user_path(p) for p in (
      _IMAGE.value, _AUDIO.value, _REPORT.value))
  output = _OUTPUT.value if _OUTPUT.value == "-" else paths.user_path(
      _OUTPUT.value)
  options = networks_lib.NetworkOptions(
      atnet_workdir=paths.user_path(_ATNET.value),
      vgnet_workdir=paths.user_path(_VGNET.value),
      pca=paths.user_path(_PCA.value),
      release_basics_dir=paths.user_path(_BASICS.value),
      release_coef_scaling=_COEF_SCALING.value, min_face_size=_MIN_FACE.value)
  try:
    warm = warm_lib.WarmNetworks.load(options)
    speech = audio_lib.load_audio(audio)
    track, rate = outputs.output_audio(audio, speech)
    photo_start = time.perf_counter()
    photo = warm.prepare_photo(image)
    photo_seconds = time.perf_counter() - photo_start
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  first = _FIRST_CHUNK.value or _CHUNK.value
  warm_seconds = warm.warm_up((first, _CHUNK.value))
  if _FORMAT.value == "raw":
    sink = realtime_lib.RawWriter(sys.stdout.buffer)
    h, w = compose.Renderer(photo, warm.image_size,
                                 paste_back=_PASTE_BACK.value).frame_shape
    print(f"raw rgb24 frames, {w}x{h} at 25 fps: | ffplay -f rawvideo "
          f"-pixel_format rgb24 -video_size {w}x{h} -framerate 25 -",
          file=sys.stderr, flush=True)
  else:
    sink = realtime_lib.FragmentedMp4Writer(output, audio=track,
                                    audio_sample_rate=rate)
  ready = time.perf_counter() - start
  try:
    report = realtime_lib.run(warm, photo, speech, sink, chunk_frames=_CHUNK.value,
                      first_chunk_frames=first, paste_back=_PASTE_BACK.value,
                      realtime=_REALTIME.value, block_ms=_BLOCK_MS.value)
  except BaseException:
    sink.abort()
    raise
  print(f"stream: {report.summary()}; set-up {ready:.1f} s (networks warm in "
        f"{warm_seconds:.1f} s, photo {photo_seconds * 1000:.0f} ms)", file=sys.stderr)
  print(compile_cache.STATS.summary(), file=sys.stderr)
  if report_path:
    values = report.as_dict()
    values.update(setup_seconds=ready, warm_up_seconds=warm_seconds,
                  photo_seconds=photo_seconds, chunk_frames=_CHUNK.value,
                  first_chunk_frames=first, paste_back=_PASTE_BACK.value,
                  compile_cache=compile_cache.STATS.snapshot())
    fd, tmp = atomic.temp_beside(report_path)
    with os.fdopen(fd, "w") as f:
      json.dump(values, f, indent=1)
    os.replace(tmp, report_path)
  return 0


if __name__ == "__main__":
  app.run(quick_exit.run_then_exit(main))
