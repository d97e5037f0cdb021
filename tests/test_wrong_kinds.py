"""Files of the wrong kind are refused with one line before any work (issue 11, class 7).

A probability, float, RGB or grey image raster given to ``vectorize`` or ``evaluate`` as a mask,
and Point or LineString files given as labels (``rasterize``, ``train``) or as truth
(``evaluate``): each was accepted silently (empty footprints, F1 0, all-background training).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from helpers import UTM, X0, Y0, assert_one_line_error, leftovers, make_geotiff
from test_infer import make_checkpoint
from typer.testing import CliRunner

from geoseg import evaluate, infer, io, labels
from geoseg.cli.main import app
from geoseg.errors import LabelError

runner = CliRunner()


def _cli(*args: object):
    return runner.invoke(app, [*map(str, args)])


def _mask(path: Path) -> Path:
    m = np.zeros((48, 48), np.uint8)
    m[10:30, 12:40] = 1
    return make_geotiff(path, m, nodata=255, class_names=["background", "building"])


@pytest.fixture(scope="module")
def wrong(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Rasters that are not masks: geoseg infer's probabilities, float, RGB, a grey image."""
    root = tmp_path_factory.mktemp("wrong")
    ck = make_checkpoint(root / "m.ckpt")
    image = make_geotiff(root / "image.tif", size=(48, 48))
    infer.predict_raster(
        image, root / "pred.tif", checkpoint=ck, overlap=8, probabilities=root / "pred_prob.tif"
    )
    rng = np.random.default_rng(0)
    return {
        "probabilities": root / "pred_prob.tif",
        "float": make_geotiff(root / "float.tif", rng.random((48, 48)).astype("float32")),
        "rgb": image,
        "grey": make_geotiff(root / "grey.tif", count=1, size=(48, 48)),
    }


FOUND = {
    "probabilities": ["probability raster", "pred.tif", "--probabilities"],
    "float": ["float32 pixels", "gdal_calc.py"],
    "rgb": ["3 bands", "RGB image"],
    "grey": ["distinct values", "not class ids"],
}


@pytest.mark.parametrize("kind", sorted(FOUND))
def test_vectorize_refuses_a_raster_that_is_not_a_mask(tmp_path, wrong, kind) -> None:
    out = tmp_path / "fp.gpkg"
    line = assert_one_line_error(_cli("vectorize", wrong[kind], "--out", out), wrong[kind].name)
    assert "one band of integer class ids" in line
    for needle in FOUND[kind]:
        assert needle in line
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("kind", sorted(FOUND))
@pytest.mark.parametrize("side", ["prediction", "truth"])
def test_evaluate_refuses_a_raster_that_is_not_a_mask(tmp_path, wrong, kind, side) -> None:
    mask = _mask(tmp_path / "mask.tif")
    pair = (wrong[kind], mask) if side == "prediction" else (mask, wrong[kind])
    report = tmp_path / "report.json"
    line = assert_one_line_error(_cli("evaluate", *pair, "--json", report), wrong[kind].name)
    assert f"a {side} is one band" in line
    for needle in FOUND[kind]:
        assert needle in line
    assert not report.exists() and not leftovers(tmp_path)


def test_evaluate_refuses_a_raster_that_is_not_a_mask_against_polygons(tmp_path, wrong) -> None:
    truth = tmp_path / "truth.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.box(X0, Y0 - 10, X0 + 10, Y0)], crs=UTM).to_file(truth)
    assert_one_line_error(_cli("evaluate", wrong["rgb"], truth), "image.tif", "3 bands")


