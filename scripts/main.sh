#!/usr/bin/env bash
# The main job: set up, then build the public benchmark and run every pipeline stage on it.
# Extra arguments go to `illustra pipeline` (e.g. --retrain, --out DIR, --seed N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/illustra pipeline "$@"
