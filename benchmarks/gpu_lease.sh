#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool): the CUDA smoke test, then the `gpu` profile on the
# benchmark (benchmarks/gpu_profile.py). The machine is bare and offline, so the caller carries `.gpu/`:
#   .gpu/whl/lightly-*.whl                 (the one package its image lacks that training imports)
#   .gpu/index/{index.json,manifest.csv,pixels_64_letterbox.npy.xz}   (the benchmark's index, xz-compressed)
#   .gpu/curation/{clean.csv,curation.json,manifest.csv}              (its curation)
#   .gpu/bench/truth/sources.csv                                      (styles, for `loso`)
# (`bash benchmarks/gpu_carry.sh PIPELINE_OUT` builds it.) Results land in $OUT (logs, gpu_profile.json, float16
# weights cut into 15 MB parts).
# Usage there: bash benchmarks/gpu_lease.sh [profile deadline in seconds, default 500] [gpu_profile.py options]
#          or: bash benchmarks/gpu_lease.sh loso   (leave-one-style-out of the gpu recipe from the shipped
#              checkpoints/encoder_gpu.safetensors: 4 fine-tunes, ~2 min each on an H100)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
deadline=${1:-500}
started=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 - <<'EOF' || exit 1
import lzma, shutil, time
t = time.time()
with lzma.open(".gpu/index/pixels_64_letterbox.npy.xz") as src, open(".gpu/index/pixels_64_letterbox.npy", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 24)
print(f"pixels unpacked in {time.time() - t:.1f} s")
EOF
if [ "$deadline" = loso ]; then
    set -o pipefail
    python3 benchmarks/leave_style_out.py --bench .gpu/bench --curation .gpu/curation --work .gpu/index \
        --encoder checkpoints/encoder_gpu.safetensors --profile gpu --out /tmp/loso "${@:2}" 2>&1 \
        | grep -v 'it/s\]' | tee "$OUT/loso.log"
    cp /tmp/loso/leave_style_out.csv "$OUT/" 2>/dev/null
    tar czf "$OUT/loso_runs.tgz" -C /tmp/loso --exclude='*.safetensors' --exclude=split.csv . 2>/dev/null
    echo "lease script: $(( $(date +%s) - started )) s"
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, torchvision, timm, sklearn, lightly; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightly', lightly.__version__)"
timeout 90 python3 benchmarks/gpu_smoke.py 2>&1 | grep -v 'it/s\]\|img/s\]\|step/s\]' | tee "$OUT/smoke.log"
left=$((deadline - ($(date +%s) - started)))
echo "profile deadline: $left s"
set -o pipefail
rm -rf /tmp/gp
python3 benchmarks/gpu_profile.py --work .gpu/index --curation .gpu/curation --out /tmp/gp --deadline "$left" \
    --pack "$OUT" "${@:2}" 2>&1 | grep -v 'it/s\]' | tee "$OUT/gpu_profile.log"
cp /tmp/gp/gpu_profile.json "$OUT/" 2>/dev/null
tar czf "$OUT/runs.tgz" -C /tmp/gp --exclude='*.safetensors' --exclude=split.csv --exclude=snapshots . 2>/dev/null
ls -la "$OUT"
echo "lease script: $(( $(date +%s) - started )) s"
