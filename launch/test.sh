#!/usr/bin/env bash
# The test command: create/reuse ./.venv, install whatever is missing, run the suite.
#   bash launch/test.sh                 # whole suite (slow end-to-end tests included)
#   bash launch/test.sh -m "not slow"   # extra arguments go to pytest
# The PyTorch extras (parity tests, weight conversion) are installed when CI=true or
# HCMTFG_WITH_TORCH=1; without them the parity tests skip (in CI they would fail instead).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
exec python -m pytest "$@"
