"""Building instances: targets from polygons and ids, separation back into one polygon each."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from geoseg import instances, vectorize
from geoseg.errors import ConfigError, LabelError
from geoseg.instances import CONTACT, EDGE, IGNORE, INTERIOR

UTM = "EPSG:32631"
T = from_origin(500000, 5000000, 0.5, 0.5)


def write_raster(path: Path, data: np.ndarray, *, crs=UTM, transform=T, nodata=None, tags=None):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
    return path


def instance_mask(path: Path, classes: np.ndarray, **kw) -> Path:
    """A predicted instance mask as geoseg infer writes it (class names + target tag)."""
    tags = {"class_names": json.dumps(instances.CLASS_NAMES), instances.TARGET_TAG: "instances"}
    return write_raster(path, classes.astype(np.uint8), nodata=255, tags=tags, **kw)


# ----------------------------------------------------------------------------- targets


def test_touching_buildings_get_edges_on_their_shared_wall() -> None:
    ids = np.zeros((20, 30), np.int32)
    ids[5:15, 5:15] = 1
    ids[5:15, 15:25] = 2  # shares the wall at column 15
    cls = instances.class_targets(ids, edge_px=2, contact_px=0)
    # two pixels of edge on each side of the shared wall, interior beyond
    assert (cls[10, 13:17] == EDGE).all()
    assert cls[10, 12] == INTERIOR and cls[10, 17] == INTERIOR
    # the outline: two-pixel band inside, background outside
    assert (cls[5:7, 5:25] == EDGE).all() and (cls[4, 5:25] == 0).all()
    # the interiors of the two buildings are apart by four edge pixels
    assert (cls[7:13, 7:13] == INTERIOR).all() and (cls[7:13, 17:23] == INTERIOR).all()
    assert set(np.unique(cls)) == {0, INTERIOR, EDGE}


def test_contact_marks_narrow_gaps_between_two_buildings_only() -> None:
    ids = np.zeros((30, 40), np.int32)
    ids[5:15, 5:15] = 1
    ids[5:15, 17:27] = 2  # a gap of two pixels (columns 15, 16)
    ids[22:28, 32:38] = 3  # alone
    cls = instances.class_targets(ids, edge_px=1, contact_px=3)
    assert (cls[5:15, 15:17] == CONTACT).all()
    # beyond the reach of one of the two buildings: background
    assert cls[10, 2] == 0
    assert cls[3, 15] == CONTACT  # 2.2 px from one corner, 2.8 px from the other
    assert cls[1, 16] == 0  # 4.1 px from both
    # a lone building has no contact around it
    assert (cls[19:31, 29:40][ids[19:31, 29:40] == 0] == 0).all()


def test_raster_border_is_not_an_outline_and_nodata_is_ignored() -> None:
    ids = np.zeros((10, 10), np.int32)
    ids[:, :6] = 1  # cut by the left, top and bottom borders
    valid = np.ones((10, 10), bool)
    valid[0, :] = False
    cls = instances.class_targets(ids, edge_px=1, contact_px=2, valid=valid)
    assert (cls[0] == IGNORE).all()
    assert (cls[1:, 5] == EDGE).all()  # the one real outline
    assert (cls[1:, :5] == INTERIOR).all()


def test_edge_width_is_in_metres_also_on_geographic_grids() -> None:
    assert instances.band_widths(0.5, 1.0, 2.5) == (2, 5)
    assert instances.band_widths(0.3, 0.9, 2.4) == (3, 8)
    # 1e-5 degrees at the equator: ~1.11 m east-west and north-south
    px = instances.pixel_size_m(
        rasterio.crs.CRS.from_epsg(4326), from_origin(10.0, 0.001, 1e-5, 1e-5), 100, 100
    )
    assert px == pytest.approx(1.11, abs=0.01)
    with pytest.raises(LabelError, match=r"edge width 0.2 m is smaller than a pixel \(0.5 m\)"):
        instances.band_widths(0.5, 0.2, 2.0, "image.tif")


def _polygons_gpkg(path: Path, geoms: list, crs: str = UTM) -> Path:
    gpd.GeoDataFrame({"class": [1] * len(geoms)}, geometry=geoms, crs=crs).to_file(path)
    return path


def test_targets_from_polygons_on_the_image_grid_cached(tmp_path: Path, make_geotiff) -> None:
    image = make_geotiff("img.tif", size=(64, 80), nodata=0)
    with rasterio.open(image, "r+") as dst:  # a nodata corner
        data = dst.read()
        data[:, :4, :4] = 0
        dst.write(data)
    x0, y0 = 500000, 5000000
    big = shapely.box(x0 + 5, y0 - 25, x0 + 25, y0 - 5)  # 40x40 px
    small = shapely.box(x0 + 20, y0 - 15, x0 + 30, y0 - 10)  # overlaps big's right side
    lab = _polygons_gpkg(tmp_path / "b.gpkg", [small, big])
    outs = instances.targets_cached(lab, [image], tmp_path / "cache", edge_width_m=1.0)
    with rasterio.open(outs[0]) as src, rasterio.open(image) as img:
        assert src.crs == img.crs and src.transform == img.transform
        assert (src.width, src.height) == (img.width, img.height)
        assert src.nodata == 255 and src.dtypes[0] == "uint8"
        assert json.loads(src.tags()["class_names"]) == instances.CLASS_NAMES
        assert instances.is_instance_mask(src)
        cls = src.read(1)
    assert (cls[:4, :4] == IGNORE).all()
    # the smaller polygon lies on top: its whole footprint is its own, outlined by edges
    ids_dir = next((tmp_path / "cache").glob("instances-*"))
    with rasterio.open(next(ids_dir.glob("*.tif"))) as src:
        ids = src.read(1)
    assert src.dtypes[0] == "int32"
    assert (ids[20:30, 40:60] == 1).all()  # small (row 1 of the file) kept whole
    assert (ids[10:50, 10:40] == 2).all() and (ids[30:50, 40:50] == 2).all()
    assert (cls[20:30, 40:42] == EDGE).all()  # small's outline inside big
    assert (cls[20:30, 38:40] == EDGE).all()  # big's edge where the small one covers it
    # cached: a second call burns nothing and returns the same files
    mtime = outs[0].stat().st_mtime_ns
    again = instances.targets_cached(lab, [image], tmp_path / "cache", edge_width_m=1.0)
    assert again == outs and outs[0].stat().st_mtime_ns == mtime
    # other widths re-derive the classes from the same ids
    wider = instances.targets_cached(lab, [image], tmp_path / "cache", edge_width_m=2.0)
    assert wider[0].parent != outs[0].parent
    assert len(list((tmp_path / "cache").glob("instances-*"))) == 1


def test_targets_are_the_same_in_windows_as_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ids = np.zeros((150, 170), np.int32)
    for k in range(1, 40):
        r, c = rng.integers(0, 140, 2)
        ids[r : r + rng.integers(4, 20), c : c + rng.integers(4, 20)] = k
    path = write_raster(tmp_path / "ids.tif", ids)
    whole = instances.class_targets(ids, edge_px=2, contact_px=5)
    out = instances.write_targets(
        path, tmp_path / "cls.tif", edge_width_m=1.0, contact_distance_m=2.5, window=32
    )
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(1), whole)


def test_polygons_away_from_the_imagery_are_one_line_errors(tmp_path: Path, make_geotiff) -> None:
    image = make_geotiff("img.tif")
    far = _polygons_gpkg(tmp_path / "far.gpkg", [shapely.box(0, 0, 10, 10)])
    with pytest.raises(LabelError, match="no label polygon overlaps"):
        instances.targets_cached(far, [image], tmp_path / "cache")
    near = _polygons_gpkg(tmp_path / "near.gpkg", [shapely.box(500001, 4999980, 500010, 4999990)])
    with pytest.raises(LabelError, match="smaller than a pixel"):
        instances.targets_cached(near, [image], tmp_path / "cache", edge_width_m=0.1)


def test_instance_rasters_are_told_from_class_masks(tmp_path: Path) -> None:
    ids = write_raster(tmp_path / "ids.tif", np.arange(16, dtype=np.uint16).reshape(4, 4))
    cls = write_raster(tmp_path / "cls.tif", np.ones((4, 4), np.uint8))
    assert instances.is_instance_raster(ids) and not instances.is_instance_raster(cls)


# ----------------------------------------------------------------------------- separation


def random_ids(seed: int = 0, size: int = 200) -> np.ndarray:
    """Terraces of touching buildings, detached houses and a few large halls."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((size, size), np.int32)
    k = 1
    for r in range(4, size - 20, 22):
        c = int(rng.integers(0, 8))
        while c < size - 25:
            w = int(rng.integers(8, 16))
            h = int(rng.integers(12, 18))
            ids[r : r + h, c : c + w] = k
            k += 1
            c += w + (0 if rng.random() < 0.6 else int(rng.integers(3, 8)))
    return ids


