"""Training data: images ∩ masks on one target grid, spatial splits, statistics, fast batches.

torchgeo 0.8.1 does discovery, the target CRS/resolution choice (first file's, unless given) and
the footprints (:class:`GeoRasters`, a ``RasterDataset`` whose ``index`` GeoDataFrame we use).
Reading is geoseg's own, because torchgeo merges files through ``rasterio.merge`` for every
sample (~300 samples/s): every file is put on ONE pixel grid of the target CRS/resolution —
files already on it are read directly, the others are reprojected once into an aligned GeoTIFF
cached under ``RUN_DIR/cache/`` — and patches are whole-pixel windows of that grid, read from a
handle opened once per worker, or sliced from RAM when everything fits ``MEMORY_BUDGET``.

Mask values: class ids, ``ignore_index`` where the image or the label is nodata, outside a
file, or in a region of another split. Batches: ``image`` float32 [B, C, H, W] normalised with
the training split's per-band mean/std; ``mask`` int64 [B, H, W]; ``bounds`` float64 [B, 4]
(xmin, ymin, xmax, ymax in target-CRS units; pixels for ``layout: tiles``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from geoseg import catalog, instances, labels, progress
from geoseg.config import DataConfig
from geoseg.errors import ConfigError, InputNotFoundError, LabelError, RasterError

log = logging.getLogger(__name__)

#: Decoded bytes (images + masks) up to which all tiles are read into RAM once and sliced.
MEMORY_BUDGET = 1 << 30
SPLITS = ("train", "val", "test")
_STAT_PATCHES = 128
_STAT_PIXELS = 2_000_000


# --------------------------------------------------------------------------------------------
# torchgeo: discovery, target CRS/res, footprints
# --------------------------------------------------------------------------------------------


def _torchgeo_raster_class() -> type:
    from torchgeo.datasets import RasterDataset

    class GeoRasters(RasterDataset):  # type: ignore[misc, valid-type]
        """A RasterDataset over an explicit list of files (any name)."""

        filename_glob = "*"

    return GeoRasters


def torchgeo_dataset(
    paths: Sequence[Path],
    *,
    crs: CRS | None = None,
    res: float | None = None,
    is_image: bool = True,
) -> Any:
    """A torchgeo ``RasterDataset`` over ``paths`` (warped on the fly to ``crs``/``res``)."""
    cls = _torchgeo_raster_class()
    if not is_image:
        cls = type("GeoMasks", (cls,), {"is_image": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(paths=[str(p) for p in paths], crs=crs, res=res)


# --------------------------------------------------------------------------------------------
# Tiles on one grid
# --------------------------------------------------------------------------------------------


@dataclass
class Tile:
    """One image (and its mask) placed on the global pixel grid at (row0, col0)."""

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


@dataclass
class Grid:
    """The target grid: CRS, square pixel size ``res`` and the origin of pixel (0, 0)."""

    crs: CRS | None
    res: float
    x0: float
    y0: float

    def bounds(self, row: int, col: int, h: int, w: int) -> tuple[float, float, float, float]:
        return (
            self.x0 + col * self.res,
            self.y0 - (row + h) * self.res,
            self.x0 + (col + w) * self.res,
            self.y0 - row * self.res,
        )


class _Reader:
    """Reads (image, mask) windows of tiles; handles opened lazily once per process.

    In RAM mode (``load()``), whole tiles are decoded once and windows are numpy slices. RAM
    mode also keeps a transposed copy of each tile (twice the memory) so that an augmented
    (transposed) patch is a contiguous slice too: a strided transposing copy per patch costs
    about as much as reading it.
    """

    def __init__(self, tiles: list[Tile], bands: list[int], ignore_index: int) -> None:
        self.tiles = tiles
        self.bands = bands
        self.ignore = ignore_index
        self._pid = -1
        self._handles: dict[int, tuple[Any, Any]] = {}
        self.arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] | None = None
        self.transposed: list[tuple[np.ndarray, np.ndarray]] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_pid"] = {}, -1
        return state

    def _open(self, i: int) -> tuple[Any, Any]:
        if self._pid != os.getpid():  # after a fork: never share GDAL handles between processes
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(i)
        if h is None:
            t = self.tiles[i]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                h = (rasterio.open(t.image), rasterio.open(t.mask) if t.mask else None)
            self._handles[i] = h
        return h

    def memory_bytes(self, transposed: bool = True) -> int:
        """Decoded bytes of all tiles in RAM (images, masks, validity; with transposed copies)."""
        total = 0
        for t in self.tiles:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(t.image) as src:
                    itemsize = np.dtype(src.dtypes[0]).itemsize
            px = t.height * t.width
            total += (
                px * (len(self.bands) * itemsize + 1) * (2 if transposed else 1)
                + px * t.check_valid
            )
        return total

    def load(self, transposed: bool = True) -> None:
        """Decode every tile into RAM (image native dtype, mask uint8 with ignore baked in)."""
        arrays, trans = [], []
        with progress.bar(len(self.tiles), "reading tiles into memory") as bar:
            for i in range(len(self.tiles)):
                t = self.tiles[i]
                img, mask, valid = self._read_file(
                    i, Window(0, 0, t.width, t.height), with_valid=True
                )
                arrays.append((img, mask, valid if t.check_valid else None))
                if transposed:
                    trans.append(
                        (np.ascontiguousarray(img.transpose(0, 2, 1)), np.ascontiguousarray(mask.T))
                    )
                bar.advance()
        self.arrays = arrays
        self.transposed = trans if transposed else None
        self._handles = {}

    def _read_file(
        self, i: int, win: Window, with_valid: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        t = self.tiles[i]
        src, msrc = self._open(i)
        try:
            img = src.read(self.bands, window=win)
            if msrc is not None:
                raw = msrc.read(1, window=win)
                if raw.dtype != np.uint8:
                    if raw.size and (raw.min() < 0 or raw.max() > 255):
                        raise LabelError(
                            f"{t.mask}: mask values {raw.min()}..{raw.max()}; "
                            "expected class ids 0..255"
                        )
                    raw = raw.astype(np.uint8)
                mask = t.lut[raw]
            else:
                mask = np.zeros((int(win.height), int(win.width)), np.uint8)
            valid = None
            if t.check_valid:
                valid = src.dataset_mask(window=win) > 0
                mask[~valid] = self.ignore
        except rasterio.errors.RasterioIOError as err:
            raise RasterError(
                f"{t.image}: read failed ({str(err)[:120]}); the file is corrupt or truncated"
            ) from None
        return img, mask, valid

    def read_transposed(self, i: int, r: int, c: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The square window (r, c, size) of a tile, transposed (H and W swapped): image
        [C, size, size] and mask [size, size]; a slice of the transposed copy in RAM mode. The
        window must lie inside the tile."""
        if self.transposed is not None:
            ti, tm = self.transposed[i]
            return ti[:, c : c + size, r : r + size], tm[c : c + size, r : r + size]
        img, mask, _ = self.read(i, r, c, size, size)
        return img.transpose(0, 2, 1), mask.T

    def read(
        self, i: int, r: int, c: int, h: int, w: int, with_valid: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Window (r, c, h, w) in tile pixels → image [C,h,w] native dtype, mask [h,w] uint8,
        image validity [h,w] bool (None when not asked or all valid). Outside the tile: 0 and
        ignore."""
        t = self.tiles[i]
        r0, c0, r1, c1 = max(r, 0), max(c, 0), min(r + h, t.height), min(c + w, t.width)
        inside = r0 == r and c0 == c and r1 == r + h and c1 == c + w
        if self.arrays is not None:
            a_img, a_mask, a_valid = self.arrays[i]
            img, mask = a_img[:, r0:r1, c0:c1], a_mask[r0:r1, c0:c1]
            valid = a_valid[r0:r1, c0:c1] if (with_valid and a_valid is not None) else None
        else:
            img, mask, valid = self._read_file(i, Window(c0, r0, c1 - c0, r1 - r0), with_valid)
            if not with_valid:
                valid = None
        if inside:
            return img, mask, valid
        # A window that hangs over the tile's edge (validation near a border): pad with ignore.
        out_img = np.zeros((img.shape[0], h, w), img.dtype)
        out_mask = np.full((h, w), self.ignore, np.uint8)
        out_valid = np.zeros((h, w), bool)
        if r1 > r0 and c1 > c0:
            out_img[:, r0 - r : r1 - r, c0 - c : c1 - c] = img
            out_mask[r0 - r : r1 - r, c0 - c : c1 - c] = mask
            out_valid[r0 - r : r1 - r, c0 - c : c1 - c] = True if valid is None else valid
        return out_img, out_mask, (out_valid if with_valid else None)


# --------------------------------------------------------------------------------------------
# Split regions on a grid of cells
# --------------------------------------------------------------------------------------------


@dataclass
class _Split:
    """Split occupancy on a grid of ``cell``-pixel cells starting at global pixel (r0, c0)."""

    cell: int
    r0: int
    c0: int
    occ: np.ndarray
    """bool [3, nrows, ncols]: whether split s has data in the cell."""
    method: str
    rects: dict[int, list[tuple[int, int, int, int]]]
    """Candidate regions per split for grid patches, global pixel (row, col, h, w)."""
    tile_split: list[int] | None = None
    """``method: files``: the split of each tile."""

    def __post_init__(self) -> None:
        # Summed-area tables: count cells of split s in any cell rectangle in O(1), vectorised.
        self._sat = np.zeros((3, self.occ.shape[1] + 1, self.occ.shape[2] + 1), np.int64)
        self._sat[:, 1:, 1:] = self.occ.cumsum(1).cumsum(2)

    def _count(
        self, s: int, r: np.ndarray, c: np.ndarray, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray]:
        nr, nc = self.occ.shape[1:]
        a = np.minimum(np.maximum((r - self.r0) // self.cell, 0), nr)
        b = np.minimum(np.maximum((c - self.c0) // self.cell, 0), nc)
        e = np.minimum(np.maximum(-(-(r + h - self.r0) // self.cell), 0), nr)
        f = np.minimum(np.maximum(-(-(c + w - self.c0) // self.cell), 0), nc)
        sat = self._sat[s]
        n = sat[e, f] - sat[a, f] - sat[e, b] + sat[a, b]
        return n, (e - a) * (f - b)

    def valid(self, s: int, r: np.ndarray, c: np.ndarray, size: int, gap: int) -> np.ndarray:
        """Whether patches at global (r, c) lie inside split ``s`` cells and keep ``gap`` pixels
        from every cell of another split."""
        own, total = self._count(s, r, c, size, size)
        ok = (own == total) & (total > 0)
        for o in range(3):
            if o != s:
                n, _ = self._count(o, r - gap, c - gap, size + 2 * gap, size + 2 * gap)
                ok &= n == 0
        return ok


def _assign_counts(n: int, ratios: Sequence[float]) -> list[int]:
    need = [1 if r > 0 else 0 for r in ratios]
    counts = [int(round(r * n)) for r in ratios]
    counts = [max(c, m) for c, m in zip(counts, need, strict=True)]
    while sum(counts) > n:  # give back from the largest split that can spare one
        k = max(range(3), key=lambda j: counts[j] - need[j])
        counts[k] -= 1
    counts[0] += n - sum(counts)
    return counts


def _extent(tiles: list[Tile]) -> tuple[int, int, int, int]:
    return (
        min(t.row0 for t in tiles),
        min(t.col0 for t in tiles),
        max(t.row0 + t.height for t in tiles),
        max(t.col0 + t.width for t in tiles),
    )


def _usable_blocks(
    tiles: list[Tile], r0: int, c0: int, nr: int, nc: int, block: int, patch: int
) -> np.ndarray:
    # A block is usable when some file covers at least a patch of it; slivers (a warped file's
    # overhang) stay unassigned: no split samples there.
    has = np.zeros((nr, nc), bool)
    for t in tiles:
        a, b = (t.row0 - r0) // block, (t.col0 - c0) // block
        e, f = -(-(t.row0 + t.height - r0) // block), -(-(t.col0 + t.width - c0) // block)
        for i in range(a, e):
            oh = min(t.row0 + t.height, r0 + (i + 1) * block) - max(t.row0, r0 + i * block)
            for j in range(b, f):
                ow = min(t.col0 + t.width, c0 + (j + 1) * block) - max(t.col0, c0 + j * block)
                has[i, j] |= min(oh, ow) >= patch
    return np.flatnonzero(has.ravel())


def _train_fits(split: _Split, tiles: list[Tile], patch: int, gap: int, seed: int) -> bool:
    """Whether some training patch fits (20,000 seeded random origins tried)."""
    ok = [t for t in tiles if t.height >= patch and t.width >= patch]
    rng = np.random.default_rng([seed, 104729])
    k = rng.integers(0, len(ok), 20_000)
    hmax = np.array([t.height - patch + 1 for t in ok])[k]
    wmax = np.array([t.width - patch + 1 for t in ok])[k]
    r = np.array([t.row0 for t in ok])[k] + (rng.random(k.size) * hmax).astype(np.int64)
    c = np.array([t.col0 for t in ok])[k] + (rng.random(k.size) * wmax).astype(np.int64)
    return bool(split.valid(0, r, c, patch, gap).any())


def _blocks_split(tiles: list[Tile], cfg: DataConfig, patch: int, gap: int) -> _Split:
    """Blocks of ``block_size`` px over the target grid, shuffled by seed into train/val/test.

    Tiny data: when there are fewer usable blocks than splits, or no training patch keeps
    ``gap`` px from val/test, smaller blocks (halving, down to the patch size) and then other
    seeded assignments are tried, so val and test get a region whenever their ratio is > 0.
    """
    sp = cfg.split
    need = sum(1 for r in sp.ratios if r > 0)
    r0, c0, r1, c1 = _extent(tiles)
    sizes = [sp.block_size]
    while sizes[-1] // 2 >= patch:
        sizes.append(sizes[-1] // 2)
    most = 0
    for block in sizes:
        nr, nc = -(-(r1 - r0) // block), -(-(c1 - c0) // block)
        cells = _usable_blocks(tiles, r0, c0, nr, nc, block, patch)
        most = max(most, len(cells))
        if len(cells) < need:
            continue
        counts = _assign_counts(len(cells), sp.ratios)
        for attempt in range(1 if block == sp.block_size and len(cells) > 2 * need else 25):
            order = np.random.default_rng([sp.seed, attempt] if attempt else sp.seed).permutation(
                cells
            )
            label = np.full(nr * nc, -1, np.int64)
            k = 0
            for s in (1, 2, 0):  # val and test first, then train, in the shuffled order
                label[order[k : k + counts[s]]] = s
                k += counts[s]
            label = label.reshape(nr, nc)
            occ = np.stack([label == s for s in range(3)])
            rects: dict[int, list[tuple[int, int, int, int]]] = {0: [], 1: [], 2: []}
            for i, j in zip(*np.nonzero(label >= 0), strict=True):
                rects[int(label[i, j])].append((r0 + i * block, c0 + j * block, block, block))
            split = _Split(block, r0, c0, occ, "blocks", rects)
            if counts[0] == 0 or _train_fits(split, tiles, patch, gap, sp.seed):
                if block != sp.block_size or attempt:
                    log.info(
                        "split: block_size %d -> %d (assignment %d) so that every split "
                        "gets a region",
                        sp.block_size,
                        block,
                        attempt,
                    )
                return split
    raise ConfigError(
        f"the data covers at most {most} usable block(s), too few for {need} splits with "
        f"patch_size={patch} "
        f"and gap={gap} px; use a smaller patch_size or split.gap, or split.method: files"
    )


def _files_split(tiles: list[Tile], cfg: DataConfig, patch: int) -> _Split:
    sp = cfg.split
    counts = _assign_counts(len(tiles), sp.ratios)
    if any(c > 0 for c in counts[1:]) and len(tiles) < sum(1 for r in sp.ratios if r > 0):
        raise ConfigError(
            f"split.method files needs at least one file per split; found {len(tiles)} file(s); "
            "use split.method blocks or more files"
        )
    rng = np.random.default_rng(sp.seed)
    order = rng.permutation(len(tiles))
    tile_split = [0] * len(tiles)
    k = 0
    for s in (1, 2, 0):
        for i in order[k : k + counts[s]]:
            tile_split[int(i)] = s
        k += counts[s]
    return _cells_from_rects(
        tiles,
        [(s, t.row0, t.col0, t.height, t.width) for s, t in zip(tile_split, tiles, strict=True)],
        patch,
        "files",
        tile_split,
    )


def _cells_from_rects(
    tiles: list[Tile],
    regions: list[tuple[int, int, int, int, int]],
    patch: int,
    method: str,
    tile_split: list[int] | None = None,
) -> _Split:
    r0, c0, r1, c1 = _extent(tiles)
    cell = max(1, min(16, patch // 4))
    nr, nc = -(-(r1 - r0) // cell), -(-(c1 - c0) // cell)
    occ = np.zeros((3, nr, nc), bool)
    rects: dict[int, list[tuple[int, int, int, int]]] = {0: [], 1: [], 2: []}
    for s, r, c, h, w in regions:
        a, b = max((r - r0) // cell, 0), max((c - c0) // cell, 0)
        e, f = min(-(-(r + h - r0) // cell), nr), min(-(-(c + w - c0) // cell), nc)
        occ[s, a:e, b:f] = True
        rects[s].append((r, c, h, w))
    return _Split(cell, r0, c0, occ, method, rects, tile_split)


def _roi_split(tiles: list[Tile], cfg: DataConfig, grid: Grid, patch: int) -> _Split:
    import geopandas as gpd
    from rasterio import features
    from rasterio.transform import Affine

    path = cfg.split.roi_file
    if not path or not Path(path).exists():
        raise InputNotFoundError(
            f"{path}: split.roi_file not found; give a vector file with a 'split' column"
        )
    gdf = gpd.read_file(path)
    if "split" not in gdf.columns:
        raise ConfigError(f"{path}: no 'split' column; expected values train/val/test per polygon")
    bad = set(gdf["split"].astype(str)) - set(SPLITS)
    if bad:
        raise ConfigError(f"{path}: split values {sorted(bad)}; expected train, val or test")
    if gdf.crs is None or grid.crs is None:
        raise ConfigError(f"{path}: the ROI file and the images need a CRS for split.method roi")
    gdf = gdf.to_crs(grid.crs)
    r0, c0, r1, c1 = _extent(tiles)
    cell = max(1, min(16, patch // 4))
    nr, nc = -(-(r1 - r0) // cell), -(-(c1 - c0) // cell)
    res = grid.res * cell
    tr = Affine(res, 0, grid.x0 + c0 * grid.res, 0, -res, grid.y0 - r0 * grid.res)
    occ = np.zeros((3, nr, nc), bool)
    rects: dict[int, list[tuple[int, int, int, int]]] = {0: [], 1: [], 2: []}
    for s, name in enumerate(SPLITS):
        geoms = list(gdf.geometry[gdf["split"].astype(str) == name])
        if not geoms:
            continue
        occ[s] = (
            features.rasterize(
                geoms, out_shape=(nr, nc), transform=tr, all_touched=True, dtype=np.uint8
            )
            > 0
        )
        for g in geoms:
            xmin, ymin, xmax, ymax = g.bounds
            r = math.floor((grid.y0 - ymax) / grid.res)
            c = math.floor((xmin - grid.x0) / grid.res)
            rects[s].append(
                (
                    r,
                    c,
                    math.ceil((grid.y0 - ymin) / grid.res) - r,
                    math.ceil((xmax - grid.x0) / grid.res) - c,
                )
            )
    return _Split(cell, r0, c0, occ, "roi", rects)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


class _Batches:
    """Common batch assembly: read, (augment), normalise, stack — numpy, no per-pixel Python."""

    def __init__(
        self,
        reader: _Reader,
        grid: Grid,
        patch: int,
        batch_size: int,
        mean: np.ndarray,
        std: np.ndarray,
        ignore_index: int,
    ) -> None:
        self.reader, self.grid, self.patch, self.batch_size = reader, grid, patch, batch_size
        self.scale = (1.0 / std).astype(np.float32)[:, None, None]
        self.shift = mean.astype(np.float32)[:, None, None]
        self.ignore = ignore_index

    def _bounds(self, origins: Sequence[tuple[int, int, int]]) -> np.ndarray:
        p, tiles = self.patch, self.reader.tiles
        return np.array(
            [self.grid.bounds(tiles[i].row0 + r, tiles[i].col0 + c, p, p) for i, r, c in origins]
        )

    def _finish(
        self,
        imgs: np.ndarray,
        masks: np.ndarray,
        origins: Sequence[tuple[int, int, int]],
        normalised: bool = False,
    ) -> dict:
        import torch

        if not normalised:
            imgs -= self.shift
            imgs *= self.scale
        return {
            "image": torch.from_numpy(imgs),
            "mask": torch.from_numpy(masks.astype(np.int64, copy=False)),
            "bounds": torch.from_numpy(self._bounds(origins)),
        }


class TrainBatches(_Batches):
    """Random training patches, whole pixels of the target grid, ``len()`` batches per epoch.

    Indexed by ``(epoch, i)``: batch i of an epoch is drawn from ``default_rng([seed, epoch,
    rank, i])``, so the patches are the same with or without workers and differ between ranks.
    """

    def __init__(
        self,
        reader: _Reader,
        grid: Grid,
        split: _Split,
        *,
        patch: int,
        batch_size: int,
        n_batches: int,
        gap: int,
        mean: np.ndarray,
        std: np.ndarray,
        ignore_index: int,
        augment: bool,
        color_jitter: float,
        seed: int,
        rank: int = 0,
    ) -> None:
        super().__init__(reader, grid, patch, batch_size, mean, std, ignore_index)
        self.split, self.gap, self.n_batches = split, gap, n_batches
        self.augment, self.jitter, self.seed, self.rank = augment, color_jitter, seed, rank
        tiles = reader.tiles
        ok = [
            i
            for i, t in enumerate(tiles)
            if t.height >= patch
            and t.width >= patch
            and (split.tile_split is None or split.tile_split[i] == 0)
        ]
        self.tile_ids = np.array(ok, np.int64)
        area = np.array(
            [(tiles[i].height - patch + 1) * (tiles[i].width - patch + 1) for i in ok], float
        )
        self.p = area / area.sum() if len(ok) else area
        self.hmax = np.array([tiles[i].height - patch + 1 for i in ok], np.int64)
        self.wmax = np.array([tiles[i].width - patch + 1 for i in ok], np.int64)
        self.row0 = np.array([tiles[i].row0 for i in ok], np.int64)
        self.col0 = np.array([tiles[i].col0 for i in ok], np.int64)
        self.acceptance = 1.0
        if len(ok):  # share of random origins that are valid: sizes the candidate draws
            rng = np.random.default_rng(0)
            k = rng.choice(len(ok), size=4096, p=self.p)
            r = self.row0[k] + (rng.random(4096) * self.hmax[k]).astype(np.int64)
            c = self.col0[k] + (rng.random(4096) * self.wmax[k]).astype(np.int64)
            self.acceptance = max(float(split.valid(0, r, c, patch, gap).mean()), 1e-3)

    def __len__(self) -> int:
        return self.n_batches

    def draw(self, rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
        """``n`` random valid patch origins (tile, row, col), by rejection, vectorised."""
        out: list[tuple[int, int, int]] = []
        for _ in range(1000):
            # Candidates for the missing ones at the (fixed, so reproducible) acceptance rate.
            m = int(min(max(1.5 * (n - len(out)) / self.acceptance + 8, 16), 4_000_000))
            k = rng.choice(len(self.tile_ids), size=m, p=self.p)
            r = (rng.random(m) * self.hmax[k]).astype(np.int64)
            c = (rng.random(m) * self.wmax[k]).astype(np.int64)
            ok = self.split.valid(0, self.row0[k] + r, self.col0[k] + c, self.patch, self.gap)
            out += [
                (int(self.tile_ids[a]), int(b), int(d))
                for a, b, d in zip(k[ok], r[ok], c[ok], strict=True)
            ]
            if len(out) >= n:
                return out[:n]
        raise ConfigError(
            "no training patch fits inside the train regions; use a smaller patch_size or split.gap"
        )

    def origins(self, epoch: int, i: int) -> list[tuple[int, int, int]]:
        return self.draw(np.random.default_rng([self.seed, epoch, self.rank, i]), self.batch_size)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        rng = np.random.default_rng([self.seed, epoch, self.rank, i, 1])
        origins = self.draw(
            np.random.default_rng([self.seed, epoch, self.rank, i]), self.batch_size
        )
        p, b = self.patch, len(origins)
        imgs = np.empty((b, len(self.reader.bands), p, p), np.float32)
        masks = np.empty((b, p, p), np.int64)
        # The 8 flips/90° turns of a square = optional transpose, then optional flips of rows
        # and columns; the same for image and mask. Flips are views; the copy below casts too.
        aug = rng.random((b, 3)) < 0.5 if self.augment else np.zeros((b, 3), bool)
        rev = np.arange(p - 1, -1, -1)
        ibuf = mbuf = None
        for k in range(b):
            t, r, c = origins[k]
            for attempt in range(10):
                if aug[k, 0]:
                    img, mask = self.reader.read_transposed(t, r, c, p)
                else:
                    img, mask, _ = self.reader.read(t, r, c, p, p)
                if (mask != self.ignore).any() or attempt == 9:
                    break
                t, r, c = self.draw(rng, 1)[0]  # an all-nodata/ignore patch teaches nothing
            origins[k] = (t, r, c)
            if aug[k, 1]:
                img, mask = img[:, ::-1], mask[::-1]
            if aug[k, 2]:
                # A reversed last axis would make the casting copy below ~5x slower; np.take into
                # a buffer of the source dtype reverses it at ~memcpy speed.
                if ibuf is None:
                    ibuf, mbuf = (
                        np.empty((imgs.shape[1], p, p), img.dtype),
                        np.empty((p, p), mask.dtype),
                    )
                img = np.take(img, rev, axis=2, out=ibuf)
                mask = np.take(mask, rev, axis=1, out=mbuf)
            # cast + centre + scale while the patch is in cache (a batch-wide pass would not be)
            np.subtract(img, self.shift, out=imgs[k], casting="unsafe")
            np.multiply(imgs[k], self.scale, out=imgs[k])
            masks[k] = mask
        batch = self._finish(imgs, masks, origins, normalised=True)
        if self.jitter > 0:
            import torch

            j = self.jitter
            contrast = torch.from_numpy(rng.uniform(1 - j, 1 + j, (b, 1, 1, 1)).astype(np.float32))
            bright = torch.from_numpy(rng.uniform(-j, j, (b, 1, 1, 1)).astype(np.float32))
            batch["image"].mul_(contrast).add_(bright)
        return batch


class GridBatches(_Batches):
    """Grid patches over a split's regions (validation/testing), in a fixed order."""

    def __init__(
        self,
        reader: _Reader,
        grid: Grid,
        windows: list[tuple[int, int, int]],
        *,
        patch: int,
        batch_size: int,
        mean: np.ndarray,
        std: np.ndarray,
        ignore_index: int,
    ) -> None:
        super().__init__(reader, grid, patch, batch_size, mean, std, ignore_index)
        self.windows = windows

    def __len__(self) -> int:
        return -(-len(self.windows) // self.batch_size)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i = key[1] if isinstance(key, tuple) else key
        wins = self.windows[i * self.batch_size : (i + 1) * self.batch_size]
        p = self.patch
        imgs = np.empty((len(wins), len(self.reader.bands), p, p), np.float32)
        masks = np.empty((len(wins), p, p), np.uint8)
        for k, (t, r, c) in enumerate(wins):
            img, mask, _ = self.reader.read(t, r, c, p, p)
            imgs[k] = img
            masks[k] = mask
        return self._finish(imgs, masks, wins)

    def bounds(self) -> np.ndarray:
        """[N, 4] (xmin, ymin, xmax, ymax) of every window, target-CRS units."""
        return self._bounds(self.windows)


class _EpochKeys:
    """Sampler of ``(epoch, i)`` keys for the epoch the owning :class:`Loader` set.

    The epoch is not advanced here: torch's DataLoader may call ``iter()`` on its sampler twice
    when a pass starts (persistent workers), which would skip an epoch.
    """

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in range(self.n)])


