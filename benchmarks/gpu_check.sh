#!/usr/bin/env bash
# GPU checks for the notes (not part of CI): CUDA training step and AMP, end-to-end CLI train +
# infer on CUDA, inference throughput. Run on a CUDA machine from the repo root:
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
# Each step is time-boxed so one slow step cannot eat the whole budget.
set -uo pipefail
OUT=${OUT:-/tmp/geoseg-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  tail -n 25 "$OUT/$name.log"; echo "--- $name rc=$rc in $((SECONDS - t0)) s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"

step train_step 100 $PY benchmarks/train_step.py --device cuda --width 64 --patch-size 256 --batch-size 16 --json "$OUT/train_step.json"
step train_step_w6 100 $PY benchmarks/train_step.py --device cuda --width 64 --patch-size 256 --batch-size 16 --workers 6 --json "$OUT/train_step_w6.json"
step cli_chain 120 bash -c "
  $PY -m geoseg.cli.main -q demo-data $OUT/demo --size 512 --overwrite &&
  $PY -m geoseg.cli.main train $OUT/demo/images --labels $OUT/demo/masks --out $OUT/run --overwrite \
      --epochs 3 --width 32 --patch-size 256 --batch-size 16 --device cuda --precision auto &&
  $PY -m geoseg.cli.main infer $OUT/run/best.ckpt $OUT/demo/images/tile_01.tif --out $OUT/tile_01_mask.tif \
      --device cuda --tta flip --overwrite &&
  $PY -c \"import rasterio; a=rasterio.open('$OUT/tile_01_mask.tif'); b=rasterio.open('$OUT/demo/images/tile_01.tif'); print('same grid', a.crs==b.crs and a.transform==b.transform and a.shape==b.shape)\""
step infer_bench 170 $PY benchmarks/infer.py --device cuda --precision auto --size 8192 --model unet-resnet18 \
    --batch-size 32 --skip-dask --json "$OUT/infer.json"
echo "=== json"; cat "$OUT"/*.json 2>/dev/null
