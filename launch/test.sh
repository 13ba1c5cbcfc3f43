#!/usr/bin/env bash
# The test command: create/reuse ./.venv, install whatever is missing, run the suite.
#   bash launch/test.sh                 # whole suite (slow end-to-end tests included)
#   bash launch/test.sh -m "not slow"   # extra arguments go to pytest
#   HCMTFG_TEST_WORKERS=1 bash launch/test.sh   # run the tests in one process
# The PyTorch extras (parity tests, weight conversion) are installed in CI (CI=1, true,
# yes...) or with HCMTFG_WITH_TORCH=1; without them the parity tests skip (in CI they
# would fail instead).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
# The web-page tests drive Debian's chromium (through Playwright, which must not
# download a browser of its own).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (web-page tests) ..." >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
  else
    echo "chromium is missing: the web-page tests will skip (fail when CI=true)." >&2
    echo "Install it with: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
# Two workers (this project's reference machine has 2 cores); a test file stays on
# one worker so its module fixtures are built once.
exec python -m pytest -n "${HCMTFG_TEST_WORKERS:-2}" --dist loadfile "$@"
