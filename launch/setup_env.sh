#!/usr/bin/env bash
# Sourced by the launch scripts: create/reuse ./.venv and install what is missing.
# A stamp holding the hash of the requirements files skips pip when nothing changed.
set -euo pipefail
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
reqs=(requirements.txt)
if [ "${CI:-}" = "true" ] || [ "${HCMTFG_WITH_TORCH:-0}" = "1" ]; then
  reqs+=(requirements-torch.txt)
fi
stamp=.venv/.hcmtfg-requirements
want=$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  args=()
  for r in "${reqs[@]}"; do args+=(-r "$r"); done
  .venv/bin/python -m pip install --disable-pip-version-check -q "${args[@]}"
  echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source .venv/bin/activate
