"""hcmtfg.runtime.quick_exit: a finished command ends without the interpreter's
teardown, yet keeps what a normal exit guarantees (exit code, flushed output,
atexit handlers, finished threads); exceptions leave the normal way."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

# A command whose main leaves a non-daemon thread writing, an atexit handler
# and buffered output; an object's finaliser shows whether the interpreter
# tore down (it runs then, and never after os._exit).
_PROGRAM = textwrap.dedent("""
    import atexit, sys, threading, time
    from absl import app
    from hcmtfg.runtime import quick_exit

    class Witness:
      def __del__(self):
        print("torn down", flush=True)

    KEEP = Witness()

    def late_writer(path):
      time.sleep(0.3)
      with open(path, "w") as f:
        f.write("thread finished")

    def main(argv):
      atexit.register(lambda: print("atexit ran"))
      threading.Thread(target=late_writer, args=(argv[1],)).start()
      sys.stdout.write("buffered output")
      if argv[2] == "raise":
        raise RuntimeError("broken")
      return int(argv[2])

    app.run(quick_exit.run_then_exit(main))
    """)


def _run(tmp_path, code, env_value=None):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  env.pop("HCMTFG_QUICK_EXIT", None)
  if env_value is not None:
    env["HCMTFG_QUICK_EXIT"] = env_value
  marker = tmp_path / f"thread_{code}_{env_value}.txt"
  result = subprocess.run([sys.executable, "-c", _PROGRAM, str(marker), code],
                          env=env, capture_output=True, text=True, timeout=60,
                          check=False)
  return result, marker


@pytest.mark.parametrize("code", ["0", "3"])
def test_quick_exit_keeps_the_exit_code_output_threads_and_atexit(tmp_path,
                                                                   code):
  result, marker = _run(tmp_path, code)
  assert result.returncode == int(code), result.stderr
  assert "buffered output" in result.stdout and "atexit ran" in result.stdout
  assert marker.read_text() == "thread finished"
  assert "torn down" not in result.stdout  # no interpreter teardown


@pytest.mark.parametrize("value", ["0", "off"])
def test_switched_off_it_exits_normally(tmp_path, value):
  result, marker = _run(tmp_path, "3", env_value=value)
  assert result.returncode == 3, result.stderr
  assert "atexit ran" in result.stdout and "torn down" in result.stdout
  assert marker.read_text() == "thread finished"


def test_an_exception_leaves_the_normal_way(tmp_path):
  result, _ = _run(tmp_path, "raise")
  assert result.returncode == 1
  assert "RuntimeError: broken" in result.stderr
  assert "torn down" in result.stdout
