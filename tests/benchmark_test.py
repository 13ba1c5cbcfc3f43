"""benchmarks.benchmark on shrunk networks: the JSON schema and its arithmetic."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import conftest
import pytest
import soundfile


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = {"case", "unit", "ours", "release", "ratio", "gflops", "peak_mem_mb",
        "extra"}


def _user_env() -> dict[str, str]:
  """The environment of a benchmark command: one CPU device, as a user's
  machine has (not conftest's eight), and the tests' compile flags."""
  return dict(os.environ, XLA_FLAGS=conftest.xla_flags(None))


def _run_benchmark(tmp_path, *args):
  """Runs the CLI as a user would."""
  env = _user_env()
  out = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.benchmark", "--tiny", "--warmup=0",
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
  env = _user_env()
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.benchmark", "--tiny", "--noisolate",
       "--cases=vg_infer_bx"], cwd=REPO_ROOT, env=env, capture_output=True,
      text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert "unknown benchmark case 'vg_infer_bx'" in result.stderr


def _write_face_video(path: pathlib.Path, photo: pathlib.Path) -> None:
  """Three still frames of `photo` (a face), as an mp4."""
  from hcmtfg.media import image_io  # pylint: disable=g-import-not-at-top
  from hcmtfg.media import video_writer  # pylint: disable=g-import-not-at-top
  image = image_io.load_image(photo)
  video_writer.write_video(path, [image] * 3)


@pytest.mark.parametrize("module", ["benchmark", "benchmark_features",
                                    "benchmark_input", "benchmark_landmarks"])
def test_entry_point_from_another_directory(module, tmp_path, request):
  """Each benchmark's file flag given as `~/...` with spaces, run from
  another directory; the JSON it prints or writes reflects the input."""
  home, cwd = tmp_path / "home", tmp_path / "my work"
  home.mkdir()
  cwd.mkdir()
  if module == "benchmark":
    args = ["--tiny", "--device", "--noisolate", "--warmup=0", "--repeats=1",
            "--cases=at_infer_b1_f32", "--output=~/bench results/b.json"]
  elif module == "benchmark_features":
    shared_data = request.getfixturevalue("shared_data")
    shutil.copy(shared_data / "speech" / "test.wav", home / "my speech.wav")
    args = ["--audio=~/my speech.wav", "--repeats=1"]
  elif module == "benchmark_input":
    tfds_dir = request.getfixturevalue("tiny_data")
    (home / "data sets").symlink_to(tfds_dir, target_is_directory=True)
    args = ["--data_dir=~/data sets", "--batches=1", "--warmup=0",
            "--batch_size=2", "--num_target_frames=4", "--small_size=32"]
  else:
    shared_data = request.getfixturevalue("shared_data")
    (home / "my clips").mkdir()
    _write_face_video(home / "my clips" / "a face.mp4",
                      shared_data / "faces" / "obama.jpg")
    args = ["--video=~/my clips/a face.mp4", "--max_frames=3", "--repeats=1"]
  before = sorted(os.listdir(cwd))
  env = _user_env()
  env.update(HOME=str(home), PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args],
                          cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(cwd)) == before  # no folder named '~'
  if module == "benchmark":
    (record,) = json.loads((home / "bench results" / "b.json").read_text())
    assert record["case"] == "at_infer_b1_f32" and record["ours"] > 0
    return
  printed = json.loads(result.stdout[result.stdout.index("{"):])
  if module == "benchmark_features":
    assert printed["audio_seconds"] == pytest.approx(
        soundfile.info(str(home / "my speech.wav")).duration, abs=1e-3)
  elif module == "benchmark_input":
    assert printed["num_examples"] > 0
    assert all(view["examples_per_s"] > 0 for view in printed["views"].values())
  else:
    assert printed["frames"] == 3 and printed["frame_size"] == [360, 640]
    assert printed["detect_every_frame"]["detector_calls"] == 3
