"""The target grid: every image and mask of a catalog placed on ONE pixel lattice.

The lattice is the target CRS/resolution (the first raster's unless given), anchored on the first
raster. A file already on it is read as it is; a file off it (another CRS, resolution or a
sub-pixel shift) is reprojected once into an aligned GeoTIFF under ``RUN_DIR/cache/`` (or, without
a cache folder, read through a ``WarpedVRT`` onto the lattice). Patches are then whole-pixel
windows: no resampling per sample. Positions are global pixel (row, col) integers, so files on
different continents cost nothing more than files side by side (no array spans the extent).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window

from geoseg import catalog, io, labels, remote
from geoseg.config import DataConfig
from geoseg.errors import ConfigError, InputNotFoundError, LabelError, RasterError

log = logging.getLogger(__name__)

Rect = tuple[int, int, int, int]
"""A rectangle of the grid in global pixels: (row, col, height, width)."""


@dataclass(frozen=True)
class Grid:
    """The target grid: CRS, square pixel size ``res`` (CRS units) and the corner of pixel (0, 0).

    Rows grow southwards (``y0 - row * res``), columns eastwards (``x0 + col * res``).
    """

    crs: CRS | None
    res: float
    x0: float
    y0: float

    def bounds(self, row: int, col: int, h: int, w: int) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in CRS units of the pixels [row, row+h) × [col, col+w)."""
        return (
            self.x0 + col * self.res,
            self.y0 - (row + h) * self.res,
            self.x0 + (col + w) * self.res,
            self.y0 - row * self.res,
        )

    def transform(self, row: int, col: int) -> Affine:
        """The affine transform of a raster whose pixel (0, 0) is grid pixel (row, col)."""
        return Affine(self.res, 0, self.x0 + col * self.res, 0, -self.res, self.y0 - row * self.res)

    def cover(self, bounds: Sequence[float]) -> Rect:
        """The grid pixels covering ``bounds`` (xmin, ymin, xmax, ymax; CRS units), snapped out."""
        left, bottom, right, top = bounds
        eps = 1e-6
        c0 = math.floor((left - self.x0) / self.res + eps)
        c1 = math.ceil((right - self.x0) / self.res - eps)
        r0 = math.floor((self.y0 - top) / self.res + eps)
        r1 = math.ceil((self.y0 - bottom) / self.res - eps)
        return r0, c0, r1 - r0, c1 - c0


@dataclass
class Tile:
    """One image (and its mask) placed on the grid at global pixel (row0, col0)."""

    image: Path
    """The file read: the original, or its aligned copy in the cache."""
    source: Path
    """The file the user gave."""
    mask: Path | None
    row0: int
    col0: int
    height: int
    width: int
    check_valid: bool
    """Whether the image has nodata / an internal mask (then nodata pixels become ignore)."""
    lut: np.ndarray = field(repr=False, default_factory=lambda: np.arange(256, dtype=np.uint8))
    """Mask value mapping (user mapping, the mask's nodata → ignore), applied on read."""
    warp_image: bool = False
    """Read ``image`` through a WarpedVRT onto the tile's place (it is off the grid, no cache)."""
    warp_mask: bool = False
    """Read ``mask`` through a WarpedVRT onto the tile's place (nearest; ignore outside it)."""

    @property
    def rect(self) -> Rect:
        return self.row0, self.col0, self.height, self.width


@dataclass
class Sources:
    """Images (and optionally their paired masks) given as files, e.g. taken from a user's
    torchgeo datasets, instead of ``data.images`` / ``data.labels``."""

    images: list[Path]
    masks: list[Path | None] | None = None
    """One mask per image (None: no mask for it); None: masks come from ``data.labels``."""
    bands: list[int] | None = None
    crs: CRS | None = None
    res: float | None = None
    name: str = "the catalog"
    """What to call the sources in messages (e.g. the user's dataset class)."""


# --------------------------------------------------------------------------------------------
# placing georeferenced rasters


def _fingerprint(path: Path) -> list:
    return remote.fingerprint(path) if remote.is_remote(path) else io.fingerprint([path])


def _aligned(info: catalog.RasterInfo, grid: Grid) -> tuple[int, int] | None:
    """(row0, col0) when ``info`` is already on the grid, else None."""
    t = info.transform
    if info.crs is None or grid.crs is None or info.crs != grid.crs or t.b != 0 or t.d != 0:
        return None
    if abs(t.a - grid.res) > 1e-9 * grid.res or abs(-t.e - grid.res) > 1e-9 * grid.res:
        return None
    fc, fr = (t.c - grid.x0) / grid.res, (grid.y0 - t.f) / grid.res
    if abs(fc - round(fc)) > 1e-6 or abs(fr - round(fr)) > 1e-6:
        return None
    return int(round(fr)), int(round(fc))