def _as_polygons(ids: np.ndarray) -> list:
    from rasterio.features import shapes

    return [
        shapely.geometry.shape(g)
        for g, v in shapes(ids, mask=ids > 0, connectivity=4, transform=T)
        if v
    ]


@pytest.mark.parametrize("block_size", [2048, 64, 37])
def test_perfect_classes_give_back_every_building(tmp_path: Path, block_size: int) -> None:
    ids = random_ids()
    cls = instances.class_targets(ids, edge_px=2, contact_px=4)
    mask = instance_mask(tmp_path / "pred.tif", cls)
    gdf = vectorize.polygons(mask, block_size=block_size)
    truth = _as_polygons(ids)
    assert len(gdf) == len(truth) == int(ids.max())
    assert set(gdf["class_name"]) == {"building"} and set(gdf["class_id"]) == {1}
    assert gdf.crs == UTM and shapely.is_valid(gdf.geometry.values).all()
    # each output polygon matches one building (corners of shared walls may swap a pixel)
    tree = shapely.STRtree(truth)
    for g in gdf.geometry.values:
        best = max(
            shapely.area(shapely.intersection(g, truth[j]))
            / shapely.area(shapely.union(g, truth[j]))
            for j in tree.query(g)
        )
        assert best > 0.9
    # separate=False: polygons of the classes as they are (edge rings, interiors, contacts)
    plain = vectorize.polygons(mask, block_size=block_size, separate=False)
    assert set(plain["class_name"]) == {"interior", "edge", "contact"}


