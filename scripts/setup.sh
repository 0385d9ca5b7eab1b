#!/usr/bin/env bash
# Create .venv with Python 3.11 and install illustra (pinned torch/torchvision + the card's packages).
# Idempotent: reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.illustra-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch 2.14.1 on x86_64 is a CUDA build: 6.1 GB in .venv (measured), plus pip's unpacking room. Say so plainly
  # instead of failing half-way with "No space left on device" (ILLUSTRA_SETUP_MIN_GB=0 skips the check).
  need_gb=${ILLUSTRA_SETUP_MIN_GB:-7}
  free_gb=$(( $(df -Pk .venv | awk 'NR==2 {print $4}') / 1048576 ))
  tmp_gb=$(( $(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}') / 1048576 ))
  if [ "$need_gb" -gt 0 ] && { [ "$free_gb" -lt "$need_gb" ] || [ "$tmp_gb" -lt 2 ]; }; then
    echo "setup: $free_gb GB free for .venv and $tmp_gb GB in ${TMPDIR:-/tmp}; the install needs about" \
         "$need_gb GB and 2 GB. Free some disk (or set ILLUSTRA_SETUP_MIN_GB=0 to try anyway)." >&2
    exit 1
  fi
  .venv/bin/pip install --quiet --disable-pip-version-check \
    "torch==2.14.1" "torchvision==0.29.1" -e ".[bench,dev]"
  echo "$want" > "$stamp"
fi
