#!/usr/bin/env bash
# Check what CI checks: clone the committed HEAD into a temporary folder, run `.ci/run` (the README's test command)
# there, and the main job too with --main, then delete the clone. Each clone holds a 6 GB .venv: clones left behind
# once filled this machine's disk, so CI could not install. Stale clones of earlier checks (killed before their
# clean-up) are deleted first; KEEP=1 keeps this one for a look, until the next check.
# Usage: bash scripts/fresh_clone.sh [--main]
set -euo pipefail
case "${1:-}" in
  "" | --main) ;;
  *) echo "usage: bash scripts/fresh_clone.sh [--main]" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
base=${TMPDIR:-/tmp}
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  echo "fresh_clone: uncommitted changes are not in the clone; it checks HEAD only" >&2
fi
for stale in "$base"/illustra-fresh.*; do
  [ -d "$stale" ] && { echo "fresh_clone: deleting a stale clone, $stale" >&2; rm -rf "$stale"; }
done
tmp=$(mktemp -d "$base/illustra-fresh.XXXXXX")
if [ "${KEEP:-0}" != 1 ]; then
  trap 'rm -rf "$tmp"' EXIT
  trap 'exit 143' TERM HUP INT
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