def _footprint(info: catalog.RasterInfo, crs: CRS) -> tuple[float, float, float, float]:
    """The raster's bounds in ``crs`` (as torchgeo indexes it: a WarpedVRT's default extent)."""
    if info.crs == crs:
        return info.bounds
    from rasterio.vrt import WarpedVRT

    with remote.env([info.path]), rasterio.open(info.path) as src, WarpedVRT(src, crs=crs) as vrt:
        left, bottom, right, top = vrt.bounds
        return left, bottom, right, top


def warp_to(
    src_path: Path,
    dst: Path,
    crs: CRS,
    transform: Affine,
    width: int,
    height: int,
    *,
    is_mask: bool,
    lut: np.ndarray | None = None,
    ignore_index: int = 255,
) -> None:
    """Reproject ``src_path`` once onto a grid into ``dst``, in strips of rows; written through
    :func:`geoseg.io.claim` (temporary name, verified, renamed).

    Images: bilinear, the source's nodata kept, or an internal mask marking where the source has
    data. Masks: nearest, mapped through ``lut``, ignore outside the source, in the mask format.
    """
    grid = dict(crs=crs, transform=transform, width=width, height=height)
    with (
        remote.env([src_path]),
        rasterio.open(src_path) as src,
        io.claim(dst, overwrite=True) as output,
    ):
        tmp = output.temp()
        with open_warped(src, crs, transform, width, height, is_mask=is_mask) as vrt:
            if is_mask:
                with io.MaskWriter(tmp, grid, final=False, nodata=ignore_index) as out:
                    for win in _strips(width, height):
                        out.write(mask_from_warped(vrt.read(window=win), lut, ignore_index), win)
            else:
                profile = dict(
                    driver="GTiff",
                    count=src.count,
                    dtype=src.dtypes[0],
                    nodata=src.nodata,
                    compress="deflate",
                    tiled=True,
                    blockxsize=256,
                    blockysize=256,
                    BIGTIFF="IF_SAFER",
                    **grid,
                )
                with rasterio.open(tmp, "w", **profile) as img:
                    for win in _strips(width, height):
                        data = vrt.read(window=win)
                        img.write(data[: src.count], window=win)
                        if src.nodata is None:
                            img.write_mask(data[-1], window=win)
        output.commit(tmp, verify=io.verify_raster)


def _strips(width: int, height: int, rows: int = 1024) -> list[Window]:
    return [Window(0, r, width, min(rows, height - r)) for r in range(0, height, rows)]


def open_warped(
    src: Any, crs: CRS, transform: Affine, width: int, height: int, *, is_mask: bool
) -> Any:
    """A WarpedVRT of ``src`` onto a grid window: bilinear images (nodata kept, else an alpha
    band), nearest masks with an alpha band (0 = outside the source)."""
    from rasterio.vrt import WarpedVRT

    kw: dict[str, Any] = dict(
        crs=crs,
        transform=transform,
        width=width,
        height=height,
        # A source alpha band is warped as the VRT's last band already (GDAL refuses a second).
        add_alpha=(src.nodata is None and ColorInterp.alpha not in src.colorinterp) or is_mask,
        resampling=Resampling.nearest if is_mask else Resampling.bilinear,
    )
    if src.nodata is not None and not is_mask:
        kw["nodata"] = src.nodata
    return WarpedVRT(src, **kw)


def mask_from_warped(data: np.ndarray, lut: np.ndarray | None, ignore_index: int) -> np.ndarray:
    """Class ids [H, W] uint8 from a warped mask read (band 1 + alpha): mapped through ``lut``,
    ignore where the alpha says there is no source pixel."""
    m = data[0]
    if m.dtype != np.uint8:
        m = np.clip(m, 0, 255).astype(np.uint8)
    m = lut[m] if lut is not None else m.copy()
    m[data[-1] == 0] = ignore_index
    return m


def _distance_text(a: Any, b: Any, crs: CRS) -> str:
    d = a.distance(b)
    if crs.is_geographic:
        return f"{d:.3g}°"
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    metres = d * factor
    return f"{metres / 1000:.1f} km" if metres >= 1000 else f"{metres:.0f} m"