class Loader:
    """An iterable of batch dicts with ``len()`` = batches per pass; workers via torch DataLoader.

    Each pass over a training loader is a new epoch (new random patches, reproducible by seed);
    ``set_epoch(e)`` picks the epoch of the next pass.
    """

    def __init__(self, batches: TrainBatches | GridBatches, workers: int = 0) -> None:
        self.batches, self.workers = batches, workers
        self.keys = _EpochKeys(len(batches))
        self.epoch = 0
        self._dl: Any = None

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state.get("epoch", self.epoch))

    def __iter__(self) -> Iterator[dict]:
        self.keys.epoch = self.epoch
        self.epoch += 1
        if self.workers <= 0:
            for key in list(self.keys):
                yield self.batches[key]
            return
        if self._dl is None:
            import torch
            from torch.utils.data import DataLoader

            self._dl = DataLoader(
                self.batches,
                batch_size=None,
                sampler=self.keys,
                num_workers=self.workers,
                persistent_workers=True,
                # Page-locked batches let the trainer's non_blocking copies overlap compute.
                pin_memory=torch.cuda.is_available(),
            )
        yield from self._dl


@dataclass
class TrainingData:
    """What the training loop consumes (see docs/CONTRACTS.md)."""

    train: Loader
    val: Loader
    test: Loader | None
    in_channels: int
    band_names: list[str]
    band_indexes: list[int]
    mean: list[float]
    std: list[float]
    crs_wkt: str
    res: float
    split_path: Path
    test_images: list[Path]
    ignore_index: int
    tiles: list[Tile] = field(default_factory=list, repr=False)
    in_memory: bool = False


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def band_statistics(
    samples: Sequence[tuple[np.ndarray, np.ndarray | None]],
    *,
    nodata: float | None = None,
    method: str = "meanstd",
) -> tuple[list[float], list[float]]:
    """Per-band normalisation from image samples, nodata excluded.

    Args:
        samples: (image [C, H, W] any dtype, valid [H, W] bool or None) pairs.
        nodata: a value to exclude as well (pixels where every band equals it).
        method: ``meanstd`` → (mean, std); ``percentile`` → (2nd percentile, 98th − 2nd), so that
            ``(x - mean) / std`` maps the 2..98 % range to 0..1.

    Returns:
        (mean, std) lists, one float per band; std is never 0.
    """
    vals: list[np.ndarray] = []
    for img, valid in samples:
        keep = np.ones(img.shape[1:], bool) if valid is None else valid.copy()
        if nodata is not None:
            keep &= ~np.all(np.isnan(img) if np.isnan(nodata) else img == nodata, axis=0)
        if img.dtype.kind == "f":
            keep &= np.all(np.isfinite(img), axis=0)
        vals.append(img[:, keep].astype(np.float64))
    data = np.concatenate(vals, axis=1) if vals else np.zeros((0, 0))
    if data.size == 0:
        raise RasterError(
            "the training patches contain only nodata; check the images' nodata value"
        )
    if method == "percentile":
        if data.shape[1] > _STAT_PIXELS:  # percentiles of a sample of the pixels (memory)
            data = data[
                :, np.random.default_rng(0).choice(data.shape[1], _STAT_PIXELS, replace=False)
            ]
        lo, hi = np.percentile(data, [2, 98], axis=1)
        return lo.tolist(), np.maximum(hi - lo, 1e-6).tolist()
    return data.mean(axis=1).tolist(), np.maximum(data.std(axis=1), 1e-6).tolist()


