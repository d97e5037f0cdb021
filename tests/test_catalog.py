"""catalog: every form of IMAGES, the per-file index, and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_helpers import write

from geoseg import catalog
from geoseg.errors import CatalogError, InputNotFoundError, RasterError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    img = np.ones((3, 8, 8), np.uint8)
    write(tmp_path / "a" / "one.tif", img)
    write(tmp_path / "a" / "deep" / "two.TIF", img)
    write(tmp_path / "a" / "three.tiff", img)
    (tmp_path / "a" / "notes.txt").write_text("not a raster")
    return tmp_path


def test_folder_is_searched_recursively_for_geotiffs(tree: Path) -> None:
    found = catalog.find_rasters(str(tree / "a"))
    assert sorted(p.name for p in found) == ["one.tif", "three.tiff", "two.TIF"]


def test_glob_with_double_star(tree: Path) -> None:
    found = catalog.find_rasters([str(tree / "a" / "**" / "*.tif")])
    assert [p.name for p in found] == ["one.tif"]
    found = catalog.find_rasters([str(tree / "a" / "*.tif*")])
    assert sorted(p.name for p in found) == ["one.tif", "three.tiff"]


def test_list_file_paths_are_relative_to_the_file(tree: Path) -> None:
    listing = tree / "list.txt"
    listing.write_text(f"# comment\na/one.tif\n\n{tree / 'a' / 'deep' / 'two.TIF'}\n")
    assert catalog.find_rasters(str(listing)) == [
        tree / "a" / "one.tif",
        tree / "a" / "deep" / "two.TIF",
    ]


def test_stac_item_collection_relative_and_absolute_hrefs(tree: Path) -> None:
    stac = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "one",
                "assets": {
                    "image": {
                        "href": "a/one.tif",
                        "type": "image/tiff; application=geotiff",
                        "roles": ["data"],
                    },
                    "thumb": {"href": "a/one.png", "type": "image/png", "roles": ["thumbnail"]},
                },
            },
            {
                "type": "Feature",
                "id": "two",
                "assets": {"visual": {"href": str(tree / "a" / "three.tiff")}},
            },
        ],
    }
    (tree / "items.json").write_text(json.dumps(stac))
    assert catalog.find_rasters(str(tree / "items.json")) == [
        tree / "a" / "one.tif",
        tree / "a" / "three.tiff",
    ]


def test_stac_asset_that_does_not_exist_is_named(tree: Path) -> None:
    stac = {"type": "FeatureCollection", "features": [{"assets": {"b": {"href": "gone.tif"}}}]}
    (tree / "items.json").write_text(json.dumps(stac))
    with pytest.raises(InputNotFoundError, match="gone.tif"):
        catalog.find_rasters(str(tree / "items.json"))


def test_missing_path_and_empty_catalog(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="nowhere"):
        catalog.find_rasters(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="no rasters found"):
        catalog.find_rasters(str(tmp_path / "empty"))
    with pytest.raises(InputNotFoundError):
        catalog.find_rasters(str(tmp_path / "empty" / "*.tif"))


def test_index_records_grid_bands_dtype_nodata(make_geotiff) -> None:
    p = make_geotiff("x.tif", size=(20, 30), count=4, dtype="uint16", nodata=0)
    info = catalog.index([p]).rasters[0]
    assert (info.width, info.height, info.count, info.dtype, info.nodata) == (
        30,
        20,
        4,
        "uint16",
        0,
    )
    assert info.epsg == 32631 and info.res == (0.5, 0.5)
    assert info.bounds == (500000.0, 4999990.0, 500015.0, 5000000.0)


def test_custom_crs_without_epsg_is_kept_as_wkt(real_data: Path) -> None:
    info = catalog.index([real_data / "albers_custom_crs_30m.tif"]).rasters[0]
    assert info.epsg is None and "Albers" in info.crs_wkt
    assert (info.dtype, info.nodata, info.res) == ("int16", -9999.0, (30.0, 30.0))
    crs, res = catalog.Catalog([info]).target()
    assert crs == info.crs and res == 30.0


def test_truncated_tiff_is_named(tmp_path: Path, real_data: Path) -> None:
    good = tmp_path / "good.tif"
    shutil.copy(real_data / "rgb_utm31_4p5m.tif", good)
    bad = tmp_path / "cut.tif"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(RasterError, match="cut.tif.*corrupt or truncated"):
        catalog.index([good, bad])
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00garbage")
    with pytest.raises(RasterError, match="junk.tif"):
        catalog.index([junk])


def test_raster_without_crs_is_refused_for_geo_layout(make_geotiff) -> None:
    p = make_geotiff("plain.tif", crs=None)
    cat = catalog.index([p])
    with pytest.raises(RasterError, match="plain.tif: raster has no CRS"):
        cat.target()


def test_target_crs_and_res_from_config(make_geotiff) -> None:
    cat = catalog.index([make_geotiff("a.tif")])
    crs, res = cat.target("EPSG:3857", 2.0)
    assert crs.to_epsg() == 3857 and res == 2.0
    crs, res = cat.target("EPSG:32632")  # res from the first file warped into the target CRS
    assert crs.to_epsg() == 32632 and 0.4 < res < 0.6