def _check_mask_overlaps(mask: catalog.RasterInfo, tile: Tile, grid: Grid) -> None:
    """A mask whose footprint misses its image's is a pairing mistake: say so, with the gap."""
    import shapely

    if mask.crs is None or grid.crs is None:
        return
    img_box = shapely.box(*grid.bounds(*tile.rect))
    m_box = shapely.box(*_footprint(mask, grid.crs))
    if img_box.intersection(m_box).area > 0:
        return
    raise LabelError(
        f"{mask.path}: this mask lies {_distance_text(img_box, m_box, grid.crs)} from its image "
        f"{tile.source} (their footprints do not overlap); pair each image with the mask of the "
        "same area (same file name, or one that overlaps it)"
    )


def place_catalog(
    cfg: DataConfig,
    *,
    cache: Path | None,
    sources: Sources | None = None,
    with_masks: bool = True,
) -> tuple[list[Tile], Grid]:
    """Index the images and their masks and place them on the target grid.

    Args:
        cfg: the ``data`` section (images, labels, crs, res, mask mapping, ignore index).
        cache: folder for aligned copies and burned vector labels (``RUN_DIR/cache``); None:
            read files that are off the grid through a WarpedVRT (raster masks only).
        sources: images (and paired masks) given as files instead of ``cfg.images``/``labels``.
        with_masks: pair every image with a mask (False: images only).

    Returns:
        (tiles, grid); with ``with_masks``, every tile has a mask.

    Raises:
        InputNotFoundError, CatalogError, RasterError, LabelError, ConfigError: naming the file.
    """
    paths = sources.images if sources is not None else catalog.find_rasters(cfg.images)
    cat = catalog.index(paths)
    cat.require_crs()
    crs_in = sources.crs.to_wkt() if sources is not None and sources.crs else cfg.crs
    res_in = sources.res if sources is not None and sources.res else cfg.res
    target_crs, res = cat.target(crs_in, res_in)
    first = cat.rasters[0]
    if first.crs == target_crs:  # the same CRS given another way: keep the file's own WKT
        target_crs = first.crs
    grid, pos = None, None
    if first.crs == target_crs:
        grid = Grid(target_crs, res, first.transform.c, first.transform.f)
        pos = _aligned(first, grid)
    if grid is None or pos is None:
        b = _footprint(first, target_crs)
        grid = Grid(target_crs, res, math.floor(b[0] / res) * res, math.ceil(b[3] / res) * res)
    tiles = []
    for info in cat.rasters:
        pos = _aligned(info, grid)
        check_valid = info.nodata is not None or info.alpha_band is not None
        if pos is not None:
            tiles.append(
                Tile(info.path, info.path, None, *pos, info.height, info.width, check_valid)
            )
            continue
        r0, c0, h, w = grid.cover(_footprint(info, target_crs))
        transform = grid.transform(r0, c0)
        if cache is None:
            tiles.append(Tile(info.path, info.path, None, r0, c0, h, w, True, warp_image=True))
            continue
        key = io.digest(
            [_fingerprint(info.path), target_crs.to_wkt(), res, grid.x0, grid.y0, "img", 1]
        )
        dst = cache / f"aligned-img-{key}" / f"{info.path.stem}.tif"
        if not dst.exists():
            log.info("reprojecting %s once onto the target grid -> %s", info.path.name, dst)
            warp_to(info.path, dst, target_crs, transform, w, h, is_mask=False)
        tiles.append(Tile(dst, info.path, None, r0, c0, h, w, True))
    if not with_masks:
        return tiles, grid
    if sources is not None and sources.masks is not None:
        pairs = list(zip(tiles, sources.masks, strict=True))
        tiles[:] = _attach_raster_masks(pairs, grid, cfg, cache, where=sources.name)
    else:
        _attach_masks(tiles, grid, cfg, cache)
    return tiles, grid