def test_masks_of_every_dialect_still_pass(tmp_path) -> None:
    # an untagged 0/1 mask, an instance mask's 4 classes, a tagged uint16 mask of 300 classes,
    # and a mask with an alpha band besides
    from rasterio.enums import ColorInterp

    untagged = make_geotiff(tmp_path / "a.tif", (np.arange(48 * 48) % 2).reshape(48, 48))
    classes = make_geotiff(tmp_path / "b.tif", (np.arange(48 * 48) % 4).reshape(48, 48))
    many = make_geotiff(
        tmp_path / "c.tif",
        (np.arange(48 * 48) % 300).reshape(48, 48).astype("uint16"),
        class_names=[f"c{i}" for i in range(300)],
    )
    alpha = make_geotiff(
        tmp_path / "d.tif", np.stack([np.ones((48, 48)), np.full((48, 48), 255)]).astype("uint8")
    )
    with rasterio.open(alpha, "r+") as dst:
        dst.colorinterp = [ColorInterp.gray, ColorInterp.alpha]
    for path in (untagged, classes, many, alpha):
        with rasterio.open(path) as src:
            io.check_mask(src, path)


# ----------------------------------------------------------------------------- points and lines


def _points(path: Path, n: int = 5, kind: str = "point") -> Path:
    xy = [(X0 + 3 + 4 * i, Y0 - 3 - 4 * i) for i in range(n)]
    geoms = (
        [shapely.Point(p) for p in xy]
        if kind == "point"
        else [shapely.LineString([p, (p[0] + 3, p[1])]) for p in xy]
    )
    gpd.GeoDataFrame({"value": [1] * n}, geometry=geoms, crs=UTM).to_file(path)
    return path


@pytest.mark.parametrize("kind", ["point", "line"])
def test_rasterize_refuses_point_or_line_labels(tmp_path, kind) -> None:
    image = make_geotiff(tmp_path / "image.tif", size=(48, 48))
    pts = _points(tmp_path / f"{kind}s.gpkg", kind=kind)
    out = tmp_path / "mask.tif"
    found = "Point" if kind == "point" else "LineString"
    line = assert_one_line_error(
        _cli("rasterize", pts, "--like", image, "--out", out), pts.name, found, "buffer"
    )
    assert "labels must be polygons" in line
    assert not out.exists() and not leftovers(tmp_path)


def test_a_few_points_among_polygons_are_left_out_with_a_warning(tmp_path, caplog) -> None:
    path = tmp_path / "mixed.gpkg"
    geoms = [shapely.box(X0 + 2, Y0 - 12, X0 + 12, Y0 - 2), shapely.Point(X0 + 20, Y0 - 20)]
    gpd.GeoDataFrame(geometry=geoms, crs=UTM).to_file(path)
    with caplog.at_level("WARNING"):
        gdf = labels.read_vector(path)
    assert len(gdf) == 1 and gdf.geometry.iloc[0].area == 100
    assert "1 Point geometries without an area are left out of the labels" in caplog.text


def test_train_refuses_point_labels(tmp_path) -> None:
    images = tmp_path / "images"
    make_geotiff(images / "a.tif", size=(128, 128))
    pts = _points(tmp_path / "points.gpkg")
    out = tmp_path / "run"
    res = _cli("train", images, "--labels", pts, "--out", out, "--epochs", "1")
    assert_one_line_error(res, "points.gpkg", "Point", "labels must be polygons")
    assert not leftovers(tmp_path) and not out.exists()  # not even an empty run folder


@pytest.mark.parametrize("prediction_kind", ["vector", "raster"])
def test_evaluate_refuses_point_truth(tmp_path, prediction_kind) -> None:
    truth = _points(tmp_path / "truth.geojson")
    if prediction_kind == "vector":
        pred = tmp_path / "pred.gpkg"
        gpd.GeoDataFrame(geometry=[shapely.box(X0 + 2, Y0 - 12, X0 + 12, Y0 - 2)], crs=UTM).to_file(
            pred
        )
    else:
        pred = _mask(tmp_path / "pred.tif")
    report = tmp_path / "r.json"
    line = assert_one_line_error(
        _cli("evaluate", pred, truth, "--json", report), "truth.geojson", "5 Point"
    )
    assert "truth must be polygons" in line
    assert not report.exists() and not leftovers(tmp_path)
    with pytest.raises(LabelError, match="prediction must be polygons"):
        evaluate.objects(truth, truth)
