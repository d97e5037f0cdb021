#!/usr/bin/env bash
# The GPU figures (issue 14), in one run of under 8 minutes on a CUDA machine, from the repo root:
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
# Installs geoseg into the machine's python3 (the one with torch; wheels from .whl/ first when
# present: a machine without network gets them from benchmarks/gpu_wheels.sh, run where pip
# works, and carried along), then runs, time-boxed:
#   infer.json        benchmarks/infer.py --device cuda: model only, geoseg (8k, ResNet18-UNet,
#                     bf16, batch 32), the torchgeo-style loop, null model vs I/O floor, 32k RSS
#   train_step.json   benchmarks/train_step.py --device cuda (UNet w64, 256 px, batch 16)
#   train_step_w6.json  the same with 6 loader workers
# after tests/test_gpu.py (the device paths agree with the CPU's on the GPU),
# and writes env.txt (GPU, torch, cores) and gpu_check.log (every step's output) next to them.
set -uo pipefail
OUT=${OUT:-/tmp/geoseg-gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
LOG="$OUT/gpu_check.log"
: > "$LOG"
step() { local name=$1 limit=$2; shift 2; echo "=== $name (limit ${limit} s)" | tee -a "$LOG"
  local t0=$SECONDS; timeout "$limit" "$@" >> "$LOG" 2>&1; local rc=$?
  echo "--- $name rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "cores $(nproc)"; date -u +%Y-%m-%dT%H:%MZ; } > "$OUT/env.txt" 2>&1

if compgen -G ".whl/*.whl" > /dev/null; then
  step wheels 60 "$PY" -m pip install --no-index --no-deps --no-compile .whl/*.whl
fi
step install 30 "$PY" -m pip install --no-index --no-deps --no-build-isolation -e .
"$PY" -c "import geoseg" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, geoseg; print('torch', torch.__version__, torch.cuda.get_device_name(0), \
'bf16', torch.cuda.is_bf16_supported(), 'geoseg', geoseg.__version__)" >> "$OUT/env.txt" 2>&1

step tests 45 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py
step infer 225 "$PY" benchmarks/infer.py --device cuda --precision auto --model unet-resnet18 \
    --batch-size 32 --skip-dask --rss-32k --workdir /tmp/geoseg-bench --json "$OUT/infer.json"
step train_step 60 "$PY" benchmarks/train_step.py --device cuda --width 64 --patch-size 256 \
    --batch-size 16 --json "$OUT/train_step.json"
step train_step_w6 60 "$PY" benchmarks/train_step.py --device cuda --width 64 --patch-size 256 \
    --batch-size 16 --workers 6 --json "$OUT/train_step_w6.json"
cat "$OUT/env.txt"; for f in "$OUT"/*.json; do echo "== $f"; cat "$f"; done
