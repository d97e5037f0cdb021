"""geoseg vectorize: placement in the mask's CRS, holes, seams, clean-up, attributes, output."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from helpers import assert_one_line_error, make_geotiff
from pyproj import CRS, Geod
from rasterio.transform import Affine, from_origin
from typer.testing import CliRunner

from geoseg import vectorize
from geoseg.cli.main import app
from geoseg.errors import ConfigError, OutputExistsError, RasterError

runner = CliRunner()
UTM = "EPSG:32631"


def write_mask(
    path: Path, data: np.ndarray, *, crs=UTM, transform=None, names=None, nodata=255, dtype="uint8"
) -> Path:
    """A class-id GeoTIFF with an optional ``class_names`` tag (as geoseg infer writes)."""
    return make_geotiff(
        path,
        np.asarray(data).astype(dtype),
        crs=crs,
        transform=transform or from_origin(500000, 5000000, 0.5, 0.5),
        nodata=nodata,
        class_names=names,
    )


def seam_mask() -> np.ndarray:
    """100 x 100 mask whose shapes cross the seams of 32-pixel blocks (at 32, 64, 96)."""
    m = np.zeros((100, 100), np.uint8)
    m[10:20, 10:20] = 1  # inside one block
    m[25:40, 28:36] = 1  # crosses row 32 and column 32
    m[50:90, 40:45] = 1  # a U: leaves block (64..96, 32..64) and re-enters it
    m[85:90, 40:75] = 1
    m[50:90, 70:75] = 1
    m[55:75, 52:69] = 1  # a ring with a hole, crossing row 64 and column 64
    m[60:70, 57:66] = 0
    m[30:34, 90:99] = 1  # crosses row 32 ...
    m[30:34, 99] = 2  # ... next to another class (stays apart)
    m[31, 31] = m[32, 32] = 0
    m[5, 63] = m[4, 64] = 1  # touch only at a block corner: two regions
    m[99, 0] = 255  # nodata
    return m


def same_polygons(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    assert len(a) == len(b)
    assert sorted(a.class_id) == sorted(b.class_id)
    ga = shapely.normalize(a.geometry.values.to_numpy())
    gb = shapely.normalize(b.geometry.values.to_numpy())
    # every polygon of one has an equal polygon in the other (same area, no symmetric difference)
    for g in ga:
        eq = [
            h
            for h in gb
            if abs(h.area - g.area) < 1e-6 and shapely.symmetric_difference(g, h).area < 1e-6
        ]
        assert len(eq) == 1, g.wkt
    np.testing.assert_allclose(np.sort(a.area_m2), np.sort(b.area_m2), atol=0.25 / 10)


# ----------------------------------------------------------------------------- placement


ALBERS_WKT = None


def albers_wkt(real_data: Path) -> str:
    with rasterio.open(real_data / "albers_custom_crs_30m.tif") as src:
        return src.crs.to_wkt()


@pytest.mark.parametrize("case", ["utm", "albers", "geographic"])
def test_square_comes_back_exactly_where_its_pixels_are(tmp_path, real_data, case):
    if case == "utm":
        crs, x0, y0, res = UTM, 500000.0, 5000000.0, 0.5
    elif case == "albers":
        crs, x0, y0, res = albers_wkt(real_data), -673425.0, 2130165.0, 30.0
    else:
        crs, x0, y0, res = "EPSG:4326", 2.35, 48.85, 0.0001
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 5:8] = 1  # rows 2..4, columns 5..7
    mask = write_mask(tmp_path / "m.tif", m, crs=crs, transform=from_origin(x0, y0, res, res))
    out = vectorize.vectorize(mask, tmp_path / "fp.gpkg", classes=["building"], min_area_m2=0)
    gdf = gpd.read_file(out, layer="footprints")
    assert len(gdf) == 1
    expected = shapely.box(x0 + 5 * res, y0 - 5 * res, x0 + 8 * res, y0 - 2 * res)
    got = gdf.geometry.iloc[0]
    assert shapely.equals_exact(
        shapely.normalize(got), shapely.normalize(expected), tolerance=res * 1e-9
    )
    assert CRS(gdf.crs).equals(CRS.from_user_input(crs))
    assert gdf.class_id.iloc[0] == 1 and gdf.class_name.iloc[0] == "building"
    if case != "geographic":
        assert gdf.area_m2.iloc[0] == pytest.approx(9 * res * res)
        assert gdf.perimeter_m.iloc[0] == pytest.approx(12 * res)
    assert np.isnan(gdf.confidence.iloc[0])


def test_custom_crs_is_kept_as_wkt_in_the_geopackage(tmp_path, real_data):
    wkt = albers_wkt(real_data)
    mask = write_mask(
        tmp_path / "m.tif",
        np.ones((4, 4), np.uint8),
        crs=wkt,
        transform=from_origin(-673425.0, 2130165.0, 30, 30),
    )
    out = vectorize.vectorize(mask, tmp_path / "fp.gpkg", min_area_m2=0)
    info = pyogrio.read_info(out)
    assert CRS.from_user_input(info["crs"]).equals(CRS.from_wkt(wkt))
    assert "Albers" in CRS.from_user_input(info["crs"]).to_wkt()


def test_holes_are_kept(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[2:12, 2:12] = 1
    m[5:8, 5:9] = 0  # a courtyard of 12 pixels
    gdf = vectorize.polygons(write_mask(tmp_path / "m.tif", m))
    assert len(gdf) == 1
    poly = gdf.geometry.iloc[0]
    assert len(poly.interiors) == 1
    assert poly.area == pytest.approx((100 - 12) * 0.25)
    assert gdf.area_m2.iloc[0] == pytest.approx(88 * 0.25)


def test_nodata_and_background_are_not_polygonised(tmp_path):
    m = np.full((8, 8), 255, np.uint8)
    m[:4] = 0
    assert len(vectorize.polygons(write_mask(tmp_path / "m.tif", m))) == 0


# ----------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("block_size", [32, 7])
def test_blocks_give_the_same_polygons_as_the_whole_mask(tmp_path, block_size):
    mask = write_mask(tmp_path / "m.tif", seam_mask(), names=["background", "building", "road"])
    whole = vectorize.polygons(mask, block_size=4096, min_area_m2=0)
    blocks = vectorize.polygons(mask, block_size=block_size, min_area_m2=0)
    # square, cross, U, ring, strip and the corner pair (two regions) of building, one road
    assert len(whole) == 8
    assert sorted(whole.class_id) == [1] * 7 + [2]
    same_polygons(whole, blocks)
    holes = shapely.get_num_interior_rings
    assert (
        holes(blocks.geometry.values.to_numpy()).sum()
        == holes(whole.geometry.values.to_numpy()).sum()
        == 3
    )
    # (the ring's courtyard and the two pixels taken out of the cross)
    assert blocks.geometry.is_valid.all()
    assert set(blocks.geometry.geom_type) == {"Polygon"}


@pytest.mark.parametrize("grid", ["utm", "geographic", "rotated"])
def test_random_masks_merge_like_the_whole_mask(tmp_path, grid):
    rng = np.random.default_rng(3)
    m = (rng.random((61, 67)) < 0.55).astype(np.uint8)  # many seam crossings and corner contacts
    m[rng.random(m.shape) < 0.05] = 2
    crs, transform = UTM, from_origin(500000, 5000000, 0.5, 0.5)
    if grid == "geographic":  # block origins not exact in binary: seams differ in the last bits
        crs, transform = "EPSG:4326", from_origin(2.3512345, 48.8512345, 0.0001, 0.0001)
    elif grid == "rotated":  # not north-up: bounds-based seam detection over-selects, still exact
        transform = from_origin(500000, 5000000, 0.5, 0.5) @ Affine.rotation(17)
    mask = write_mask(
        tmp_path / "m.tif",
        m,
        crs=crs,
        transform=transform,
        names=["background", "building", "tree"],
    )
    whole = vectorize.polygons(mask, block_size=4096, min_area_m2=0)
    blocks = vectorize.polygons(mask, block_size=13, min_area_m2=0)
    assert len(whole) == len(blocks) > 50
    pixel = abs(transform.determinant)
    for cls in (1, 2):
        a = shapely.union_all(whole[whole.class_id == cls].geometry.values.to_numpy())
        b = shapely.union_all(blocks[blocks.class_id == cls].geometry.values.to_numpy())
        assert shapely.symmetric_difference(a, b).area < 1e-6 * pixel
    np.testing.assert_allclose(
        np.sort(whole.area_m2), np.sort(blocks.area_m2), rtol=1e-9, atol=1e-6 * pixel
    )
    n = shapely.get_num_coordinates
    assert n(whole.geometry.values.to_numpy()).sum() == n(blocks.geometry.values.to_numpy()).sum()
    assert shapely.is_valid(blocks.geometry.values.to_numpy()).all()
    assert shapely.is_valid(whole.geometry.values.to_numpy()).all()


# ----------------------------------------------------------------------------- clean-up


def test_min_area_is_in_square_metres_on_a_geographic_raster(tmp_path):
    res = 0.0001  # ~7.3 m x 11.1 m at 48.85 N: ~81 m² per pixel
    m = np.zeros((20, 20), np.uint8)
    m[2, 2] = 1  # 1 pixel, ~81 m²
    m[10:13, 10:13] = 1  # 9 pixels, ~730 m²
    mask = write_mask(
        tmp_path / "m.tif", m, crs="EPSG:4326", transform=from_origin(2.35, 48.85, res, res)
    )
    everything = vectorize.polygons(mask)
    geod = Geod(ellps="WGS84")
    for geom, area in zip(everything.geometry, everything.area_m2, strict=True):
        assert area == pytest.approx(abs(geod.geometry_area_perimeter(geom)[0]), rel=0.01)
    kept = vectorize.polygons(mask, min_area_m2=200)
    assert len(everything) == 2 and len(kept) == 1
    assert kept.area_m2.iloc[0] == pytest.approx(9 * 81.6, rel=0.02)


def test_simplify_is_in_metres_and_keeps_polygons_valid(tmp_path):
    m = np.zeros((40, 40), np.uint8)
    rows, cols = np.mgrid[:40, :40]
    m[(rows - 20) ** 2 + (cols - 20) ** 2 < 15**2] = 1  # a staircase circle
    mask = write_mask(tmp_path / "m.tif", m)
    exact = vectorize.polygons(mask)
    simple = vectorize.polygons(mask, simplify_m=1.0)  # 2 pixels of 0.5 m
    n = shapely.get_num_coordinates
    assert n(simple.geometry.iloc[0]) < n(exact.geometry.iloc[0]) / 2
    assert simple.geometry.is_valid.all()
    assert shapely.hausdorff_distance(simple.geometry.iloc[0], exact.geometry.iloc[0]) <= 1.0 + 1e-9


def _rotated_rect_mask(angle_deg: float, size: int = 64) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size] + 0.5
    a = np.deg2rad(angle_deg)
    u = (cols - size / 2) * np.cos(a) + (rows - size / 2) * np.sin(a)
    v = -(cols - size / 2) * np.sin(a) + (rows - size / 2) * np.cos(a)
    return ((np.abs(u) < 20) & (np.abs(v) < 10)).astype(np.uint8)


def test_regularize_gives_right_angles_and_valid_polygons(tmp_path):
    m = _rotated_rect_mask(30)
    extra = np.zeros_like(m)
    extra[2:12, 2:8] = 1
    extra[8:12, 2:14] = 1  # an L
    m = np.maximum(m, extra)
    rng = np.random.default_rng(0)
    noise = np.zeros_like(m)
    noise[50:62, 2:14] = rng.random((12, 12)) < 0.7  # ragged blobs
    m = np.maximum(m, noise)
    mask = write_mask(tmp_path / "m.tif", m)
    raw = vectorize.polygons(mask)
    reg = vectorize.polygons(mask, regularize=True)
    geoms = reg.geometry.values.to_numpy()
    assert shapely.is_valid(geoms).all() and (shapely.get_type_id(geoms) == 3).all()
    assert len(reg) == len(raw)
    # The rotated rectangle comes back as a rectangle: 4 corners, all right angles, ~30 degrees.
    big = reg.geometry.iloc[int(np.argmax(reg.area_m2))]
    xy = np.asarray(big.exterior.coords)[:-1]
    assert len(xy) == 4
    edges = np.roll(xy, -1, axis=0) - xy
    unit = edges / np.linalg.norm(edges, axis=1, keepdims=True)
    assert np.abs(np.sum(unit * np.roll(unit, -1, axis=0), axis=1)).max() < 1e-9
    angle = np.rad2deg(np.arctan2(-unit[:, 1], unit[:, 0])) % 90
    assert np.min([abs(angle[0] - 30), abs(angle[0] - 120) % 90]) < 3
    raw_big = raw.geometry.iloc[int(np.argmax(raw.area_m2))]
    assert shapely.intersection(big, raw_big).area / shapely.union(big, raw_big).area > 0.9


def test_regularize_never_returns_invalid_polygons_on_random_shapes(tmp_path):
    rng = np.random.default_rng(1)
    m = (rng.random((48, 48)) < 0.6).astype(np.uint8)
    reg = vectorize.polygons(write_mask(tmp_path / "m.tif", m), regularize=True, simplify_m=0.5)
    assert len(reg) and shapely.is_valid(reg.geometry.values.to_numpy()).all()
    assert set(reg.geometry.geom_type) == {"Polygon"}


# ----------------------------------------------------------------------------- confidence


@pytest.mark.parametrize("dtype", ["float32", "uint8", "uint8/254"])
def test_confidence_is_the_mean_probability_of_the_class(tmp_path, dtype):
    m = np.zeros((40, 40), np.uint8)
    m[2:6, 2:6] = 1  # 16 px at p = 0.8
    m[20:30, 10:20] = 1  # crosses the 16-px seams: 60 px at 0.2, 40 at 0.7
    prob = np.zeros((2, 40, 40), np.float32)
    prob[1, 2:6, 2:6] = 0.8
    prob[1, 20:30, 10:16] = 0.2
    prob[1, 20:30, 16:20] = 0.7
    prob[0] = 1 - prob[1]
    scale = {"float32": 1, "uint8": 255, "uint8/254": 254}[dtype]
    if scale > 1:
        prob = np.round(prob * scale).astype(np.uint8)
    mask = write_mask(tmp_path / "m.tif", m, names=["background", "building"])
    probs = write_mask(tmp_path / "m_prob.tif", prob, dtype=prob.dtype, nodata=None)
    if scale == 254:  # as geoseg infer writes it: p = value / 254, band scale 1/254, 255 nodata
        with rasterio.open(probs, "r+") as dst:
            dst.scales = [1 / 254] * 2
    for block_size in (4096, 16):
        gdf = vectorize.polygons(mask, probabilities=probs, block_size=block_size)
        assert len(gdf) == 2
        conf = dict(zip(gdf.area_m2.round(2), gdf.confidence, strict=True))
        tol = 0.5 / scale + 1e-6
        assert conf[4.0] == pytest.approx(0.8, abs=tol)
        assert conf[25.0] == pytest.approx((60 * 0.2 + 40 * 0.7) / 100, abs=tol)


def test_probability_raster_on_another_grid_is_an_error(tmp_path):
    mask = write_mask(tmp_path / "m.tif", np.ones((8, 8), np.uint8))
    probs = write_mask(
        tmp_path / "p.tif", np.ones((2, 9, 9), np.float32), dtype="float32", nodata=None
    )
    with pytest.raises(RasterError, match="differs from the mask"):
        vectorize.polygons(mask, probabilities=probs)


# ----------------------------------------------------------------------------- output


def test_geopackage_has_named_layer_spatial_index_and_schema(tmp_path):
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 2:5] = m[8:12, 8:14] = 1
    out = vectorize.vectorize(
        write_mask(tmp_path / "m.tif", m), tmp_path / "fp.gpkg", layer="houses", min_area_m2=0
    )
    info = pyogrio.read_info(out, layer="houses")
    assert info["features"] == 2 and info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == vectorize.COLUMNS
    with sqlite3.connect(out) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master")}
    assert "rtree_houses_geom" in tables
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp.gpkg", "m.tif"]  # no temp left


def test_empty_mask_gives_an_empty_layer_with_schema_and_crs(tmp_path):
    out = vectorize.vectorize(
        write_mask(tmp_path / "m.tif", np.zeros((8, 8), np.uint8)), tmp_path / "fp.gpkg"
    )
    info = pyogrio.read_info(out)
    assert info["features"] == 0 and list(info["fields"]) == vectorize.COLUMNS
    assert CRS.from_user_input(info["crs"]).to_epsg() == 32631


@pytest.mark.parametrize("name", ["fp.geojson", "fp.shp"])
def test_format_is_chosen_by_extension(tmp_path, name):
    m = np.zeros((8, 8), np.uint8)
    m[1:3, 1:3] = 1
    out = vectorize.vectorize(write_mask(tmp_path / "m.tif", m), tmp_path / name, min_area_m2=0)
    gdf = gpd.read_file(out)
    assert len(gdf) == 1 and gdf.crs.to_epsg() == 32631
    assert {"class_id", "class_name", "area_m2", "confidence"} <= set(gdf.columns)
    assert ("perim_m" if name.endswith(".shp") else "perimeter_m") in gdf.columns
    assert (
        pyogrio.read_info(out)["driver"]
        == {"fp.geojson": "GeoJSON", "fp.shp": "ESRI Shapefile"}[name]
    )


def test_library_refuses_to_overwrite(tmp_path):
    mask = write_mask(tmp_path / "m.tif", np.ones((4, 4), np.uint8))
    vectorize.vectorize(mask, tmp_path / "fp.gpkg")
    with pytest.raises(OutputExistsError):
        vectorize.vectorize(mask, tmp_path / "fp.gpkg")
    with pytest.raises(ConfigError, match="unknown vector format"):
        vectorize.vectorize(mask, tmp_path / "fp.csv")


def test_class_names_default_without_tags(tmp_path):
    assert vectorize.class_names(write_mask(tmp_path / "a.tif", np.ones((4, 4), np.uint8))) == [
        "background",
        "building",
    ]
    m = np.arange(16, dtype=np.uint8).reshape(4, 4) % 4
    assert vectorize.class_names(write_mask(tmp_path / "b.tif", m))[3] == "class_3"


# ----------------------------------------------------------------------------- CLI


def test_cli_vectorize_writes_footprints(tmp_path):
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 2:5] = 1
    m[9:14, 9:14] = 1
    mask = write_mask(tmp_path / "m.tif", m, names=["background", "building"])
    out = tmp_path / "fp.gpkg"
    r = runner.invoke(
        app,
        [
            "vectorize",
            str(mask),
            "--out",
            str(out),
            "--class",
            "building",
            "--min-area",
            "3",
            "--simplify",
            "0.2",
            "--regularize",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    gdf = gpd.read_file(out, layer="footprints")
    assert len(gdf) == 1 and gdf.area_m2.iloc[0] == pytest.approx(25 * 0.25)


def test_cli_mask_without_crs_is_an_error_unless_allowed(tmp_path):
    mask = write_mask(tmp_path / "m.tif", np.ones((4, 4), np.uint8), crs=None)
    out = tmp_path / "fp.gpkg"
    assert_one_line_error(
        runner.invoke(app, ["vectorize", str(mask), "--out", str(out)]),
        "m.tif",
        "no CRS",
        "--allow-ungeoreferenced",
    )
    assert not out.exists()
    r = runner.invoke(
        app, ["vectorize", str(mask), "--out", str(out), "--allow-ungeoreferenced", "-q"]
    )
    assert r.exit_code == 0, r.output
    assert len(gpd.read_file(out)) == 1


def test_cli_unknown_class_is_an_error(tmp_path):
    mask = write_mask(
        tmp_path / "m.tif", np.ones((4, 4), np.uint8), names=["background", "building"]
    )
    assert_one_line_error(
        runner.invoke(
            app, ["vectorize", str(mask), "--out", str(tmp_path / "fp.gpkg"), "--class", "road"]
        ),
        "m.tif",
        "'road'",
        "building",
        code=2,  # a bad --class value
    )


def test_cli_existing_output_is_an_error(tmp_path):
    mask = write_mask(tmp_path / "m.tif", np.ones((4, 4), np.uint8))
    out = tmp_path / "fp.gpkg"
    out.write_text("keep me")
    assert_one_line_error(
        runner.invoke(app, ["vectorize", str(mask), "--out", str(out)]), "fp.gpkg", "--overwrite"
    )
    assert out.read_text() == "keep me"


def test_real_footprints_burned_and_vectorised_come_back(tmp_path, real_data):
    """SpaceNet Atlanta footprints burned on their 0.5 m grid, vectorised in 256-px blocks."""
    from rasterio.features import rasterize

    from geoseg import evaluate

    truth = gpd.read_file(real_data / "atlanta_buildings.geojson")
    with rasterio.open(real_data / "atlanta_pan_0p5m.tif") as src:
        burned = rasterize(
            ((g, 1) for g in truth.to_crs(src.crs).geometry),
            out_shape=(src.height, src.width),
            transform=src.transform,
            dtype="uint8",
        )
        mask = write_mask(tmp_path / "m.tif", burned, crs=src.crs, transform=src.transform)
    for kwargs in ({}, {"regularize": True, "simplify_m": 0.5}):
        gdf = vectorize.polygons(mask, block_size=256, **kwargs)
        assert gdf.crs.to_epsg() == 32616
        r = evaluate.objects(gdf, truth)
        assert (r["tp"], r["fn"]) == (43, 0)  # every building found, in place
        assert r["fp"] <= 1  # (one thin building is cut in two by the pixel grid)
        assert r["mean_iou"] > 0.9


def test_min_confidence_drops_the_polygons_the_model_is_unsure_of(tmp_path):
    m = np.zeros((40, 40), np.uint8)
    m[2:8, 2:8] = 1  # p 0.9: kept
    m[20:30, 10:20] = 1  # crosses the 16-px seams: 60 px at 0.5, 40 at 0.9 -> 0.66: dropped
    m[30:36, 30:36] = 1  # p 0.75: kept at 0.7, dropped at 0.8
    prob = np.zeros((2, 40, 40), np.float32)
    prob[1, 2:8, 2:8] = 0.9
    prob[1, 20:30, 10:16] = 0.5
    prob[1, 20:30, 16:20] = 0.9
    prob[1, 30:36, 30:36] = 0.75
    prob[0] = 1 - prob[1]
    mask = write_mask(tmp_path / "m.tif", m, names=["background", "building"])
    probs = write_mask(tmp_path / "m_prob.tif", prob, dtype="float32", nodata=None)
    for block_size in (4096, 16):
        kept = {
            t: sorted(
                vectorize.polygons(
                    mask, probabilities=probs, min_confidence=t, block_size=block_size
                ).area_m2.round(2)
            )
            for t in (0.0, 0.7, 0.8)
        }
        assert kept == {0.0: [9.0, 9.0, 25.0], 0.7: [9.0, 9.0], 0.8: [9.0]}
    # with the area filter after it: only the 9 m2 squares are candidates, then both go
    gdf = vectorize.polygons(mask, probabilities=probs, min_confidence=0.7, min_area_m2=10)
    assert len(gdf) == 0


def test_cli_min_confidence_needs_probabilities(tmp_path):
    m = np.zeros((16, 16), np.uint8)
    m[2:8, 2:8] = 1
    mask = write_mask(tmp_path / "m.tif", m, names=["background", "building"])
    out = tmp_path / "fp.gpkg"
    res = runner.invoke(app, ["vectorize", str(mask), "--out", str(out), "--min-confidence", "0.7"])
    assert_one_line_error(res, "m.tif", "min_confidence", "--probabilities", code=2)
    assert not out.exists()
    prob = np.stack([1 - (m * 0.9), m * 0.9]).astype(np.float32)
    probs = write_mask(tmp_path / "m_prob.tif", prob, dtype="float32", nodata=None)
    for t, n in (("0.85", 1), ("0.95", 0)):
        res = runner.invoke(
            app,
            [
                "vectorize",
                str(mask),
                "--out",
                str(out),
                "--probabilities",
                str(probs),
                "--min-confidence",
                t,
                "--overwrite",
                "-q",
            ],
        )
        assert res.exit_code == 0, res.output
        assert len(gpd.read_file(out)) == n
    res = runner.invoke(app, ["vectorize", str(mask), "--out", str(out), "--min-confidence", "1"])
    assert res.exit_code == 2 and "min_confidence" in res.output
