"""Labels: vector polygons burned once into masks on an image's grid, and mask-folder matching.

Mask values are class ids (0 = background) and :data:`IGNORE` (255) where the image is nodata
or nothing is known. torchgeo's VectorDataset re-reads the whole vector file for every sample
(23 samples/s against ~240 for a raster mask), so geoseg burns vector labels once, caches the
masks under the run folder keyed by a hash of the inputs, and reads them like raster masks.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning

from geoseg import io, progress, remote, windows
from geoseg.errors import InputNotFoundError, LabelError, RasterError
from geoseg.io import is_vector  # noqa: F401 - re-exported: callers ask labels.is_vector

log = logging.getLogger(__name__)

#: Mask value for "unknown": image nodata, outside the image, unlabelled.
IGNORE = io.MASK_NODATA
#: Rows x columns of the like-image read and burned at once by :func:`rasterize` (memory bound).
BURN_WINDOW = (io.MASK_BLOCKSIZE, 16 * io.MASK_BLOCKSIZE)
_MASK_TOKENS = re.compile(
    r"(^|[_\-. ])(mask|masks|label|labels|gt|lbl|ann)(?=$|[_\-. ])", re.IGNORECASE
)


def _crs_name(crs: CRS | None) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else (crs.to_dict().get("proj", "custom") + " (custom WKT)")


def _fmt(b: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def vector_folder(path: str | Path) -> list[Path]:
    """The vector files directly in folder ``path``, sorted; ``[]`` when ``path`` is not a
    folder, or holds a raster (a mask folder) or no vector file.

    Polygons often come split by area (one GeoJSON per town or tile): such a folder is read as
    one layer by :func:`read_vector`.
    """
    path = Path(path)
    if not path.is_dir():
        return []
    files = sorted(f for f in path.iterdir() if f.is_file())
    if any(io.is_raster(f) for f in files):
        return []
    return [f for f in files if io.is_vector(f)]


def is_vector_source(path: str | Path) -> bool:
    """Whether ``path`` is a vector file or a folder of vector files (see :func:`vector_folder`)."""
    return is_vector(path) or bool(vector_folder(path))


def read_vector(path: str | Path, attribute: str | None = None):
    """Read a polygon file into a GeoDataFrame with a ``value`` column (class ids, 1 by default).

    ``path`` may be a folder of vector files (:func:`vector_folder`): their polygons are read
    into one frame, in the first file's CRS.

    Raises:
        InputNotFoundError: the file does not exist.
        LabelError: unreadable, no CRS, missing attribute, or class values outside 0..254.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: labels file not found; check the path")
    parts = vector_folder(path)
    if parts:
        import geopandas as gpd
        import pandas as pd

        frames = [read_vector(f, attribute) for f in parts]
        crs = frames[0].crs
        return gpd.GeoDataFrame(
            pd.concat([f.to_crs(crs) for f in frames], ignore_index=True), crs=crs
        )
    gdf = io.read_vector(path, what="labels")
    if gdf.crs is None:
        raise LabelError(f"{path}: the labels have no CRS; set one (e.g. ogr2ogr -a_srs EPSG:XXXX)")
    gdf = gdf[io.require_polygons(gdf, path, role="labels")]
    if attribute:
        if attribute not in gdf.columns:
            cols = ", ".join(c for c in gdf.columns if c != "geometry")
            raise LabelError(
                f"{path}: no column '{attribute}' for --attribute; columns are: {cols}"
            )
        vals = gdf[attribute]
        gdf = gdf[vals.notna()].copy()
        try:
            values = gdf[attribute].astype("int64").to_numpy()
        except (TypeError, ValueError):
            raise LabelError(f"{path}: column '{attribute}' must hold integer class ids") from None
    else:
        gdf = gdf.copy()
        values = np.ones(len(gdf), dtype=np.int64)
    if len(values) and (values.min() < 0 or values.max() >= IGNORE):
        raise LabelError(
            f"{path}: class ids in '{attribute}' range {values.min()}..{values.max()}; "
            "expected 0..254 "
            f"({IGNORE} means ignore)"
        )
    gdf["value"] = values
    return gdf[["value", "geometry"]]


