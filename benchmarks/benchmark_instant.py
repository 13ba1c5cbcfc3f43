r"""How instant generation is: cold and warm CLI runs, the server, streaming.

  python -m benchmarks.benchmark_instant [--networks=synthetic|full|tiny]
      [--atnet_workdir=DIR --vgnet_workdir=DIR] [--image=PHOTO] [--audio=SPEECH]
      [--requests=3] [--warm_runs=3] [--output=FILE.json]

Runs the real commands as subprocesses, on random-weight networks of a config
(`synthetic`: the demo's sizes, configs/{atnet,vgnet}.py:synthetic; `full`:
the release's sizes; `tiny`: smoke runs) or on given workdirs (the demo's
trained ones: --atnet_workdir=demo_output/atnet_synthetic ...), with 10 s of
speech-like audio and scikit-image's astronaut photo unless given:

  1. `launch.generate --paste_back` with a fresh compilation cache, then
     --warm_runs more times: the whole command's wall time, cold (compiling)
     and warm (cache; the median);
  2. `launch.serve` with that cache: time to ready, then --requests videos
     with paste-back through the API: time to the first streamed frame and
     to the finished video, from the request's start;
  3. `launch.stream --realtime --paste_back`: frames/s, capacity and the
     latency from audio in to frame out.

Speed does not depend on the weights' values, so random weights measure the
same as trained ones. Prints a table and JSON with the CPU model and the
machine's load (`uptime`) before and after, since other jobs skew it.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

from absl import app
from absl import flags
import numpy as np

_NETWORKS = flags.DEFINE_enum("networks", "synthetic",
                              ["synthetic", "full", "tiny"],
                              "Random-weight networks of this size.")
_ATNET = flags.DEFINE_string("atnet_workdir", None, "Use these AT-net weights.")
_VGNET = flags.DEFINE_string("vgnet_workdir", None, "Use these VG-net weights.")
_IMAGE = flags.DEFINE_string("image", None, "Photo (default: the astronaut).")
_AUDIO = flags.DEFINE_string("audio", None, "Speech (default: 10 s synthetic).")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Length of the default speech.")
_REQUESTS = flags.DEFINE_integer("requests", 3, "Server requests measured.")
_WARM_RUNS = flags.DEFINE_integer("warm_runs", 3, "Warm launch.generate runs "
                                  "measured (the median is reported).")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the JSON here.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SUMMARY = re.compile(r"compilation cache \(.*?\): (\d+) executables loaded, "
                      r"(\d+) compiled; ([\d.]+) s")


def _machine() -> dict[str, str]:
  model = ""
  try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                               check=False).stdout.splitlines():
      if line.startswith("Model name"):
        model = line.split(":", 1)[1].strip()
  except OSError:
    pass
  with open("/proc/loadavg") as f:
    load = " ".join(f.read().split()[:3])
  return {"cpu": model, "cores": str(os.cpu_count()), "load": load}


def _write_networks(folder: str, size: str) -> tuple[str, str]:
  """Random-weight converted checkpoints of a size, with a random PCA."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import atnet as atnet_config  # pylint: disable=g-import-not-at-top
  from configs import vgnet as vgnet_config  # pylint: disable=g-import-not-at-top
  from hcmtfg.weights import checkpoint_io  # pylint: disable=g-import-not-at-top
  from hcmtfg.features import landmarks  # pylint: disable=g-import-not-at-top
  from hcmtfg import models  # pylint: disable=g-import-not-at-top
  if size == "full":
    atnet, vgnet = models.ATNet(), models.VGNet()
  else:
    atnet = models.ATNet.from_config(dict(atnet_config.get_config(size).model))
    vgnet = models.VGNet.from_config({
        k: tuple(v) if isinstance(v, list) else v
        for k, v in vgnet_config.get_config(size).model.generator.items()})
  rng = np.random.default_rng(0)
  for name, module in (("atnet", atnet), ("vgnet", vgnet)):
    shapes = jax.eval_shape(lambda m=module: m.init(
        jax.random.key(0), *m.dummy_inputs(), train=False))
    variables = jax.tree.map(
        lambda x: (rng.normal(0, 1, x.shape) / np.sqrt(max(
            np.prod(x.shape[:-1]), 1))).astype(np.float32), shapes)
    variables["batch_stats"] = jax.tree.map(
        lambda x: np.ones(x.shape, np.float32), shapes["batch_stats"])
    checkpoint_io.save_converted(folder, name, variables, module.to_config())
  components, _ = np.linalg.qr(rng.standard_normal((136, atnet.pca_dim)))
  landmarks.save_pca(os.path.join(folder, "landmark_pca.npz"), landmarks.Pca(
      mean=rng.normal(0, 0.5, 136), components=components,
      explained_variance=None))
  return folder, folder


