#!/usr/bin/env bash
# Check what CI checks: clone the committed HEAD into a temporary folder, run the README's test command there
# (and the main job with --main), then delete the clone. Each clone holds a 6 GB .venv, so one left behind per
# check fills a small disk and the next CI run cannot install (KEEP=1 keeps it for a look).
# Usage: bash scripts/fresh_clone.sh [--main]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
if [ "${KEEP:-0}" != 1 ]; then
  trap 'rm -rf "$tmp"' EXIT
fi
git clone --quiet "$repo" "$tmp/fresh"
cd "$tmp/fresh"
echo "fresh clone of $(git rev-parse --short HEAD) in $tmp/fresh"
start=$(date +%s)
bash .ci/run
echo "test command: $(( $(date +%s) - start )) s"
if [ "${1:-}" = --main ]; then
  start=$(date +%s)
  bash scripts/main.sh
  echo "main job: $(( $(date +%s) - start )) s"
fi
