"""GeoRasterDataset: a torchgeo ``GeoDataset`` over images and masks on one pixel grid.

torchgeo's ``RasterDataset`` merges the files under every query with ``rasterio.merge`` (~50-300
samples/s); here every file already sits on one pixel grid (:mod:`geoseg.data.grid`), so a query
is a whole-pixel window of one file: a numpy slice when the decoded files fit the memory budget,
else a window read from a handle opened once per worker process. It is still a plain torchgeo
dataset: an ``index`` GeoDataFrame, ``crs``, ``res``, and ``dataset[xmin:xmax, ymin:ymax]``
returning torchgeo's sample dict, so torchgeo's samplers, ``stack_samples`` and ``&``/``|`` work
on it.

Example (a torchgeo script, nothing else of geoseg)::

    from geoseg.data import GeoRasterDataset
    from torchgeo.datasets import stack_samples
    from torchgeo.samplers import RandomGeoSampler
    ds = GeoRasterDataset("scenes/images", masks="scenes/masks")
    loader = DataLoader(ds, sampler=RandomGeoSampler(ds, size=256, length=64), batch_size=8,
                        collate_fn=stack_samples)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from torchgeo.datasets import GeoDataset
from torchgeo.datasets.utils import GeoSlice as TorchgeoSlice

from geoseg import io, progress, remote
from geoseg.data.grid import Grid, Rect, Tile, mask_from_warped, open_warped
from geoseg.errors import ConfigError, LabelError

log = logging.getLogger(__name__)

#: Decoded bytes (images + masks) up to which all tiles are read into RAM once and sliced.
MEMORY_BUDGET = 1 << 30

GeoSlice = tuple[slice, slice, slice]


class GeoRasterDataset(GeoDataset):
    """Images (and masks) on one pixel grid, as a torchgeo ``GeoDataset``.

    A sample is torchgeo's dict: ``image`` [C, H, W] (float32 raw values, or the file's own
    dtype with ``native_dtypes``), ``mask`` [H, W] class ids (int64, or uint8 with
    ``native_dtypes``) with ``ignore_index`` where the image or the label is nodata and outside
    the files, ``crs`` and ``bounds`` (the query). A query is read from the first index entry
    that contains it (one window of one file); a query that no entry contains is mosaicked from
    the entries it touches (first one wins). Queries snap to whole pixels of the grid; a query
    step other than ``res`` resamples (bilinear image, nearest mask).

    Args:
        paths: images: a folder, glob, list file, STAC JSON or raster paths (as ``geoseg train``
            takes them).
        masks: mask rasters (folder, glob or paths), paired with the images by file name or
            overlap; None: image-only samples.
        crs: target CRS (default: the first image's); res: target pixel size in CRS units.
        bands: 1-based band indexes to read (default: all but alpha).
        mask_mapping: mask value remapping, e.g. ``{255: 1}``.
        ignore_index: mask value for nodata and unlabelled pixels.
        memory_budget: decoded bytes up to which the rasters are read into RAM once.
        native_dtypes: return images in the file's dtype and masks as uint8 (batches stay small
            until normalised).
        transforms: a function applied to each sample dict.

    Memory: the decoded rasters when they fit ``memory_budget``, else one open handle per file
    and worker process.
    """

    filename_glob = "*"

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        masks: str | Path | Sequence[str | Path] | None = None,
        *,
        crs: Any = None,
        res: float | None = None,
        bands: Sequence[int] | None = None,
        mask_mapping: dict[int, int] | None = None,
        ignore_index: int = 255,
        memory_budget: int = MEMORY_BUDGET,
        native_dtypes: bool = False,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        from rasterio.crs import CRS

        from geoseg import catalog, labels
        from geoseg.config import DataConfig
        from geoseg.data import grid as grid_

        sources = [str(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]
        images = catalog.find_rasters(sources)
        paired: list[Path | None] | None = None
        if masks is not None:
            mask_list = [str(p) for p in ([masks] if isinstance(masks, str | Path) else masks)]
            paired = list(labels.match_masks(images, catalog.find_rasters(mask_list)))
        target = CRS.from_user_input(crs) if crs is not None else None
        src = grid_.Sources(images, paired, list(bands) if bands else None, target, res)
        cfg = DataConfig(mask_mapping=mask_mapping or {}, ignore_index=ignore_index)
        tiles, grid = grid_.place_catalog(
            cfg, cache=None, sources=src, with_masks=paired is not None
        )
        chosen, names = grid_.select_bands(tiles, bands)
        self._setup(tiles, grid, chosen, names, ignore_index, native_dtypes, transforms)
        if self.memory_bytes() <= memory_budget:
            self.load()

    @classmethod
    def from_tiles(
        cls,
        tiles: list[Tile],
        grid: Grid,
        *,
        bands: list[int],
        band_names: list[str] | None = None,
        ignore_index: int = 255,
        native_dtypes: bool = False,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> GeoRasterDataset:
        """A dataset over tiles already placed on ``grid`` (see :func:`grid.place_catalog`)."""
        self = cls.__new__(cls)
        names = band_names or [f"band_{b}" for b in bands]
        self._setup(tiles, grid, bands, names, ignore_index, native_dtypes, transforms)
        return self

    def _setup(
        self,
        tiles: list[Tile],
        grid: Grid,
        bands: list[int],
        band_names: list[str],
        ignore_index: int,
        native_dtypes: bool,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None,
    ) -> None:
        self.tiles, self.grid = tiles, grid
        self.bands, self.band_names = list(bands), list(band_names)
        self.ignore_index = ignore_index
        self.native_dtypes = native_dtypes
        self.transforms = transforms
        self.has_masks = any(t.mask is not None for t in tiles)
        self.paths = [str(t.source) for t in tiles]
        self._res = (grid.res, grid.res)
        self._pid = -1
        self._handles: dict[int, tuple[Any, Any]] = {}
        self.arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] | None = None
        identity = np.arange(256)
        self._plain_lut = [bool((t.lut == identity).all()) for t in tiles]
        # remote rasters (s3://, https://) read inside GDAL's remote options; local ones never pay
        self._remote = any(remote.reads_remote(p) for t in tiles for p in (t.image, t.mask) if p)
        self._set_entries([(i, t.rect) for i, t in enumerate(tiles)])

    # ---- the torchgeo index ------------------------------------------------------------------

    def _set_entries(self, entries: Sequence[tuple[int, Rect]]) -> None:
        import geopandas as gpd
        import shapely

        g = self.grid
        tile_ids = np.array([e[0] for e in entries], np.int64)
        rects = np.array([e[1] for e in entries], np.int64).reshape(-1, 4)
        self._entry_tile = tile_ids
        self._entry_rect = rects
        boxes = [shapely.box(*g.bounds(*map(int, r))) for r in rects]
        span = (pd.Timestamp.min, pd.Timestamp.max)
        self.index = gpd.GeoDataFrame(
            {"filepath": [str(self.tiles[i].source) for i in tile_ids], "tile": tile_ids},
            index=pd.IntervalIndex.from_tuples([span] * len(boxes), closed="both", name="datetime"),
            geometry=boxes,
            crs=g.crs,
        )
        self._crs = self.index.crs  # GeoDataFrame.crs costs ~0.1 ms: read once, not per sample
        self._tree: Any = None

    def with_entries(self, entries: Sequence[tuple[int, Rect]]) -> GeoRasterDataset:
        """A view of this dataset whose index is ``entries``: (tile, rect) pairs, each a region
        (global pixels) read from that tile. Reads and decoded arrays are shared. Samplers given
        the view draw inside those regions only (e.g. one split's)."""
        view = copy.copy(self)
        view._set_entries(entries)
        return view

    @property
    def crs(self) -> Any:
        return self._crs

    @crs.setter
    def crs(self, new_crs: Any) -> None:
        if new_crs != self._crs:
            raise ConfigError(
                f"{type(self).__name__} lives on a fixed pixel grid in {self._crs}; it "
                f"cannot be converted to {new_crs}: put it first in `a & b`, or build it with "
                "crs= and res="
            )

    @property
    def res(self) -> tuple[float, float]:
        return self._res

    @res.setter
    def res(self, new_res: float | tuple[float, float]) -> None:
        if isinstance(new_res, int | float):
            new_res = (float(new_res), float(new_res))
        if tuple(new_res) != self._res:
            raise ConfigError(
                f"{type(self).__name__} lives on a fixed pixel grid of {self._res[0]} CRS units; "
                f"it cannot be resampled to {new_res}: put it first in `a & b`, or build it "
                "with res="
            )

    # ---- queries -----------------------------------------------------------------------------

    def pixel_window(self, query: TorchgeoSlice) -> tuple[int, int, int, int, int, int]:
        """(row, col, height, width) in global pixels of a query, and its output (height,
        width) at the query's step."""
        if (
            isinstance(query, tuple)
            and len(query) >= 2
            and all(q.start is not None and q.stop is not None for q in query[:2])
        ):
            x, y = query[0], query[1]
        else:
            x, y, _ = self._disambiguate_slice(query)
        g = self.grid
        col = round((x.start - g.x0) / g.res)
        row = round((g.y0 - y.stop) / g.res)
        w = round((x.stop - g.x0) / g.res) - col
        h = round((g.y0 - y.start) / g.res) - row
        out_w = w if x.step is None else round((x.stop - x.start) / x.step)
        out_h = h if y.step is None else round((y.stop - y.start) / y.step)
        return row, col, h, w, out_h, out_w

    def entry_of(self, rows: np.ndarray, cols: np.ndarray, h: int, w: int) -> np.ndarray:
        """For windows at global (rows, cols) of h×w pixels: the first index entry containing
        each one (-1: none). Vectorised."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        out = np.full(rows.shape, -1, np.int64)
        er = self._entry_rect
        if len(er) <= 64 or len(rows) <= 4:
            for k in range(len(er) - 1, -1, -1):  # backwards: the first entry wins
                r, c, eh, ew = er[k]
                inside = (rows >= r) & (cols >= c) & (rows + h <= r + eh) & (cols + w <= c + ew)
                out[inside] = k
            return out
        import shapely

        if self._tree is None:
            self._tree = shapely.STRtree(
                shapely.box(er[:, 1], er[:, 0], er[:, 1] + er[:, 3], er[:, 0] + er[:, 2])
            )
        boxes = shapely.box(cols, rows, cols + w, rows + h)
        q, e = self._tree.query(boxes, predicate="within")
        best = np.full(rows.shape, np.iinfo(np.int64).max)
        np.minimum.at(best, q, e)
        found = best != np.iinfo(np.int64).max
        out[found] = best[found]
        return out

    def locate(self, queries: Sequence[GeoSlice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tile, row, col) arrays of square queries contained in an index entry (tile -1 when
        none contains one); row/col are tile pixels."""
        if not queries:
            z = np.zeros(0, np.int64)
            return z, z, z
        g = self.grid
        xs = np.array([q[0].start for q in queries], float)
        xe = np.array([q[0].stop for q in queries], float)
        ye = np.array([q[1].stop for q in queries], float)
        cols = np.round((xs - g.x0) / g.res).astype(np.int64)
        rows = np.round((g.y0 - ye) / g.res).astype(np.int64)
        size = int(round((xe[0] - xs[0]) / g.res))
        ent = self.entry_of(rows, cols, size, size)
        tiles = np.where(ent >= 0, self._entry_tile[np.maximum(ent, 0)], -1)
        r0 = np.array([t.row0 for t in self.tiles], np.int64)
        c0 = np.array([t.col0 for t in self.tiles], np.int64)
        return tiles, rows - r0[np.maximum(tiles, 0)], cols - c0[np.maximum(tiles, 0)]

    def query(self, tile: int, row: int, col: int, h: int, w: int) -> GeoSlice:
        """The torchgeo query of a window (tile pixels) of a tile."""
        t = self.tiles[tile]
        xmin, ymin, xmax, ymax = self.grid.bounds(t.row0 + row, t.col0 + col, h, w)
        return (
            slice(xmin, xmax, self.grid.res),
            slice(ymin, ymax, self.grid.res),
            slice(pd.Timestamp.min, pd.Timestamp.max, 1),
        )

    def __getitem__(self, query: TorchgeoSlice) -> dict[str, Any]:
        """Retrieve the image and mask of a query (see the class docstring).

        Raises:
            IndexError: the query touches no index entry.
        """
        row, col, h, w, out_h, out_w = self.pixel_window(query)
        k = int(self.entry_of(np.array([row]), np.array([col]), h, w)[0])
        if k >= 0:
            t = int(self._entry_tile[k])
            tile = self.tiles[t]
            img, mask, _ = self.read(t, row - tile.row0, col - tile.col0, h, w)
            copied = self.arrays is None
        else:
            img, mask = self._mosaic(row, col, h, w, query)
            copied = True
        if (out_h, out_w) != (h, w):
            img, mask = _resample(img, mask, out_h, out_w)
            copied = True
        sample: dict[str, Any] = {"crs": self._crs, "bounds": query}
        if self.native_dtypes:
            sample["image"] = _tensor(img if copied else img.copy())
        else:
            sample["image"] = torch.from_numpy(img.astype(np.float32))
        if self.has_masks:
            if self.native_dtypes:
                sample["mask"] = torch.from_numpy(mask if copied else mask.copy())
            else:
                sample["mask"] = torch.from_numpy(mask.astype(np.int64))
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def __getitems__(self, queries: Sequence[GeoSlice]) -> list[dict[str, Any]]:
        """The samples of a batch of queries (what a DataLoader fetches), read straight into one
        batch buffer when they are windows of equal size inside index entries: their tensors
        are views of that buffer, which :func:`geoseg.data.loader.collate` hands on without a
        second copy (torchgeo's ``stack_samples`` copies as usual)."""
        wins = [self.pixel_window(q) for q in queries]
        shapes = {(h, w, oh, ow) for _, _, h, w, oh, ow in wins}
        h, w, oh, ow = next(iter(shapes)) if len(shapes) == 1 else (0, 0, 1, 1)
        ent = self.entry_of(np.array([x[0] for x in wins]), np.array([x[1] for x in wins]), h, w)
        if len(shapes) != 1 or (oh, ow) != (h, w) or (ent < 0).any() or not queries:
            return [self[q] for q in queries]
        n, c = len(queries), len(self.bands)
        img_dtype = self.image_dtype if self.native_dtypes else np.float32
        images = np.empty((n, c, h, w), img_dtype)
        masks = np.empty((n, h, w), np.uint8 if self.native_dtypes else np.int64)
        direct = self.arrays is None and self.native_dtypes  # reads land in the batch itself
        for k, (row, col, *_) in enumerate(wins):
            t = int(self._entry_tile[ent[k]])
            tile = self.tiles[t]
            r, c = row - tile.row0, col - tile.col0
            if direct and r >= 0 and c >= 0 and r + h <= tile.height and c + w <= tile.width:
                self._read_file(t, Window(c, r, w, h), images[k], masks[k])
                continue
            img, mask, _ = self.read(t, r, c, h, w)
            np.copyto(images[k], img, casting="unsafe")
            np.copyto(masks[k], mask, casting="unsafe")
        image_t, mask_t = _tensor(images), torch.from_numpy(masks)
        out = []
        for k, q in enumerate(queries):
            sample: dict[str, Any] = {"crs": self._crs, "bounds": q, "image": image_t[k]}
            if self.has_masks:
                sample["mask"] = mask_t[k]
            out.append(self.transforms(sample) if self.transforms is not None else sample)
        return out

    def _mosaic(
        self, row: int, col: int, h: int, w: int, query: TorchgeoSlice
    ) -> tuple[np.ndarray, np.ndarray]:
        er = self._entry_rect
        hit = np.flatnonzero(
            (er[:, 0] < row + h)
            & (er[:, 0] + er[:, 2] > row)
            & (er[:, 1] < col + w)
            & (er[:, 1] + er[:, 3] > col)
        )
        if not len(hit):
            raise IndexError(f"query {query} is not in the index (bounds {self.bounds})")
        img = np.zeros((len(self.bands), h, w), self.image_dtype)
        mask = np.full((h, w), self.ignore_index, np.uint8)
        filled = np.zeros((h, w), bool)
        for k in hit:
            t = self.tiles[int(self._entry_tile[k])]
            er_r, er_c, er_h, er_w = er[k]
            r0 = max(row, er_r, t.row0)
            c0 = max(col, er_c, t.col0)
            r1 = min(row + h, er_r + er_h, t.row0 + t.height)
            c1 = min(col + w, er_c + er_w, t.col0 + t.width)
            if r1 <= r0 or c1 <= c0:
                continue
            a, m, _ = self.read(
                int(self._entry_tile[k]), r0 - t.row0, c0 - t.col0, r1 - r0, c1 - c0
            )
            sl = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
            free = ~filled[sl]
            img[:, sl[0], sl[1]][:, free] = a[:, free]
            mask[sl][free] = m[free]
            filled[sl] = True
        if not filled.any():
            raise IndexError(f"query {query} is not in the index (bounds {self.bounds})")
        return img, mask

    # ---- reading -----------------------------------------------------------------------------

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_pid"], state["_tree"] = {}, -1, None
        return state

    def _gdal_env(self) -> Any:
        return remote.env(None) if self._remote else contextlib.nullcontext()

    def _open(self, i: int) -> tuple[Any, Any]:
        if self._pid != os.getpid():  # after a fork: never share GDAL handles between processes
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(i)
        if h is None:
            with self._gdal_env():
                h = self._open_tile(i)
            self._handles[i] = h
        return h

    def _open_tile(self, i: int) -> tuple[Any, Any]:
        t = self.tiles[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            img = rasterio.open(t.image)
            msk = rasterio.open(t.mask) if t.mask else None
        transform = self.grid.transform(t.row0, t.col0)
        if t.warp_image:
            img = open_warped(img, self.grid.crs, transform, t.width, t.height, is_mask=False)
        if t.warp_mask and msk is not None:
            msk = open_warped(msk, self.grid.crs, transform, t.width, t.height, is_mask=True)
        return img, msk

    def memory_bytes(self) -> int:
        """Decoded bytes of all tiles in RAM (images, masks, validity)."""
        total = 0
        itemsize: dict[Path, int] = {}
        for t in self.tiles:
            if t.image not in itemsize:
                with warnings.catch_warnings(), self._gdal_env():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    with rasterio.open(t.image) as src:
                        itemsize[t.image] = np.dtype(src.dtypes[0]).itemsize
            px = t.height * t.width
            total += px * (len(self.bands) * itemsize[t.image] + 1 + t.check_valid)
        return total

    @property
    def image_dtype(self) -> np.dtype:
        """The images' dtype (the first file's)."""
        if self.arrays is not None:
            return self.arrays[0][0].dtype
        src, _ = self._open(0)
        return np.dtype(src.dtypes[0])

    @property
    def in_memory(self) -> bool:
        return self.arrays is not None

    def load(self) -> None:
        """Decode every tile into RAM (image in its dtype, mask uint8 with ignore baked in)."""
        arrays = []
        with progress.bar(len(self.tiles), "reading tiles into memory") as bar:
            for i, t in enumerate(self.tiles):
                img, mask, valid = self._read_file(i, Window(0, 0, t.width, t.height))
                arrays.append((img, mask, valid))
                bar.advance()
        self.arrays = arrays
        self._handles = {}

    def _read_file(
        self,
        i: int,
        win: Window,
        img_out: np.ndarray | None = None,
        mask_out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Window ``win`` of tile ``i`` from its files: image, mask (ignore baked in),
        validity. ``img_out``/``mask_out`` (file dtype, uint8): read into these instead."""
        t = self.tiles[i]
        src, msrc = self._open(i)
        with self._gdal_env(), io.reading(t.image, *([t.mask] if t.mask else [])):
            same = img_out is not None and img_out.dtype == np.dtype(src.dtypes[0])
            img = src.read(self.bands, window=win, out=img_out if same else None)
            if img_out is not None and not same:
                np.copyto(img_out, img, casting="unsafe")
            if msrc is not None and t.warp_mask:
                data = msrc.read([1, msrc.count], window=win)
                mask = mask_from_warped(data, t.lut, self.ignore_index)
            elif msrc is not None:
                into = mask_out if msrc.dtypes[0] == "uint8" else None
                raw = msrc.read(1, window=win, out=into)
                if raw.dtype != np.uint8:
                    if raw.size and (raw.min() < 0 or raw.max() > 255):
                        raise LabelError(
                            f"{t.mask}: mask values {raw.min()}..{raw.max()}; "
                            "expected class ids 0..255"
                        )
                    raw = raw.astype(np.uint8)
                mask = raw if self._plain_lut[i] else t.lut[raw]
            else:
                mask = np.zeros((int(win.height), int(win.width)), np.uint8)
            if mask_out is not None and mask is not mask_out:
                mask_out[...] = mask
                mask = mask_out
            valid = None
            if t.check_valid:  # the image's nodata, read for this window only (never whole)
                valid = src.dataset_mask(window=win) > 0
                mask[~valid] = self.ignore_index
            if img.dtype.kind == "f":  # NaN/inf pixels are nodata, declared or not (as in infer)
                finite = np.isfinite(img).all(0)
                if not finite.all():
                    img[:, ~finite] = 0  # in place: img may be the caller's batch buffer
                    if img_out is not None and not same:
                        img_out[:, ~finite] = 0
                    mask[~finite] = self.ignore_index
                    valid = finite if valid is None else valid & finite
        return img, mask, valid

    def read(
        self, i: int, r: int, c: int, h: int, w: int, with_valid: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Window (r, c, h, w) in pixels of tile ``i`` → image [C, h, w] (file dtype), mask
        [h, w] uint8 (ignore baked in), image validity [h, w] bool (None when not asked or
        all valid). Outside the tile: 0 and ignore. In RAM mode the arrays are views."""
        t = self.tiles[i]
        r0, c0, r1, c1 = max(r, 0), max(c, 0), min(r + h, t.height), min(c + w, t.width)
        inside = r0 == r and c0 == c and r1 == r + h and c1 == c + w
        if self.arrays is not None:
            a_img, a_mask, a_valid = self.arrays[i]
            img, mask = a_img[:, r0:r1, c0:c1], a_mask[r0:r1, c0:c1]
            valid = a_valid[r0:r1, c0:c1] if (with_valid and a_valid is not None) else None
        else:
            img, mask, valid = self._read_file(i, Window(c0, r0, c1 - c0, r1 - r0))
            if not with_valid:
                valid = None
        if inside:
            return img, mask, valid
        # A window that hangs over the tile's edge (validation near a border): pad with ignore.
        out_img = np.zeros((img.shape[0], h, w), img.dtype)
        out_mask = np.full((h, w), self.ignore_index, np.uint8)
        out_valid = np.zeros((h, w), bool)
        if r1 > r0 and c1 > c0:
            out_img[:, r0 - r : r1 - r, c0 - c : c1 - c] = img
            out_mask[r0 - r : r1 - r, c0 - c : c1 - c] = mask
            out_valid[r0 - r : r1 - r, c0 - c : c1 - c] = True if valid is None else valid
        return out_img, out_mask, (out_valid if with_valid else None)

    def mask_strips(self, i: int, rows: int = 2048) -> Any:
        """Yield (row, mask strip [h, W] uint8) of tile ``i`` (the decoded mask in RAM mode);
        a large mask is never decoded whole."""
        t = self.tiles[i]
        if self.arrays is not None:
            yield 0, self.arrays[i][1]
            return
        for row in range(0, t.height, rows):
            win = Window(0, row, t.width, min(rows, t.height - row))
            yield row, self._read_file(i, win)[1]


def _tensor(a: np.ndarray) -> torch.Tensor:
    if a.dtype == np.uint16:  # torch's uint16 has few kernels; int32 holds every value
        a = a.astype(np.int32)
    elif a.dtype == np.uint32:
        a = a.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(a))


def _resample(img: np.ndarray, mask: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    import torch.nn.functional as F

    x = torch.from_numpy(img.astype(np.float32))[None]
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[0]
    m = torch.from_numpy(mask.astype(np.int64))[None, None].float()
    m = F.interpolate(m, size=(h, w), mode="nearest")[0, 0]
    out = x.numpy()
    if img.dtype.kind in "ui":
        out = np.clip(np.round(out), np.iinfo(img.dtype).min, np.iinfo(img.dtype).max)
    return out.astype(img.dtype), m.numpy().astype(np.uint8)
