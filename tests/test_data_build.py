"""data.build_training_data end to end: grids, splits, statistics, batches, layouts, errors."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from data_helpers import RES, X0, Y0, mosaic, write
from PIL import Image

from geoseg import data
from geoseg.config import DataConfig, SplitConfig
from geoseg.errors import CatalogError, ConfigError, InputNotFoundError, LabelError, RasterError


def _cfg(images, labels, **kw) -> DataConfig:
    split = kw.pop("split", {})
    return DataConfig(
        images=[str(images)],
        labels=str(labels) if labels else None,
        split=SplitConfig(**split),
        **kw,
    )


def _build(cfg: DataConfig, tmp_path: Path, **kw) -> data.TrainingData:
    kw.setdefault("patch_size", 32)
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_classes", 2)
    return data.build_training_data(cfg, run_dir=tmp_path / "run", **kw)


def _boxes(bounds: torch.Tensor | np.ndarray) -> list:
    return [shapely.box(*b) for b in np.asarray(bounds).tolist()]


# ---- georeferenced layout ----------------------------------------------------------------------


def test_demo_mosaic_raster_masks_mixed_crs(demo_data, tmp_path: Path) -> None:
    root = demo_data.images[0].parent.parent
    td = _build(_cfg(root / "images", root / "masks"), tmp_path, patch_size=64)
    assert (
        td.in_channels == 3
        and td.band_indexes == [1, 2, 3]
        and td.band_names == ["red", "green", "blue"]
    )
    with rasterio.open(demo_data.images[0]) as src:
        assert td.crs_wkt == src.crs.to_wkt() and td.res == src.res[0]
    # the tile in the other UTM zone was reprojected ONCE into the cache, onto the target grid
    aligned = list((tmp_path / "run" / "cache").glob("aligned-img-*/*.tif"))
    assert len(list((tmp_path / "run" / "cache").glob("aligned-mask-*/*.tif"))) == 1
    assert len(aligned) == 1
    with rasterio.open(aligned[0]) as a:
        assert a.crs.to_wkt() == td.crs_wkt and a.res == (td.res, td.res)
    mtime = aligned[0].stat().st_mtime_ns
    batch = next(iter(td.train))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 64, 64) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 255}
    assert len(td.train) >= 1 and len(td.val) >= 1 and td.test is not None and len(td.test) >= 1
    split = gpd.read_file(td.split_path)
    assert set(split["split"]) == {"train", "val", "test"} and split.crs.to_epsg() == 32631
    _build(_cfg(root / "images", root / "masks"), tmp_path, patch_size=64)
    assert aligned[0].stat().st_mtime_ns == mtime  # reused on the next run


def test_demo_vector_labels_burned_once_and_cached(demo_data, tmp_path: Path) -> None:
    root = demo_data.images[0].parent.parent
    cfg = _cfg(root / "images", demo_data.buildings, label_attribute="class")
    td = _build(cfg, tmp_path, patch_size=64)
    masks = sorted((tmp_path / "run" / "cache").glob("labels-*/*.tif"))
    assert len(masks) == 4
    # burned on each (aligned) image grid: for the tiles already on it, equal to the demo masks
    with rasterio.open(masks[1]) as burned, rasterio.open(demo_data.masks[1]) as truth:
        assert burned.transform == truth.transform and burned.shape == truth.shape
        assert np.array_equal(burned.read(1), truth.read(1))
    mtime = masks[0].stat().st_mtime_ns
    td2 = _build(cfg, tmp_path, patch_size=64)
    assert masks[0].stat().st_mtime_ns == mtime
    assert td2.mean == td.mean


def test_spatial_split_train_patches_never_touch_val_or_test(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(3, 3), size=96)
    cfg = _cfg(img, msk, split={"block_size": 96, "ratios": (0.6, 0.2, 0.2), "seed": 3})
    td = _build(cfg, tmp_path, patch_size=32, batch_size=8, patches_per_epoch=200)
    gap_m = 32 * RES  # default gap = patch size
    train = [b for batch in td.train for b in _boxes(batch["bounds"])]
    train += [
        b for batch in td.train for b in _boxes(batch["bounds"])
    ]  # a second epoch: new patches
    held = [b for loader in (td.val, td.test) for batch in loader for b in _boxes(batch["bounds"])]
    assert len(train) == 2 * len(td.train) * 8 and held
    regions = gpd.read_file(td.split_path).set_index("split").geometry
    others = shapely.union_all([regions["val"], regions["test"]])
    for t in train:
        assert regions["train"].buffer(1e-6).contains(t)
        assert t.distance(others) >= gap_m - 1e-6
        assert not any(t.intersects(h) and t.intersection(h).area > 0 for h in held)
    for h in held:
        assert others.buffer(1e-6).contains(h)
    # every pixel position is a whole pixel of the target grid
    xs = np.array([t.bounds[0] for t in train])
    assert np.allclose((xs - X0) / RES, np.round((xs - X0) / RES))


def test_split_is_deterministic_and_gives_val_and_test_a_region_on_tiny_data(
    tmp_path: Path,
) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(1, 2), size=64)
    cfg = _cfg(img, msk)  # block_size 512 > the whole mosaic
    a = gpd.read_file(_build(cfg, tmp_path / "a").split_path)
    b = gpd.read_file(_build(cfg, tmp_path / "b").split_path)
    assert set(a["split"]) == {"train", "val", "test"}
    assert a.geometry.equals(b.geometry)


def test_batches_same_with_workers_and_in_memory_or_streamed(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    cfg = _cfg(img, msk, split={"block_size": 64})
    mem = _build(cfg, tmp_path / "m", patches_per_epoch=8)
    stream = _build(cfg, tmp_path / "s", patches_per_epoch=8, memory_budget=0, workers=1)
    assert mem.in_memory and not stream.in_memory
    for x, y in zip(mem.train, stream.train, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    first = next(iter(mem.train))["bounds"]
    assert not torch.equal(first, next(iter(mem.train))["bounds"])  # each pass is a new epoch
    mem.train.set_epoch(1)
    assert torch.equal(first, next(iter(mem.train))["bounds"])
    other_rank = _build(cfg, tmp_path / "r", patches_per_epoch=8, rank=1, world_size=2)
    other_rank.train.set_epoch(1)
    assert not torch.equal(first, next(iter(other_rank.train))["bounds"])


def test_nodata_becomes_ignore_and_augmentation_keeps_image_and_mask_aligned(
    tmp_path: Path,
) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64, nodata_cols=24)
    cfg = _cfg(img, msk, split={"block_size": 64}, augment=True)
    td = _build(cfg, tmp_path, patches_per_epoch=64, batch_size=16)
    mean, std = torch.tensor(td.mean).view(1, -1, 1, 1), torch.tensor(td.std).view(1, -1, 1, 1)
    saw_nodata = False
    for loader in (td.train, td.val, td.test):
        for batch in loader:
            raw = (batch["image"] * std + mean).round()
            nodata = (raw == 0).all(1)
            saw_nodata |= bool(nodata.any())
            m = batch["mask"]
            assert (m[nodata] == 255).all()
            assert torch.equal(m[~nodata], (raw[:, 0] > 128).long()[~nodata])
    assert saw_nodata
    # flips/rotations really happen: the same origins give other pixels with augment on
    plain = _build(
        _cfg(img, msk, split={"block_size": 64}, augment=False),
        tmp_path / "p",
        patches_per_epoch=64,
        batch_size=16,
    )
    td.train.set_epoch(0)
    a, b = next(iter(td.train)), next(iter(plain.train))
    assert torch.equal(a["bounds"], b["bounds"]) and not torch.equal(a["image"], b["image"])


def test_color_jitter_changes_values_not_masks(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    a = _build(
        _cfg(img, msk, split={"block_size": 64}, augment=False), tmp_path / "a", patches_per_epoch=8
    )
    b = _build(
        _cfg(img, msk, split={"block_size": 64}, augment=False, color_jitter=0.3),
        tmp_path / "b",
        patches_per_epoch=8,
    )
    x, y = next(iter(a.train)), next(iter(b.train))
    assert torch.equal(x["mask"], y["mask"]) and not torch.allclose(x["image"], y["image"])


def test_scale_range_zooms_training_batches_only(tmp_path: Path) -> None:
    """data.scale_range reaches the training batches (the same patches, zoomed: the class
    fractions change) and leaves the validation batches alone."""
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    kw = dict(split={"block_size": 64}, augment=False)
    a = _build(_cfg(img, msk, **kw), tmp_path / "a", patches_per_epoch=16)
    b = _build(_cfg(img, msk, scale_range=[0.6, 1.6], **kw), tmp_path / "b", patches_per_epoch=16)
    x, y = next(iter(a.train)), next(iter(b.train))
    assert torch.equal(x["bounds"], y["bounds"]) and x["image"].shape == y["image"].shape
    assert not torch.equal(x["mask"], y["mask"])
    assert set(y["mask"].unique().tolist()) <= set(x["mask"].unique().tolist())
    va, vb = next(iter(a.val)), next(iter(b.val))
    assert torch.equal(va["image"], vb["image"]) and torch.equal(va["mask"], vb["mask"])


def test_statistics_on_uint16_exclude_nodata(real_data: Path, tmp_path: Path) -> None:
    image = real_data / "atlanta_pan_0p5m.tif"
    with rasterio.open(image) as src:
        arr = src.read(1)
        assert src.nodata == 0 and src.dtypes[0] == "uint16"
    valid = arr[arr != 0].astype(float)
    mean, std = data.band_statistics([(arr[None], None)], nodata=0)
    assert mean[0] == pytest.approx(valid.mean()) and std[0] == pytest.approx(valid.std())
    with_zeros = data.band_statistics([(arr[None], None)])[0][0]
    assert with_zeros != pytest.approx(mean[0]) or (arr == 0).sum() == 0
    lo, span = data.band_statistics([(arr[None], None)], nodata=0, method="percentile")
    assert lo[0] == pytest.approx(np.percentile(valid, 2)) and span[0] == pytest.approx(
        np.percentile(valid, 98) - np.percentile(valid, 2)
    )
    td = _build(_cfg(image, real_data / "atlanta_buildings.geojson"), tmp_path, patch_size=64)
    assert td.in_channels == 1 and len(td.mean) == 1
    # the statistics are those of the train region (a sample of its patches), nodata excluded
    train = gpd.read_file(td.split_path).set_index("split").geometry["train"]
    with rasterio.open(image) as src:
        win = rasterio.windows.from_bounds(*train.bounds, transform=src.transform)
        region = src.read(1, window=win.round_offsets().round_lengths())
    region = region[region != 0].astype(float)
    assert td.mean[0] == pytest.approx(region.mean(), rel=0.1)
    assert td.std[0] == pytest.approx(region.std(), rel=0.15)
    assert td.mean[0] > 100  # raw uint16 values: no /255, no ImageNet constants
    batch = next(iter(td.train))
    assert abs(float(batch["image"].mean())) < 1.5  # normalised


def test_statistics_any_dtype_with_a_nodata_raster(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(-3.0, 2.0, (2, 64, 64)).astype(np.float32)
    f[:, :10] = -9999
    mean, std = data.band_statistics([(f, None)], nodata=-9999)
    assert mean[0] == pytest.approx(-3.0, abs=0.1) and std[1] == pytest.approx(2.0, abs=0.1)
    i16 = np.full((1, 8, 8), -5, np.int16)
    assert data.band_statistics([(i16, None)], method="meanstd")[0] == [-5.0]


def test_roi_and_files_splits(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    half = 64 * RES
    roi = gpd.GeoDataFrame(
        {"split": ["train", "val", "test"]},
        crs="EPSG:32631",
        geometry=[
            shapely.box(X0, Y0 - 2 * half, X0 + half, Y0),
            shapely.box(X0 + half, Y0 - half, X0 + 2 * half, Y0),
            shapely.box(X0 + half, Y0 - 2 * half, X0 + 2 * half, Y0 - half),
        ],
    )
    roi.to_file(tmp_path / "roi.gpkg")
    td = _build(
        _cfg(img, msk, split={"method": "roi", "roi_file": str(tmp_path / "roi.gpkg"), "gap": 0}),
        tmp_path,
    )
    train = shapely.union_all(_boxes(torch.cat([b["bounds"] for b in td.train])))
    assert roi.geometry[0].buffer(1e-6).contains(train)
    val = shapely.union_all(_boxes(torch.cat([b["bounds"] for b in td.val])))
    assert roi.geometry[1].buffer(1e-6).contains(val)
    files = _build(
        _cfg(img, msk, split={"method": "files", "ratios": (0.5, 0.25, 0.25)}), tmp_path / "f"
    )
    split = gpd.read_file(files.split_path)
    assert sorted(split["split"]) == ["test", "train", "val"] and len(files.test_images) == 1


def test_files_split_by_name(tmp_path: Path) -> None:
    """val_files / test_files hold out whole files by name (e.g. a town); the rest trains."""
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    split = {"method": "files", "val_files": ["tile_01*"], "test_files": ["tile_02*", "tile_03*"]}
    td = _build(_cfg(img, msk, split=split), tmp_path)
    regions = gpd.read_file(td.split_path).set_index("split")
    assert regions.loc["val", "files"] == str(img / "tile_01.tif")
    assert regions.loc["test", "files"].split(";") == [str(img / f"tile_0{k}.tif") for k in (2, 3)]
    assert [p.name for p in td.test_images] == ["tile_02.tif", "tile_03.tif"]
    train = shapely.union_all(_boxes(torch.cat([b["bounds"] for b in td.train])))
    with rasterio.open(img / "tile_00.tif") as src:
        assert shapely.box(*src.bounds).buffer(1e-6).contains(train)
    with pytest.raises(ConfigError, match="test_files: 'kampala_\\*' matches none"):
        _build(_cfg(img, msk, split={**split, "test_files": ["kampala_*"]}), tmp_path / "x")
    with pytest.raises(ConfigError, match="tile_01.tif: matches both"):
        _build(_cfg(img, msk, split={**split, "test_files": ["tile_0[123]*"]}), tmp_path / "y")
    with pytest.raises(ValueError, match="set split.method: files"):
        SplitConfig(val_files=["a*"])


def test_sample_by_file_gives_a_small_file_its_share(tmp_path: Path) -> None:
    """data.sample_by: area draws patches in proportion to each file's area; file gives each
    training file about the same share (a small town is not drowned by a large one)."""
    rng = np.random.default_rng(0)
    files = {"big": (X0, 256), "small": (X0 + 400 * RES, 64), "held": (X0 + 600 * RES, 64)}
    for name, (x, size) in files.items():
        img = rng.integers(1, 256, (3, size, size)).astype(np.uint8)
        t = rasterio.transform.from_origin(x, Y0, RES, RES)
        write(tmp_path / "img" / f"{name}.tif", img, transform=t)
        write(tmp_path / "mask" / f"{name}.tif", (img[0] > 128).astype(np.uint8), transform=t)
    with rasterio.open(tmp_path / "img" / "small.tif") as src:
        small = shapely.box(*src.bounds).buffer(1e-6)
    share = {}
    for by in ("area", "file"):
        cfg = _cfg(
            tmp_path / "img",
            tmp_path / "mask",
            split={"method": "files", "test_files": ["held*"]},
            sample_by=by,
        )
        td = _build(cfg, tmp_path / by, batch_size=8, patches_per_epoch=400)
        boxes = _boxes(torch.cat([b["bounds"] for b in td.train]))
        assert len(boxes) == 400
        share[by] = np.mean([small.contains(b) for b in boxes])
    # areas 256^2 and 64^2: 6 % of the patches by area, half of them by file
    assert share["area"] < 0.12 and 0.4 < share["file"] < 0.6, share


# ---- seed layouts: plain tile folders ----------------------------------------------------------


def _tiles(root: Path, n: int, size: int, ext: str, mask_values: list[int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    for k in range(n):
        img = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
        mask = rng.choice(mask_values, (size, size)).astype(np.uint8)
        if ext == "png":
            Image.fromarray(img).save(root / "img" / f"{k}.png")
            Image.fromarray(mask).save(root / "mask" / f"{k}.png")
        else:
            write(root / "img" / f"{k}.tif", img.transpose(2, 0, 1), crs=None)
            write(root / "mask" / f"{k}.tif", mask, crs=None)
    return root


def test_whu_layout_tif_tiles_masks_0_255(tmp_path: Path) -> None:
    root = _tiles(tmp_path / "whu", 6, 64, "tif", [0, 255])
    cfg = DataConfig(images=[str(root)], layout="tiles", mask_mapping={255: 1})
    td = _build(cfg, tmp_path, patch_size=64)
    values = set()
    for loader in (td.train, td.val, td.test):
        for batch in loader:
            values |= set(batch["mask"].unique().tolist())
    assert values == {0, 1} and td.crs_wkt == ""
    # split by files: no file is in two splits
    split = gpd.read_file(td.split_path)
    files = [set(f.split(";")) for f in split["files"]]
    assert sum(len(f) for f in files) == 6 and not (
        files[0] & files[1] or files[0] & files[2] or files[1] & files[2]
    )


def test_loveda_layout_png_tiles_with_nodata_zero(tmp_path: Path) -> None:
    root = _tiles(tmp_path / "loveda", 5, 48, "png", list(range(8)))
    mapping = {0: 255, **{k: k - 1 for k in range(1, 8)}}
    cfg = DataConfig(
        images=[str(root / "img")], labels=str(root / "mask"), layout="tiles", mask_mapping=mapping
    )
    td = _build(cfg, tmp_path, patch_size=32, num_classes=7)
    seen = set()
    for batch in td.val:
        seen |= set(batch["mask"].unique().tolist())
    assert seen <= set(range(7)) | {255} and 255 in seen and 6 in seen
    with pytest.raises(LabelError, match="--num-classes is too small"):
        _build(
            DataConfig(images=[str(root)], layout="tiles"),
            tmp_path / "x",
            patch_size=32,
            num_classes=7,
        )


# ---- errors ------------------------------------------------------------------------------------


def test_error_missing_path_and_empty_catalog(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="nowhere"):
        _build(_cfg(tmp_path / "nowhere", tmp_path), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="no rasters found"):
        _build(_cfg(tmp_path / "empty", tmp_path), tmp_path)
    img, _ = mosaic(tmp_path / "d", grid=(1, 1), size=64)
    with pytest.raises(InputNotFoundError, match="no_labels"):
        _build(_cfg(img, tmp_path / "no_labels"), tmp_path)


def test_error_raster_without_crs(tmp_path: Path) -> None:
    write(tmp_path / "img" / "plain.tif", np.ones((3, 64, 64), np.uint8), crs=None)
    write(tmp_path / "mask" / "plain.tif", np.ones((64, 64), np.uint8), crs=None)
    with pytest.raises(RasterError, match="plain.tif: raster has no CRS"):
        _build(_cfg(tmp_path / "img", tmp_path / "mask"), tmp_path)


def test_error_images_and_labels_do_not_overlap(tmp_path: Path) -> None:
    img, _ = mosaic(tmp_path / "d", grid=(1, 2), size=64)
    far = rasterio.transform.from_origin(X0 + 10_000, Y0, RES, RES)
    write(tmp_path / "elsewhere" / "other.tif", np.ones((64, 64), np.uint8), transform=far)
    with pytest.raises(LabelError, match="elsewhere.*no mask matches an image"):
        _build(_cfg(img, tmp_path / "elsewhere"), tmp_path)
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 5, 5)], crs="EPSG:32631").to_file(
        tmp_path / "far.geojson"
    )
    with pytest.raises(LabelError, match="far.geojson.*no label polygon overlaps"):
        _build(_cfg(img, tmp_path / "far.geojson"), tmp_path)


def test_error_albers_labels_with_wrong_crs(real_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        real_data / "albers_custom_crs_30m.tif", real_data / "albers_custom_crs_labels.geojson"
    )
    with pytest.raises(
        LabelError, match="albers_custom_crs_labels.geojson.*declared CRS of the labels is probably"
    ):
        _build(cfg, tmp_path)


def test_error_patch_larger_than_raster(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(1, 1), size=48)
    with pytest.raises(
        RasterError, match="tile_00.tif: raster is 48×48 px, smaller than patch_size=64"
    ):
        _build(_cfg(img, msk), tmp_path, patch_size=64)


def test_error_corrupt_tiff_is_named(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(1, 2), size=64)
    bad = img / "tile_01.tif"
    bad.write_bytes(bad.read_bytes()[:2000])
    with pytest.raises(RasterError, match="tile_01.tif"):
        _build(_cfg(img, msk), tmp_path)


def test_error_label_values_above_num_classes(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(1, 2), size=64)
    write(
        msk / "tile_01.tif",
        np.full((64, 64), 5, np.uint8),
        transform=rasterio.transform.from_origin(X0 + 64 * RES, Y0, RES, RES),
    )
    with pytest.raises(LabelError, match="tile_01.tif.*5.*--num-classes is too small"):
        _build(_cfg(img, msk), tmp_path)


def test_error_bad_split_config(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(1, 1), size=64)
    with pytest.raises(ConfigError, match="too few"):
        _build(_cfg(img, msk), tmp_path, patch_size=64)


def test_target_crs_and_res_from_config_reproject_every_file_once(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    cfg = _cfg(img, msk, crs="EPSG:3857", res=1.0, split={"block_size": 32})
    td = _build(cfg, tmp_path, patch_size=16)
    assert rasterio.crs.CRS.from_wkt(td.crs_wkt).to_epsg() == 3857 and td.res == 1.0
    aligned = sorted((tmp_path / "run" / "cache").glob("aligned-img-*/*.tif"))
    assert len(aligned) == 4
    origins = []
    for p in aligned:
        with rasterio.open(p) as a:
            assert a.crs.to_epsg() == 3857 and a.res == (1.0, 1.0)
            origins.append((a.transform.c, a.transform.f))
    x0, y0 = origins[0]
    assert all(
        float(x - x0).is_integer() and float(y - y0).is_integer() for x, y in origins
    )  # one pixel grid
    values = set()
    for batch in td.train:
        values |= set(batch["mask"].unique().tolist())
    assert values <= {0, 1, 255} and {0, 1} <= values


def test_s3_images_and_masks_give_the_same_training_data_as_local_copies(
    bucket: str, tmp_path: Path
) -> None:
    from geoseg import remote

    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    s3 = remote.s3_client()
    for f in sorted([*img.glob("*.tif"), *msk.glob("*.tif")]):
        s3.upload_file(str(f), bucket, f"{f.parent.name}/{f.name}")
    cfg = _cfg(img, msk, split={"block_size": 64})
    local = _build(cfg, tmp_path / "local", patches_per_epoch=8, memory_budget=0)
    cloud_cfg = _cfg(f"s3://{bucket}/img/", f"s3://{bucket}/mask/", split={"block_size": 64})
    cloud = _build(cloud_cfg, tmp_path / "s3", patches_per_epoch=8, memory_budget=0)
    assert not cloud.in_memory and str(cloud.tiles[0].image).startswith("/vsis3/")
    assert cloud.mean == local.mean
    for a, b in zip(local.train, cloud.train, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
