"""Train/val/test regions, never random patches: blocks of the grid, whole files or ROI polygons.

Sparse by construction: every tile keeps a small lattice of cells over its own area plus the gap
around it, saying which split owns each cell (:class:`TileCells`). Nothing spans the catalog's
extent, so memory and time follow the pixels of the catalog: four files on four continents cost
what the same four files side by side cost.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg import io
from geoseg.config import DataConfig, SplitConfig
from geoseg.data.grid import Grid, Rect, Tile
from geoseg.errors import ConfigError, InputNotFoundError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class TileCells:
    """K kinds of cells on one lattice per tile, counted in any window in O(1).

    Tile t's lattice has cells of ``cell`` pixels; its cell (0, 0) starts at global pixel
    ``(r0[t], c0[t])`` and it spans ``shape[t]`` cells. Counts come from summed-area tables,
    all tiles' tables in one flat int32 array, so a count over many windows of many tiles is a
    handful of numpy operations.
    """

    def __init__(self, cell: int, lattices: Sequence[tuple[int, int, np.ndarray]]) -> None:
        """``lattices``: per tile (r0, c0, occupancy bool [K, nrows, ncols])."""
        self.cell = cell
        self.kinds = lattices[0][2].shape[0] if lattices else 0
        self.r0 = np.array([a for a, _, _ in lattices], np.int64)
        self.c0 = np.array([b for _, b, _ in lattices], np.int64)
        self.nr = np.array([o.shape[1] for _, _, o in lattices], np.int64)
        self.nc = np.array([o.shape[2] for _, _, o in lattices], np.int64)
        sizes = (self.nr + 1) * (self.nc + 1)
        self.offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.sat = np.zeros((self.kinds, int(sizes.sum())), np.int32)
        for t, (_, _, occ) in enumerate(lattices):
            table = np.zeros((self.kinds, occ.shape[1] + 1, occ.shape[2] + 1), np.int32)
            table[:, 1:, 1:] = occ.cumsum(1, dtype=np.int32).cumsum(2, dtype=np.int32)
            self.sat[:, self.offset[t] : self.offset[t] + sizes[t]] = table.reshape(self.kinds, -1)

    def count(
        self,
        kind: int,
        tiles: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        h: int,
        w: int,
        *,
        inside: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cells of ``kind`` among the cells that windows [row, row+h) × [col, col+w) (global
        pixels, on tiles ``tiles``) overlap (``inside``: lie entirely inside), and how many such
        cells there are."""
        cell = self.cell
        nr, nc = self.nr[tiles], self.nc[tiles]
        dr, dc = rows - self.r0[tiles], cols - self.c0[tiles]
        if inside:
            a, b = -(-dr // cell), -(-dc // cell)
            e, f = (dr + h) // cell, (dc + w) // cell
        else:
            a, b = dr // cell, dc // cell
            e, f = -(-(dr + h) // cell), -(-(dc + w) // cell)
        a, e = np.clip(a, 0, nr), np.clip(e, 0, nr)
        b, f = np.clip(b, 0, nc), np.clip(f, 0, nc)
        e, f = np.maximum(e, a), np.maximum(f, b)
        base, stride = self.offset[tiles], nc + 1
        sat = self.sat[kind]
        n = (
            sat[base + e * stride + f]
            - sat[base + a * stride + f]
            - sat[base + e * stride + b]
            + sat[base + a * stride + b]
        )
        return n, (e - a) * (f - b)

    def nbytes(self) -> int:
        return int(self.sat.nbytes)


def _lattice(
    rect: Rect, origin: tuple[int, int], cell: int, margin: int
) -> tuple[int, int, int, int]:
    """(first cell row, first cell col, rows, cols) of the lattice cells (anchored at ``origin``)
    covering ``rect`` grown by ``margin`` pixels."""
    r, c, h, w = rect
    a = (r - margin - origin[0]) // cell
    b = (c - margin - origin[1]) // cell
    e = -(-(r + h + margin - origin[0]) // cell)
    f = -(-(c + w + margin - origin[1]) // cell)
    return a, b, e - a, f - b


@dataclass
class SplitMap:
    """Which split owns which part of the catalog.

    ``cells`` (3 kinds: train, val, test) answers whether a patch lies in one split and keeps
    ``gap`` pixels from the others; ``regions`` lists each split's regions in global pixels
    (blocks, files, or the bounding boxes of ROI polygons).
    """

    method: str
    cells: TileCells
    regions: list[list[Rect]]
    tile_split: list[int] | None = None
    """``method: files``: the split of each tile."""
    polygons: list[Any] | None = None
    """``method: roi``: each split's geometry in the grid's CRS."""
    train_pixels: int = 0
    """Pixels of the train regions (patches per epoch = this / patch area by default)."""

    def valid(
        self, s: int, tiles: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int, gap: int
    ) -> np.ndarray:
        """Whether patches at global (rows, cols) of ``tiles`` lie in split ``s`` and keep
        ``gap`` pixels from every region of another split."""
        tiles = np.asarray(tiles, np.int64)
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        own, total = self.cells.count(s, tiles, rows, cols, size, size)
        ok = (own == total) & (total > 0)
        for o in range(3):
            if o != s:
                n, _ = self.cells.count(
                    o, tiles, rows - gap, cols - gap, size + 2 * gap, size + 2 * gap
                )
                ok &= n == 0
        return ok

    def pieces(self, s: int, tiles: list[Tile], patch: int) -> list[tuple[int, Rect]]:
        """(tile, rect) for every region of split ``s`` on every tile: region ∩ tile, grown to
        at least a patch per axis inside the region (then it may hang over the tile's edge)."""
        import shapely

        regions = self.regions[s]
        if not regions:
            return []
        rr = np.array(regions, np.int64)
        tree = shapely.STRtree(
            shapely.box(rr[:, 1], rr[:, 0], rr[:, 1] + rr[:, 3], rr[:, 0] + rr[:, 2])
        )
        out = []
        for i, t in enumerate(tiles):
            if self.tile_split is not None and self.tile_split[i] != s:
                continue
            box = shapely.box(t.col0, t.row0, t.col0 + t.width, t.row0 + t.height)
            for k in sorted(tree.query(box, predicate="intersects").tolist()):
                R, C, H, W = regions[k]
                rows = _grow(max(R, t.row0), min(R + H, t.row0 + t.height), R, R + H, patch)
                cols = _grow(max(C, t.col0), min(C + W, t.col0 + t.width), C, C + W, patch)
                if rows and cols:
                    out.append((i, (rows[0], cols[0], rows[1] - rows[0], cols[1] - cols[0])))
        return out


def _grow(lo: int, hi: int, rlo: int, rhi: int, patch: int) -> tuple[int, int] | None:
    if hi <= lo:
        return None
    if hi - lo >= patch:
        return lo, hi
    start = max(rlo, min(lo, rhi - patch))
    return start, start + patch


def assign_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """How many of ``n`` blocks/files each split gets (at least one when its ratio is > 0)."""
    need = [1 if r > 0 else 0 for r in ratios]
    counts = [int(round(r * n)) for r in ratios]
    counts = [max(c, m) for c, m in zip(counts, need, strict=True)]
    while sum(counts) > n:  # give back from the largest split that can spare one
        k = max(range(3), key=lambda j: counts[j] - need[j])
        counts[k] -= 1
    counts[0] += n - sum(counts)
    return counts


def _origin(tiles: list[Tile]) -> tuple[int, int]:
    return min(t.row0 for t in tiles), min(t.col0 for t in tiles)


# --------------------------------------------------------------------------------------------
# blocks


def _usable_blocks(
    tiles: list[Tile], origin: tuple[int, int], block: int, patch: int
) -> np.ndarray:
    """Sorted (row-major) [n, 2] block indices where some file covers at least a patch of the
    block; slivers (a warped file's overhang) stay unassigned: no split samples there."""
    found: set[tuple[int, int]] = set()
    for t in tiles:
        a, b, nr, nc = _lattice(t.rect, origin, block, 0)
        for i in range(a, a + nr):
            top = origin[0] + i * block
            oh = min(t.row0 + t.height, top + block) - max(t.row0, top)
            if oh < patch:
                continue
            for j in range(b, b + nc):
                left = origin[1] + j * block
                if min(t.col0 + t.width, left + block) - max(t.col0, left) >= patch:
                    found.add((i, j))
    return np.array(sorted(found), np.int64).reshape(-1, 2)


def _block_map(
    tiles: list[Tile],
    origin: tuple[int, int],
    block: int,
    keys: np.ndarray,
    label: np.ndarray,
    gap: int,
) -> SplitMap:
    owner = {(int(i), int(j)): int(s) for (i, j), s in zip(keys, label, strict=True)}
    lattices = []
    for t in tiles:
        a, b, nr, nc = _lattice(t.rect, origin, block, gap)
        occ = np.zeros((3, nr, nc), bool)
        for i in range(nr):
            for j in range(nc):
                s = owner.get((a + i, b + j))
                if s is not None:
                    occ[s, i, j] = True
        lattices.append((origin[0] + a * block, origin[1] + b * block, occ))
    regions: list[list[Rect]] = [[], [], []]
    for (i, j), s in zip(keys.tolist(), label.tolist(), strict=True):
        regions[s].append((origin[0] + i * block, origin[1] + j * block, block, block))
    return SplitMap(
        "blocks",
        TileCells(block, lattices),
        regions,
        train_pixels=len(regions[0]) * block * block,
    )


def _train_fits(split: SplitMap, tiles: list[Tile], patch: int, gap: int, seed: int) -> bool:
    """Whether some training patch fits (20,000 seeded random origins tried)."""
    ok = [i for i, t in enumerate(tiles) if t.height >= patch and t.width >= patch]
    rng = np.random.default_rng([seed, 104729])
    k = np.array(ok)[rng.integers(0, len(ok), 20_000)]
    hmax = np.array([t.height - patch + 1 for t in tiles])[k]
    wmax = np.array([t.width - patch + 1 for t in tiles])[k]
    r = np.array([t.row0 for t in tiles])[k] + (rng.random(k.size) * hmax).astype(np.int64)
    c = np.array([t.col0 for t in tiles])[k] + (rng.random(k.size) * wmax).astype(np.int64)
    return bool(split.valid(0, k, r, c, patch, gap).any())


def blocks_split(tiles: list[Tile], sp: SplitConfig, patch: int, gap: int) -> SplitMap:
    """Blocks of ``block_size`` px over the grid, shuffled by seed into train/val/test.

    Tiny data: when there are fewer usable blocks than splits, or no training patch keeps
    ``gap`` px from val/test, smaller blocks (halving, down to the patch size) and then other
    seeded assignments are tried, so val and test get a region whenever their ratio is > 0.
    """
    need = sum(1 for r in sp.ratios if r > 0)
    origin = _origin(tiles)
    sizes = [sp.block_size]
    while sizes[-1] // 2 >= patch:
        sizes.append(sizes[-1] // 2)
    most = 0
    for block in sizes:
        keys = _usable_blocks(tiles, origin, block, patch)
        most = max(most, len(keys))
        if len(keys) < need:
            continue
        counts = assign_counts(len(keys), sp.ratios)
        for attempt in range(1 if block == sp.block_size and len(keys) > 2 * need else 25):
            rng = np.random.default_rng([sp.seed, attempt] if attempt else sp.seed)
            order = rng.permutation(len(keys))
            label = np.full(len(keys), -1, np.int64)
            k = 0
            for s in (1, 2, 0):  # val and test first, then train, in the shuffled order
                label[order[k : k + counts[s]]] = s
                k += counts[s]
            split = _block_map(tiles, origin, block, keys, label, gap)
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


# --------------------------------------------------------------------------------------------
# files and ROI polygons: cells of a few pixels


def _cell(patch: int) -> int:
    return max(1, min(16, patch // 4))


def _rect_map(
    tiles: list[Tile], regions: list[list[Rect]], patch: int, gap: int, method: str
) -> SplitMap:
    """Cells owned by rectangular regions (files), per tile."""
    import shapely

    cell, origin = _cell(patch), _origin(tiles)
    flat = [(s, r) for s in range(3) for r in regions[s]]
    rr = np.array([r for _, r in flat], np.int64).reshape(-1, 4)
    tree = shapely.STRtree(
        shapely.box(rr[:, 1], rr[:, 0], rr[:, 1] + rr[:, 3], rr[:, 0] + rr[:, 2])
    )
    lattices = []
    for t in tiles:
        a, b, nr, nc = _lattice(t.rect, origin, cell, gap)
        occ = np.zeros((3, nr, nc), bool)
        top, left = origin[0] + a * cell, origin[1] + b * cell
        box = shapely.box(left, top, left + nc * cell, top + nr * cell)
        for k in tree.query(box, predicate="intersects").tolist():
            s, (r, c, h, w) = flat[k]
            i0, j0 = max((r - top) // cell, 0), max((c - left) // cell, 0)
            i1 = min(-(-(r + h - top) // cell), nr)
            j1 = min(-(-(c + w - left) // cell), nc)
            occ[s, i0:i1, j0:j1] = True
        lattices.append((top, left, occ))
    return SplitMap(method, TileCells(cell, lattices), regions)


def _named_files(tiles: list[Tile], sp: SplitConfig) -> list[int]:
    """The split of each tile from ``sp.val_files`` / ``sp.test_files`` (file-name patterns)."""
    from fnmatch import fnmatch

    tile_split = []
    for t in tiles:
        name = Path(t.source).name
        val = any(fnmatch(name, p) for p in sp.val_files)
        test = any(fnmatch(name, p) for p in sp.test_files)
        if val and test:
            raise ConfigError(
                f"{t.source}: matches both split.val_files and split.test_files; "
                "make the patterns exclusive"
            )
        tile_split.append(1 if val else 2 if test else 0)
    names = [Path(t.source).name for t in tiles]
    for key, patterns in (("val_files", sp.val_files), ("test_files", sp.test_files)):
        for p in patterns:
            if not any(fnmatch(n, p) for n in names):
                raise ConfigError(
                    f"split.{key}: '{p}' matches none of the {len(names)} image file names "
                    f"(e.g. {names[0]}); fix the pattern"
                )
    return tile_split


def files_split(tiles: list[Tile], sp: SplitConfig, patch: int, gap: int) -> SplitMap:
    """Whole files into train/val/test: by name (``val_files``, ``test_files``), else shuffled
    by seed in ``ratios``."""
    if sp.val_files or sp.test_files:
        return _files_map(tiles, _named_files(tiles, sp), patch, gap)
    counts = assign_counts(len(tiles), sp.ratios)
    if any(c > 0 for c in counts[1:]) and len(tiles) < sum(1 for r in sp.ratios if r > 0):
        raise ConfigError(
            f"split.method files needs at least one file per split; found {len(tiles)} file(s); "
            "use split.method blocks or more files"
        )
    order = np.random.default_rng(sp.seed).permutation(len(tiles))
    tile_split = [0] * len(tiles)
    k = 0
    for s in (1, 2, 0):
        for i in order[k : k + counts[s]]:
            tile_split[int(i)] = s
        k += counts[s]
    return _files_map(tiles, tile_split, patch, gap)


def _files_map(tiles: list[Tile], tile_split: list[int], patch: int, gap: int) -> SplitMap:
    regions: list[list[Rect]] = [[], [], []]
    for s, t in zip(tile_split, tiles, strict=True):
        regions[s].append(t.rect)
    split = _rect_map(tiles, regions, patch, gap, "files")
    split.tile_split = tile_split
    split.train_pixels = sum(
        t.height * t.width for s, t in zip(tile_split, tiles, strict=True) if s == 0
    )
    return split


def roi_split(tiles: list[Tile], sp: SplitConfig, grid: Grid, patch: int, gap: int) -> SplitMap:
    """Regions from a vector file with a ``split`` column (train/val/test per polygon)."""
    import geopandas as gpd
    import shapely
    from rasterio import features
    from rasterio.transform import Affine

    path = sp.roi_file
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
    geoms = [list(gdf.geometry[gdf["split"].astype(str) == name]) for name in SPLITS]
    regions: list[list[Rect]] = [[grid.cover(g.bounds) for g in geoms[s]] for s in range(3)]
    cell, origin = _cell(patch), _origin(tiles)
    trees = [shapely.STRtree(g) if g else None for g in geoms]
    lattices = []
    train_cells = 0
    for t in tiles:
        a, b, nr, nc = _lattice(t.rect, origin, cell, gap)
        top, left = origin[0] + a * cell, origin[1] + b * cell
        occ = np.zeros((3, nr, nc), bool)
        area = shapely.box(*grid.bounds(top, left, nr * cell, nc * cell))
        tr = Affine(
            grid.res * cell,
            0,
            grid.x0 + left * grid.res,
            0,
            -grid.res * cell,
            grid.y0 - top * grid.res,
        )
        for s, tree in enumerate(trees):
            if tree is None:
                continue
            near = [geoms[s][k] for k in tree.query(area, predicate="intersects").tolist()]
            if near:
                occ[s] = (
                    features.rasterize(
                        near, out_shape=(nr, nc), transform=tr, all_touched=True, dtype=np.uint8
                    )
                    > 0
                )
        lattices.append((top, left, occ))
        i0, j0 = (t.row0 - top) // cell, (t.col0 - left) // cell
        i1, j1 = -(-(t.row0 + t.height - top) // cell), -(-(t.col0 + t.width - left) // cell)
        train_cells += int(occ[0, i0:i1, j0:j1].sum())
    split = SplitMap("roi", TileCells(cell, lattices), regions)
    split.polygons = [shapely.union_all(g) if g else None for g in geoms]
    split.train_pixels = train_cells * cell * cell
    return split


def make_split(
    tiles: list[Tile], cfg: DataConfig, grid: Grid, *, patch: int, gap: int, layout: str
) -> SplitMap:
    """The split ``cfg.split`` asks for (plain tile folders split by files)."""
    method = "files" if (layout == "tiles" and cfg.split.method == "blocks") else cfg.split.method
    if method == "blocks":
        return blocks_split(tiles, cfg.split, patch, gap)
    if method == "files":
        return files_split(tiles, cfg.split, patch, gap)
    if layout == "tiles":
        raise ConfigError("split.method roi needs georeferenced data; use files for layout tiles")
    return roi_split(tiles, cfg.split, grid, patch, gap)


def write_split(path: Path, split: SplitMap, tiles: list[Tile], grid: Grid) -> Path:
    """Write the split regions as polygons (``split`` column, grid CRS) to a GeoPackage."""
    import geopandas as gpd
    import shapely

    def box(rect: Rect) -> Any:
        return shapely.box(*grid.bounds(*rect))

    data_area = shapely.union_all([box(t.rect) for t in tiles])
    rows = []
    for s in range(3):
        files = ""
        if split.tile_split is not None:
            files = ";".join(str(t.source) for i, t in enumerate(tiles) if split.tile_split[i] == s)
        if split.polygons is not None:
            geom = split.polygons[s]
        else:
            geom = (
                shapely.union_all([box(r) for r in split.regions[s]]) if split.regions[s] else None
            )
        if geom is None:
            continue
        geom = shapely.intersection(geom, data_area)
        if not geom.is_empty:
            rows.append({"split": SPLITS[s], "files": files, "geometry": geom})
    gdf = gpd.GeoDataFrame(rows, geometry="geometry", crs=grid.crs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tile folder's regions have no CRS
        io.write_vector(gdf, path, layer="split", overwrite=True)
    return path
