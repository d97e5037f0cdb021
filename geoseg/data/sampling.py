"""Where patches come from: torchgeo's samplers, confined to one split's regions.

Training: ``RandomGeoSampler`` over the train view (one index entry per tile: the box of its train
regions; entries weighed by area, or with ``data.sample_by: file`` by area over their file's area
so that each file gets about the same share), seeded through its ``generator``; its candidates
are kept when they lie in train cells, keep the gap from val/test and hold labelled pixels
(vectorised checks on the sparse cell maps, no reads). torchgeo picks the tile with the *global*
torch RNG (``torch.multinomial``), so every draw runs under ``torch.random.fork_rng`` seeded from
(seed, epoch): an epoch's patches are the same with or without workers, after a resume, and the
caller's RNG is left untouched. Each epoch's patches are drawn once for all ranks and dealt out by
batch, so DDP ranks never share a patch.

Validation/test: ``GridGeoSampler`` over the split's pieces (region ∩ file, at least a patch per
side). Its two traps are handled: chips start at each piece's bottom-left and the last row and
column overhang the top/right edge, so those are shifted back inside the piece.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from geoseg.data.dataset import GeoRasterDataset, GeoSlice
from geoseg.data.grid import Rect, Tile
from geoseg.data.splits import SplitMap, TileCells
from geoseg.errors import ConfigError

log = logging.getLogger(__name__)


def seed_of(key: Sequence[int]) -> int:
    """A 63-bit seed from a key such as (seed, epoch, rank, batch)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> 1)


def train_entries(split: SplitMap, tiles: list[Tile], patch: int) -> list[tuple[int, Rect]]:
    """One index entry per tile with train regions: the box of those regions on the tile
    (when at least a patch fits in it)."""
    boxes: dict[int, list[int]] = {}
    for i, (r, c, h, w) in split.pieces(0, tiles, 1):
        b = boxes.setdefault(i, [r, c, r + h, c + w])
        b[0], b[1], b[2], b[3] = min(b[0], r), min(b[1], c), max(b[2], r + h), max(b[3], c + w)
    out = []
    for i in sorted(boxes):
        r0, c0, r1, c1 = boxes[i]
        if r1 - r0 >= patch and c1 - c0 >= patch:
            # RandomGeoSampler offsets a chip int(rand * (L - size)) pixels from the entry's left
            # and bottom edges, never L - size: one more pixel on the top and the right lets it
            # reach the top row and the right column too (the chip still lies on the tile).
            out.append((i, (r0 - 1, c0, r1 - r0 + 1, c1 - c0 + 1)))
    return out