def _labels(
    mask: Path, block_size: int, probabilities: Path | None = None, seeds=None
) -> np.ndarray:
    """The whole label raster assembled from the blocks, as vectorize sees it."""
    with rasterio.open(mask) as src:
        out = np.zeros((src.height, src.width), np.int64)
        with instances.BuildingLabels(
            src, block_size=block_size, probabilities=probabilities, seeds=seeds
        ) as labels:
            blocks = list(labels.regions())
            for window, regions in blocks:
                r, c = int(window.row_off), int(window.col_off)
                out[r : r + regions.shape[0], c : c + regions.shape[1]] = labels.ids(regions)
            for window, split in labels.split():
                r, c = int(window.row_off), int(window.col_off)
                view = out[r : r + split.shape[0], c : c + split.shape[1]]
                view[split > 0] = split[split > 0]
    return out


def _disagreement(a: np.ndarray, b: np.ndarray) -> int:
    """Pixels to relabel so that two label rasters split the pixels into the same groups."""
    assert np.array_equal(a > 0, b > 0)
    pairs, count = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1, return_counts=True)
    best = {}
    for (x, _), n in zip(pairs.T, count, strict=True):
        best[x] = max(best.get(x, 0), n)
    return int(count.sum() - sum(best.values()))


def test_labels_do_not_depend_on_the_blocks(tmp_path: Path) -> None:
    ids = random_ids(seed=1)
    cls = instances.class_targets(ids, edge_px=2, contact_px=4)
    mask = instance_mask(tmp_path / "pred.tif", cls)
    whole = _labels(mask, 4096)
    assert len(np.unique(whole[whole > 0])) == ids.max()
    # perfect classes: every building back; ties at the outer ends of shared walls may give a
    # corner pixel to the neighbour
    assert _disagreement(whole, ids) <= 3 * ids.max()
    for size in (50, 33, 64):
        blocked = _labels(mask, size)
        assert len(np.unique(blocked[blocked > 0])) == ids.max()
        assert _disagreement(blocked, whole) <= 3 * ids.max(), size


def test_seams_one_building_across_two_touching_across(tmp_path: Path) -> None:
    ids = np.zeros((64, 64), np.int32)
    ids[10:30, 20:44] = 1  # crosses the seam at column 32
    ids[40:60, 12:32] = 2  # touches 3 along the seam at column 32
    ids[40:60, 32:52] = 3
    cls = instances.class_targets(ids, edge_px=2, contact_px=3)
    mask = instance_mask(tmp_path / "pred.tif", cls)
    gdf = vectorize.polygons(mask, block_size=32)
    assert len(gdf) == 3
    areas = sorted(np.round(gdf.area.to_numpy() / 0.25).astype(int))
    assert areas == [400, 400, 480]  # pixels of each building, 0.25 m² each


def test_probability_seeds_split_like_class_seeds(tmp_path: Path) -> None:
    ids = random_ids(seed=2, size=120)
    cls = instances.class_targets(ids, edge_px=2, contact_px=4)
    mask = instance_mask(tmp_path / "pred.tif", cls)
    onehot = np.stack([(cls == k) for k in range(4)]).astype(np.uint8) * 254
    prob = write_raster(tmp_path / "pred_prob.tif", onehot, nodata=255)
    with rasterio.open(prob, "r+") as dst:
        dst.scales = [1 / 254] * 4
    by_prob = instances.SeedSettings(source="probabilities")
    assert _disagreement(_labels(mask, 40, prob, by_prob), ids) <= 3 * ids.max()
    assert _disagreement(_labels(mask, 40, prob), ids) <= 3 * ids.max()  # flood order only
    gdf = vectorize.polygons(mask, probabilities=prob, block_size=40)
    assert len(gdf) == ids.max()
    assert gdf["confidence"].to_numpy() == pytest.approx(1.0)


