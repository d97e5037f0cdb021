"""STAC sources: static catalogs (local, HTTP, S3) through pystac and a STAC API search through
pystac-client, against servers on 127.0.0.1; asset choice and the one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_servers import ServerProcess, closed_port
from test_remote import _cog

from geoseg import catalog, remote, stac
from geoseg.errors import CatalogError, InputNotFoundError, RemoteError

BBOXES = {  # lon/lat boxes of four scenes: two near Atlanta, one in Lyon, one in Kyoto
    "atl-1": [-84.40, 33.74, -84.38, 33.76],
    "atl-2": [-84.38, 33.74, -84.36, 33.76],
    "lyon": [4.83, 45.75, 4.85, 45.77],
    "kyoto": [135.75, 35.0, 135.77, 35.02],
}
DATES = {
    "atl-1": "2021-06-01T00:00:00Z",
    "atl-2": "2022-06-01T00:00:00Z",
    "lyon": "2022-07-01T00:00:00Z",
    "kyoto": "2022-08-01T00:00:00Z",
}
CLOUDS = {"atl-1": 5, "atl-2": 40, "lyon": 2, "kyoto": 0}


def _item(name: str, visual: str, nir: str | None = None, collection: str = "scenes") -> dict:
    w, s, e, n = BBOXES[name]
    assets = {
        "visual": {"href": visual, "type": "image/tiff; application=geotiff", "roles": ["visual"]},
        "thumbnail": {"href": f"{name}.png", "type": "image/png", "roles": ["thumbnail"]},
    }
    if nir is not None:
        assets["nir"] = {"href": nir, "type": "image/tiff; application=geotiff", "roles": ["data"]}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": name,
        "collection": collection,
        "bbox": BBOXES[name],
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
        },
        "properties": {"datetime": DATES[name], "eo:cloud_cover": CLOUDS[name]},
        "links": [],
        "assets": assets,
    }


def _static_tree(root: Path) -> dict[str, Path]:
    """catalog.json -> collection.json -> items/<id>/<id>.json, assets relative to each item."""
    cogs = {}
    for k, name in enumerate(("atl-1", "atl-2")):
        cogs[name] = _cog(root / "items" / name / f"{name}.tif", 256, seed=k)
        _cog(root / "items" / name / f"{name}_nir.tif", 256, seed=10 + k)
    (root / "catalog.json").write_text(
        json.dumps(
            {
                "type": "Catalog",
                "stac_version": "1.0.0",
                "id": "root",
                "description": "test",
                "links": [{"rel": "child", "href": "./collection.json"}],
            }
        )
    )
    (root / "collection.json").write_text(
        json.dumps(
            {
                "type": "Collection",
                "stac_version": "1.0.0",
                "id": "scenes",
                "description": "test",
                "license": "CC-BY-4.0",
                "extent": {
                    "spatial": {"bbox": [[-84.4, 33.74, -84.36, 33.76]]},
                    "temporal": {"interval": [[None, None]]},
                },
                "links": [
                    {"rel": "item", "href": f"./items/{n}/{n}.json"} for n in ("atl-1", "atl-2")
                ]
                + [{"rel": "parent", "href": "./catalog.json"}],
            }
        )
    )
    for name in ("atl-1", "atl-2"):
        item = _item(name, f"./{name}.tif", nir=f"./{name}_nir.tif")
        item["links"] = [{"rel": "parent", "href": "../../collection.json"}]
        (root / "items" / name / f"{name}.json").write_text(json.dumps(item))
    return cogs


# ------------------------------------------------------------------------------ static


def test_local_catalog_tree_default_visual_and_chosen_asset(tmp_path: Path) -> None:
    cogs = _static_tree(tmp_path / "stac")
    found = catalog.find_rasters(str(tmp_path / "stac" / "catalog.json"))
    assert found == [cogs["atl-1"], cogs["atl-2"]]
    nir = catalog.find_rasters(str(tmp_path / "stac" / "catalog.json") + "#asset=nir")
    assert [p.name for p in nir] == ["atl-1_nir.tif", "atl-2_nir.tif"]
    assert catalog.find_rasters(str(tmp_path / "stac" / "collection.json"), asset="nir") == nir
    one = str(tmp_path / "stac" / "items" / "atl-2" / "atl-2.json")
    assert catalog.find_rasters(one) == [cogs["atl-2"]]
    with pytest.raises(CatalogError, match=r"item 'atl-1' has no asset 'red' \(it has: nir, "):
        catalog.find_rasters(str(tmp_path / "stac" / "catalog.json") + "#asset=red")


def test_http_catalog_assets_are_read_with_range_requests(http_server, http_root: Path) -> None:
    _static_tree(http_root / "stac-http")
    url = f"{http_server.url}/stac-http/catalog.json"
    found = catalog.find_rasters(url)
    assert [remote.to_url(p) for p in found] == [
        f"{http_server.url}/stac-http/items/atl-1/atl-1.tif",
        f"{http_server.url}/stac-http/items/atl-2/atl-2.tif",
    ]
    infos = catalog.index(found).rasters
    assert [(i.width, i.count) for i in infos] == [(256, 3), (256, 3)]


def test_s3_catalog_tree(bucket: str, tmp_path: Path) -> None:
    _static_tree(tmp_path / "stac")
    s3 = remote.s3_client()
    for f in sorted((tmp_path / "stac").rglob("*")):
        if f.is_file():
            s3.upload_file(str(f), bucket, f"stac/{f.relative_to(tmp_path / 'stac')}")
    found = catalog.find_rasters(f"s3://{bucket}/stac/catalog.json#asset=nir")
    assert found == [
        Path(f"/vsis3/{bucket}/stac/items/atl-1/atl-1_nir.tif"),
        Path(f"/vsis3/{bucket}/stac/items/atl-2/atl-2_nir.tif"),
    ]
    assert len(catalog.index(found)) == 2
    with pytest.raises(InputNotFoundError, match=rf"s3://{bucket}/stac/nope.json: .*404"):
        catalog.find_rasters(f"s3://{bucket}/stac/nope.json")


def test_default_asset_rules() -> None:
    tif = "image/tiff; application=geotiff"
    assert stac.pick_asset({"assets": {"B04": {"href": "a.tif"}, "visual": {}}}, None, "s")[0] == (
        "visual"
    )
    rgb = {
        "href": "x.tif",
        "type": tif,
        "eo:bands": [{"common_name": c} for c in "red green blue".split()],
    }
    assert (
        stac.pick_asset({"assets": {"nir": {"href": "n.tif", "type": tif}, "tci": rgb}}, None, "s")[
            0
        ]
        == "tci"
    )
    only = {"assets": {"data": {"href": "d.tif", "roles": ["data"]}, "thumb": {"href": "t.png"}}}
    assert stac.pick_asset(only, None, "s")[0] == "data"
    many = {"id": "s2", "assets": {"B02": {"href": "2.tif"}, "B03": {"href": "3.tif"}}}
    with pytest.raises(
        CatalogError, match=r"item 's2' has no 'visual' asset and several .*#asset="
    ):
        stac.pick_asset(many, None, "src")


def test_search_url_parsing() -> None:
    s = stac.parse_search(
        "https://api.test/v1/search?collections=a,b&bbox=-84.4,33.7,-84.3,33.8"
        '&datetime=2022-01-01/2022-12-31&query={"eo:cloud_cover":{"lt":10}}&limit=5'
        "&max_items=3#asset=image"
    )
    assert (s.root, s.collections, s.bbox, s.datetime) == (
        "https://api.test/v1",
        ("a", "b"),
        (-84.4, 33.7, -84.3, 33.8),
        "2022-01-01/2022-12-31",
    )
    assert (s.query, s.limit, s.max_items, s.asset) == (
        {"eo:cloud_cover": {"lt": 10}},
        5,
        3,
        "image",
    )
    assert stac.parse_search("https://api.test/search?query=eo:cloud_cover<10").query == (
        "eo:cloud_cover<10",
    )
    assert stac.is_search("https://api.test/v1/search?x=1") and not stac.is_search(
        "https://a/b.tif"
    )
    with pytest.raises(CatalogError, match="bbox needs 4 numbers"):
        stac.parse_search("https://api.test/search?bbox=1,2,3")
    with pytest.raises(CatalogError, match="unknown option 'assets' after '#'"):
        stac.split_fragment("cat.json#assets=x")


# ------------------------------------------------------------------------------ STAC API


@pytest.fixture(scope="module")
def stac_api(http_server, http_root: Path) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A STAC API over four scenes whose COGs the HTTP server serves."""
    urls = {}
    items = []
    for k, name in enumerate(BBOXES):
        _cog(http_root / "api" / f"{name}.tif", 256, seed=20 + k)
        urls[name] = f"{http_server.url}/api/{name}.tif"
        items.append(_item(name, urls[name], collection="naip" if k < 3 else "other"))
    items.append(dict(_item("kyoto", urls["kyoto"], collection="no-visual"), id="bare"))
    items[-1]["assets"] = {"B08": {"href": urls["kyoto"]}, "B04": {"href": urls["kyoto"]}}
    server = ServerProcess("stac", items)
    yield server, urls
    server.stop()


