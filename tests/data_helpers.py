"""Small generated data sets for the catalog, labels and data tests (plain functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import RES, X0, Y0
from helpers import make_geotiff as write  # the shared factory, under the name these tests use
from rasterio.transform import from_origin

__all__ = ["RES", "X0", "Y0", "mosaic", "write"]


def mosaic(
    root: Path,
    *,
    grid: tuple[int, int] = (2, 2),
    size: int = 128,
    seed: int = 0,
    nodata_cols: int = 0,
) -> tuple[Path, Path]:
    """A grid of adjacent 3-band uint8 tiles in ``root/img`` and masks in ``root/mask``.

    The mask is a function of the image (1 where band 1 > 128), so alignment can be checked on
    any patch after augmentation. With ``nodata_cols``, tile 0's first columns are nodata (0).
    """
    rng = np.random.default_rng(seed)
    k = 0
    for i in range(grid[0]):
        for j in range(grid[1]):
            img = rng.integers(1, 256, (3, size, size)).astype(np.uint8)
            if k == 0 and nodata_cols:
                img[:, :, :nodata_cols] = 0
            t = from_origin(X0 + j * size * RES, Y0 - i * size * RES, RES, RES)
            write(root / "img" / f"tile_{k:02d}.tif", img, transform=t, nodata=0)
            write(root / "mask" / f"tile_{k:02d}.tif", (img[0] > 128).astype(np.uint8), transform=t)
            k += 1
    return root / "img", root / "mask"