def _attach_masks(tiles: list[Tile], grid: Grid, cfg: DataConfig, cache: Path | None) -> None:
    if not cfg.labels:
        raise ConfigError(
            "no labels given; pass --labels (a mask folder or a vector file) or set data.labels"
        )
    if cfg.target == "instances":
        _attach_instance_targets(tiles, cfg, cache)
        return
    if remote.is_remote(cfg.labels):  # a bucket prefix or URLs of mask rasters
        mask_files = catalog.find_rasters([cfg.labels])
        matched = labels.match_masks([t.source for t in tiles], mask_files)
        tiles[:] = _attach_raster_masks(
            list(zip(tiles, matched, strict=True)), grid, cfg, cache, cfg.labels
        )
        return
    lab = Path(cfg.labels)
    if not lab.exists():
        raise InputNotFoundError(f"{lab}: labels not found; check the path")
    if labels.is_vector_source(lab):
        if cache is None:
            raise ConfigError(f"{lab}: vector labels need a cache folder to burn them into")
        masks = labels.burn_cached(
            lab,
            [t.image for t in tiles],
            cache,
            attribute=cfg.label_attribute,
            all_touched=cfg.all_touched,
        )
        for t, m in zip(tiles, masks, strict=True):
            t.mask = m
            t.lut = labels.mapping_lut(cfg.mask_mapping)
        return
    mask_files = catalog.find_rasters([str(lab)])
    matched = labels.match_masks([t.source for t in tiles], mask_files)
    if not any(m is not None for m in matched):
        raise LabelError(
            f"{lab}: no mask matches an image by file name or overlaps one "
            f"(e.g. {tiles[0].source.name}); "
            "give masks of the same area, named like the images"
        )
    tiles[:] = _attach_raster_masks(list(zip(tiles, matched, strict=True)), grid, cfg, cache, lab)


def _attach_instance_targets(tiles: list[Tile], cfg: DataConfig, cache: Path | None) -> None:
    """Background/interior/edge/contact masks from building polygons or instance-id rasters."""
    from geoseg import instances

    if cfg.labels is None or remote.is_remote(cfg.labels) or cache is None:
        raise LabelError(
            f"{cfg.labels}: data.target: instances needs local building polygons or instance-id "
            "rasters (burned into the run's cache); copy them to a local folder"
        )
    lab = Path(cfg.labels)
    if not lab.exists():
        raise InputNotFoundError(f"{lab}: labels not found; check the path")
    found = instances.training_masks(
        lab,
        [t.image for t in tiles],
        [t.source for t in tiles],
        cache,
        edge_width_m=cfg.edge_width_m,
        contact_distance_m=cfg.contact_distance_m,
        attribute=cfg.label_attribute,
        all_touched=cfg.all_touched,
    )
    for t, m in zip(tiles, found, strict=True):
        if m is None:
            log.warning("%s: no instance ids found in %s; image skipped", t.source, lab)
        t.mask, t.lut = m, labels.mapping_lut(None)
    tiles[:] = [t for t in tiles if t.mask is not None]


def _attach_raster_masks(
    pairs: list[tuple[Tile, Path | None]],
    grid: Grid,
    cfg: DataConfig,
    cache: Path | None,
    where: Any,
) -> list[Tile]:
    keep = []
    for t, m in pairs:
        if m is None:
            log.warning("%s: no mask found in %s; image skipped", t.source, where)
            continue
        info = catalog.index([m]).rasters[0]
        lut = labels.mapping_lut(
            cfg.mask_mapping, nodata=info.nodata, ignore_index=cfg.ignore_index
        )
        if _aligned(info, grid) == (t.row0, t.col0) and (info.width, info.height) == (
            t.width,
            t.height,
        ):
            t.mask, t.lut = m, lut
            keep.append(t)
            continue
        if info.crs is None:
            raise RasterError(
                f"{m}: mask has no CRS and a grid other than {t.source.name}; georeference it"
            )
        _check_mask_overlaps(info, t, grid)
        if cache is None:
            t.mask, t.lut, t.warp_mask = m, lut, True
            keep.append(t)
            continue
        transform = grid.transform(t.row0, t.col0)
        key = io.digest(
            [
                _fingerprint(m),
                grid.crs.to_wkt() if grid.crs else "",
                list(transform)[:6],
                t.width,
                t.height,
                cfg.mask_mapping and sorted(cfg.mask_mapping.items()),
                cfg.ignore_index,
                "mask",
                2,
            ]
        )
        dst = cache / f"aligned-mask-{key}" / f"{m.stem}.tif"
        if not dst.exists():
            log.info("reprojecting mask %s once onto %s's grid", m.name, t.source.name)
            warp_to(
                m,
                dst,
                grid.crs,
                transform,
                t.width,
                t.height,
                is_mask=True,
                lut=lut,
                ignore_index=cfg.ignore_index,
            )
        t.mask, t.lut = dst, labels.mapping_lut(None)
        keep.append(t)
    if not keep:
        raise LabelError(f"{where}: no image has a mask; give masks of the same areas")
    return keep


# --------------------------------------------------------------------------------------------
# plain tiles (layout: tiles)