def _grid(src: rasterio.io.DatasetReader) -> dict:
    return dict(crs=src.crs, transform=src.transform, width=src.width, height=src.height)


def _all_valid(src: rasterio.io.DatasetReader) -> bool:
    return src.nodata is None and all(MaskFlags.all_valid in f for f in src.mask_flag_enums)


def check_overlap(gdf, labels: Path, images: Sequence[tuple[Path, CRS, tuple]]) -> list[bool]:
    """For each (path, crs, bounds) image: whether any label polygon overlaps it.

    Raises:
        LabelError: no polygon overlaps any image (the declared CRS is probably wrong).
    """
    import shapely

    hits = []
    by_crs: dict[str, Any] = {}
    for _, crs, bounds in images:
        key = crs.to_wkt()
        if key not in by_crs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                by_crs[key] = gdf.geometry.to_crs(crs)
        geoms = by_crs[key]
        box = shapely.box(*bounds)
        ok = bool(len(geoms)) and bool(np.any(shapely.intersects(np.asarray(geoms.values), box)))
        hits.append(ok)
    if images and not any(hits):
        lab_bounds = gdf.total_bounds if len(gdf) else np.full(4, np.nan)
        path, crs, bounds = images[0]
        hint = ""
        if (
            gdf.crs is not None
            and gdf.crs.is_geographic
            and len(gdf)
            and (
                np.nanmax(np.abs(lab_bounds[[0, 2]])) > 180
                or np.nanmax(np.abs(lab_bounds[[1, 3]])) > 90
            )
        ):
            hint = " (its coordinates are out of range for degrees, so they are probably metres)"
        where = (
            path.name if len(images) == 1 else f"any of the {len(images)} images (e.g. {path.name})"
        )
        raise LabelError(
            f"{labels}: no label polygon overlaps {where}: labels extent {_fmt(lab_bounds)} "
            f"in declared {_crs_name(CRS.from_user_input(gdf.crs))}, image extent "
            f"{_fmt(bounds)} in {_crs_name(crs)}; "
            f"the declared CRS of the labels is probably wrong{hint}; fix it (e.g. ogr2ogr -a_srs) "
            "or use labels of this area"
        )
    return hits


def _burn_shapes(
    geoms: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, int],
    transform: rasterio.Affine,
    *,
    all_touched: bool,
) -> np.ndarray:
    """uint8 ``shape`` array: 0, and the polygons' values where they lie (later ones win)."""
    from rasterio import features

    out = np.zeros(shape, dtype=np.uint8)
    shapes = [(g, int(v)) for g, v in zip(geoms, values, strict=True) if g is not None]
    if shapes:
        features.rasterize(
            shapes, out=out, transform=transform, all_touched=all_touched, dtype=np.uint8
        )
    return out


