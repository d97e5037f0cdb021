"""What the data holds: label values (checked against the classes), where labels are, band
statistics for normalisation (nodata excluded)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from geoseg import labels, progress
from geoseg.data.dataset import GeoRasterDataset
from geoseg.data.splits import TileCells
from geoseg.errors import RasterError

log = logging.getLogger(__name__)

#: Training patches whose pixels give the band statistics.
STAT_PATCHES = 128
_STAT_PIXELS = 2_000_000


def scan_masks(ds: GeoRasterDataset, num_classes: int, cell: int) -> TileCells:
    """Check every mask's values and map where the labels are, one pass over the masks.

    Returns:
        Per tile, cells of ``cell`` px (anchored at the tile's corner) that hold at least one
        labelled pixel (not ignore: the label is known and the image is not nodata).

    Raises:
        LabelError: a mask value ≥ ``num_classes`` that is not the ignore index.
    """
    lattices = []
    strip = cell * max(1, 2048 // cell)  # strips of whole cells; never a whole large mask
    with progress.bar(len(ds.tiles), "checking label values") as bar:
        for i, t in enumerate(ds.tiles):
            counts = np.zeros(256, np.int64)
            nr, nc = -(-t.height // cell), -(-t.width // cell)
            labelled = np.zeros((nr, nc), bool)
            for row, m in ds.mask_strips(i, rows=strip):
                counts += np.bincount(m.ravel(), minlength=256)
                h, w = m.shape
                pad = np.zeros((-(-h // cell) * cell, nc * cell), bool)
                pad[:h, :w] = m != ds.ignore_index
                k = row // cell
                labelled[k : k + pad.shape[0] // cell] = pad.reshape(
                    pad.shape[0] // cell, cell, nc, cell
                ).any(axis=(1, 3))
            labels.check_classes(
                np.flatnonzero(counts), num_classes, ds.ignore_index, t.mask or t.source
            )
            lattices.append((t.row0, t.col0, labelled[None]))
            bar.advance()
    return TileCells(cell, lattices)


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
    keeps = []
    for img, valid in samples:
        keep = np.ones(img.shape[1:], bool) if valid is None else valid.copy()
        if nodata is not None:
            keep &= ~np.all(np.isnan(img) if np.isnan(nodata) else img == nodata, axis=0)
        if img.dtype.kind == "f":
            keep &= np.all(np.isfinite(img), axis=0)
        keeps.append(keep)
    total = sum(int(k.sum()) for k in keeps)
    if total == 0:
        raise RasterError(
            "the training patches contain only nodata; check the images' nodata value"
        )
    # Memory: one sample's pixels in float64 at a time (128 patches of 256 px would be 600 MB).
    if method == "percentile":
        rng = np.random.default_rng(0)
        share = min(1.0, _STAT_PIXELS / total)  # percentiles of a sample of the pixels
        parts = []
        for (img, _), keep in zip(samples, keeps, strict=True):
            vals = img[:, keep]
            if share < 1.0:
                vals = vals[:, rng.random(vals.shape[1]) < share]
            parts.append(vals.astype(np.float64))
        lo, hi = np.percentile(np.concatenate(parts, axis=1), [2, 98], axis=1)
        return lo.tolist(), np.maximum(hi - lo, 1e-6).tolist()
    shift = n = None
    acc = acc2 = 0.0
    for (img, _), keep in zip(samples, keeps, strict=True):
        vals = img[:, keep].astype(np.float64)
        if not vals.shape[1]:
            continue
        if shift is None:  # sums around a first estimate of the mean stay accurate
            shift, n = vals.mean(axis=1, keepdims=True), 0
        d = vals - shift
        acc, acc2, n = acc + d.sum(axis=1), acc2 + (d * d).sum(axis=1), n + vals.shape[1]
    mean = shift[:, 0] + acc / n  # type: ignore[index, operator]
    var = np.maximum(acc2 / n - (acc / n) ** 2, 0.0)  # type: ignore[operator]
    return mean.tolist(), np.maximum(np.sqrt(var), 1e-6).tolist()


def patch_statistics(
    ds: GeoRasterDataset,
    windows: tuple[np.ndarray, np.ndarray, np.ndarray],
    patch: int,
    method: str,
) -> tuple[list[float], list[float]]:
    """Band statistics over square windows (tile, row, col in tile pixels), image nodata
    excluded."""
    samples = [
        ds.read(int(t), int(r), int(c), patch, patch, with_valid=True)[::2]
        for t, r, c in zip(*windows, strict=True)
    ]
    mean, std = band_statistics(samples, method=method)
    log.info(
        "band mean %s std %s (%s)", [round(m, 3) for m in mean], [round(s, 3) for s in std], method
    )
    return mean, std
