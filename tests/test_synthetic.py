"""The built-in demo data: georeferencing, masks vs polygons, nodata, determinism, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from helpers import assert_one_line_error
from pyproj import Transformer
from rasterio import features
from rasterio.enums import ColorInterp
from typer.testing import CliRunner

from geoseg import synthetic
from geoseg.cli.main import app
from geoseg.errors import ConfigError, OutputExistsError

runner = CliRunner()


def _read(path: Path) -> tuple[np.ndarray, dict, rasterio.Affine, rasterio.crs.CRS, dict]:
    with rasterio.open(path) as src:
        return src.read(), src.profile, src.transform, src.crs, src.tags(ns="IMAGE_STRUCTURE")


def test_layout_and_names(demo_data: synthetic.DemoData) -> None:
    assert [p.name for p in demo_data.images] == [f"tile_{i:02d}.tif" for i in range(4)]
    assert [p.parent.name for p in demo_data.images] == ["images"] * 4
    assert [p.name for p in demo_data.masks] == [p.name for p in demo_data.images]
    assert [p.parent.name for p in demo_data.masks] == ["masks"] * 4
    assert demo_data.buildings.name == "buildings.gpkg" and demo_data.buildings.is_file()
    assert demo_data.preview.name == "preview.png"
    assert demo_data.preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No temporary or sidecar files are left behind.
    out = demo_data.buildings.parent
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".xml"]


def test_images_are_tiled_compressed_rgb_geotiffs_at_half_metre(
    demo_data: synthetic.DemoData,
) -> None:
    epsgs = []
    for path, wkt in zip(demo_data.images, demo_data.crs_wkts, strict=True):
        with rasterio.open(path) as src:
            assert src.driver == "GTiff"
            assert (src.count, src.width, src.height) == (3, 256, 256)
            assert src.dtypes == ("uint8",) * 3
            assert src.nodatavals == (0.0,) * 3
            assert src.res == (0.5, 0.5)
            assert src.transform.b == 0 and src.transform.d == 0 and src.transform.e < 0  # north-up
            assert src.crs.is_projected
            assert src.crs.to_wkt() == wkt
            assert src.profile["tiled"] and src.block_shapes == [(128, 128)] * 3
            assert src.compression.name.lower() == "deflate"
            assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
            assert src.descriptions == ("red", "green", "blue")
            assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
            assert not src.tags().get("TIFFTAG_DATETIME")
            epsgs.append(src.crs.to_epsg())
    assert epsgs == [32631, 32631, 32631, 32632]


def test_tiles_are_neighbours_and_the_other_zone_tile_is_where_it_should_be(
    demo_data: synthetic.DemoData,
) -> None:
    bounds = []
    for path in demo_data.images:
        with rasterio.open(path) as src:
            bounds.append(src.bounds)
    # tile_00 | tile_01 on top, tile_02 below tile_00 (2 x 2 grid, 128 m tiles).
    assert bounds[1].left == bounds[0].right and bounds[1].top == bounds[0].top
    assert bounds[2].top == bounds[0].bottom and bounds[2].left == bounds[0].left
    # tile_03 (EPSG:32632) lies diagonally next to tile_00 once reprojected, near 6°E, 47.6°N.
    to31 = Transformer.from_crs(32632, 32631, always_xy=True)
    b3 = bounds[3]
    cx, cy = to31.transform((b3.left + b3.right) / 2, (b3.bottom + b3.top) / 2)
    assert cx == pytest.approx(bounds[0].left + 1.5 * 128, abs=1.0)
    assert cy == pytest.approx(bounds[0].top - 1.5 * 128, abs=1.0)
    assert 150_000 < b3.left < 400_000  # a western easting of zone 32, not zone 31's
    lon, lat = Transformer.from_crs(32632, 4326, always_xy=True).transform(b3.left, b3.top)
    assert 5.5 < lon < 6.5 and 47 < lat < 48.5


def test_masks_share_the_image_grid(demo_data: synthetic.DemoData) -> None:
    for image, mask in zip(demo_data.images, demo_data.masks, strict=True):
        with rasterio.open(image) as a, rasterio.open(mask) as b:
            assert (b.crs, b.transform, b.width, b.height) == (
                a.crs,
                a.transform,
                a.width,
                a.height,
            )
            assert b.count == 1 and b.dtypes == ("uint8",) and b.nodata == 255
            assert b.profile["tiled"] and b.compression.name.lower() == "deflate"
            values = set(np.unique(b.read(1)).tolist())
            assert values <= {0, 1, 255} and 1 in values and 0 in values


def test_mask_is_255_exactly_where_the_image_is_nodata(demo_data: synthetic.DemoData) -> None:
    nodata_tiles = []
    for image, mask in zip(demo_data.images, demo_data.masks, strict=True):
        rgb, *_ = _read(image)
        m, *_ = _read(mask)
        nodata = (rgb == 0).all(axis=0)
        assert ((rgb == 0).any(axis=0) == nodata).all(), "nodata must be 0 on all bands at once"
        np.testing.assert_array_equal(m[0] == 255, nodata)
        if nodata.any():
            nodata_tiles.append(image.name)
            assert 0.02 < nodata.mean() < 0.4
            assert not nodata[:, -1].any()  # a west border, not the whole tile
    assert nodata_tiles == ["tile_00.tif"]


def test_polygons_rasterise_back_to_the_masks(demo_data: synthetic.DemoData) -> None:
    gdf = gpd.read_file(demo_data.buildings, layer="buildings")
    assert gdf.crs.to_epsg() == 32631
    assert set(gdf["class"]) == {1}
    assert set(gdf["tile"]) == {f"tile_{i:02d}" for i in range(4)}
    assert gdf.geometry.is_valid.all() and (gdf.geometry.area > 0).all()
    assert len(gdf) == demo_data.building_count
    for image, mask in zip(demo_data.images, demo_data.masks, strict=True):
        with rasterio.open(mask) as src:
            m = src.read(1)
            # All polygons (also other tiles' pieces that reach in), reprojected to the tile CRS.
            shapes = gdf.to_crs(src.crs).geometry
            burnt = features.rasterize(
                ((g, 1) for g in shapes), out_shape=m.shape, transform=src.transform, dtype="uint8"
            )
        valid = m != 255
        agreement = (burnt[valid] == m[valid]).mean()
        assert agreement >= 0.99, f"{image.name}: {agreement:.4f}"
        # Polygons are clipped to the valid pixels: none reach into the nodata border.
        assert not burnt[~valid].any()


def test_tile_column_names_the_tile_each_piece_was_clipped_to(
    demo_data: synthetic.DemoData,
) -> None:
    gdf = gpd.read_file(demo_data.buildings, layer="buildings")
    for image in demo_data.images:
        with rasterio.open(image) as src:
            pieces = gdf[gdf["tile"] == image.stem].to_crs(src.crs)
            minx, miny, maxx, maxy = pieces.total_bounds
            b = src.bounds
            assert minx >= b.left - 1e-6 and maxx <= b.right + 1e-6
            assert miny >= b.bottom - 1e-6 and maxy <= b.top + 1e-6


def test_valid_pixels_are_never_zero(demo_data: synthetic.DemoData) -> None:
    for image, mask in zip(demo_data.images, demo_data.masks, strict=True):
        rgb, *_ = _read(image)
        m, *_ = _read(mask)
        assert (rgb[:, m[0] != 255] >= 1).all()


def test_building_fraction_is_sane(demo_data: synthetic.DemoData) -> None:
    assert 0.08 < demo_data.building_fraction < 0.35
    for mask in demo_data.masks:
        m, *_ = _read(mask)
        assert (m == 1).sum() > 500  # every tile has buildings


def test_colour_alone_does_not_separate_buildings(demo_data: synthetic.DemoData) -> None:
    """No threshold on one band or on brightness finds the buildings (roofs overlap the ground)."""
    best = 0.0
    for image, mask in zip(demo_data.images, demo_data.masks, strict=True):
        rgb, *_ = _read(image)
        m, *_ = _read(mask)
        valid = m[0] != 255
        truth = m[0][valid] == 1
        channels = [rgb[b][valid] for b in range(3)] + [rgb[:, valid].mean(axis=0).astype(np.uint8)]
        for values in channels:
            pos = np.bincount(values[truth], minlength=256)
            neg = np.bincount(values[~truth], minlength=256)
            for above in (True, False):
                tp = np.cumsum(pos[::-1])[::-1] if above else np.cumsum(pos)
                fp = np.cumsum(neg[::-1])[::-1] if above else np.cumsum(neg)
                iou = tp / (fp + pos.sum())
                best = max(best, float(iou.max()))
    assert best < 0.5, f"a colour threshold reaches building IoU {best:.2f}"


def _digest(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_same_seed_gives_byte_identical_rasters(tmp_path: Path) -> None:
    a = synthetic.make_demo_data(tmp_path / "a", tiles=2, size=96, seed=3)
    b = synthetic.make_demo_data(tmp_path / "b", tiles=2, size=96, seed=3)
    c = synthetic.make_demo_data(tmp_path / "c", tiles=2, size=96, seed=4)
    assert _digest(a.images + a.masks) == _digest(b.images + b.masks)
    assert _digest(a.images) != _digest(c.images)
    ga = gpd.read_file(a.buildings)
    gb = gpd.read_file(b.buildings)
    assert ga.geometry.geom_equals_exact(gb.geometry, tolerance=0).all()


def test_one_tile_has_the_nodata_border_and_no_other_zone(tmp_path: Path) -> None:
    demo = synthetic.make_demo_data(tmp_path / "one", tiles=1, size=64, seed=0)
    m, _, _, crs, _ = _read(demo.masks[0])
    assert crs.to_epsg() == 32631 and (m == 255).any() and (m == 1).any()


def test_library_rejects_bad_arguments_and_non_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="size=10"):
        synthetic.make_demo_data(tmp_path / "x", size=10)
    with pytest.raises(ConfigError, match="tiles=0"):
        synthetic.make_demo_data(tmp_path / "x", tiles=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        synthetic.make_demo_data(tmp_path / "full", tiles=1, size=64)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_and_drops_stale_tiles(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    synthetic.make_demo_data(out, tiles=3, size=64, seed=1)
    demo = synthetic.make_demo_data(out, tiles=2, size=64, seed=2, overwrite=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["tile_00.tif", "tile_01.tif"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["tile_00.tif", "tile_01.tif"]
    assert set(gpd.read_file(demo.buildings)["tile"]) <= {"tile_00", "tile_01"}


def test_cli_writes_the_files_and_prints_where_they_are(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(
        app, ["demo-data", str(out), "--tiles", "2", "--size", "96", "--seed", "1", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["images", "masks", "buildings", "preview"]
    assert str(out / "images") in lines[0] and str(out / "masks") in lines[1]
    assert str(out / "buildings.gpkg") in lines[2] and str(out / "preview.png") in lines[3]
    assert sorted(p.name for p in (out / "images").glob("*.tif")) == ["tile_00.tif", "tile_01.tif"]
    assert (out / "buildings.gpkg").is_file() and (out / "preview.png").is_file()


def test_cli_refuses_a_non_empty_folder_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "something.txt").write_text("x")
    result = runner.invoke(app, ["demo-data", str(out), "--tiles", "1", "--size", "64", "--quiet"])
    assert_one_line_error(result, str(out), "--overwrite")
    again = runner.invoke(
        app, ["demo-data", str(out), "--tiles", "1", "--size", "64", "--quiet", "--overwrite"]
    )
    assert again.exit_code == 0, again.output
    assert (out / "images" / "tile_00.tif").is_file()


@pytest.mark.parametrize(("flag", "value"), [("--tiles", "0"), ("--size", "10"), ("--seed", "-1")])
def test_cli_bad_values_exit_2(tmp_path: Path, flag: str, value: str) -> None:
    result = runner.invoke(app, ["demo-data", str(tmp_path / "demo"), flag, value])
    assert result.exit_code == 2
    assert flag in result.stderr
    assert not (tmp_path / "demo").exists()
