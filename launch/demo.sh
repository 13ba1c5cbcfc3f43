#!/usr/bin/env bash
# The main job. Sets up ./.venv on a fresh machine, then (launch/demo.py) builds a
# synthetic talking-face corpus, trains AT-net and VG-net on it for a few minutes,
# evaluates them on its test split and makes a talking-face video from a real photo
# and synthetic speech. Re-running skips the stages that are already done.
#   bash launch/demo.sh [--quick] [--output_dir=DIR]
# DIR defaults to demo_output in the repository; a relative DIR is relative to
# the directory the command is run from, and ~ works.
# --quick is a ~2-minute smoke run (tiny corpus and networks, a handful of steps).
# The release round trip of earlier versions is its own job:
#   python -m benchmarks.release_roundtrip --output_dir=DIR   (needs the PyTorch extras)
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
  case "$arg" in
    --quick) args+=("$arg") ;;
    --output_dir=*)
      # The job runs from the repository root: anchor a relative DIR where the
      # user typed it (absolute paths, ~ and URLs are left to launch.demo).
      dir=${arg#--output_dir=}
      case "$dir" in
        ""|/*|"~"*|*://*) ;;
        *) dir="$caller_dir/$dir" ;;
      esac
      args+=("--output_dir=$dir") ;;
    *) echo "unknown argument: $arg (expected --quick, --output_dir=DIR)" >&2; exit 2 ;;
  esac
done
source launch/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec python -m launch.demo "${args[@]}"