class RandomPatches:
    """Training patches drawn by torchgeo's ``RandomGeoSampler`` inside the train regions."""

    def __init__(
        self,
        view: GeoRasterDataset,
        split: SplitMap,
        labelled: TileCells,
        *,
        patch: int,
        gap: int,
        by_file: bool = False,
    ) -> None:
        """``by_file``: each source file gets the same share of candidates (torchgeo weighs the
        index entries by area; the weights are replaced by area / the file's area)."""
        from torchgeo.samplers import RandomGeoSampler

        self.view, self.split, self.labelled = view, split, labelled
        self.patch, self.gap = patch, gap
        self.row0 = np.array([t.row0 for t in view.tiles], np.int64)
        self.col0 = np.array([t.col0 for t in view.tiles], np.int64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.sampler = RandomGeoSampler(view, size=patch, length=1)
        if by_file:
            self.sampler.areas = _per_file(self.sampler.areas, view.index["filepath"].to_numpy())
        self.acceptance = 1.0
        # the share of candidates kept sizes each round; measured once with a fixed seed so
        # that a draw consumes the same random numbers in every process and run
        q = self._candidates((0,), 2048)
        self.acceptance = max(float(np.mean(self._keep(*self.view.locate(q))[0])), 1e-3)

    def _candidates(self, key: Sequence[int], m: int) -> list[GeoSlice]:
        self.sampler.generator = torch.Generator().manual_seed(seed_of([*key, 0]))
        self.sampler.length = m
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_of([*key, 1]))  # torchgeo's tile choice uses the global RNG
            return list(self.sampler)

    def _keep(
        self, tiles: np.ndarray, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Which candidates to keep, and which lie in the train regions (labelled or not)."""
        ok = tiles >= 0
        t = tiles[ok]
        r, c = rows[ok] + self.row0[t], cols[ok] + self.col0[t]
        good = self.split.valid(0, t, r, c, self.patch, self.gap)
        inside, _ = self.labelled.count(0, t, r, c, self.patch, self.patch, inside=True)
        in_split = ok.copy()
        in_split[ok] = good
        ok[ok] = good & (inside > 0)  # an all-nodata/unlabelled patch teaches nothing
        return ok, in_split

    def draw(
        self, key: Sequence[int], n: int
    ) -> tuple[list[GeoSlice], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``n`` patches: their torchgeo queries and (tile, row, col) in tile pixels; the same
        for the same ``key`` in every process.

        Raises:
            ConfigError: no candidate lies inside the train regions.
        """
        queries: list[GeoSlice] = []
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        in_regions = 0
        for attempt in range(100):
            m = int(min(max(1.5 * (n - len(queries)) / self.acceptance + 8, 16), 100_000))
            cand = self._candidates([*key, attempt + 1], m)
            t, r, c = self.view.locate(cand)
            ok, in_split = self._keep(t, r, c)
            in_regions += int(in_split.sum())
            idx = np.flatnonzero(ok)[: n - len(queries)]
            queries += [cand[i] for i in idx]
            found.append((t[idx], r[idx], c[idx]))
            if len(queries) >= n:
                cat = tuple(np.concatenate([f[k] for f in found]) for k in range(3))
                return queries, cat  # type: ignore[return-value]
        if in_regions:
            raise ConfigError(
                "no training patch inside the train regions holds a labelled pixel (the masks "
                "there are all nodata/ignore); check the masks' nodata and data.mask_mapping"
            )
        raise ConfigError(
            "no training patch fits inside the train regions; use a smaller patch_size or split.gap"
        )


def _per_file(areas: torch.Tensor, files: np.ndarray) -> torch.Tensor:
    """Entry weights that give every file the same total: each entry's area over its file's."""
    assert len(areas) == len(files), "train entries must each fit a patch (torchgeo drops others)"
    a = areas.double().numpy()
    _, group = np.unique(files, return_inverse=True)
    per_file = np.bincount(group, weights=a)
    return torch.from_numpy(a / per_file[group]).float()


class TrainBatches(Sampler[list[GeoSlice]]):
    """A batch sampler of random training patches, ``len()`` batches per epoch.

    An epoch's patches come from ``RandomPatches.draw((seed, epoch), ...)`` for all ranks at
    once; rank r takes every ``world_size``-th batch from the r-th. ``epoch`` and ``start`` (the
    first batch of the next pass, for a resume mid-epoch) are set by the loader.
    """

    def __init__(
        self,
        patches: RandomPatches,
        *,
        batch_size: int,
        n_batches: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.patches, self.batch_size, self.n_batches = patches, batch_size, n_batches
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start = 0, 0
        self._cached: tuple[int, list[list[GeoSlice]]] | None = None

    def __len__(self) -> int:
        return self.n_batches

    def epoch_batches(self, epoch: int) -> list[list[GeoSlice]]:
        """This rank's batches of queries of ``epoch`` (drawn once, then cached)."""
        if self._cached is None or self._cached[0] != epoch:
            b, n = self.batch_size, self.n_batches * self.world_size
            queries, _ = self.patches.draw((self.seed, epoch), n * b)
            batches = [queries[i * b : (i + 1) * b] for i in range(n)]
            self._cached = (epoch, batches[self.rank :: self.world_size])
        return self._cached[1]

    def __iter__(self) -> Iterator[list[GeoSlice]]:
        return iter(self.epoch_batches(self.epoch)[self.start :])


class FixedBatches(Sampler[list[GeoSlice]]):
    """A batch sampler of fixed queries in a fixed order (validation, test)."""

    def __init__(self, queries: list[GeoSlice], batch_size: int) -> None:
        self.batches = [queries[i : i + batch_size] for i in range(0, len(queries), batch_size)]
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[GeoSlice]]:
        return iter(self.batches[self.start :])


def grid_windows(view: GeoRasterDataset, patch: int) -> list[tuple[int, Rect]]:
    """Patch windows covering every index entry of ``view``, from torchgeo's GridGeoSampler.

    Returns:
        (entry, (row, col, patch, patch)) in global pixels, each inside its entry, in the
        sampler's order, without duplicates.
    """
    from torchgeo.samplers import GridGeoSampler, Units
    from torchgeo.samplers.utils import tile_to_chips

    # An entry exactly a patch wide can measure a few ulps less than patch * res far from the
    # CRS origin, and GridGeoSampler skips entries smaller than its size: ask for a hair less
    # (the windows are whole patches anyway; the extra chip it may add is shifted back below).
    res = view.res[0]
    size = (patch * res * (1 - 1e-9), patch * res * (1 - 1e-9))
    sampler = GridGeoSampler(view, size=size, stride=patch * res, units=Units.CRS)
    # GridGeoSampler walks its index in order; entries smaller than a patch give no chip
    owner = []
    for k in range(len(sampler.index)):
        xmin, ymin, xmax, ymax = sampler.index.geometry.iloc[k].bounds
        if xmax - xmin < sampler.size[1] or ymax - ymin < sampler.size[0]:
            continue
        rows, cols = tile_to_chips((xmin, ymin, xmax, ymax), sampler.size, sampler.stride)
        owner += [k] * (rows * cols)
    g, er = view.grid, view._entry_rect
    out, seen = [], set()
    for k, chip in zip(owner, sampler, strict=True):
        r, c, h, w = er[k]
        col = round((chip[0].start - g.x0) / g.res)
        row = round((g.y0 - chip[1].stop) / g.res)
        # the overhanging last row (top) and column (right) are shifted back inside the entry
        row, col = max(row, int(r)), min(col, int(c + w - patch))
        if (row, col) not in seen:
            seen.add((row, col))
            out.append((k, (row, col, patch, patch)))
    return out


def split_windows(
    ds: GeoRasterDataset,
    split: SplitMap,
    labelled: TileCells,
    s: int,
    patch: int,
) -> tuple[GeoRasterDataset, list[GeoSlice], list[int]]:
    """Validation/test queries of split ``s``: a grid over its pieces, windows without any
    labelled pixel dropped (and, for ROI splits, windows leaving the split's cells).

    Returns:
        (the split's view, its queries, the tile of each query).
    """
    view = ds.with_entries(split.pieces(s, ds.tiles, patch))
    if not len(view.index):
        return view, [], []
    wins = grid_windows(view, patch)
    tiles = np.array([view._entry_tile[k] for k, _ in wins], np.int64)
    rows = np.array([w[0] for _, w in wins], np.int64)
    cols = np.array([w[1] for _, w in wins], np.int64)
    n, _ = labelled.count(0, tiles, rows, cols, patch, patch)
    ok = n > 0
    if split.method == "roi":
        ok &= split.valid(s, tiles, rows, cols, patch, 0)
    row0 = np.array([t.row0 for t in ds.tiles], np.int64)
    col0 = np.array([t.col0 for t in ds.tiles], np.int64)
    keep = np.flatnonzero(ok)
    queries = [
        ds.query(
            int(tiles[i]),
            int(rows[i] - row0[tiles[i]]),
            int(cols[i] - col0[tiles[i]]),
            patch,
            patch,
        )
        for i in keep
    ]
    return view, queries, tiles[keep].tolist()
