"""A user's torchgeo datasets as geoseg sources: ``train.fit(cfg, run_dir, dataset=img & msk)``.

geoseg reads the files those datasets index (their ``filename_glob``/``filename_regex`` chose
them), with their bands, CRS and resolution, through its own grid and reader; their
``__getitem__`` and ``transforms`` are not used (geoseg normalises and augments itself).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rasterio.crs import CRS

from geoseg.data.grid import Sources
from geoseg.errors import CatalogError, LabelError

log = logging.getLogger(__name__)


def _name(ds: Any) -> str:
    return type(ds).__name__


def _check_raster(ds: Any, role: str) -> None:
    from torchgeo.datasets import RasterDataset

    name = _name(ds)
    if not isinstance(ds, RasterDataset):
        raise CatalogError(
            f"{name}: the {role} dataset is a {type(ds).__mro__[1].__name__}, not a torchgeo "
            "RasterDataset; give raster files (vector labels go in data.labels)"
        )
    if len(ds.index) == 0:
        raise CatalogError(
            f"{name}: the {role} dataset's index is empty (no file matched filename_glob "
            f"{ds.filename_glob!r} and filename_regex {ds.filename_regex!r}); check paths= and "
            "the patterns"
        )
    if ds.separate_files:
        raise CatalogError(
            f"{name}: separate_files=True (one file per band) is not supported; stack the bands "
            "into one GeoTIFF per scene (e.g. gdalbuildvrt -separate)"
        )


def sources_from_torchgeo(dataset: Any) -> Sources:
    """The files, bands, CRS and resolution of a user's datasets.

    Args:
        dataset: ``image_ds & mask_ds`` (a torchgeo IntersectionDataset), an ``(image_ds,
            mask_ds)`` pair, or an image RasterDataset alone (masks then come from
            ``data.labels``).

    Returns:
        Sources: every image file with the mask file that overlaps it most.

    Raises:
        CatalogError: not raster datasets, an empty index, one file per band.
        LabelError: image and mask datasets in different CRSs, or footprints that never meet.
    """
    from torchgeo.datasets import IntersectionDataset

    if isinstance(dataset, IntersectionDataset):
        image_ds, mask_ds = dataset.datasets
    elif isinstance(dataset, tuple | list) and len(dataset) == 2:
        image_ds, mask_ds = dataset
    else:
        image_ds, mask_ds = dataset, None
    _check_raster(image_ds, "image")
    name = _name(image_ds)
    if image_ds.res[0] != image_ds.res[1]:
        log.warning("%s: res %s is not square; geoseg uses %s", name, image_ds.res, image_ds.res[0])
    for ds in (image_ds, mask_ds):
        if ds is not None and getattr(ds, "transforms", None) is not None:
            log.warning(
                "%s: its transforms are not applied; geoseg normalises and augments itself",
                _name(ds),
            )
    images = [Path(p) for p in dict.fromkeys(image_ds.index["filepath"])]
    band_indexes = getattr(image_ds, "band_indexes", None)  # set by RasterDataset(bands=...)
    bands = list(band_indexes) if band_indexes else None
    crs = CRS.from_user_input(image_ds.crs.to_wkt())
    masks = None
    if mask_ds is not None:
        _check_raster(mask_ds, "mask")
        if mask_ds.crs != image_ds.crs:
            raise LabelError(
                f"{_name(mask_ds)}: the mask dataset is in {mask_ds.crs.to_string()} but "
                f"{name} is in {image_ds.crs.to_string()}; build both with the same crs= or "
                f"combine them with `{name}(...) & {_name(mask_ds)}(...)`"
            )
        masks = _pair(image_ds, mask_ds)
        if not any(m is not None for m in masks):
            raise LabelError(
                f"{_name(mask_ds)}: no mask footprint overlaps an image of {name} (images "
                f"{_extent(image_ds)}, masks {_extent(mask_ds)} in {image_ds.crs.to_string()}); "
                "give masks of the same area"
            )
    return Sources(images, masks, bands, crs, float(image_ds.res[0]), name)


def _extent(ds: Any) -> str:
    xmin, ymin, xmax, ymax = ds.index.total_bounds
    return f"({xmin:.6g}, {ymin:.6g}, {xmax:.6g}, {ymax:.6g})"


def _pair(image_ds: Any, mask_ds: Any) -> list[Path | None]:
    """For every image file, the mask file whose footprint overlaps it most (None: none)."""
    import shapely

    mask_idx = mask_ds.index
    tree = shapely.STRtree(list(mask_idx.geometry))
    out: list[Path | None] = []
    seen: set[str] = set()
    for path, geom in zip(image_ds.index["filepath"], image_ds.index.geometry, strict=True):
        if path in seen:
            continue
        seen.add(path)
        best, best_area = None, 0.0
        for k in tree.query(geom, predicate="intersects").tolist():
            area = geom.intersection(mask_idx.geometry.iloc[k]).area
            if area > best_area:
                best, best_area = Path(mask_idx["filepath"].iloc[k]), area
        out.append(best)
    return out
