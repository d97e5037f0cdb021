"""The pre-torchgeo training reader of geoseg.data (commit f5d93ba), frozen as the reference of
``benchmarks/sampling.py``: the figure ``tg_sampler_vs_geoseg`` compares geoseg's torchgeo path
against it. Trimmed to what the benchmark runs: aligned rasters with raster masks, a block split,
the random training batches (RAM or streamed reads, flips/turns via a transposed RAM copy).
Not part of geoseg; do not import it from the library. Only the placement records (Tile, Grid)
are shared with the library.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from geoseg import catalog, labels, progress
from geoseg.config import DataConfig
from geoseg.data import band_statistics
from geoseg.data.grid import Grid, Tile  # the same placement records as the library's
from geoseg.errors import ConfigError, LabelError, RasterError

log = logging.getLogger(__name__)


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

    def __init__(self, batches: TrainBatches, workers: int = 0) -> None:
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


def train_loader(
    img_dir: Path,
    msk_dir: Path,
    *,
    patch: int,
    batch_size: int,
    patches_per_epoch: int,
    workers: int = 0,
    memory_budget: int = 1 << 30,
    ratios: tuple[float, float, float] = (0.98, 0.02, 0.0),
    seed: int = 0,
) -> Loader:
    """The old ``build_training_data(...).train`` for aligned rasters with raster masks."""
    infos = catalog.index(catalog.find_rasters([str(img_dir)])).rasters
    first = infos[0]
    grid = Grid(first.crs, first.res[0], first.transform.c, first.transform.f)
    masks = labels.match_masks([i.path for i in infos], catalog.find_rasters([str(msk_dir)]))
    tiles = []
    for info, m in zip(infos, masks, strict=True):
        pos = _aligned(info, grid)
        if pos is None or m is None:
            raise ValueError(f"{info.path}: the reference reader takes aligned rasters with masks")
        t = Tile(info.path, info.path, m, pos[0], pos[1], info.height, info.width, False)
        t.lut = labels.mapping_lut(None, nodata=catalog.index([m]).rasters[0].nodata)
        tiles.append(t)
    bands = list(range(1, first.count + 1))
    reader = _Reader(tiles, bands, 255)
    if reader.memory_bytes() <= memory_budget:
        reader.load()
    cfg = DataConfig(split={"ratios": ratios})
    split = _blocks_split(tiles, cfg, patch, patch)
    kw = dict(patch=patch, batch_size=batch_size, gap=patch, ignore_index=255, seed=seed, rank=0)
    raw = TrainBatches(
        reader,
        grid,
        split,
        n_batches=1,
        mean=np.zeros(len(bands)),
        std=np.ones(len(bands)),
        augment=False,
        color_jitter=0.0,
        **kw,
    )
    origins = raw.draw(np.random.default_rng([seed, 7919]), 128)
    samples = [reader.read(t, r, c, patch, patch, with_valid=True)[::2] for t, r, c in origins]
    mean, std = band_statistics(samples)
    train = TrainBatches(
        reader,
        grid,
        split,
        n_batches=max(1, patches_per_epoch // batch_size),
        mean=np.array(mean),
        std=np.array(std),
        augment=True,
        color_jitter=0.0,
        **kw,
    )
    return Loader(train, workers)
