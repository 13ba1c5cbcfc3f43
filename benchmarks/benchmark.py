r"""Our JAX networks side by side with the release's PyTorch networks.

  python -m benchmarks.benchmark                      # every CPU case, ~20 min
  python -m benchmarks.benchmark --cases=vg_infer_b1,vg_gan_b1 --output=bench.json
  python -m benchmarks.benchmark --tiny --cases=at_infer_b1   # smoke run
  python -m benchmarks.benchmark --device             # JAX only, on a GPU/TPU

CPU mode times, in one process per case, our jitted code and our PyTorch
declaration of the release (benchmarks/release_torch.py; the training steps
in benchmarks/release_torch_train.py) on the same weights and inputs, torch using as
many threads as there are CPU cores (as XLA's CPU client does). After warm-up
calls the two sides alternate, call by call, for --repeats calls each, so that
a busy machine slows both alike; medians are reported.

Output: a JSON list of records (also printed, with a markdown table)
  case         at_infer_b1, at_infer_b16 (AT-net inference, B clips of 16
               frames), vg_infer_b1, vg_infer_b8 (VG-net inference),
               at_train_b16 (AT-net Adam step), vg_gan_b1, vg_gan_b2 (VG-net
               GAN iteration, D + G, release config, 16 frames),
               vg_gan_fused_b1, vg_gan_fused_b2 (ours with
               loss.fused_gan_step: one generator forward; the release's
               step as before),
               generate_10s (MFCC -> AT-net -> VG-net -> uint8 frames for 10 s
               of speech), generate_10s_write (writing them to mp4; ours only),
               matmul_gflops (a 2048^3 f32 matmul: the machine's GEMM rate)
  unit         frames/s, clips/s or GFLOP/s (throughputs: higher is better)
  ours         our throughput
  release      the PyTorch throughput, or null without a counterpart
  ratio        ours / release (null without a counterpart)
  gflops       our achieved GFLOP/s: FLOPs of our compiled executable (XLA's
               cost analysis) / our median time
  peak_mem_mb  our peak memory, MiB: bytes of the arrays the case keeps alive
               (parameters, BatchNorm statistics, optimiser state, inputs) plus
               the peak growth of the process's resident set during one warm
               call over its size just before (after gc and malloc_trim; Linux
               VmHWM, reset through /proc/self/clear_refs): activations,
               gradients, workspaces, outputs. The release's, measured the same
               way, is extra.release_peak_mem_mb. Device mode: the device's
               peak_bytes_in_use of the case's process.
  extra        medians and all times (s), FLOPs, the release's GFLOP/s (same
               FLOP count), compile time, XLA's temp buffer, the 1-minute load
               average before and after, threads, XLA_FLAGS, backend.
XLA flags to try go in the XLA_FLAGS environment variable (passed on to the
per-case processes). --omp_wait_policy sets torch's OpenMP wait policy:
'default' (OMP_WAIT_POLICY unset: libgomp spins briefly after each parallel
region, then sleeps; what torch users get, and the release's speed measured
alone in a process), 'passive' (sleep at once: kinder on a machine shared
with other jobs, where a spinning thread's partner may be descheduled), or
'active' (spin forever: the idle torch threads then take a core from our side
between the release's calls, which cut our measured matmul rate by a third,
so do not compare with it in one process). Our inference cases use the
variables as hcmtfg.inference.generate holds them: with the Winograd kernel transforms
of the fixed weights computed once
(hcmtfg.models.winograd.with_transformed_kernels).
--device runs JAX only (no torch), f32 and bf16 rows
(case names ending in _f32 / _bf16), and reports device memory.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags

from hcmtfg import paths

_CASES = flags.DEFINE_list(
    "cases", None, "Cases to run (default: all of the mode's; see the module "
    "docstring). Batched cases take any batch: e.g. vg_infer_b4.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the JSON list here.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per side (median).")
_WARMUP = flags.DEFINE_integer(
    "warmup", 1, "Untimed calls per side before the memory-measuring call "
    "(which is also untimed).")
_DEVICE = flags.DEFINE_bool(
    "device", False, "JAX only, on the default backend (a GPU/TPU), f32 and "
    "bf16 rows; the release side is skipped.")
_TINY = flags.DEFINE_bool(
    "tiny", False, "Shrunk VG-net and discriminator, 4-frame clips, 2 s of "
    "speech, 512^3 matmul: a smoke run of the harness.")
_PAPER_MODE = flags.DEFINE_bool(
    "paper_mode", False, "ConvGRU over time on both sides (default: the "
    "release's ConvGRU over the batch axis, on both sides).")
_ISOLATE = flags.DEFINE_bool(
    "isolate", True, "Run every case in its own process (clean memory "
    "figures); --noisolate runs them all in this one.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of weights and inputs.")
_COMPILER_OPTIONS = flags.DEFINE_string(
    "compiler_options", "", "JSON object of XLA options for our executables "
    "(per computation, e.g. '{\"xla_cpu_experimental_ynn_fusion_type\": "
    "\"\"}' for Eigen instead of YNNPACK convolutions); not applied inside "
    "hcmtfg.inference.generate.")
_OMP_WAIT_POLICY = flags.DEFINE_enum(
    "omp_wait_policy", "default", ["default", "passive", "active"],
    "OpenMP wait policy of torch's threads (read when torch is imported): "
    "'default' leaves OMP_WAIT_POLICY unset (libgomp spins briefly, then "
    "sleeps: what torch users get); 'passive' sleeps at once; 'active' spins "
    "forever, which also takes a core from our side between the release's "
    "calls. An OMP_WAIT_POLICY already in the environment wins.")
_WORKER_OUTPUT = flags.DEFINE_string(
    "worker_output", None, "Internal: run the cases here and write their "
    "records to this file.")


def _set_omp_wait_policy() -> None:
  """Sets OMP_WAIT_POLICY (read by torch's OpenMP runtime at import) from
  --omp_wait_policy, unless the environment already has one."""
  if _OMP_WAIT_POLICY.value != "default":
    os.environ.setdefault("OMP_WAIT_POLICY", _OMP_WAIT_POLICY.value.upper())

RECORD_KEYS = ("case", "unit", "ours", "release", "ratio", "gflops",
               "peak_mem_mb")


# ----------------------------------------------------------------------------
# Memory.
# ----------------------------------------------------------------------------


def _rss_bytes() -> int | None:
  try:
    with open("/proc/self/statm", encoding="ascii") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except OSError:
    return None


def _peak_rss_bytes() -> int | None:
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _reset_peak_rss() -> bool:
  """Sets the peak-RSS mark to the current RSS (Linux >= 4.0)."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _release_free_memory() -> None:
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _device_peak_bytes() -> int | None:
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _measured_call(side, device: bool) -> dict[str, float | None]:
  """Runs `side` once; returns its peak memory (see the module docstring)."""
  if device:
    side.run()
    peak = _device_peak_bytes()
    return {"peak_mem_mb": None if peak is None else peak / 2**20}
  _release_free_memory()
  before = _rss_bytes()
  if before is None or not _reset_peak_rss():
    side.run()
    return {"peak_mem_mb": None}
  side.run()
  growth = max(0, (_peak_rss_bytes() or before) - before)
  kept = side.persistent_bytes()
  return {"peak_mem_mb": (kept + growth) / 2**20,
          "kept_mb": kept / 2**20, "transient_mb": growth / 2**20}


# ----------------------------------------------------------------------------
# One case, in this process.
# ----------------------------------------------------------------------------


def _threads() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def run_case(name: str, *, repeats: int, warmup: int, device: bool,
             tiny: bool, paper_mode: bool, seed: int,
             compiler_options: str = "") -> dict[str, Any]:
  """Builds and times one case; returns its record."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import benchmark_cases  # pylint: disable=g-import-not-at-top
  if not device:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(_threads())
  options = benchmark_cases.Options(tiny=tiny, paper_mode=paper_mode,
                                    seed=seed, with_release=not device,
                                    compiler_options=compiler_options)
  load_before = os.getloadavg()[0]
  case = benchmark_cases.build(name, options)
  sides = {"ours": case.ours()}
  memory = {}
  for _ in range(warmup):
    sides["ours"].run()
  memory["ours"] = _measured_call(sides["ours"], device)
  if case.release is not None and not device:
    sides["release"] = case.release()
    for _ in range(warmup):
      sides["release"].run()
    memory["release"] = _measured_call(sides["release"], device)
  times = {k: [] for k in sides}
  cpu_times = {k: [] for k in sides}
  for i in range(repeats):  # Alternate which side goes first.
    for key in (sorted(sides) if i % 2 == 0 else sorted(sides, reverse=True)):
      start, cpu_start = time.perf_counter(), time.process_time()
      sides[key].run()
      times[key].append(time.perf_counter() - start)
      cpu_times[key].append(time.process_time() - cpu_start)
  median = {k: statistics.median(v) for k, v in times.items()}
  cpu_median = {k: statistics.median(v) for k, v in cpu_times.items()}
  flops = sides["ours"].flops
  ours = case.work / median["ours"]
  release = case.work / median["release"] if "release" in median else None
  extra = {
      "ours_s": median["ours"], "ours_times_s": times["ours"],
      "ours_cpu_s": cpu_median["ours"],
      "work_per_call": case.work, "flops_per_call": flops,
      "memory_ours": memory["ours"],
      "load_avg_1m": [load_before, os.getloadavg()[0]],
      "threads": _threads(), "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      "compiler_options": compiler_options,
      "tiny": tiny, "paper_mode": paper_mode, **sides["ours"].extra,
  }
  if release is not None:
    extra.update({
        "release_s": median["release"],
        "release_times_s": times["release"],
        "release_cpu_s": cpu_median["release"],
        "cpu_time_ratio": cpu_median["release"] / cpu_median["ours"],
        "release_gflops": None if flops is None else
                          flops / median["release"] / 1e9,
        "release_peak_mem_mb": memory["release"]["peak_mem_mb"],
        "memory_release": memory["release"]})
  return {"case": case.name, "unit": case.unit, "ours": ours,
          "release": release,
          "ratio": None if release is None else ours / release,
          "gflops": None if flops is None else flops / median["ours"] / 1e9,
          "peak_mem_mb": memory["ours"]["peak_mem_mb"], "extra": extra}


def _run_isolated(name: str) -> dict[str, Any]:
  """`run_case` in a fresh `python -m benchmarks.benchmark` process."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "record.json"
    command = [sys.executable, "-m", "benchmarks.benchmark", f"--cases={name}",
               f"--worker_output={out}", f"--repeats={_REPEATS.value}",
               f"--warmup={_WARMUP.value}", f"--seed={_SEED.value}",
               f"--compiler_options={_COMPILER_OPTIONS.value}",
               f"--omp_wait_policy={_OMP_WAIT_POLICY.value}",
               f"--{'' if _DEVICE.value else 'no'}device",
               f"--{'' if _TINY.value else 'no'}tiny",
               f"--{'' if _PAPER_MODE.value else 'no'}paper_mode"]
    subprocess.run(command, check=True, cwd=pathlib.Path(__file__).parents[1])
    return json.loads(out.read_text())[0]


# ----------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
  if value is None:
    return "—"
  return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def markdown_table(records: list[dict[str, Any]]) -> str:
  """The records as a markdown table."""
  lines = ["| case | unit | ours | release | ours/release | ours GFLOP/s | "
           "release GFLOP/s | ours peak MiB | release peak MiB | load 1m |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in records:
    extra = r.get("extra", {})
    load = extra.get("load_avg_1m") or [None, None]
    lines.append(
        f"| {r['case']} | {r['unit']} | {_fmt(r['ours'])} | "
        f"{_fmt(r['release'])} | {_fmt(r['ratio'])} | {_fmt(r['gflops'])} | "
        f"{_fmt(extra.get('release_gflops'))} | {_fmt(r['peak_mem_mb'], 4)} | "
        f"{_fmt(extra.get('release_peak_mem_mb'), 4)} | "
        f"{_fmt(load[0], 2)}–{_fmt(load[1], 2)} |")
  return "\n".join(lines)


def _write_atomically(path: str, text: str) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=folder)
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def main(argv):
  del argv
  from benchmarks import benchmark_cases  # pylint: disable=g-import-not-at-top
  if _REPEATS.value < 1 or _WARMUP.value < 0:
    raise app.UsageError("--repeats must be >= 1 and --warmup >= 0")
  _set_omp_wait_policy()
  default = (benchmark_cases.DEVICE_CASES if _DEVICE.value
             else benchmark_cases.CPU_CASES)
  names = list(_CASES.value or default)
  kwargs = dict(repeats=_REPEATS.value, warmup=_WARMUP.value,
                device=_DEVICE.value, tiny=_TINY.value,
                paper_mode=_PAPER_MODE.value, seed=_SEED.value,
                compiler_options=_COMPILER_OPTIONS.value)
  if _WORKER_OUTPUT.value:
    records = [run_case(n, **kwargs) for n in names]
    _write_atomically(paths.user_path(_WORKER_OUTPUT.value),
                      json.dumps(records))
    return
  if _DEVICE.value:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.default_backend() == "cpu":
      print("warning: --device on the CPU backend (no accelerator found)",
            file=sys.stderr)
  records = []
  for name in names:
    print(f"=== {name} (load {os.getloadavg()[0]:.2f})", file=sys.stderr,
          flush=True)
    record = (_run_isolated(name) if _ISOLATE.value
              else run_case(name, **kwargs))
    records.append(record)
    print(markdown_table([record]).splitlines()[-1], file=sys.stderr,
          flush=True)
  text = json.dumps(records, indent=1)
  print(text)
  print(markdown_table(records))
  if _OUTPUT.value:
    _write_atomically(paths.user_path(_OUTPUT.value), text + "\n")


if __name__ == "__main__":
  app.run(main)
