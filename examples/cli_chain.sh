#!/usr/bin/env bash
# The geoseg chain from the shell: demo data -> train -> infer -> vectorize -> evaluate.
# Usage: examples/cli_chain.sh [WORK_DIR] [--tiny]   (--tiny: what the test suite runs)
set -euo pipefail
work=${1:-example-cli}
if [[ "${2:-}" == "--tiny" ]]; then
  size=256; train_opts=(--width 8 --patch-size 64 --batch-size 4 --epochs 1); overlap=16
else
  size=1024; train_opts=(--width 32 --patch-size 256 --batch-size 8 --epochs 20); overlap=64
fi

geoseg demo-data "$work/data" --size "$size" --overwrite
geoseg train "$work/data/images" --labels "$work/data/masks" --out "$work/run" --overwrite "${train_opts[@]}"
geoseg infer "$work/run/best.ckpt" "$work/data/images/tile_00.tif" --out "$work/tile_00_mask.tif" --overlap "$overlap" --overwrite
geoseg vectorize "$work/tile_00_mask.tif" --out "$work/tile_00_footprints.gpkg" --min-area 4 --overwrite
geoseg evaluate "$work/tile_00_mask.tif" "$work/data/masks/tile_00.tif" --json "$work/report_pixels.json"
# Object scores (SpaceNet building F1) against the truth footprints of the same tile.
geoseg vectorize "$work/data/masks/tile_00.tif" --out "$work/tile_00_truth.gpkg" --overwrite
geoseg evaluate "$work/tile_00_footprints.gpkg" "$work/tile_00_truth.gpkg" --json "$work/report_objects.json"