def _write_media(folder: str, image: str | None, audio: str | None
                 ) -> tuple[str, str]:
  import soundfile  # pylint: disable=g-import-not-at-top
  if image is None:
    import skimage.data  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    image = os.path.join(folder, "astronaut.png")
    Image.fromarray(skimage.data.astronaut()).save(image)
  if audio is None:
    rng = np.random.default_rng(0)
    t = np.arange(int(_SECONDS.value * 16000)) / 16000
    voice = sum(np.sin(2 * np.pi * hz * t) / k for k, hz in
                enumerate((130, 260, 650, 1100, 2400), start=1))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    signal = 0.3 * envelope * voice + 0.02 * rng.standard_normal(t.shape)
    audio = os.path.join(folder, "speech.wav")
    soundfile.write(audio, np.clip(signal, -1, 1).astype(np.float32), 16000)
  return image, audio


def _timed(cmd: list[str]) -> tuple[float, str]:
  start = time.perf_counter()
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          check=False)
  seconds = time.perf_counter() - start
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
  return seconds, result.stderr


def _cache_numbers(log: str) -> dict[str, float]:
  match = _SUMMARY.search(log)
  if not match:
    return {}
  return {"loaded": int(match.group(1)), "compiled": int(match.group(2)),
          "compile_or_load_seconds": float(match.group(3))}


def _form(image: str, audio: str) -> tuple[bytes, str]:
  boundary = uuid.uuid4().hex
  parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="paste_back"'
           f"\r\n\r\n1\r\n".encode()]
  for name, path in (("image", image), ("audio", audio)):
    with open(path, "rb") as f:
      data = f.read()
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name='
                 f'"{name}"; filename="{os.path.basename(path)}"\r\n\r\n'
                 .encode() + data + b"\r\n")
  parts.append(f"--{boundary}--\r\n".encode())
  return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _one_request(base: str, body: bytes, content_type: str
                 ) -> dict[str, float]:
  """POST a job, read its frame stream to the first JPEG, wait for the end."""
  start = time.perf_counter()
  request = urllib.request.Request(base + "api/jobs", data=body,
                                   headers={"Content-Type": content_type})
  with urllib.request.urlopen(request, timeout=600) as response:
    job = json.load(response)
  accepted = time.perf_counter() - start
  first = None
  with urllib.request.urlopen(base + job["stream_url"].lstrip("/"),
                              timeout=600) as stream:
    seen = b""
    while True:
      data = stream.read1(65536)
      if not data:
        break
      if first is None:
        seen += data
        if b"\xff\xd9" in seen:  # the end of the first JPEG
          first = time.perf_counter() - start
          seen = b""
  while True:
    with urllib.request.urlopen(base + job["status_url"].lstrip("/"),
                                timeout=60) as response:
      status = json.load(response)
    if status["state"] in ("done", "failed"):
      break
    time.sleep(0.02)
  if status["state"] != "done":
    raise RuntimeError(f"server job failed: {status['error']}")
  with urllib.request.urlopen(base + status["video_url"].lstrip("/"),
                              timeout=60) as response:
    video = response.read()
  return {"accepted": accepted, "first_frame": first,
          "video_downloaded": time.perf_counter() - start,
          "server_generation": status["generation_seconds"],
          "video_bytes": len(video)}


