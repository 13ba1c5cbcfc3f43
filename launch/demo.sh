#!/usr/bin/env bash
# The main job. Sets up ./.venv (with the PyTorch extras) on a fresh machine, then runs
# the most complete pipeline that exists so far: random release-layout PyTorch
# checkpoints -> converter -> Orbax -> jitted Flax networks, compared with PyTorch.
#   bash launch/demo.sh [--quick] [--output_dir=DIR]      (default ./demo_output)
set -euo pipefail
cd "$(dirname "$0")/.."
output_dir=demo_output
extra=()
for arg in "$@"; do
  case "$arg" in
    --quick) extra+=(--tiny) ;;
    --output_dir=*) output_dir=${arg#--output_dir=} ;;
    *) echo "unknown argument: $arg (expected --quick, --output_dir=DIR)" >&2; exit 2 ;;
  esac
done
export HCMTFG_WITH_TORCH=1
source launch/setup_env.sh
python -m launch.release_roundtrip --output_dir="$output_dir/release_roundtrip" "${extra[@]}"
