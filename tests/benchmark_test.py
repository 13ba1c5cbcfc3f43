"""launch.benchmark on shrunk networks: the JSON schema and its arithmetic."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = {"case", "unit", "ours", "release", "ratio", "gflops", "peak_mem_mb",
        "extra"}


def _run_benchmark(tmp_path, *args):
  """Runs the CLI as a user would (one CPU device, not conftest's eight)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "launch.benchmark", "--tiny", "--warmup=0",
       f"--output={out}", *args],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  records = json.loads(out.read_text())
  return records, result.stdout


def _check_record(record):
  assert set(record) == KEYS, record.keys()
  assert isinstance(record["case"], str) and isinstance(record["unit"], str)
  assert isinstance(record["ours"], float) and record["ours"] > 0
  for key in ("release", "ratio", "gflops", "peak_mem_mb"):
    assert record[key] is None or isinstance(record[key], float), key
  assert isinstance(record["extra"], dict)
  if record["release"] is None:
    assert record["ratio"] is None
  else:
    assert record["release"] > 0
    assert math.isclose(record["ratio"], record["ours"] / record["release"],
                        rel_tol=1e-9)
    assert record["extra"]["release_s"] > 0
  work = record["extra"]["work_per_call"]
  assert math.isclose(record["ours"], work / record["extra"]["ours_s"],
                      rel_tol=1e-9)
  assert len(record["extra"]["ours_times_s"]) == 5
  assert len(record["extra"]["load_avg_1m"]) == 2


def test_cpu_side_by_side_schema(tmp_path, torch):
  del torch  # Only needed installed.
  cases = ["matmul_gflops", "at_infer_b1", "vg_infer_b1"]
  records, stdout = _run_benchmark(tmp_path, "--noisolate", "--repeats=5",
                                   f"--cases={','.join(cases)}")
  assert [r["case"] for r in records] == cases
  for record in records:
    _check_record(record)
    assert record["release"] is not None
    assert record["gflops"] > 0
    assert record["peak_mem_mb"] > 0
  by_case = {r["case"]: r for r in records}
  assert by_case["matmul_gflops"]["unit"] == "GFLOP/s"
  # The matmul's throughput is its GFLOP/s by construction.
  assert math.isclose(by_case["matmul_gflops"]["gflops"],
                      by_case["matmul_gflops"]["ours"], rel_tol=1e-9)
  assert by_case["vg_infer_b1"]["unit"] == "frames/s"
  # Four frames per clip when tiny.
  assert by_case["vg_infer_b1"]["extra"]["work_per_call"] == 4
  for record in records:  # Achieved GFLOP/s = XLA's FLOPs / our median time.
    extra = record["extra"]
    assert math.isclose(record["gflops"],
                        extra["flops_per_call"] / extra["ours_s"] / 1e9,
                        rel_tol=1e-9)
  assert "| vg_infer_b1 | frames/s |" in stdout


def test_device_mode_runs_jax_only(tmp_path):
  records, _ = _run_benchmark(tmp_path, "--device", "--noisolate",
                              "--repeats=5", "--cases=vg_infer_b2_bf16")
  (record,) = records
  _check_record(record)
  assert record["case"] == "vg_infer_b2_bf16"
  assert record["release"] is None and record["ratio"] is None
  assert record["extra"]["work_per_call"] == 8


def test_unknown_case_is_an_error(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(
      [sys.executable, "-m", "launch.benchmark", "--tiny", "--noisolate",
       "--cases=vg_infer_bx"], cwd=REPO_ROOT, env=env, capture_output=True,
      text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert "unknown benchmark case 'vg_infer_bx'" in result.stderr
