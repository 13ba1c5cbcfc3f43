"""Tests of hcmtfg.runtime.compile_cache: where the cache goes, and that a second
`launch.generate` process compiles nothing (counted from JAX's monitoring
events, which the command logs)."""

import os
import pathlib
import re
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
import pytest

from hcmtfg.runtime import compile_cache
from tests import tiny_networks

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_where_the_cache_goes(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.resolve() == str(tmp_path / "xdg" / "hcmtfg" / "jax")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compile_cache.resolve() == str(
      tmp_path / "home" / ".cache" / "hcmtfg" / "jax")
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "env"))
  assert compile_cache.resolve() == str(tmp_path / "env")
  assert compile_cache.resolve(str(tmp_path / "flag")) == str(tmp_path / "flag")
  assert compile_cache.resolve("~/c") == str(tmp_path / "home" / "c")
  for off in ("off", "OFF", "none", "0", "false"):
    assert compile_cache.resolve(off) is None
  monkeypatch.setenv(compile_cache.ENV_VAR, "off")
  assert compile_cache.resolve() is None
  assert compile_cache.resolve(str(tmp_path / "flag")) == str(tmp_path / "flag")


def test_enable_counts_compiles_and_loads(tmp_path):
  folder = compile_cache.enable(str(tmp_path / "cache"))
  try:
    assert folder == str(tmp_path / "cache")
    before = compile_cache.STATS.snapshot()
    f = jax.jit(lambda x: jnp.tanh(x) * 3.0 + x.sum())
    f(jnp.arange(7.0)).block_until_ready()
    after = compile_cache.STATS.snapshot()
    assert after["compiled"] > before["compiled"]
    assert any(tmp_path.joinpath("cache").iterdir())
    assert "executables loaded" in compile_cache.STATS.summary()
  finally:
    compile_cache.enable("off")


def test_unusable_folder_turns_the_cache_off(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  assert compile_cache.enable(str(blocker / "cache")) is None
  assert not jax.config.jax_enable_compilation_cache
  compile_cache.enable("off")


def test_flag_is_defined_once_per_flag_values():
  values = flags.FlagValues()
  first = compile_cache.define_flag(values)
  second = compile_cache.define_flag(values)
  values(["prog", "--compile_cache=/somewhere"])
  assert first.value == second.value == "/somewhere"


_SUMMARY = re.compile(r"compilation cache \((.*)\): (\d+) executables loaded, "
                      r"(\d+) compiled")


@pytest.mark.slow
def test_second_generate_run_compiles_nothing(tmp_path, shared_data):
  atnet, vgnet = tiny_networks.write_workdirs(tmp_path, shared_data)
  cache = tmp_path / "cache"

  def generate(seconds: float) -> tuple[int, int]:
    speech = tiny_networks.write_speech(tmp_path / f"s{seconds}.wav",
                                        shared_data, seconds)
    result = subprocess.run(
        [sys.executable, "-m", "launch.generate",
         f"--image={shared_data / 'faces' / 'obama.jpg'}", f"--audio={speech}",
         f"--atnet_workdir={atnet}", f"--vgnet_workdir={vgnet}",
         f"--output={tmp_path / 'out.mp4'}", "--chunk_frames=8",
         f"--compile_cache={cache}"],
        cwd=REPO, capture_output=True, text=True, check=False,
        env={**os.environ, "HCMTFG_COMPILE_CACHE": "off"})
    assert result.returncode == 0, result.stderr[-3000:]
    match = _SUMMARY.search(result.stderr)
    assert match and match.group(1) == str(cache), result.stderr[-3000:]
    return int(match.group(2)), int(match.group(3))

  loaded, compiled = generate(1.0)
  assert compiled > 0
  loaded, compiled = generate(1.0)
  assert compiled == 0 and loaded > 0
  # Another length of speech reuses the same executables.
  loaded, compiled = generate(2.3)
  assert compiled == 0 and loaded > 0
