"""data.splits: sparse split regions; memory follows the catalog's pixels, not its extent."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from data_helpers import write
from rasterio.transform import from_origin

from geoseg.config import DataConfig, SplitConfig
from geoseg.data import build_training_data, splits

# Tiles in one Web Mercator catalog on four continents (New York, Paris, Sydney, Kampala):
# the bounding box of the catalog is ~24,000 km x 11,000 km, 4.8e14 pixels at 0.5 m.
CONTINENTS = [(-8.2e6, 4.97e6), (2.6e5, 6.25e6), (1.68e7, -4.0e6), (3.63e6, 3.9e4)]


def _four_continents(root: Path, size: int = 96) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for k, (x, y) in enumerate(CONTINENTS):
        for j in range(2):  # two adjacent files per place
            t = from_origin(x + j * size * 0.5, y, 0.5, 0.5)
            img = rng.integers(1, 256, (3, size, size)).astype(np.uint8)
            write(root / "img" / f"p{k}_{j}.tif", img, crs="EPSG:3857", transform=t)
            mask = (img[0] > 128).astype(np.uint8)
            write(root / "mask" / f"p{k}_{j}.tif", mask, crs="EPSG:3857", transform=t)
    return root / "img", root / "mask"


@pytest.mark.parametrize("method", ["blocks", "files"])
def test_four_continents_split_and_train_in_small_memory(tmp_path: Path, method: str) -> None:
    img, msk = _four_continents(tmp_path / "d")
    split = {"method": method, "block_size": 64, "ratios": (0.6, 0.2, 0.2)}
    cfg = DataConfig(images=[str(img)], labels=str(msk), split=SplitConfig(**split))
    tracemalloc.start()
    try:
        td = build_training_data(
            cfg, patch_size=32, batch_size=4, run_dir=tmp_path / method, num_classes=2
        )
        batches = list(td.train)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # the old dense split grid asked numpy for terabytes here
    assert batches and all(b["image"].shape == (4, 3, 32, 32) for b in batches)
    regions = gpd.read_file(td.split_path)
    assert set(regions["split"]) == {"train", "val", "test"}
    places = [shapely.box(x - 10, y - 200, x + 200, y + 10) for x, y in CONTINENTS]
    train = regions.set_index("split").geometry["train"]
    assert sum(train.intersects(p) for p in places) >= 2  # train data on several continents


def test_oam_catalog_with_the_default_split(real_data: Path, tmp_path: Path) -> None:
    """The four real OAM areas (EPSG:3857, four countries) with the default block split."""
    oam = real_data / "oam"
    if not oam.is_dir():
        pytest.skip("OAM sample not available")
    cfg = DataConfig(images=[str(oam / "images" / "*_z19.tif")], labels=str(oam / "masks"))
    tracemalloc.start()
    try:
        td = build_training_data(
            cfg, patch_size=256, batch_size=4, run_dir=tmp_path / "run", num_classes=2
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(td.tiles) == 8 and td.in_memory
    assert peak < 256 * 2**20  # 4.3 MP decoded is ~17 MB; the old split grew to 23 GB
    assert len(td.train) >= 1 and len(td.val) >= 1
    batch = next(iter(td.train))
    assert batch["image"].shape == (4, 3, 256, 256) and {0, 1} >= set(
        batch["mask"].unique().tolist()
    ) - {255}


def test_tile_cells_count_like_a_dense_grid() -> None:
    rng = np.random.default_rng(0)
    occ = rng.random((2, 7, 9)) < 0.4
    cells = splits.TileCells(4, [(100, 200, occ), (0, 0, occ[:, :3, :5])])
    rows = rng.integers(90, 140, 200)
    cols = rng.integers(190, 240, 200)
    n, total = cells.count(1, np.zeros(200, np.int64), rows, cols, 9, 6)
    for r, c, got, tot in zip(rows, cols, n, total, strict=True):
        a, b = max((r - 100) // 4, 0), max((c - 200) // 4, 0)
        e, f = min(-(-(r + 9 - 100) // 4), 7), min(-(-(c + 6 - 200) // 4), 9)
        e, f = max(e, a), max(f, b)
        assert got == occ[1, a:e, b:f].sum() and tot == (e - a) * (f - b)
    inside, _ = cells.count(
        0, np.zeros(1, np.int64), np.array([100]), np.array([200]), 8, 8, inside=True
    )
    assert inside[0] == occ[0, :2, :2].sum()
