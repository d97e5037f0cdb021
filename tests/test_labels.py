"""labels: vector burn (library + `geoseg rasterize`), the cache, matching, class checks, errors."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from data_helpers import RES, X0, Y0, write
from helpers import assert_one_line_error
from typer.testing import CliRunner

from geoseg import labels
from geoseg.cli.main import app
from geoseg.errors import LabelError, OutputExistsError

runner = CliRunner()


def test_burn_atlanta_buildings_on_the_image_grid(real_data: Path, tmp_path: Path) -> None:
    img, vec = real_data / "atlanta_pan_0p5m.tif", real_data / "atlanta_buildings.geojson"
    assert len(gpd.read_file(vec)) == 43
    out = labels.rasterize(vec, img, tmp_path / "mask.tif")
    with rasterio.open(out) as m, rasterio.open(img) as src:
        assert (m.crs, m.transform, m.width, m.height) == (
            src.crs,
            src.transform,
            src.width,
            src.height,
        )
        assert (
            m.dtypes[0] == "uint8" and m.nodata == 255 and m.profile.get("tiled") and m.compression
        )
        a = m.read(1)
        valid = src.dataset_mask() > 0
    assert (a == 1).sum() > 10_000  # 43 buildings of 0.5 m pixels
    assert set(np.unique(a)) <= {0, 1, 255}
    assert np.array_equal(a == 255, ~valid)
    touched = labels.rasterize(vec, img, tmp_path / "touched.tif", all_touched=True)
    with rasterio.open(touched) as m:
        assert (m.read(1) == 1).sum() > (a == 1).sum()
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temp file left


def test_cli_rasterize_writes_and_refuses_to_overwrite(real_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.tif"
    args = [
        "rasterize",
        str(real_data / "atlanta_buildings.geojson"),
        "--like",
        str(real_data / "atlanta_pan_0p5m.tif"),
        "--out",
        str(out),
        "--quiet",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.exists() and str(out) in result.stdout
    assert_one_line_error(runner.invoke(app, args), "exists", "--overwrite")
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_cli_rasterize_albers_labels_with_wrong_declared_crs(
    real_data: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "rasterize",
            str(real_data / "albers_custom_crs_labels.geojson"),
            "--like",
            str(real_data / "albers_custom_crs_30m.tif"),
            "--out",
            str(tmp_path / "m.tif"),
        ],
    )
    assert_one_line_error(
        result, "albers_custom_crs_labels.geojson", "EPSG:4326", "declared CRS", "probably wrong"
    )
    assert not (tmp_path / "m.tif").exists()
    with pytest.raises(LabelError, match=r"labels extent \(-663.*image extent \(-673"):
        labels.rasterize(
            real_data / "albers_custom_crs_labels.geojson",
            real_data / "albers_custom_crs_30m.tif",
            tmp_path / "m.tif",
        )


def test_cli_rasterize_missing_and_corrupt_inputs(real_data: Path, tmp_path: Path) -> None:
    vec = real_data / "atlanta_buildings.geojson"
    assert_one_line_error(
        runner.invoke(
            app,
            [
                "rasterize",
                str(tmp_path / "nope.gpkg"),
                "--like",
                str(real_data / "atlanta_pan_0p5m.tif"),
                "--out",
                str(tmp_path / "a.tif"),
            ],
        ),
        "nope.gpkg",
    )
    assert_one_line_error(
        runner.invoke(
            app,
            [
                "rasterize",
                str(vec),
                "--like",
                str(tmp_path / "nope.tif"),
                "--out",
                str(tmp_path / "b.tif"),
            ],
        ),
        "nope.tif",
    )
    cut = tmp_path / "cut.tif"
    cut.write_bytes((real_data / "atlanta_pan_0p5m.tif").read_bytes()[:300_000])
    assert_one_line_error(
        runner.invoke(
            app, ["rasterize", str(vec), "--like", str(cut), "--out", str(tmp_path / "c.tif")]
        ),
        "cut.tif",
        "truncated",
    )


def test_cli_rasterize_bad_attribute(real_data: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "rasterize",
            str(real_data / "atlanta_buildings.geojson"),
            "--like",
            str(real_data / "atlanta_pan_0p5m.tif"),
            "--out",
            str(tmp_path / "m.tif"),
            "--attribute",
            "no_such_column",
        ],
    )
    assert_one_line_error(result, "no_such_column")


def _squares(tmp_path: Path, values: list[int], crs: str = "EPSG:32631") -> Path:
    geoms = [
        shapely.box(X0 + 2 + 6 * i, Y0 - 8, X0 + 6 + 6 * i, Y0 - 2) for i in range(len(values))
    ]
    path = tmp_path / "squares.gpkg"
    gpd.GeoDataFrame({"cls": values}, geometry=geoms, crs=crs).to_file(path)
    return path


def test_attribute_class_ids_and_nodata_become_ignore(tmp_path: Path) -> None:
    img = np.full((3, 32, 64), 50, np.uint8)
    img[:, :, 60:] = 0  # nodata strip on the right
    like = write(tmp_path / "img.tif", img, nodata=0)
    vec = _squares(tmp_path, [1, 2, 3])
    with rasterio.open(labels.rasterize(vec, like, tmp_path / "m.tif", attribute="cls")) as m:
        a = m.read(1)
    # square i covers x = 2+6i .. 6+6i m -> pixel columns 4+12i .. 12+12i, rows 4..16
    assert (
        (a[4:16, 4:12] == 1).all() and (a[4:16, 16:24] == 2).all() and (a[4:16, 28:36] == 3).all()
    )
    assert (a[:, 60:] == 255).all() and (a[:, :60] != 255).all() and a[0, 0] == 0
    with pytest.raises(OutputExistsError):
        labels.rasterize(vec, like, tmp_path / "m.tif")


def test_labels_in_another_crs_are_reprojected(tmp_path: Path) -> None:
    like = write(tmp_path / "img.tif", np.full((1, 32, 64), 9, np.uint8))
    gdf = gpd.read_file(_squares(tmp_path, [1])).to_crs("EPSG:4326")
    gdf.to_file(tmp_path / "wgs84.geojson")
    with rasterio.open(labels.rasterize(tmp_path / "wgs84.geojson", like, tmp_path / "m.tif")) as m:
        a = m.read(1)
    assert abs(int((a == 1).sum()) - 8 * 12) <= 12


def test_burn_cache_is_reused_and_keyed_by_inputs(tmp_path: Path) -> None:
    a = write(tmp_path / "a.tif", np.full((1, 32, 64), 9, np.uint8))
    b = write(
        tmp_path / "b.tif",
        np.full((1, 32, 64), 9, np.uint8),
        transform=rasterio.transform.from_origin(X0 + 1000, Y0, RES, RES),
    )  # no polygon here
    vec = _squares(tmp_path, [1, 1])
    outs = labels.burn_cached(vec, [a, b], tmp_path / "cache")
    assert outs[0].parent.name.startswith("labels-") and outs[0].parent.parent == tmp_path / "cache"
    with rasterio.open(outs[0]) as m0, rasterio.open(outs[1]) as m1:
        assert (m0.read(1) == 1).sum() > 0 and (m1.read(1) == 0).all()
    mtime = outs[0].stat().st_mtime_ns
    assert labels.burn_cached(vec, [a, b], tmp_path / "cache") == outs
    assert outs[0].stat().st_mtime_ns == mtime  # reused, not burned again
    other = labels.burn_cached(vec, [a, b], tmp_path / "cache", all_touched=True)
    assert other[0].parent != outs[0].parent


def test_labels_outside_every_image(tmp_path: Path) -> None:
    a = write(tmp_path / "a.tif", np.full((1, 32, 64), 9, np.uint8))
    far = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 10, 10)], crs="EPSG:32631")
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(LabelError, match="far.gpkg.*no label polygon overlaps a.tif"):
        labels.burn_cached(tmp_path / "far.gpkg", [a], tmp_path / "cache")


def test_match_masks_by_name_then_by_overlap(tmp_path: Path) -> None:
    img = np.ones((1, 8, 8), np.uint8)
    i1 = write(tmp_path / "img" / "scene_1.tif", img)
    i2 = write(
        tmp_path / "img" / "scene_2.tif",
        img,
        transform=rasterio.transform.from_origin(X0 + 100, Y0, RES, RES),
    )
    i3 = write(
        tmp_path / "img" / "scene_3.tif",
        img,
        transform=rasterio.transform.from_origin(X0 + 900, Y0, RES, RES),
    )
    m1 = write(tmp_path / "mask" / "scene_1_mask.tif", img)
    m2 = write(
        tmp_path / "mask" / "whatever.tif",
        img,
        transform=rasterio.transform.from_origin(X0 + 101, Y0, RES, RES),
    )
    assert labels.match_masks([i1, i2, i3], [m1, m2]) == [m1, m2, None]


def test_class_values_checked_against_num_classes() -> None:
    labels.check_classes([0, 1, 255], 2, 255, "m.tif")
    with pytest.raises(LabelError, match="m.tif.*label value.*3.*--num-classes is too small"):
        labels.check_classes([0, 1, 3, 255], 2, 255, "m.tif")


def test_mapping_lut() -> None:
    lut = labels.mapping_lut({0: 255, 1: 0, 2: 1}, nodata=None)
    assert lut[0] == 255 and lut[1] == 0 and lut[2] == 1 and lut[7] == 7
    assert labels.mapping_lut({}, nodata=200)[200] == 255


def test_shapefile_labels(tmp_path: Path) -> None:
    like = write(tmp_path / "img.tif", np.full((1, 32, 64), 9, np.uint8))
    (tmp_path / "shp").mkdir()
    gpd.read_file(_squares(tmp_path, [1])).to_file(tmp_path / "shp" / "b.shp")
    assert (tmp_path / "shp" / "b.dbf").exists()
    with rasterio.open(labels.rasterize(tmp_path / "shp" / "b.shp", like, tmp_path / "m.tif")) as m:
        assert (m.read(1) == 1).sum() == 8 * 12


def test_folder_of_vector_files_is_one_layer(tmp_path: Path) -> None:
    """Polygons split by area (one GeoJSON per block, in any CRS) burn like one file."""
    like = write(tmp_path / "img.tif", np.full((1, 32, 64), 9, np.uint8))
    left = shapely.box(X0 + 4 * RES, Y0 - 20 * RES, X0 + 16 * RES, Y0 - 4 * RES)
    right = shapely.box(X0 + 40 * RES, Y0 - 20 * RES, X0 + 52 * RES, Y0 - 4 * RES)
    folder = tmp_path / "footprints"
    folder.mkdir()
    gpd.GeoDataFrame(geometry=[left], crs="EPSG:32631").to_file(folder / "a.geojson")
    gpd.GeoDataFrame(geometry=[right], crs="EPSG:32631").to_crs("EPSG:4326").to_file(
        folder / "b.geojson"
    )
    assert labels.vector_folder(folder) == [folder / "a.geojson", folder / "b.geojson"]
    assert labels.is_vector_source(folder) and not labels.vector_folder(like.parent)
    gdf = labels.read_vector(folder)
    assert len(gdf) == 2 and gdf.crs == "EPSG:32631"
    with rasterio.open(labels.rasterize(folder, like, tmp_path / "m.tif")) as m:
        a = m.read(1)
    assert (a[:, :30] == 1).sum() > 100 and (a[:, 30:] == 1).sum() > 100