def _serve(common: list[str], image: str, audio: str) -> dict:
  proc = subprocess.Popen(
      [sys.executable, "-m", "launch.serve", "--port=0"] + common, cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines, ready = [], threading.Event()

  def read():
    for line in proc.stdout:
      lines.append(line)
      if "ready at" in line:
        ready.set()

  start = time.perf_counter()
  threading.Thread(target=read, daemon=True).start()
  try:
    if not ready.wait(900):
      raise RuntimeError("launch.serve did not start:\n" + "".join(lines[-20:]))
    startup = time.perf_counter() - start
    base = re.search(r"ready at (\S+)", "".join(lines)).group(1)
    body, content_type = _form(image, audio)
    runs = [_one_request(base, body, content_type)
            for _ in range(_REQUESTS.value)]
  finally:
    proc.terminate()
    proc.wait(120)
  median = lambda key: round(statistics.median(r[key] for r in runs), 3)
  return {"startup_seconds": round(startup, 2),
          "first_frame_seconds": median("first_frame"),
          "video_seconds": median("video_downloaded"),
          "runs": [{k: round(v, 3) if isinstance(v, float) else v
                    for k, v in r.items()} for r in runs]}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WARM_RUNS.value < 1 or _REQUESTS.value < 1:
    raise app.UsageError("--warm_runs and --requests must be >= 1")
  if bool(_ATNET.value) != bool(_VGNET.value):
    raise app.UsageError("give both --atnet_workdir and --vgnet_workdir")
  from hcmtfg import paths  # pylint: disable=g-import-not-at-top
  # The commands run in the repository: make the user's paths absolute.
  given = {name: paths.user_path(holder.value) for name, holder in (
      ("atnet", _ATNET), ("vgnet", _VGNET), ("image", _IMAGE),
      ("audio", _AUDIO), ("output", _OUTPUT))}
  results = {"machine_before": _machine()}
  with tempfile.TemporaryDirectory(prefix="hcmtfg_instant_") as folder:
    if given["atnet"]:
      atnet, vgnet = given["atnet"], given["vgnet"]
      results["networks"] = {"atnet": atnet, "vgnet": vgnet}
    else:
      atnet, vgnet = _write_networks(os.path.join(folder, "nets"),
                                     _NETWORKS.value)
      results["networks"] = f"random weights, {_NETWORKS.value} sizes"
    image, audio = _write_media(folder, given["image"], given["audio"])
    results["speech"] = (given["audio"] or
                         f"{_SECONDS.value:g} s of synthetic speech")
    cache = os.path.join(folder, "compile_cache")
    common = [f"--atnet_workdir={atnet}", f"--vgnet_workdir={vgnet}",
              f"--compile_cache={cache}"]
    generate = [sys.executable, "-m", "launch.generate", f"--image={image}",
                f"--audio={audio}", f"--output={folder}/generated.mp4",
                "--paste_back"] + common
    cold, log = _timed(generate)
    results["generate_cold"] = {"seconds": round(cold, 2), **_cache_numbers(log)}
    warm_runs = []
    for _ in range(_WARM_RUNS.value):
      warm, log = _timed(generate)
      warm_runs.append(round(warm, 2))
    results["generate_warm"] = {"seconds": statistics.median(warm_runs),
                                "runs": warm_runs, **_cache_numbers(log)}
    results["serve"] = _serve(common, image, audio)
    report = os.path.join(folder, "stream.json")
    _timed([sys.executable, "-m", "launch.stream", f"--image={image}",
            f"--audio={audio}", f"--output={folder}/stream.mp4", "--realtime",
            "--paste_back", f"--report={report}"] + common)
    with open(report) as f:
      stream = json.load(f)
    results["stream_realtime"] = {
        k: stream[k] for k in ("frames", "sustained_fps", "capacity_fps",
                               "first_frame_seconds", "latency",
                               "chunk_frames")}
  results["machine_after"] = _machine()
  serve, stream = results["serve"], results["stream_realtime"]
  print(f"""
networks: {results['networks']}
launch.generate ({results['speech']}, --paste_back), whole command:
  cold {results['generate_cold']['seconds']:.1f} s ({results['generate_cold'].get('compiled')} executables compiled, {results['generate_cold'].get('compile_or_load_seconds')} s), warm {results['generate_warm']['seconds']:.1f} s (median of {results['generate_warm']['runs']}; {results['generate_warm'].get('compiled')} compiled)
launch.serve: ready in {serve['startup_seconds']:.1f} s; per request (median of {len(serve['runs'])}): first frame {serve['first_frame_seconds']:.2f} s, video downloaded {serve['video_seconds']:.2f} s
launch.stream --realtime --paste_back: {stream['sustained_fps']:.1f} frames/s sustained, capacity {stream['capacity_fps']:.1f} frames/s, latency p50 {stream['latency']['p50'] * 1000:.0f} ms p95 {stream['latency']['p95'] * 1000:.0f} ms max {stream['latency']['max'] * 1000:.0f} ms
machine: {results['machine_before']['cpu']}, {results['machine_before']['cores']} cores; load before {results['machine_before']['load']}, after {results['machine_after']['load']}
""", file=sys.stderr)
  text = json.dumps(results, indent=1)
  print(text)
  if given["output"]:
    from hcmtfg import atomic  # pylint: disable=g-import-not-at-top
    fd, tmp = atomic.temp_beside(given["output"])
    with os.fdopen(fd, "w") as f:
      f.write(text + "\n")
    os.replace(tmp, given["output"])


if __name__ == "__main__":
  app.run(main)
