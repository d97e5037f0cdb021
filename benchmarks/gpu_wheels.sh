#!/usr/bin/env bash
# Download, HERE (where pip reaches PyPI), the wheels that benchmarks/gpu_check.sh installs on a
# GPU machine that has torch but no network: geoseg's dependencies that such an image lacks, for
# CPython 3.12 on x86-64 Linux, into .whl/ (git-ignored). ~50 MB; carry it with the check:
#   bash benchmarks/gpu_wheels.sh
#   (device tool) run  command="bash benchmarks/gpu_check.sh"  carry=[".whl"]
# --no-deps: each package is named; the versions are those of the project's own environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl \
    rasterio==1.4.4 affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2 \
    pyproj==3.7.2 shapely==2.2.0 geopandas==1.2.0 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    segmentation-models-pytorch==0.6.0 torchgeo==0.8.1
du -sh .whl
