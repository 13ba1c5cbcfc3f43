r"""Serves talking-face generation from warm networks: a web page and an API.

  python -m launch.serve --atnet_workdir=runs/atnet --vgnet_workdir=runs/vgnet \
      [--host=127.0.0.1] [--port=8000] [--pca=... | --release_basics_dir=...]

Loads the networks once, compiles their chunk steps (or loads them from the
persistent compilation cache, see hcmtfg/runtime/compile_cache.py), then serves
  http://HOST:PORT/             a page: upload or record a photo and speech,
                                watch the frames come, get the mp4
  http://HOST:PORT/api/...      the same for scripts (hcmtfg/server/web.py
                                lists the routes; the page shows curl lines)
Paths may be relative, start with `~` or contain spaces. Requests are
queued and run one at a time. It listens on 127.0.0.1 only
unless --host says otherwise; it has no authentication, so give another
host only on a network you trust. Uploads are limited (--max_upload_mb,
--max_seconds, --max_queued); temporary files live in one folder removed at
exit (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from absl import app
from absl import flags
from absl import logging

from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.inference import engine
from hcmtfg.inference import networks as networks_lib
from hcmtfg.inference import photo as photo_lib
from hcmtfg.inference import warm as warm_lib
from hcmtfg.media import video_writer
from hcmtfg.runtime import allocator
from hcmtfg.runtime import compile_cache
from hcmtfg.server import uploads
from hcmtfg.server import web

_ATNET = flags.DEFINE_string("atnet_workdir", None, "AT-net training workdir or "
                             "converted checkpoint folder.")
_VGNET = flags.DEFINE_string("vgnet_workdir", None, "VG-net training workdir or "
                             "converted checkpoint folder.")
_PCA = flags.DEFINE_string("pca", None, "Landmark PCA (.npz from save_pca, or a "
                           "folder with U_lrw1.npy/mean_lrw1.npy) when none is "
                           "stored with the AT-net weights.")
_BASICS = flags.DEFINE_string(
    "release_basics_dir", None, "Folder with the release's artefacts: crop and "
    "normalise photos exactly as the release demo (converted release weights).")
_COEF_SCALING = flags.DEFINE_bool(
    "release_coef_scaling", None, "Scale AT-net coefficients 1..5 as the "
    "release demo (default: on for converted release weights).")
_MIN_FACE = flags.DEFINE_integer("min_face_size", photo_lib.MIN_FACE_SIZE,
                                 "Smallest face box height accepted, pixels.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on "
                            "(0.0.0.0: every interface; no authentication).")
_PORT = flags.DEFINE_integer("port", 8000, "Port (0: any free one).")
_CHUNK = flags.DEFINE_integer("chunk_frames", engine.CHUNK_FRAMES,
                              "Frames per network call.")
_FIRST_CHUNK = flags.DEFINE_integer(
    "first_chunk_frames", 4, "Frames of the first network call of a video "
    "(small: the first frames come sooner).")
_MAX_UPLOAD = flags.DEFINE_float("max_upload_mb", 25.0, "Largest request "
                                 "(photo + speech), MiB.")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 60.0, "Longest speech "
                                  "accepted, seconds.")
_MAX_SIDE = flags.DEFINE_integer("max_photo_side", 1024, "Photos are "
                                 "downscaled to this long side, pixels.")
_MAX_QUEUED = flags.DEFINE_integer("max_queued", 8, "Videos waiting before new "
                                   "requests are refused (503).")
_KEEP_MINUTES = flags.DEFINE_float("keep_minutes", 30.0, "Finished videos are "
                                   "kept this long for download.")
_PRESET = flags.DEFINE_enum("preset", video_writer.FAST_PRESET,
                            video_writer.X264_PRESETS,
                            "x264 preset of the videos.")
_CACHE = compile_cache.define_flag()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not (_ATNET.value and _VGNET.value):
    raise app.UsageError("give --atnet_workdir and --vgnet_workdir")
  if _CHUNK.value < 1 or _FIRST_CHUNK.value < 1:
    raise app.UsageError("--chunk_frames and --first_chunk_frames must be >= 1")
  if _MAX_UPLOAD.value <= 0 or _MAX_SECONDS.value <= 0 or _MAX_QUEUED.value < 0:
    raise app.UsageError("the limits must be positive")
  start = time.perf_counter()
  allocator.keep_freed_memory()  # before the networks run: no page faults
  networks_lib.split_cpu_device()  # AT-net beside VG-net
  compile_cache.enable(_CACHE.value)
  options = networks_lib.NetworkOptions(
      atnet_workdir=paths.user_path(_ATNET.value),
      vgnet_workdir=paths.user_path(_VGNET.value),
      pca=paths.user_path(_PCA.value),
      release_basics_dir=paths.user_path(_BASICS.value),
      release_coef_scaling=_COEF_SCALING.value, min_face_size=_MIN_FACE.value)
  try:
    warm = warm_lib.WarmNetworks.load(options)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  warm_seconds = warm.warm_up((_FIRST_CHUNK.value, _CHUNK.value))
  limits = uploads.Limits(
      max_upload_bytes=int(_MAX_UPLOAD.value * 2**20),
      max_speech_seconds=_MAX_SECONDS.value,
      max_photo_side=_MAX_SIDE.value, max_queued=_MAX_QUEUED.value)
  try:
    server = web.Server(warm, host=_HOST.value, port=_PORT.value,
                        limits=limits, chunk_frames=_CHUNK.value,
                        first_chunk_frames=_FIRST_CHUNK.value,
                        keep_seconds=60 * _KEEP_MINUTES.value,
                        preset=_PRESET.value)
  except OSError as e:
    print(f"error: cannot listen on {_HOST.value}:{_PORT.value}: {e}",
          file=sys.stderr)
    return 1
  if _HOST.value not in ("127.0.0.1", "localhost", "::1"):
    logging.warning("listening on %s: anyone who can reach this machine can "
                    "use the server (there is no authentication)", _HOST.value)

  def stop(signum, _):
    logging.info("signal %d: stopping", signum)
    threading.Thread(target=server.httpd.shutdown, daemon=True).start()

  signal.signal(signal.SIGINT, stop)
  signal.signal(signal.SIGTERM, stop)
  logging.info("%s", compile_cache.STATS.summary())
  print(f"hcmtfg serve: ready at {server.url} (networks loaded and warm in "
        f"{time.perf_counter() - start:.1f} s, of which {warm_seconds:.1f} s getting "
        "the compiled steps); open it in a browser. Ctrl-C stops.", flush=True)
  try:
    server.serve_forever()
  finally:
    server.httpd.server_close()
    server.runner.close()
  print("hcmtfg serve: stopped; temporary files removed.", flush=True)
  return 0


if __name__ == "__main__":
  app.run(main)
