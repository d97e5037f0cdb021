"""geoseg.io: file kinds, output claims, atomic and verified writes, reading errors, the mask
format and its old dialects, fingerprints, strict JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from helpers import REPO, assert_one_line_error, leftovers, make_geotiff
from typer.testing import CliRunner

from geoseg import evaluate, io, labels
from geoseg.cli.main import app
from geoseg.errors import (
    ConfigError,
    InputNotFoundError,
    LabelError,
    OutputBusyError,
    OutputExistsError,
    OutputWriteError,
    RasterError,
)

runner = CliRunner()
GRID = dict(
    crs="EPSG:32631",
    transform=rasterio.transform.from_origin(500000, 5000000, 0.5, 0.5),
    width=40,
    height=30,
)


# ----------------------------------------------------------------------------- file kinds


def test_one_suffix_table_for_training_and_evaluate(tmp_path: Path) -> None:
    # .parquet was vector labels for training but not for evaluate; .gml the other way round.
    for name in ("a.gpkg", "a.geojson", "a.json", "a.shp", "a.fgb", "a.gml", "a.kml", "a.parquet"):
        assert io.is_vector(name) and labels.is_vector(name) and not io.is_raster(name), name
    for name in ("a.tif", "a.TIFF", "a.vrt", "a.img", "a.jp2", "a.png", "a.jpg"):
        assert io.is_raster(name) and not io.is_vector(name), name
    assert not set(io.RASTER_SUFFIXES) & set(io.VECTOR_SUFFIXES)
    assert set(io.VECTOR_DRIVERS) <= set(io.VECTOR_SUFFIXES)
    assert set(io.CATALOG_SUFFIXES) <= set(io.RASTER_SUFFIXES)
    # an unknown ending: GDAL decides
    odd = make_geotiff(tmp_path / "scene.dat", size=(8, 8), count=1)
    assert io.file_kind(odd) == "raster"
    (tmp_path / "notes.dat").write_text("hello")
    assert io.file_kind(tmp_path / "notes.dat") == "vector"
    with pytest.raises(InputNotFoundError):
        io.file_kind(tmp_path / "missing.gml")


def test_gml_truth_is_scored_as_polygons_and_parquet_is_a_vector(tmp_path: Path) -> None:
    boxes = [shapely.box(500000, 5000000, 500010, 5000010)]
    truth = tmp_path / "truth.gml"
    gpd.GeoDataFrame(geometry=boxes, crs="EPSG:32631").to_file(truth, driver="GML")
    pred = tmp_path / "pred.gpkg"
    gpd.GeoDataFrame(geometry=boxes, crs="EPSG:32631").to_file(pred)
    report = evaluate.evaluate(pred, truth)
    assert report["mode"] == "objects" and report["tp"] == 1
    # GeoParquet is a vector file everywhere; without pyarrow it says what to install.
    pq = tmp_path / "truth.parquet"
    try:
        gpd.GeoDataFrame(geometry=boxes, crs="EPSG:32631").to_parquet(pq)
    except ImportError:
        pq.write_bytes(b"PAR1 not really")
        assert_one_line_error(
            runner.invoke(app, ["evaluate", str(pred), str(pq)]), "truth.parquet", "pyarrow"
        )
    else:
        assert evaluate.evaluate(pred, pq)["tp"] == 1


def test_vector_driver_refuses_unknown_endings() -> None:
    assert io.vector_driver("a.GPKG") == "GPKG" and io.vector_driver("a.fgb") == "FlatGeobuf"
    with pytest.raises(ConfigError, match="unknown vector format '.txt'"):
        io.vector_driver("a.txt")


# ----------------------------------------------------------------------------- output guard


def test_check_output_refuses_existing_and_inputs(tmp_path: Path) -> None:
    src = make_geotiff(tmp_path / "in" / "image.tif")
    out = tmp_path / "out.tif"
    assert io.check_output(out) == out
    out.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="out.tif exists; pass --overwrite"):
        io.check_output(out)
    io.check_output(out, overwrite=True)
    # the same file under another name: a relative path, '..', a symlink
    other = tmp_path / "in" / ".." / "in" / "image.tif"
    link = tmp_path / "link.tif"
    link.symlink_to(src)
    for alias in (other, link, Path(os.path.relpath(src))):
        with pytest.raises(ConfigError, match="is also an input"):
            io.check_output(alias, overwrite=True, inputs=[src])
    with pytest.raises(ConfigError, match="choose another --json"):
        io.check_output(src, overwrite=True, inputs=[None, src], option="--json")


def test_atomic_write_replaces_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.txt"
    io.write_text(out, "one")
    assert out.read_text() == "one"
    with pytest.raises(ValueError, match="boom"), io.atomic_write(out, overwrite=True) as tmp:
        tmp.write_text("half")
        raise ValueError("boom")
    assert out.read_text() == "one" and leftovers(tmp_path) == []
    with pytest.raises(OutputExistsError):
        io.write_text(out, "two", overwrite=False)


def test_a_failed_cleanup_never_hides_the_first_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Path, *a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    with pytest.raises(ValueError, match="the real problem"):
        with io.atomic_write(tmp_path / "x.txt") as tmp:
            tmp.write_text("x")
            monkeypatch.setattr(Path, "unlink", refuse)
            monkeypatch.setattr(Path, "rmdir", refuse)
            raise ValueError("the real problem")


def test_write_errors_name_the_output_not_the_temp(tmp_path: Path) -> None:
    out = tmp_path / "x.txt"
    with pytest.raises(OutputWriteError, match=r"x.txt: could not be written \(No space") as err:
        with io.atomic_write(out) as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    assert ".partial" not in str(err.value) and leftovers(tmp_path) == []


_HOLDER = textwrap.dedent(
    """
    import sys
    from geoseg import io
    with io.claim(sys.argv[1]) as out:
        tmp = out.temp()
        tmp.write_text("from the first run")
        print("claimed", flush=True)
        if sys.stdin.readline().strip() == "commit":
            out.commit(tmp)
    """
)


def _holder(out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
    return proc


def test_two_processes_cannot_claim_one_output(tmp_path: Path) -> None:
    out = tmp_path / "mask.tif"
    first = _holder(out)
    try:
        with pytest.raises(
            OutputBusyError, match=f"being written by another geoseg run .pid {first.pid}"
        ):
            io.claim(out, overwrite=True)
    finally:
        first.communicate("commit\n", timeout=60)
    assert first.returncode == 0 and out.read_text() == "from the first run"
    with pytest.raises(OutputExistsError):  # the first run finished: now it simply exists
        io.claim(out)
    with io.claim(out, overwrite=True) as second:
        tmp = second.temp()
        tmp.write_text("second")
        second.commit(tmp)
    assert out.read_text() == "second" and leftovers(tmp_path) == []


def test_a_killed_run_leaves_its_claim_and_temps_to_the_next(tmp_path: Path) -> None:
    out = tmp_path / "mask.tif"
    first = _holder(out)
    first.kill()  # like a power cut: no cleanup ran, the kernel drops the lock
    first.wait(timeout=60)
    assert any(".partial-" in p.name for p in tmp_path.iterdir())
    with io.claim(out) as second:  # not busy; the dead run's temporary file is removed
        assert not any(".partial-" in p.name for p in tmp_path.iterdir())
        io.write_text(second, "mine")
    assert out.read_text() == "mine" and leftovers(tmp_path) == []


def test_a_live_claim_makes_infer_fail_in_one_line(tmp_path: Path) -> None:
    from test_infer import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    src = make_geotiff(tmp_path / "img.tif", size=(40, 40))
    out = tmp_path / "mask.tif"
    with io.claim(out):  # another run is writing mask.tif
        result = runner.invoke(app, ["infer", str(ckpt), str(src), "--out", str(out)])
        assert_one_line_error(result, "mask.tif", "being written by another geoseg run")
    assert not out.exists()


def test_unwritable_folder_is_one_write_error(tmp_path: Path) -> None:
    with pytest.raises(OutputWriteError, match="could not be written"):
        io.claim("/proc/geoseg-test/out.tif")


# ----------------------------------------------------------------------------- verified writes


def test_verify_raster_finds_truncated_files(tmp_path: Path) -> None:
    good = tmp_path / "m.tif"
    io.write_mask(np.random.default_rng(0).integers(0, 2, (700, 900), dtype=np.uint8), good, GRID)
    io.verify_raster(good)
    data = good.read_bytes()
    for keep in (len(data) - 100, len(data) // 2, 200):
        cut = tmp_path / f"cut{keep}.tif"
        cut.write_bytes(data[:keep])
        with pytest.raises(RasterError, match=f"cut{keep}.tif"):
            io.verify_raster(cut)


def test_open_raster_and_reading_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="nope.tif: no such file"):
        io.open_raster(tmp_path / "nope.tif")
    (tmp_path / "text.tif").write_text("not a raster")
    with pytest.raises(RasterError, match="text.tif: not a readable raster"):
        io.open_raster(tmp_path / "text.tif")
    plain = make_geotiff(tmp_path / "plain.tif", crs=None)
    with pytest.raises(RasterError, match="plain.tif: has no CRS"):
        io.open_raster(plain, require_crs=True)
    big = make_geotiff(tmp_path / "big.tif", size=(512, 512), tiled=True, seed=1)
    data = big.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 6 // 10])
    with io.open_raster(tmp_path / "cut.tif") as src:  # the header is intact: opens fine
        with pytest.raises(RasterError, match="cut.tif: cannot read its pixels .*truncated"):
            with io.reading(tmp_path / "cut.tif"):
                src.read()


def test_read_vector_errors(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        io.read_vector(tmp_path / "nope.gpkg")
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(LabelError, match="bad.geojson: cannot read polygons"):
        io.read_vector(tmp_path / "bad.geojson")


def test_write_vector_every_driver_round_trips(tmp_path: Path) -> None:
    gdf = gpd.GeoDataFrame(
        {"value": [1, 2]},
        geometry=[shapely.box(0, 0, 1, 1), shapely.box(2, 2, 3, 3)],
        crs="EPSG:32631",
    )
    for suffix in io.VECTOR_DRIVERS:
        out = tmp_path / f"v{suffix}"
        io.write_vector(gdf, out, layer="things")
        back = gpd.read_file(out)
        assert len(back) == 2 and back.crs == gdf.crs, suffix
    assert {p.name for p in tmp_path.glob("v.*")} >= {"v.shp", "v.dbf", "v.prj", "v.shx"}
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- the mask format


def test_write_mask_is_the_mask_format(tmp_path: Path) -> None:
    mask = np.zeros((30, 40), np.uint8)
    mask[5:10, 5:20] = 2
    mask[0, :] = 255
    out = io.write_mask(mask, tmp_path / "m.tif", GRID, class_names=["bg", "house", "road"])
    with rasterio.open(out) as src:
        assert src.dtypes == ("uint8",) and src.nodata == 255 and src.count == 1
        assert src.block_shapes == [(512, 512)] and src.compression.value == "DEFLATE"
        assert src.crs == GRID["crs"] and src.transform == GRID["transform"]
        assert src.tags()["class_names"] == '["bg", "house", "road"]'
        assert src.tags()["class_ids"] == "[0, 1, 2]"
        assert not any(k.upper().startswith("CLASS_") for k in src.tags(1))  # one dialect
        cmap = src.colormap(1)
        assert cmap[255][3] == 0 and cmap[1] == io.PALETTE[1]
        assert np.array_equal(src.read(1), mask)
        assert io.mask_class_names(src) == ["bg", "house", "road"]


@pytest.mark.parametrize(
    ("dataset_tags", "band_tags", "expected"),
    [
        ({"class_names": '["a", "b"]'}, {}, {0: "a", 1: "b"}),
        ({"class_names": '["a", "c"]', "class_ids": "[0, 5]"}, {}, {0: "a", 5: "c"}),
        ({"class_names": "background, building"}, {}, {0: "background", 1: "building"}),
        ({}, {"CLASS_0": "background", "CLASS_3": "tree"}, {0: "background", 3: "tree"}),
        ({}, {"classes": "0=background,1=building,255=nodata"}, {0: "background", 1: "building"}),
        ({}, {}, None),
    ],
    ids=["json", "json+ids", "csv", "band CLASS_<v> (infer < 0.2)", "band classes= (demo)", "none"],
)
def test_class_table_reads_every_dialect_geoseg_has_written(
    tmp_path: Path, dataset_tags: dict, band_tags: dict, expected: dict | None
) -> None:
    path = make_geotiff(tmp_path / "m.tif", np.zeros((8, 8), np.uint8), nodata=255)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(**dataset_tags)
        dst.update_tags(1, **band_tags)
    with rasterio.open(path) as src:
        assert io.class_table(src) == expected
        names = io.mask_class_names(src)
    if expected:
        assert all(names[k] == v for k, v in expected.items())
    else:
        assert names == ["background", "building"]


# ----------------------------------------------------------------------------- fingerprints, JSON


def test_fingerprint_covers_shapefile_parts_and_folders(tmp_path: Path) -> None:
    gdf = gpd.GeoDataFrame({"v": [1]}, geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:32631")
    io.write_vector(gdf, tmp_path / "shp" / "labels.shp")
    before = io.fingerprint([tmp_path / "shp" / "labels.shp"])
    assert {Path(r[0]).suffix for r in before} >= {".shp", ".dbf", ".prj"}
    dbf = tmp_path / "shp" / "labels.dbf"
    os.utime(dbf, ns=(dbf.stat().st_atime_ns, dbf.stat().st_mtime_ns + 10**9))
    assert io.fingerprint([tmp_path / "shp" / "labels.shp"]) != before  # an edited sidecar counts
    assert io.fingerprint([tmp_path / "shp"]) == io.fingerprint([tmp_path / "shp" / "labels.shp"])
    assert io.fingerprint([tmp_path / "missing.tif"]) == [
        [str(tmp_path / "missing.tif"), None, None]
    ]
    assert io.digest({"b": 1, "a": [1, 2]}) == io.digest({"a": [1, 2], "b": 1})
    assert len(io.digest(1)) == 16


def test_write_json_is_strict(tmp_path: Path) -> None:
    report = {"f1": math.nan, "n": np.int64(3), "x": np.float32(0.5), "inf": math.inf, "ok": True}
    out = io.write_json(report, tmp_path / "r.json")
    assert json.loads(out.read_text()) == {"f1": None, "n": 3, "x": 0.5, "inf": None, "ok": True}
    assert "NaN" not in out.read_text() and leftovers(tmp_path) == []
