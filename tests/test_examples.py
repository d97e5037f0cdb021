"""Every file in examples/ runs (in its --tiny form) and produces what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio

pytestmark = pytest.mark.slow  # runs real training end to end

REPO = Path(__file__).resolve().parents[1]


def test_python_api_example(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "python_api.py"), str(tmp_path), "--tiny"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (
        rasterio.open(tmp_path / "mask.tif") as mask,
        rasterio.open(tmp_path / "data" / "images" / "tile_00.tif") as img,
    ):
        assert mask.crs == img.crs and mask.transform == img.transform
    footprints = gpd.read_file(tmp_path / "footprints.gpkg", layer="footprints")
    assert footprints.crs == rasterio.open(tmp_path / "mask.tif").crs
    assert "footprints ->" in proc.stdout


def test_cli_chain_example(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "cli_chain.sh"), str(tmp_path / "w"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pixels = json.loads((tmp_path / "w" / "report_pixels.json").read_text())
    objects = json.loads((tmp_path / "w" / "report_objects.json").read_text())
    assert "miou" in pixels and "f1" in objects
