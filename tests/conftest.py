"""Shared test set-up: 8 fake CPU devices and the skip-or-fail rule for optional inputs.

XLA_FLAGS must be set before jax is imported anywhere, hence at the top of conftest.
Tests that need `../shared/data` or torch skip with a reason on a user's machine, but
fail in CI, where both must be present. CI is any true value of the CI variable
(`1`, `true`, `yes`, in any case); unset, empty, `0`, `false`, `no` and `off` are not.
"""

import contextlib
import os
import pathlib
import shutil
import tempfile

# Eight fake devices, and XLA's cheapest backend optimisation: the tests' tiny
# networks spend far longer compiling than running (winograd_test and
# models_test: 147 -> 99 s; the whole suite 781 -> 701 s with this and the
# shared cache below; results are the same to every test's tolerance). Tests
# that start entry points pass the same flag to them.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Entry points run by tests (train, generate, evaluate, demo, ... as
# subprocesses) share one compilation cache for the run: a resumed or repeated
# run loads what an earlier one compiled. It is a fresh folder made by the
# first process of the run (pytest-xdist workers inherit its environment) and
# removed at the end, never the user's cache; tests of the cache itself give
# their own folders.
_OWN_CACHE = None
if "HCMTFG_COMPILE_CACHE" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="hcmtfg-test-compile-cache-")
  os.environ["HCMTFG_COMPILE_CACHE"] = _OWN_CACHE

import pytest  # noqa: E402


def pytest_unconfigure(config):  # pylint: disable=unused-argument
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FALSE_VALUES = ("", "0", "false", "no", "off")


def is_ci(value: str | None) -> bool:
  """Whether a value of the CI environment variable means "running in CI"."""
  return (value or "").lower() not in FALSE_VALUES


IN_CI = is_ci(os.environ.get("CI"))


def skip_or_fail(reason: str):
  """Skips the calling test, or fails it when running in CI."""
  if IN_CI:
    pytest.fail(f"would skip in CI, which must run it: {reason}")
  pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """Path of ../shared/data (real faces, speech, the release's artefacts)."""
  if not SHARED_DATA.is_dir():
    skip_or_fail(f"reference data not found at {SHARED_DATA}")
  return SHARED_DATA


@pytest.fixture(scope="session")
def torch():
  """The torch module (parity tests and conversion only)."""
  try:
    import torch as torch_module  # pylint: disable=g-import-not-at-top
  except ImportError:
    skip_or_fail("torch is not installed (pip install -r requirements-torch.txt)")
  torch_module.set_num_threads(1)
  return torch_module


@pytest.fixture
def max_chunk_traces(monkeypatch):
  """`with max_chunk_traces(n):` fails as soon as generation's AT-net or VG-net
  chunk step is traced (so compiled) more than n times inside the block.

  chex.assert_max_traces on the functions the jitted chunk steps trace.
  """
  import chex  # pylint: disable=g-import-not-at-top
  from hcmtfg import streaming  # pylint: disable=g-import-not-at-top

  @contextlib.contextmanager
  def limit(n: int):
    chex.clear_trace_counter()
    with monkeypatch.context() as patch:
      for name in ("atnet_chunk", "vgnet_chunk"):
        patch.setattr(streaming, name,
                      chex.assert_max_traces(getattr(streaming, name), n))
      yield

  return limit
