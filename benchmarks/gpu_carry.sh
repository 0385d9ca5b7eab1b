#!/usr/bin/env bash
# Build `.gpu/` (ignored; carried to a lent GPU machine by the device tool) from an `illustra pipeline` output folder:
# the benchmark's index (pixel cache xz-compressed), its curation, the truth's sources.csv (styles, for LOSO) and the
# lightly wheel (the one package the lent image lacks that training imports). About 1 min, 36 MB.
#   bash benchmarks/gpu_carry.sh /work/wb/pipe
set -euo pipefail
pipe=${1:?usage: gpu_carry.sh PIPELINE_OUT}
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/index .gpu/curation .gpu/bench/truth
cp "$pipe"/index/{index.json,manifest.csv} .gpu/index/
cp "$pipe"/curation/{clean.csv,curation.json,manifest.csv} .gpu/curation/
cp "$pipe"/bench/truth/sources.csv .gpu/bench/truth/
xz -T2 -9 -c "$pipe"/index/pixels_64_letterbox.npy > .gpu/index/pixels_64_letterbox.npy.xz
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .gpu/whl lightly==1.6.0
du -sh .gpu
