#!/usr/bin/env bash
# Sourced by the launch scripts: create/reuse ./.venv and install what is missing.
# Each requirements file has a stamp in .venv holding its hash, so pip runs only
# for a file that is new or changed since its last successful install.
set -euo pipefail
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
reqs=(requirements.txt)
# CI is any value of $CI but empty, 0, false, no or off (as tests/conftest.py).
case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
  ''|0|false|no|off) in_ci=0 ;;
  *) in_ci=1 ;;
esac
if [ "$in_ci" = 1 ] || [ "${HCMTFG_WITH_TORCH:-0}" = "1" ]; then
  reqs+=(requirements-torch.txt)
fi
for req in "${reqs[@]}"; do
  stamp=".venv/.installed-${req%.txt}"
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing $req into .venv ..." >&2
    .venv/bin/python -m pip install --disable-pip-version-check -q -r "$req"
    echo "$want" > "$stamp"
  fi
done
# shellcheck disable=SC1091
source .venv/bin/activate