def test_api_search_filters_pages_and_caps(stac_api) -> None:
    api, urls = stac_api
    base = f"{api.url}/search?collections=naip"
    found = catalog.find_rasters(f"{base}&bbox=-84.5,33.7,-84.3,33.8&limit=1")  # 2 pages
    assert [remote.to_url(p) for p in found] == [urls["atl-1"], urls["atl-2"]]
    dated = catalog.find_rasters(f"{base}&datetime=2022-01-01T00:00:00Z/2022-12-31T00:00:00Z")
    assert [remote.to_url(p) for p in dated] == [urls["atl-2"], urls["lyon"]]
    clear = catalog.find_rasters(base + '&query={"eo:cloud_cover":{"lt":10}}')
    assert [remote.to_url(p) for p in clear] == [urls["atl-1"], urls["lyon"]]
    capped = catalog.find_rasters(f"{base}&limit=1#max_items=2")
    assert len(capped) == 2
    infos = catalog.index(found).rasters
    assert infos[0].width == 256


def test_api_search_with_no_items_and_item_without_asset(stac_api) -> None:
    api, _ = stac_api
    with pytest.raises(CatalogError, match="the STAC search matched no items; widen bbox"):
        catalog.find_rasters(f"{api.url}/search?collections=naip&bbox=0,0,1,1")
    with pytest.raises(
        CatalogError, match=r"item 'atl-1' has no asset 'B04' \(it has: thumbnail, visual\)"
    ):
        catalog.find_rasters(f"{api.url}/search?collections=naip#asset=B04")
    with pytest.raises(CatalogError, match="item 'bare' has no 'visual' asset and several"):
        catalog.find_rasters(f"{api.url}/search?collections=no-visual")
    assert len(catalog.find_rasters(f"{api.url}/search?collections=no-visual#asset=B04")) == 1


def test_api_unreachable_and_missing(http_server) -> None:
    with pytest.raises(RemoteError, match=r"cannot reach 127\.0\.0\.1"):
        catalog.find_rasters(f"http://{closed_port()}/v1/search?collections=x")
    with pytest.raises((InputNotFoundError, RemoteError), match="404"):
        catalog.find_rasters(f"{http_server.url}/no-api/search?collections=x")


def test_pipeline_yaml_takes_stac_and_remote_sources(stac_api, tmp_path: Path) -> None:
    from geoseg import config

    api, urls = stac_api
    search = f"{api.url}/search?collections=naip&bbox=-84.5,33.7,-84.3,33.8#asset=visual"
    (tmp_path / "p.yaml").write_text(
        f"data:\n  images: ['{search}']\ninfer:\n  inputs: ['{urls['lyon']}']\n"
    )
    cfg = config.load(tmp_path / "p.yaml")
    assert cfg.data.images == [search]  # URLs are not resolved against the file's folder
    found = catalog.find_rasters(cfg.data.images) + catalog.find_rasters(cfg.infer.inputs)
    assert [remote.to_url(p) for p in found] == [urls["atl-1"], urls["atl-2"], urls["lyon"]]
