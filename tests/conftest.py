"""Shared fixtures: small georeferenced files made in code, the real samples in ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import helpers
import numpy as np
import pytest

# Servers on 127.0.0.1 for the remote-data tests (S3, HTTP with Range, STAC API).
from remote_servers import aws_env, bucket, http_root, http_server, s3_server  # noqa: F401

REAL_DATA = helpers.REPO.parent / "shared" / "data" / "real"

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
    """:func:`helpers.make_geotiff` rooted at the test's ``tmp_path``.

    ``make_geotiff(name='image.tif', data=None, *, size=(H, W), count=3, dtype='uint8',
    crs='EPSG:32631', transform=from_origin(500000, 5000000, 0.5, 0.5), nodata=None, seed=0,
    tiled=False, class_names=None)`` writes ``tmp_path/name`` and returns its path.
    """

    def make(name: str = "image.tif", data: np.ndarray | None = None, **kwargs: object) -> Path:
        return helpers.make_geotiff(tmp_path / name, data, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory):
    """Small built-in demo scenes (4 tiles of 256 px), made once per test session."""
    from geoseg import synthetic

    return synthetic.make_demo_data(tmp_path_factory.mktemp("demo"), tiles=4, size=256, seed=0)
