"""Every `geoseg ...` line of the README's command block runs, in order, on tiny data.

Only sizes shrink (1024-px scenes -> 256, 20 epochs of width 32 -> 1 epoch of width 8); the
commands, paths and flags are the README's own.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from typer.testing import CliRunner

from geoseg.cli.main import app

pytestmark = pytest.mark.slow  # runs real training end to end

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--epochs", "1", "--width", "8", "--patch-size", "64", "--batch-size", "4"]
SHRINK = {
    "--size 1024": "--size 256",
    "--epochs 20 --width 32 --patch-size 256": " ".join(TINY_TRAIN),
    "--set train.epochs=5": "--set train.epochs=1 --set model.width=8 --set train.patch_size=64 "
    "--set data.split.block_size=128",
}


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n# Built-in demo scenes.*?```", text, re.S)
    assert block, "README lost its command block"
    return [line for line in block.group(0).splitlines() if line.startswith("geoseg ")]


def test_readme_commands_run_in_order(tmp_path: Path, monkeypatch) -> None:
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    commands = readme_commands()
    assert len(commands) >= 10
    for line in commands:
        for big, small in SHRINK.items():
            line = line.replace(big, small)
        args = shlex.split(line)[1:]
        if args[0] == "train" and "--config" in args:
            args += TINY_TRAIN
        result = runner.invoke(app, ["-q", *args])
        assert result.exit_code == 0, f"{line}\n{result.output}{result.stderr}"
    with (
        rasterio.open("tile_00_pred.tif") as pred,
        rasterio.open("demo/data/images/tile_00.tif") as img,
    ):
        assert (pred.crs, pred.transform, pred.shape) == (img.crs, img.transform, img.shape)
    assert (
        Path("tile_00_pred_prob.tif").is_file()
        and len(list(Path("predictions").glob("*.tif"))) == 4
    )
    footprints = gpd.read_file("footprints.gpkg", layer="footprints")
    assert {"class_name", "area_m2", "confidence"} <= set(footprints.columns)
    assert Path("objects.json").is_file() and Path("demo/run/report.json").is_file()