def _tile_folder(cfg: DataConfig) -> tuple[Path, Path]:
    if not cfg.images:
        raise ConfigError(
            "no images given; set data.images to the folder holding img/ (layout tiles)"
        )
    root = Path(cfg.images[0])
    if not root.exists():
        raise InputNotFoundError(f"{root}: no such folder; check data.images")
    img_dir = root / "img" if (root / "img").is_dir() else root
    mask_dir = Path(cfg.labels) if cfg.labels else img_dir.parent / "mask"
    if not mask_dir.is_dir():
        raise InputNotFoundError(
            f"{mask_dir}: mask folder not found; set data.labels to the mask/ folder"
        )
    return img_dir, mask_dir


def place_plain_tiles(cfg: DataConfig, *, patch: int, gap: int) -> tuple[list[Tile], Grid]:
    """``layout: tiles``: img/ and mask/ folders of plain tiles matched by file name, placed
    side by side on a virtual pixel grid (far enough apart that no gap check crosses tiles)."""
    img_dir, mask_dir = _tile_folder(cfg)
    imgs = catalog.find_rasters([str(img_dir)], suffixes=catalog.TILE_SUFFIXES)
    masks = catalog.find_rasters([str(mask_dir)], suffixes=catalog.TILE_SUFFIXES)
    matched = labels.match_masks(imgs, masks, by_overlap=False)
    pairs = [(i, m) for i, m in zip(imgs, matched, strict=True) if m is not None]
    if not pairs:
        raise LabelError(
            f"{mask_dir}: no mask has the file name of an image in {img_dir}; name them alike"
        )
    infos = catalog.index([p for p, _ in pairs])
    minfo = catalog.index([m for _, m in pairs])
    big = max(max(i.height, i.width) for i in infos)
    pitch = big + 2 * gap + 2 * max(16, patch)
    ncol = max(1, math.ceil(math.sqrt(len(pairs))))
    tiles = []
    for k, (info, mi) in enumerate(zip(infos, minfo, strict=True)):
        if (mi.width, mi.height) != (info.width, info.height):
            raise LabelError(
                f"{mi.path}: mask is {mi.width}×{mi.height} px but {info.path.name} is "
                f"{info.width}×{info.height}; masks must match their tiles"
            )
        lut = labels.mapping_lut(cfg.mask_mapping, nodata=mi.nodata, ignore_index=cfg.ignore_index)
        tiles.append(
            Tile(
                info.path,
                info.path,
                mi.path,
                (k // ncol) * pitch,
                (k % ncol) * pitch,
                info.height,
                info.width,
                info.nodata is not None,
                lut,
            )
        )
    return tiles, Grid(None, 1.0, 0.0, 0.0)


def select_bands(tiles: list[Tile], bands: Sequence[int] | None) -> tuple[list[int], list[str]]:
    """The 1-based bands read from every image (given ones, else all but alpha) and their names.

    Raises:
        ConfigError: a given band is out of range. RasterError: images differ in band count.
    """
    first = catalog.index([tiles[0].source]).rasters[0]
    if bands:
        chosen = list(bands)
        bad = [b for b in chosen if not 1 <= b <= first.count]
        if bad:
            raise ConfigError(
                f"data.bands {bad} out of range: {first.path} has bands 1..{first.count}"
            )
    else:
        chosen = [b for b in range(1, first.count + 1) if b != first.alpha_band]
    for t in tiles[1:]:
        with warnings.catch_warnings(), remote.env([t.image]):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(t.image) as src:
                if max(chosen) > src.count:
                    raise RasterError(
                        f"{t.source}: has {src.count} band(s) but {first.path.name} has "
                        f"{first.count}; use rasters with the same bands or set data.bands"
                    )
    names = [first.band_names[b - 1] if first.band_names else f"band_{b}" for b in chosen]
    return chosen, names


def check_patch_fits(tiles: list[Tile], patch: int, where: str | None = None) -> None:
    """Raise RasterError when every tile is smaller than a patch (naming the largest)."""
    big = max(tiles, key=lambda t: min(t.height, t.width))
    side = min(big.height, big.width)
    if side >= patch:
        return
    fix = f"use a patch size ≤ {side} (a multiple of the model's downsampling)"
    if where:
        raise RasterError(
            f"{where}: every file is smaller than patch_size={patch} (the largest, "
            f"{big.source.name}, is {big.width}×{big.height} px); {fix}"
        )
    raise RasterError(
        f"{big.source}: raster is {big.width}×{big.height} px, smaller than "
        f"patch_size={patch}; {fix}"
    )