# --------------------------------------------------------------------------------------------
# Building the tiles
# --------------------------------------------------------------------------------------------


def _file_key(p: Path) -> list:
    st = Path(p).stat()
    return [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]


def _grid_of(path: Path) -> tuple:
    with rasterio.open(path) as src:
        return src.crs, src.transform, src.width, src.height


def _warp_to(
    src_path: Path,
    dst: Path,
    crs: CRS,
    transform: Any,
    width: int,
    height: int,
    *,
    is_mask: bool,
    lut: np.ndarray | None = None,
    ignore_index: int = 255,
) -> None:
    """Reproject ``src_path`` once onto a grid into ``dst`` (atomic), in strips of rows.

    Images: bilinear, the source's nodata kept, or an internal mask marking where the source has
    data. Masks: nearest, mapped through ``lut``, ignore outside the source.
    """
    from rasterio.vrt import WarpedVRT

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}.tif")
    with rasterio.open(src_path) as src:
        kw = dict(
            crs=crs,
            transform=transform,
            width=width,
            height=height,
            add_alpha=src.nodata is None or is_mask,
            resampling=Resampling.nearest if is_mask else Resampling.bilinear,
        )
        if src.nodata is not None and not is_mask:
            kw["nodata"] = src.nodata
        count = 1 if is_mask else src.count
        profile = dict(
            driver="GTiff",
            crs=crs,
            transform=transform,
            width=width,
            height=height,
            count=count,
            dtype="uint8" if is_mask else src.dtypes[0],
            compress="deflate",
            tiled=True,
            blockxsize=256,
            blockysize=256,
            BIGTIFF="IF_SAFER",
            nodata=ignore_index if is_mask else src.nodata,
        )
        try:
            with WarpedVRT(src, **kw) as vrt, rasterio.open(tmp, "w", **profile) as out:
                for row in range(0, height, 1024):
                    win = Window(0, row, width, min(1024, height - row))
                    data = vrt.read(window=win)
                    if is_mask:
                        m = data[0]
                        if m.dtype != np.uint8:
                            m = np.clip(m, 0, 255).astype(np.uint8)
                        m = lut[m] if lut is not None else m
                        m[data[-1] == 0] = ignore_index
                        out.write(m, 1, window=win)
                    else:
                        out.write(data[:count], window=win)
                        if src.nodata is None:
                            out.write_mask(data[-1], window=win)
            os.replace(tmp, dst)
        finally:
            if tmp.exists():
                tmp.unlink()