def test_seed_erosion_in_metres_cuts_an_interior_bridge(tmp_path: Path) -> None:
    """Two houses whose predicted interiors are joined by a 3-pixel bridge: with the default
    (1 px) erosion the bridge keeps one seed, one footprint; ``seed_erosion_m`` of 1 m (2 px
    of 0.5 m) cuts it, two footprints, and the building pixels stay the same."""
    from typer.testing import CliRunner

    from geoseg.cli.main import app

    cls = np.zeros((30, 44), np.uint8)
    cls[3:27, 3:41] = EDGE
    cls[5:25, 5:20] = INTERIOR
    cls[5:25, 24:39] = INTERIOR
    cls[14:17, 20:24] = INTERIOR  # the bridge between the two interiors
    mask = instance_mask(tmp_path / "pred.tif", cls)
    default = vectorize.polygons(mask, min_area_m2=0)
    assert len(default) == 1
    two = vectorize.polygons(mask, min_area_m2=0, seed_erosion_m=1.0, block_size=16)
    assert len(two) == 2
    assert sum(two.area) == pytest.approx(sum(default.area)) == pytest.approx(24 * 38 * 0.25)
    # rounded to whole pixels, at least one: 0.2 m is the default's one pixel
    assert len(vectorize.polygons(mask, min_area_m2=0, seed_erosion_m=0.2)) == 1
    out = tmp_path / "two.gpkg"
    result = CliRunner().invoke(
        app, ["vectorize", str(mask), "--out", str(out), "--seed-erosion", "1", "--min-area", "0"]
    )
    assert result.exit_code == 0, result.output
    assert len(gpd.read_file(out)) == 2


def test_a_plain_semantic_mask_is_vectorized_as_before(tmp_path: Path) -> None:
    ids = random_ids(seed=0, size=100)
    plain = write_raster(
        tmp_path / "plain.tif",
        (ids > 0).astype(np.uint8),
        nodata=255,
        tags={"class_names": json.dumps(["background", "building"])},
    )
    gdf = vectorize.polygons(plain)
    assert len(gdf) == len(_as_polygons((ids > 0).astype(np.int32)))
    with pytest.raises(ConfigError, match="not an instance mask"):
        vectorize.polygons(plain, separate=True)


def test_building_without_interior_is_one_building(tmp_path: Path) -> None:
    cls = np.zeros((20, 20), np.uint8)
    cls[5:8, 5:15] = EDGE  # a thin shed: edge pixels only, no seed
    cls[11:19, 2:18] = EDGE
    cls[13:17, 4:8] = INTERIOR  # two seeds in one region: two buildings
    cls[13:17, 12:16] = INTERIOR
    mask = instance_mask(tmp_path / "pred.tif", cls)
    gdf = vectorize.polygons(mask, block_size=8)
    assert len(gdf) == 3
    assert sorted(np.round(gdf.area.to_numpy() / 0.25).astype(int)) == [30, 64, 64]


def test_targets_on_a_geographic_grid_use_metres(tmp_path: Path, make_geotiff) -> None:
    # 5e-6 degrees at 45°N: ~0.39 m east-west, ~0.56 m north-south (geometric mean ~0.47 m)
    t = from_origin(5.0, 45.0, 5e-6, 5e-6)
    image = make_geotiff("geo.tif", size=(80, 80), crs="EPSG:4326", transform=t)
    poly = shapely.box(5.0 + 20 * 5e-6, 45.0 - 60 * 5e-6, 5.0 + 60 * 5e-6, 45.0 - 20 * 5e-6)
    lab = _polygons_gpkg(tmp_path / "b.gpkg", [poly], crs="EPSG:4326")
    px = instances.pixel_size_m(rasterio.crs.CRS.from_epsg(4326), t, 80, 80)
    assert px == pytest.approx(0.47, abs=0.01)
    out = instances.targets_cached(lab, [image], tmp_path / "cache", edge_width_m=1.4)[0]
    with rasterio.open(out) as src:
        cls = src.read(1)
    row = cls[40, 15:45]
    assert (row[5:8] == EDGE).all() and row[8] == INTERIOR and row[4] == 0  # 3 px = 1.4 m


def test_web_mercator_pixels_are_measured_on_the_ground() -> None:
    # 0.2986 "metres" of EPSG:3857 at 27.6°N (Banepa) are 0.2986 * cos(27.6°) = 0.265 m
    crs = rasterio.crs.CRS.from_epsg(3857)
    y = 3_200_000.0  # ~27.6°N
    px = instances.pixel_size_m(crs, from_origin(9_500_000, y, 0.2986, 0.2986), 2, 2)
    assert px == pytest.approx(0.2986 * np.cos(np.radians(27.6)), rel=0.01)
