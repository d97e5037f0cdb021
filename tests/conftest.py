"""Shared fixtures: small georeferenced files made in code, and the real samples in ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

# Servers on 127.0.0.1 for the remote-data tests (S3, HTTP with Range, STAC API).
from remote_servers import aws_env, bucket, http_root, http_server, s3_server  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"

# Two pytest-xdist workers share 2 cores: one torch thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The read-only real sample rasters and footprints (never write next to them)."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real sample data not found at {REAL_DATA}")
    return REAL_DATA


MakeGeotiff = Callable[..., Path]


@pytest.fixture
def make_geotiff(tmp_path: Path) -> MakeGeotiff:
    """Factory for tiny georeferenced GeoTIFFs with known content.

    ``make_geotiff(name, size=(H, W), count=3, dtype='uint8', crs='EPSG:32631',
    transform=from_origin(500000, 5000000, 0.5, 0.5), nodata=None, seed=0, data=None)``
    writes ``tmp_path/name`` and returns its path. ``data`` (C, H, W) overrides the seeded noise;
    ``crs=None`` writes a raster without a CRS.
    """

    def make(
        name: str = "image.tif",
        *,
        size: tuple[int, int] = (64, 64),
        count: int = 3,
        dtype: str = "uint8",
        crs: str | CRS | None = "EPSG:32631",
        transform: rasterio.Affine | None = None,
        nodata: float | None = None,
        seed: int = 0,
        data: np.ndarray | None = None,
        tiled: bool = False,
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            rng = np.random.default_rng(seed)
            hi = 255 if np.dtype(dtype).kind in "ui" and np.dtype(dtype).itemsize == 1 else 1000
            data = rng.integers(1, hi, size=(count, *size)).astype(dtype)
        else:
            data = np.asarray(data)
            if data.ndim == 2:
                data = data[None]
            count, size = data.shape[0], data.shape[1:]
        profile = dict(
            driver="GTiff",
            width=size[1],
            height=size[0],
            count=count,
            dtype=data.dtype,
            crs=crs,
            transform=transform
            if transform is not None
            else from_origin(500000, 5000000, 0.5, 0.5),
            nodata=nodata,
        )
        if tiled:
            profile.update(
                tiled=True,
                blockxsize=16 * max(1, size[1] // 64),
                blockysize=16 * max(1, size[0] // 64),
            )
        if crs is None:
            profile.pop("crs")
            profile["transform"] = rasterio.Affine.identity() if transform is None else transform
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path

    return make


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory):
    """Small built-in demo scenes (4 tiles of 256 px), made once per test session."""
    from geoseg import synthetic

    return synthetic.make_demo_data(tmp_path_factory.mktemp("demo"), tiles=4, size=256, seed=0)
