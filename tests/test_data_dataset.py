"""data.dataset: GeoRasterDataset as a torchgeo GeoDataset (index, crs, res, queries, samplers)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from data_helpers import RES, X0, Y0, mosaic
from rasterio.windows import Window
from torchgeo.datasets import GeoDataset, RasterDataset, stack_samples
from torchgeo.samplers import GridGeoSampler, RandomGeoSampler

from geoseg.data import GeoRasterDataset
from geoseg.data.loader import collate
from geoseg.errors import ConfigError


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    """2×2 adjacent 64-px tiles (nodata 0 in tile 0's first 8 columns) and their masks."""
    return mosaic(tmp_path / "d", grid=(2, 2), size=64, nodata_cols=8)


def _box(row: int, col: int, h: int, w: int) -> tuple[slice, slice]:
    """A torchgeo query of grid pixels (rows down from Y0, columns right from X0)."""
    return slice(X0 + col * RES, X0 + (col + w) * RES), slice(Y0 - (row + h) * RES, Y0 - row * RES)


def test_a_torchgeo_geodataset_with_index_crs_res(scene) -> None:
    ds = GeoRasterDataset(scene[0], masks=scene[1])
    assert isinstance(ds, GeoDataset) and len(ds) == 4
    assert ds.crs.to_epsg() == 32631 and ds.res == (RES, RES)
    assert list(ds.index["filepath"]) == [str(p) for p in sorted(scene[0].glob("*.tif"))]
    x, y, _ = ds.bounds
    assert (x.start, x.stop, y.start, y.stop) == (X0, X0 + 128 * RES, Y0 - 128 * RES, Y0)
    images_only = GeoRasterDataset(scene[0], bands=[3, 1])
    sample = images_only[_box(0, 0, 16, 16)]
    assert "mask" not in sample and sample["image"].shape == (2, 16, 16)


def test_a_query_reads_the_files_pixels_nodata_as_ignore(scene) -> None:
    img_dir, msk_dir = scene
    ds = GeoRasterDataset(img_dir, masks=msk_dir)
    sample = ds[_box(70, 5, 32, 40)]  # inside tile 2 (row 64.., col 0..64)
    assert set(sample) == {"image", "mask", "crs", "bounds"} and sample["crs"] == ds.crs
    with rasterio.open(img_dir / "tile_02.tif") as src:
        want = src.read(window=Window(5, 6, 40, 32))
    assert sample["image"].dtype == torch.float32 and sample["mask"].dtype == torch.int64
    assert np.array_equal(sample["image"].numpy(), want.astype(np.float32))
    # across the four files: a mosaic; tile 0's nodata columns are ignore in the mask
    both = ds[_box(48, 0, 32, 96)]
    with rasterio.open(img_dir / "tile_00.tif") as src:
        top_left = src.read(1, window=Window(0, 48, 64, 16))
    assert np.array_equal(both["image"][0, :16, :64].numpy(), top_left.astype(np.float32))
    mask = both["mask"].numpy()
    assert (mask[:16, :8] == 255).all() and set(np.unique(mask[:, 8:])) <= {0, 1}
    assert np.array_equal(mask[:16, 8:64], (top_left[:, 8:] > 128).astype(np.int64))
    with pytest.raises(IndexError):
        ds[_box(1000, 1000, 32, 32)]
    # another step than res resamples (here: half the pixels per side)
    coarse = ds[(*[slice(q.start, q.stop, 2 * RES) for q in _box(70, 5, 32, 40)], slice(None))]
    assert coarse["image"].shape == (3, 16, 20) and coarse["mask"].shape == (16, 20)


def test_native_dtypes_batches_read_once_and_ram_equals_streamed(scene) -> None:
    ram = GeoRasterDataset(scene[0], masks=scene[1], native_dtypes=True)
    streamed = GeoRasterDataset(scene[0], masks=scene[1], native_dtypes=True, memory_budget=0)
    assert ram.in_memory and not streamed.in_memory
    sampler = RandomGeoSampler(ram, size=32, length=6, generator=torch.Generator().manual_seed(1))
    queries = list(sampler)
    one = [ram[q] for q in queries]
    assert one[0]["image"].dtype == torch.uint8 and one[0]["mask"].dtype == torch.uint8
    for other in (ram.__getitems__(queries), streamed.__getitems__(queries)):
        for a, b in zip(one, other, strict=True):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    batch = ram.__getitems__(queries)
    stacked = collate(batch)
    assert stacked["image"].data_ptr() == batch[0]["image"].data_ptr()  # no second copy
    assert torch.equal(stacked["image"], stack_samples(one)["image"])
    assert stacked["bounds"] == queries


def test_fixed_grid_in_intersections(scene, tmp_path: Path) -> None:
    ds = GeoRasterDataset(scene[0], masks=scene[1])

    class Other(RasterDataset):
        filename_glob = "*.tif"

    other = Other(paths=str(scene[0]), crs="EPSG:3857")
    both = ds & Other(paths=str(scene[0]))  # geoseg's dataset first: the other is warped onto it
    sample = both[_box(10, 10, 32, 32)]
    assert sample["image"].shape == (6, 32, 32)
    assert torch.equal(sample["image"][:3], sample["image"][3:])
    with pytest.raises(ConfigError, match="fixed pixel grid"):
        other & ds  # noqa: B018


def test_grid_sampler_covers_every_file(scene) -> None:
    ds = GeoRasterDataset(scene[0], masks=scene[1])
    chips = list(GridGeoSampler(ds, size=32, stride=32))
    assert len(chips) == 16
    assert all(ds[c]["image"].shape == (3, 32, 32) for c in chips)


@pytest.mark.slow
def test_plain_torchgeo_script_trains_a_step(scene, tmp_path: Path) -> None:
    """Interop: a torchgeo script that imports nothing of geoseg but the dataset."""
    script = tmp_path / "train_step.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import torch
            from torch.utils.data import DataLoader
            from torchgeo.datasets import stack_samples
            from torchgeo.samplers import RandomGeoSampler
            from geoseg.data import GeoRasterDataset

            torch.manual_seed(0)
            ds = GeoRasterDataset({str(scene[0])!r}, masks={str(scene[1])!r})
            sampler = RandomGeoSampler(ds, size=32, length=8)
            loader = DataLoader(ds, sampler=sampler, batch_size=4, collate_fn=stack_samples)
            model = torch.nn.Conv2d(3, 2, 3, padding=1)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            batch = next(iter(loader))
            loss = torch.nn.functional.cross_entropy(
                model(batch["image"] / 255), batch["mask"], ignore_index=255
            )
            loss.backward()
            before = model.weight.detach().clone()
            opt.step()
            assert not torch.equal(before, model.weight)
            print("loss", float(loss), tuple(batch["image"].shape), batch["mask"].dtype)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(4, 3, 32, 32) torch.int64" in done.stdout


def test_entry_lookup_is_the_same_for_few_and_many_entries(scene) -> None:
    """Queries go to the first index entry containing them: a loop over few entries, an R-tree
    over many; both must agree."""
    ds = GeoRasterDataset(scene[0], masks=scene[1])
    rng = np.random.default_rng(0)
    entries = [
        (int(rng.integers(0, 4)), (int(r), int(c), int(h), int(w)))
        for r, c, h, w in zip(
            rng.integers(0, 100, 150),
            rng.integers(0, 100, 150),
            rng.integers(8, 40, 150),
            rng.integers(8, 40, 150),
            strict=True,
        )
    ]
    view = ds.with_entries(entries)
    rows, cols = rng.integers(0, 120, 300), rng.integers(0, 120, 300)
    many = view.entry_of(rows, cols, 6, 6)  # 150 entries: the R-tree
    few = np.concatenate(
        [view.entry_of(rows[i : i + 3], cols[i : i + 3], 6, 6) for i in range(0, 300, 3)]
    )
    assert np.array_equal(many, few) and (many >= 0).sum() > 50
    for k, r, c in zip(many, rows, cols, strict=True):
        inside = [
            j
            for j, (_, (er, ec, eh, ew)) in enumerate(entries)
            if er <= r and ec <= c and r + 6 <= er + eh and c + 6 <= ec + ew
        ]
        assert k == (inside[0] if inside else -1)


def test_nan_pixels_of_a_float_image_are_ignore(tmp_path: Path) -> None:
    # NaN (and inf) pixels of a float image are nodata whether or not the file declares it:
    # ignore in the mask, a finite value in the image (a NaN would make every loss NaN).
    from helpers import make_geotiff

    img = np.random.default_rng(0).uniform(0, 200, (3, 64, 64)).astype("float32")
    img[:, 10:20, 10:30] = np.nan
    img[2, 40, 40] = np.inf
    grid = rasterio.Affine(RES, 0, X0, 0, -RES, Y0)
    make_geotiff(tmp_path / "img" / "a.tif", img, transform=grid)
    make_geotiff(tmp_path / "msk" / "a.tif", np.ones((64, 64), np.uint8), transform=grid)
    bad = ~np.isfinite(img).all(0)
    for budget in ({}, {"memory_budget": 0}):  # in RAM, streamed
        ds = GeoRasterDataset(tmp_path / "img", masks=tmp_path / "msk", **budget)
        sample = ds[_box(0, 0, 64, 64)]
        assert torch.isfinite(sample["image"]).all()
        mask = sample["mask"].numpy()
        assert (mask[bad] == 255).all() and (mask[~bad] == 1).all()