def rasterize(
    labels: Path,
    like: Path | str,
    out: Path,
    *,
    attribute: str | None = None,
    all_touched: bool = False,
    overwrite: bool = False,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Burn vector labels into a mask GeoTIFF on exactly ``like``'s grid.

    The output has ``like``'s CRS, transform, width and height; uint8, 0 = background, class ids
    from ``attribute`` (else 1) where polygons lie, 255 (ignore, also the file's nodata) where
    ``like`` is nodata; the mask format of :mod:`geoseg.io`, written atomically. The image is
    streamed in windows of :data:`BURN_WINDOW` pixels (only the polygons that touch a window
    are burned into it), so memory is a few MB plus the polygons whatever the image's size.
    ``class_names`` (index = class id) are written into the mask's tags.

    Raises:
        InputNotFoundError: ``labels`` or ``like`` does not exist.
        OutputExistsError: ``out`` exists and not ``overwrite``.
        ConfigError: ``out`` is ``labels`` or ``like``.
        LabelError: no polygon overlaps ``like`` (e.g. a wrongly declared CRS), or bad class ids.
        RasterError: ``like`` is unreadable or has no CRS.
    """
    labels, like, out = Path(labels), remote.as_path(like), Path(out)
    if not remote.is_remote(like) and not like.exists():
        raise InputNotFoundError(f"{like}: image for --like not found; check the path")
    with (
        remote.env([like]),  # an s3:// or https:// image is read in windows, with retries
        io.claim(out, overwrite=overwrite, inputs=[labels, like]) as output,
    ):
        gdf = read_vector(labels, attribute)
        with io.open_raster(like, hint="pass the image the mask is for") as src:
            if src.crs is None:
                raise RasterError(
                    f"{like}: raster has no CRS, so labels cannot be placed on it; "
                    "georeference it first"
                )
            check_overlap(gdf, labels, [(like, src.crs, tuple(src.bounds))])
            _burn_into(output, src, like, gdf, all_touched=all_touched, class_names=class_names)
    log.info("burned %d polygons into %s", len(gdf), out)
    from geoseg import export

    export.mask_style(out)  # QGIS style sidecar <mask>.qml
    return out


def _burn_into(
    output: io.Output,
    src: Any,
    path: Path,
    gdf: Any,
    *,
    all_touched: bool,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Burn ``gdf`` onto the grid of the open raster ``src`` (at ``path``) into ``output``.

    Streams ``src`` in windows of :data:`BURN_WINDOW` pixels: each window reads its part of the
    nodata mask and burns only the polygons an STRtree finds there.
    """
    import shapely

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geoms = np.asarray(gdf.geometry.to_crs(src.crs).values, dtype=object)
    values = gdf["value"].to_numpy()
    tree = shapely.STRtree(geoms)
    tmp = output.temp()
    blocks = list(windows.read_blocks(src.width, src.height, *BURN_WINDOW))
    all_valid = _all_valid(src)
    with (
        io.reading(path),
        rasterio.Env(GDAL_CACHEMAX=64),  # MB: GDAL's block cache would grow with the image
        io.MaskWriter(tmp, _grid(src), class_names=class_names) as writer,
    ):
        for window in blocks:
            box = shapely.box(*rasterio.windows.bounds(window, src.transform))
            hits = np.sort(tree.query(box))  # file order: later polygons still win
            block = _burn_shapes(
                geoms[hits],
                values[hits],
                (int(window.height), int(window.width)),
                src.window_transform(window),
                all_touched=all_touched,
            )
            if not all_valid:
                # dataset_mask is 0 (nodata) or 255; IGNORE is 255 (all bits): OR-ing the
                # inverted mask sets exactly the nodata pixels, ~50x faster than indexing.
                np.bitwise_or(block, ~src.dataset_mask(window=window), out=block)
            writer.write(block, window)
    return output.commit(tmp, verify=io.verify_raster)


def burn_cached(
    labels: Path,
    images: Sequence[Path],
    cache_root: Path,
    *,
    attribute: str | None = None,
    all_touched: bool = False,
) -> list[Path]:
    """Burn vector labels once onto each image's grid; reuse the masks on the next run.

    Masks go to ``cache_root/labels-<hash>/`` where the hash covers the vector file (path,
    size, mtime), every image's path and grid, ``attribute`` and ``all_touched``. Images that no
    polygon overlaps get an all-background mask (ignore where nodata).

    Returns:
        One mask path per image, in order.

    Raises:
        LabelError: the labels overlap none of the images (message names both extents).
    """
    labels = Path(labels)
    if not labels.exists():
        raise InputNotFoundError(f"{labels}: labels file not found; check the path")
    grids = []
    for p in images:
        with rasterio.open(p) as src:
            grids.append(
                (Path(p), src.crs, tuple(src.bounds), src.transform, src.width, src.height)
            )
    payload = {
        "vector": io.fingerprint([labels]),
        "images": [
            [str(p.resolve()), crs.to_wkt(), list(t)[:6], w, h] for p, crs, _, t, w, h in grids
        ],
        "attribute": attribute,
        "all_touched": all_touched,
        "v": 1,
    }
    key = json.dumps(payload, sort_keys=True)
    digest = io.digest(payload)
    folder = Path(cache_root) / f"labels-{digest}"
    outs = [folder / f"{i:04d}_{p.stem}.tif" for i, p in enumerate(images)]
    marker = folder / "done.json"
    if marker.exists() and all(o.exists() for o in outs):
        log.info("reusing burned labels in %s", folder)
        return outs
    gdf = read_vector(labels, attribute)
    check_overlap(gdf, labels, [(p, crs, b) for p, crs, b, *_ in grids])
    with progress.bar(len(grids), "burning labels") as bar:
        for (p, *_), out in zip(grids, outs, strict=True):
            with io.claim(out, overwrite=True) as output, io.open_raster(p) as src:
                _burn_into(output, src, p, gdf, all_touched=all_touched)
            bar.advance()
    io.write_text(marker, key)
    return outs


def _norm_stem(name: str) -> str:
    return _MASK_TOKENS.sub("", Path(name).stem).lower()


def match_masks(
    images: Sequence[Path], masks: Sequence[Path], *, by_overlap: bool = True
) -> list[Path | None]:
    """Pair each image with a mask file: same file name (stem), then the stem without words like
    ``mask``/``label``, then (georeferenced files only) the mask that overlaps it most.

    Returns:
        One mask path (or None when nothing matches) per image.
    """
    by_stem = {Path(m).stem: Path(m) for m in masks}
    by_norm: dict[str, Path] = {}
    for m in masks:
        by_norm.setdefault(_norm_stem(Path(m).name), Path(m))
    out: list[Path | None] = []
    missing: list[int] = []
    for i, img in enumerate(images):
        found = by_stem.get(Path(img).stem) or by_norm.get(_norm_stem(Path(img).name))
        out.append(found)
        if found is None:
            missing.append(i)
    if missing and by_overlap:
        _match_by_overlap(images, masks, out, missing)
    return out


def _match_by_overlap(images, masks, out, missing) -> None:
    import shapely
    from rasterio.warp import transform_bounds

    boxes = []
    for m in masks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(m) as src:
                boxes.append((src.crs, src.bounds))
    for i in missing:
        with rasterio.open(images[i]) as src:
            crs, bounds = src.crs, src.bounds
        if crs is None:
            continue
        best, best_area = None, 0.0
        img_box = shapely.box(*bounds)
        for m, (mcrs, mb) in zip(masks, boxes, strict=True):
            if mcrs is None:
                continue
            b = transform_bounds(mcrs, crs, *mb) if mcrs != crs else mb
            area = img_box.intersection(shapely.box(*b)).area
            if area > best_area:
                best, best_area = Path(m), area
        out[i] = best


def mapping_lut(
    mapping: dict[int, int] | None, *, nodata: float | None = None, ignore_index: int = IGNORE
) -> np.ndarray:
    """A 256-entry uint8 lookup table: identity, then the mask's nodata → ignore, then
    ``mapping`` (applied last, so it may map the nodata value too)."""
    lut = np.arange(256, dtype=np.uint8)
    if nodata is not None and float(nodata).is_integer() and 0 <= nodata < 256:
        lut[int(nodata)] = ignore_index
    for k, v in (mapping or {}).items():
        if not (0 <= int(k) < 256 and 0 <= int(v) < 256):
            raise LabelError(f"data.mask_mapping {{{k}: {v}}}: keys and values must be 0..255")
        lut[int(k)] = int(v)
    return lut


def check_classes(
    values: np.ndarray | Sequence[int], num_classes: int, ignore_index: int, source: str | Path
) -> None:
    """Raise LabelError if a mask value is ≥ ``num_classes`` and not ``ignore_index``."""
    vals = np.unique(np.asarray(values))
    bad = vals[(vals >= num_classes) & (vals != ignore_index)]
    if bad.size:
        raise LabelError(
            f"{source}: label value(s) {', '.join(map(str, bad[:8].tolist()))} but only "
            f"{num_classes} classes "
            f"(0..{num_classes - 1}); --num-classes is too small: use --num-classes "
            f"{int(bad.max()) + 1} (model.classes), "
            f"or map values with data.mask_mapping (ignore value is {ignore_index})"
        )
