"""data.grid: one pixel grid for the catalog, aligned warp cache, mask pairing checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from data_helpers import RES, X0, Y0, mosaic, write
from rasterio.crs import CRS
from rasterio.transform import from_origin

from geoseg.config import DataConfig
from geoseg.data import grid
from geoseg.data.dataset import GeoRasterDataset
from geoseg.errors import LabelError


def test_grid_bounds_and_cover_are_inverse() -> None:
    g = grid.Grid(CRS.from_epsg(32631), RES, X0, Y0)
    assert g.bounds(2, 3, 4, 5) == (X0 + 1.5, Y0 - 3.0, X0 + 4.0, Y0 - 1.0)
    assert g.cover(g.bounds(2, 3, 4, 5)) == (2, 3, 4, 5)
    assert g.cover((X0 + 0.1, Y0 - 0.6, X0 + 0.9, Y0 - 0.1)) == (0, 0, 2, 2)  # snapped out
    assert g.transform(2, 3) == from_origin(X0 + 1.5, Y0 - 1.0, RES, RES)


def test_files_far_apart_get_global_pixel_positions(tmp_path: Path) -> None:
    """Four continents on one Web Mercator grid: positions are just large integers."""
    places = [(-8.2e6, 4.9e6), (2.6e5, 6.25e6), (1.55e7, -4.0e6), (3.6e6, -1.3e5)]
    for k, (x, y) in enumerate(places):
        t = from_origin(x, y, 0.5, 0.5)
        img = np.full((3, 40, 40), k + 1, np.uint8)
        write(tmp_path / "img" / f"t{k}.tif", img, crs="EPSG:3857", transform=t)
        write(
            tmp_path / "mask" / f"t{k}.tif",
            np.ones((40, 40), np.uint8),
            crs="EPSG:3857",
            transform=t,
        )
    cfg = DataConfig(images=[str(tmp_path / "img")], labels=str(tmp_path / "mask"))
    tiles, g = grid.place_catalog(cfg, cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # every file is on the grid: nothing reprojected
    assert (tiles[2].col0 - tiles[0].col0) * 0.5 == pytest.approx(1.55e7 + 8.2e6)
    assert {t.height for t in tiles} == {40}


def test_mask_far_from_its_image_is_named_with_the_distance(tmp_path: Path) -> None:
    img, _ = mosaic(tmp_path / "d", grid=(1, 1), size=64)
    far = from_origin(X0 + 100_000, Y0, RES, RES)
    write(tmp_path / "masks" / "tile_00.tif", np.ones((64, 64), np.uint8), transform=far)
    cfg = DataConfig(images=[str(img)], labels=str(tmp_path / "masks"))
    with pytest.raises(LabelError, match=r"tile_00.tif: this mask lies 100.0 km from its image"):
        grid.place_catalog(cfg, cache=tmp_path / "cache")


def test_off_grid_file_warped_on_read_equals_the_cached_copy(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(1, 2), size=64)
    # a third tile half a pixel off the grid, with its mask
    t = from_origin(X0 + 0.25, Y0 - 64 * RES, RES, RES)
    rng = np.random.default_rng(3)
    data = rng.integers(1, 256, (3, 64, 64)).astype(np.uint8)
    write(img / "tile_09.tif", data, transform=t, nodata=0)
    write(msk / "tile_09.tif", (data[0] > 128).astype(np.uint8), transform=t)
    cfg = DataConfig(images=[str(img)], labels=str(msk))
    cached, g = grid.place_catalog(cfg, cache=tmp_path / "cache")
    assert cached[2].image.parent.name.startswith("aligned-img-") and not cached[2].warp_image
    assert cached[2].mask.parent.name.startswith("aligned-mask-")  # type: ignore[union-attr]
    on_read = GeoRasterDataset(img, masks=msk, native_dtypes=True, memory_budget=0)
    assert on_read.tiles[2].warp_image and on_read.tiles[2].warp_mask
    assert (on_read.tiles[2].row0, on_read.tiles[2].col0) == (cached[2].row0, cached[2].col0)
    t2 = cached[2]
    a_img, a_mask, _ = on_read.read(2, 0, 0, t2.height, t2.width)
    with rasterio.open(t2.image) as src, rasterio.open(t2.mask) as msrc:  # type: ignore[arg-type]
        assert np.array_equal(a_img, src.read())
        assert np.array_equal(a_mask[src.dataset_mask() > 0], msrc.read(1)[src.dataset_mask() > 0])