def _snap_grid(grid: Grid, bounds: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Global (row, col, height, width) of the grid cells covering ``bounds`` (target CRS)."""
    left, bottom, right, top = bounds
    eps = 1e-6
    c0 = math.floor((left - grid.x0) / grid.res + eps)
    c1 = math.ceil((right - grid.x0) / grid.res - eps)
    r0 = math.floor((grid.y0 - top) / grid.res + eps)
    r1 = math.ceil((grid.y0 - bottom) / grid.res - eps)
    return r0, c0, r1 - r0, c1 - c0


def _aligned(info: catalog.RasterInfo, grid: Grid) -> tuple[int, int] | None:
    """(row0, col0) when ``info`` is already on the target grid, else None."""
    t = info.transform
    if info.crs is None or grid.crs is None or info.crs != grid.crs or t.b != 0 or t.d != 0:
        return None
    if abs(t.a - grid.res) > 1e-9 * grid.res or abs(-t.e - grid.res) > 1e-9 * grid.res:
        return None
    fc, fr = (t.c - grid.x0) / grid.res, (grid.y0 - t.f) / grid.res
    if abs(fc - round(fc)) > 1e-6 or abs(fr - round(fr)) > 1e-6:
        return None
    return int(round(fr)), int(round(fc))


def _geo_tiles(
    cfg: DataConfig, run_dir: Path, num_classes: int
) -> tuple[list[Tile], Grid, catalog.Catalog]:
    paths = catalog.find_rasters(cfg.images)
    cat = catalog.index(paths)
    cat.require_crs()
    target_crs, res = cat.target(cfg.crs, cfg.res)
    # torchgeo: the same target choice and every file's footprint in the target CRS.
    tg = torchgeo_dataset(cat.paths, crs=target_crs, res=res)
    footprints = {
        Path(fp): geom for fp, geom in zip(tg.index["filepath"], tg.index.geometry, strict=True)
    }
    first = cat.rasters[0]
    pos = None
    if first.crs == target_crs:
        grid = Grid(target_crs, res, first.transform.c, first.transform.f)
        pos = _aligned(first, grid)
    if pos is None:
        b = footprints[first.path].bounds
        grid = Grid(target_crs, res, math.floor(b[0] / res) * res, math.ceil(b[3] / res) * res)
    cache = run_dir / "cache"
    tiles = []
    for info in cat.rasters:
        pos = _aligned(info, grid)
        check_valid = info.nodata is not None or info.alpha_band is not None
        if pos is not None:
            tiles.append(
                Tile(
                    info.path, info.path, None, pos[0], pos[1], info.height, info.width, check_valid
                )
            )
            continue
        r0, c0, h, w = _snap_grid(grid, footprints[info.path].bounds)
        from rasterio.transform import Affine

        transform = Affine(res, 0, grid.x0 + c0 * res, 0, -res, grid.y0 - r0 * res)
        key = json.dumps(
            [_file_key(info.path), target_crs.to_wkt(), res, grid.x0, grid.y0, "img", 1]
        )
        dst = (
            cache
            / f"aligned-img-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
            / f"{info.path.stem}.tif"
        )
        if not dst.exists():
            log.info("reprojecting %s once onto the target grid -> %s", info.path.name, dst)
            _warp_to(info.path, dst, target_crs, transform, w, h, is_mask=False)
        tiles.append(Tile(dst, info.path, None, r0, c0, h, w, True))
    _attach_geo_masks(tiles, cfg, run_dir)
    return tiles, grid, cat


def _attach_geo_masks(tiles: list[Tile], cfg: DataConfig, run_dir: Path) -> None:
    if not cfg.labels:
        raise ConfigError(
            "no labels given; pass --labels (a mask folder or a vector file) or set data.labels"
        )
    lab = Path(cfg.labels)
    if not lab.exists():
        raise InputNotFoundError(f"{lab}: labels not found; check the path")
    if cfg.target == "instances":  # background/interior/edge/contact from building instances
        found = instances.training_masks(
            lab,
            [t.image for t in tiles],
            [t.source for t in tiles],
            run_dir / "cache",
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
        return
    if labels.is_vector(lab):
        masks = labels.burn_cached(
            lab,
            [t.image for t in tiles],
            run_dir / "cache",
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
    keep = []
    for t, m in zip(tiles, matched, strict=True):
        if m is None:
            log.warning("%s: no mask found in %s; image skipped", t.source, lab)
            continue
        info = catalog.index([m]).rasters[0]
        lut = labels.mapping_lut(
            cfg.mask_mapping, nodata=info.nodata, ignore_index=cfg.ignore_index
        )
        crs, transform, w, h = _grid_of(t.image)
        if info.crs == crs and info.transform == transform and (info.width, info.height) == (w, h):
            t.mask, t.lut = m, lut
        else:
            if info.crs is None:
                raise RasterError(
                    f"{m}: mask has no CRS and a grid other than {t.source.name}; georeference it"
                )
            key = json.dumps(
                [
                    _file_key(m),
                    crs.to_wkt(),
                    list(transform)[:6],
                    w,
                    h,
                    cfg.mask_mapping and sorted(cfg.mask_mapping.items()),
                    cfg.ignore_index,
                    "mask",
                    1,
                ]
            )
            dst = (
                run_dir
                / "cache"
                / f"aligned-mask-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
                / f"{m.stem}.tif"
            )
            if not dst.exists():
                log.info("reprojecting mask %s once onto %s's grid", m.name, t.source.name)
                _warp_to(
                    m,
                    dst,
                    crs,
                    transform,
                    w,
                    h,
                    is_mask=True,
                    lut=lut,
                    ignore_index=cfg.ignore_index,
                )
            t.mask, t.lut = dst, labels.mapping_lut(None)
        keep.append(t)
    tiles[:] = keep


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


def _plain_tiles(cfg: DataConfig, patch: int, gap: int) -> tuple[list[Tile], Grid]:
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


def _check_bands(tiles: list[Tile], cfg: DataConfig) -> tuple[list[int], list[str]]:
    infos = catalog.index([tiles[0].source]).rasters
    first = infos[0]
    if cfg.bands:
        bands = list(cfg.bands)
        bad = [b for b in bands if not 1 <= b <= first.count]
        if bad:
            raise ConfigError(
                f"data.bands {bad} out of range: {first.path} has bands 1..{first.count}"
            )
    else:
        bands = [b for b in range(1, first.count + 1) if b != first.alpha_band]
    for t in tiles[1:]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(t.image) as src:
                if max(bands) > src.count:
                    raise RasterError(
                        f"{t.source}: has {src.count} band(s) but {first.path.name} has "
                        f"{first.count}; use rasters with the same bands or set data.bands"
                    )
    names = [first.band_names[b - 1] if first.band_names else f"band_{b}" for b in bands]
    return bands, names


def _grid_windows(rect: tuple[int, int, int, int], tile: Tile, patch: int) -> list[tuple[int, int]]:
    """Global (row, col) origins of ``patch`` windows covering rect ∩ tile; windows stay inside
    ``rect`` and hang over the tile's edge only when the overlap is smaller than a patch."""
    R, C, H, W = rect
    a, b = max(R, tile.row0), max(C, tile.col0)
    e, f = min(R + H, tile.row0 + tile.height), min(C + W, tile.col0 + tile.width)
    if e <= a or f <= b:
        return []

    def axis(lo: int, hi: int, rlo: int, rhi: int) -> list[int]:
        if hi - lo >= patch:
            pos = list(range(lo, hi - patch + 1, patch))
            if pos[-1] + patch < hi:
                pos.append(hi - patch)  # the last one is shifted back inside, never overhanging
            return pos
        return [max(rlo, min(lo, rhi - patch))]

    rows, cols = axis(a, e, R, R + H), axis(b, f, C, C + W)
    return [(r, c) for r in rows for c in cols]


def _split_windows(
    split: _Split, tiles: list[Tile], s: int, patch: int, reader: _Reader
) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for rect in split.rects[s]:
        for i, t in enumerate(tiles):
            if split.tile_split is not None and split.tile_split[i] != s:
                continue
            wins = _grid_windows(rect, t, patch)
            if not wins:
                continue
            rr = np.array([w[0] for w in wins])
            cc = np.array([w[1] for w in wins])
            ok = (
                split.valid(s, rr, cc, patch, 0)
                if split.method == "roi"
                else np.ones(len(wins), bool)
            )
            out += [
                (i, r - t.row0, c - t.col0) for (r, c), good in zip(wins, ok, strict=True) if good
            ]
    # Drop windows that are entirely nodata/ignore (one read of their masks, once).
    keep = []
    for i, r, c in out:
        _, m, _ = reader.read(i, r, c, patch, patch)
        if (m != reader.ignore).any():
            keep.append((i, r, c))
    return keep


def _write_split(path: Path, split: _Split, tiles: list[Tile], grid: Grid) -> Path:
    """Write the split regions as polygons (``split`` column, target CRS) to a GeoPackage."""
    import geopandas as gpd
    import shapely

    def to_geom(r: int, c: int, h: int, w: int) -> Any:
        return shapely.box(*grid.bounds(r, c, h, w))

    data_area = shapely.union_all([to_geom(t.row0, t.col0, t.height, t.width) for t in tiles])
    rows = []
    for s in range(3):
        if split.method == "files":
            geoms = [
                to_geom(t.row0, t.col0, t.height, t.width)
                for i, t in enumerate(tiles)
                if split.tile_split is not None and split.tile_split[i] == s
            ]
            files = [
                str(t.source)
                for i, t in enumerate(tiles)
                if split.tile_split and split.tile_split[i] == s
            ]
        else:
            geoms = [to_geom(*rect) for rect in split.rects[s]]
            files = []
        if not geoms:
            continue
        geom = shapely.intersection(shapely.union_all(geoms), data_area)
        if not geom.is_empty:
            rows.append({"split": SPLITS[s], "files": ";".join(files), "geometry": geom})
    gdf = gpd.GeoDataFrame(rows, geometry="geometry", crs=grid.crs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.gpkg")
    if tmp.exists():
        tmp.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gdf.to_file(tmp, layer="split", driver="GPKG")
    os.replace(tmp, path)
    return path


def _check_mask_classes(reader: _Reader, num_classes: int, ignore_index: int) -> None:
    with progress.bar(len(reader.tiles), "checking label values") as bar:
        for i, t in enumerate(reader.tiles):
            counts = np.zeros(256, np.int64)
            if reader.arrays is not None:
                counts += np.bincount(reader.arrays[i][1].ravel(), minlength=256)
            else:  # strips of rows: a large mask is never decoded whole
                for row in range(0, t.height, 2048):
                    win = Window(0, row, t.width, min(2048, t.height - row))
                    counts += np.bincount(
                        reader._read_file(i, win, with_valid=False)[1].ravel(), minlength=256
                    )
            labels.check_classes(
                np.flatnonzero(counts), num_classes, ignore_index, t.mask or t.source
            )
            bar.advance()


def build_training_data(
    cfg: DataConfig,
    *,
    patch_size: int,
    batch_size: int,
    run_dir: Path,
    num_classes: int,
    seed: int = 0,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    patches_per_epoch: int | None = None,
    memory_budget: int | None = None,
) -> TrainingData:
    """Index the catalog and labels, split by region, compute band statistics, build loaders.

    Args:
        cfg: the ``data`` section (images, labels, layout, split, normalisation, augmentation).
        patch_size: side of a square patch in pixels of the target grid.
        batch_size: patches per batch.
        run_dir: the run folder; ``split.gpkg`` and ``cache/`` (aligned rasters, burned
            labels) are written there.
        num_classes: classes the model predicts; a label value ≥ it (not ignore) is an error.
        seed: drives the random patches (reproducible tile and offset choice).
        workers: DataLoader worker processes (0 = read in this process).
        rank, world_size: distributed training; each rank draws different patches.
        patches_per_epoch: random training patches per epoch (default: train area / patch area).
        memory_budget: decoded bytes up to which tiles are held in RAM (default 1 GiB).

    Returns:
        TrainingData; memory: the decoded tiles when they fit ``memory_budget``, else only open
        file handles.

    Raises:
        InputNotFoundError, CatalogError, RasterError, LabelError, ConfigError: user errors,
        each naming the file.
    """
    run_dir = Path(run_dir)
    gap = cfg.split.gap if cfg.split.gap is not None else patch_size
    if patch_size <= 0 or batch_size <= 0:
        raise ConfigError(f"patch_size={patch_size} and batch_size={batch_size} must be positive")
    if cfg.layout == "tiles":
        if cfg.target == "instances":
            raise ConfigError(
                "data.target: instances needs georeferenced rasters (edge widths are in metres); "
                "use data.layout: geo with building polygons or instance-id rasters"
            )
        tiles, grid = _plain_tiles(cfg, patch_size, gap)
        if cfg.split.method == "roi":
            raise ConfigError(
                "split.method roi needs georeferenced data; use files for layout tiles"
            )
    else:
        tiles, grid, _ = _geo_tiles(cfg, run_dir, num_classes)
    big = max(tiles, key=lambda t: min(t.height, t.width))
    if min(big.height, big.width) < patch_size:
        raise RasterError(
            f"{big.source}: raster is {big.width}×{big.height} px, smaller than "
            f"patch_size={patch_size}; use a patch size ≤ {min(big.height, big.width)} "
            "(a multiple of the model's downsampling)"
        )
    bands, band_names = _check_bands(tiles, cfg)
    reader = _Reader(tiles, bands, cfg.ignore_index)
    budget = MEMORY_BUDGET if memory_budget is None else memory_budget
    if reader.memory_bytes() <= budget:
        reader.load()
    _check_mask_classes(reader, num_classes, cfg.ignore_index)

    method = (
        "files" if (cfg.layout == "tiles" and cfg.split.method == "blocks") else cfg.split.method
    )
    if method == "blocks":
        split = _blocks_split(tiles, cfg, patch_size, gap)
    elif method == "files":
        split = _files_split(tiles, cfg, patch_size)
    else:
        split = _roi_split(tiles, cfg, grid, patch_size)
    split_path = _write_split(run_dir / "split.gpkg", split, tiles, grid)

    ignore = cfg.ignore_index
    zeros = np.zeros(len(bands))  # the statistics sampler reads raw values
    ones = np.ones(len(bands))
    sampler = TrainBatches(
        reader,
        grid,
        split,
        patch=patch_size,
        batch_size=batch_size,
        n_batches=1,
        gap=gap,
        mean=zeros,
        std=ones,
        ignore_index=ignore,
        augment=False,
        color_jitter=0.0,
        seed=seed,
        rank=rank,
    )
    if not len(sampler.tile_ids):
        raise ConfigError("no training file is at least patch_size large; use a smaller patch_size")
    # Patches per epoch: the train area / patch area (estimated from the cells of the split).
    if patches_per_epoch is None:
        train_px = int(split.occ[0].sum()) * split.cell * split.cell
        patches_per_epoch = max(batch_size, train_px // (patch_size * patch_size))
    n_batches = max(1, patches_per_epoch // (batch_size * world_size))

    # Statistics from a sample of training patches (nodata excluded), drawn with their own seed.
    rng = np.random.default_rng([seed, 7919])
    stat_origins = sampler.draw(rng, _STAT_PATCHES)
    samples = [
        reader.read(t, r, c, patch_size, patch_size, with_valid=True)[::2]
        for t, r, c in stat_origins
    ]
    mean, std = band_statistics(samples, method=cfg.normalization)  # nodata: via the validity masks
    log.info(
        "band mean %s std %s (%s)",
        [round(m, 3) for m in mean],
        [round(s, 3) for s in std],
        cfg.normalization,
    )

    m, s = np.array(mean), np.array(std)
    train = TrainBatches(
        reader,
        grid,
        split,
        patch=patch_size,
        batch_size=batch_size,
        n_batches=n_batches,
        gap=gap,
        mean=m,
        std=s,
        ignore_index=ignore,
        augment=cfg.augment,
        color_jitter=cfg.color_jitter,
        seed=seed,
        rank=rank,
    )
    loaders = []
    all_wins = [_split_windows(split, tiles, si, patch_size, reader) for si in (1, 2)]
    if not all_wins[0]:
        raise ConfigError(
            "the validation split has no usable patch (all nodata or too small); "
            "change split.ratios, split.block_size or patch_size"
        )
    test_images = sorted({tiles[i].source for i, _, _ in all_wins[1]})
    for wins in all_wins:
        # ranks share the grid patches (their metrics are summed over ranks by the trainer)
        wins = wins[rank::world_size] if world_size > 1 else wins
        loaders.append(
            GridBatches(
                reader,
                grid,
                wins,
                patch=patch_size,
                batch_size=batch_size,
                mean=m,
                std=s,
                ignore_index=ignore,
            )
        )
    val_b, test_b = loaders
    if not all_wins[1]:
        test_b = None
    return TrainingData(
        train=Loader(train, workers),
        val=Loader(val_b, workers),
        test=Loader(test_b, workers) if test_b is not None else None,
        in_channels=len(bands),
        band_names=band_names,
        band_indexes=bands,
        mean=list(mean),
        std=list(std),
        crs_wkt=grid.crs.to_wkt() if grid.crs is not None else "",
        res=grid.res,
        split_path=split_path,
        test_images=test_images,
        ignore_index=ignore,
        tiles=tiles,
        in_memory=reader.arrays is not None,
    )
