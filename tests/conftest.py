"""Test set-up: 8 fake CPU devices, compile flags, the skip-or-fail rule.

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

# The tests' tiny networks spend far longer compiling than running, so tests
# compile with XLA's cheapest CPU code generation: backend optimisation level
# 0 (winograd_test and models_test: 147 -> 99 s) and XLA's classic CPU fusion
# emitters instead of the default MLIR ones (a VG-net train step compiles in
# 2.2 s instead of 6.3 s; the whole suite's CPU time falls by a quarter). The
# classic emitters round differently. Every test passes at its tolerance
# with them, except where two different compiled programs are compared to
# the last bit or nearly (the fused GAN step, the sharded AT-net step):
# those programs compile with DEFAULT_EMITTERS. vgnet_learning_test, whose
# margins are thin, also trains with the default emitters it was tuned with.
# Entry points run by tests get their flags from `xla_flags`.
NUM_FAKE_DEVICES = 8
# jit compiler options that restore XLA's default CPU fusion emitters for one
# program (add them to the options that program is compiled with).
DEFAULT_EMITTERS = {"xla_cpu_use_fusion_emitters": True}


def xla_flags(num_devices: int | None = NUM_FAKE_DEVICES, *,
              classic_emitters: bool = True) -> str:
  """XLA_FLAGS for a test process or an entry point a test runs.

  Args:
    num_devices: fake CPU devices; None for XLA's default (one, as a user's
      machine has).
    classic_emitters: compile with XLA's classic CPU fusion emitters (fast to
      compile) rather than the default ones.

  Returns:
    The device count and the tests' compile options, as flags.
  """
  flags = ["--xla_backend_optimization_level=0"]
  if num_devices is not None:
    flags.insert(0, f"--xla_force_host_platform_device_count={num_devices}")
  if classic_emitters:
    flags.append("--xla_cpu_use_fusion_emitters=false")
  return " ".join(flags)


# Eight fake devices in the test processes.
os.environ.setdefault("XLA_FLAGS", xla_flags())
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


def pytest_configure(config):
  # pytest-xdist's --dist loadfile hands out test files in collection order
  # (see pytest_collection_modifyitems), not by falling number of tests, its
  # default, which left the end-to-end files of one or three tests last, one
  # worker busy with them while the other had nothing left.
  if getattr(config.option, "loadscopereorder", False):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  """Files with slow tests first, so that short files fill the end of a run.

  The order of the files within each group and of the tests within each file
  is kept.
  """
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)


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
  from hcmtfg.inference import chunked  # pylint: disable=g-import-not-at-top

  @contextlib.contextmanager
  def limit(n: int):
    chex.clear_trace_counter()
    with monkeypatch.context() as patch:
      for name in ("atnet_chunk", "vgnet_chunk"):
        patch.setattr(chunked, name,
                      chex.assert_max_traces(getattr(chunked, name), n))
      yield

  return limit


TINY_CLIPS = 10  # the tiny synthetic corpus every dataset test shares


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> pathlib.Path:
  """The shared tiny dataset's TFDS data_dir, built if no test built it yet
  (one build per worker, under pytest's base temp dir)."""
  from data_pipelines import build  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp() / "hcmtfg_datasets"
  build.build_dataset("synthetic_talking_faces", root / "tfds", config="tiny",
                      num_clips=TINY_CLIPS, download_dir=root / "downloads")
  return root / "tfds"
