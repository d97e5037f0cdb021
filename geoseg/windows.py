"""The window grid of sliding-window inference, the weights that blend overlapping patches, and
the read blocks that keep whole-raster passes (vectorize, evaluate, instances) in bounded memory.

A *patch* is one model input window of ``patch_size`` x ``patch_size`` pixels. Patches step by
``stride = patch_size - overlap`` and the last patch of each row and column is shifted back so it
ends exactly on the raster's right/bottom edge: the grid covers the raster exactly and no patch
reads outside it. A raster smaller than one patch gets one (clipped) window; the reader pads it.

Blending: each patch's probabilities are weighted by a separable cosine window that rises from
near zero at a patch edge to 1 within ``overlap`` pixels, and the stitched result is the weighted
mean. A side of a patch that lies on the raster's own border is weighted flat (1), so the raster's
outer rows and columns are never blanked (the geoai bug) and get the same weight as the interior.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from rasterio.windows import Window

__all__ = ["offsets", "grid", "ramp", "blend_weights", "read_blocks"]


def _check(patch_size: int, overlap: int) -> None:
    if patch_size < 1:
        raise ValueError(f"patch_size={patch_size} must be >= 1")
    if overlap < 0 or overlap >= patch_size:
        raise ValueError(
            f"overlap={overlap} must be >= 0 and smaller than patch_size={patch_size}; "
            f"e.g. overlap={patch_size // 8}"
        )


def offsets(length: int, patch_size: int, overlap: int) -> list[int]:
    """Start offsets (pixels) of the patches along one axis of ``length`` pixels.

    Offsets step by ``patch_size - overlap``; the last one is ``length - patch_size`` (shifted back
    inside the raster). A raster no longer than one patch has the single offset 0.
    """
    _check(patch_size, overlap)
    if length <= patch_size:
        return [0]
    stride = patch_size - overlap
    return list(range(0, length - patch_size, stride)) + [length - patch_size]


def read_blocks(width: int, height: int, rows: int, cols: int | None = None) -> Iterator[Window]:
    """Windows of at most ``rows`` x ``cols`` pixels (``cols`` = ``rows`` when not given) tiling
    a ``width`` x ``height`` raster, row by row, the last row and column clipped to its edge:
    what a pass over a whole raster reads at a time. Unlike :func:`grid`, blocks never overlap
    and are never shifted."""
    cols = rows if cols is None else cols
    for row in range(0, height, rows):
        for col in range(0, width, cols):
            yield Window(col, row, min(cols, width - col), min(rows, height - row))


def grid(width: int, height: int, patch_size: int, overlap: int) -> list[Window]:
    """The patches covering a ``width`` x ``height`` raster, row by row (row-major order).

    Each window is ``patch_size`` square, clipped to the raster when the raster is smaller than
    one patch (the caller pads such a window to ``patch_size``). Together they cover every pixel.
    """
    rows = offsets(height, patch_size, overlap)
    cols = offsets(width, patch_size, overlap)
    h, w = min(patch_size, height), min(patch_size, width)
    return [Window(c, r, w, h) for r in rows for c in cols]


@lru_cache(maxsize=64)
def _ramp(patch_size: int, overlap: int, start_flat: bool, end_flat: bool) -> np.ndarray:
    w = np.ones(patch_size, dtype=np.float32)
    if overlap > 0:
        # Half-pixel offsets keep every weight > 0 and make the rising edge of one patch and the
        # falling edge of its neighbour sum to exactly 1 over a plain ``overlap`` strip.
        rise = (0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)).astype(np.float32)
        if not start_flat:
            w[:overlap] = rise
        if not end_flat:
            w[patch_size - overlap :] = rise[::-1]
    w.setflags(write=False)
    return w


def ramp(patch_size: int, overlap: int, *, start_flat: bool, end_flat: bool) -> np.ndarray:
    """1-D blending weights (float32, length ``patch_size``), all > 0 and at most 1.

    ``start_flat``/``end_flat``: that end of the patch lies on the raster border, so it is flat 1.
    """
    _check(patch_size, overlap)
    return _ramp(patch_size, overlap, bool(start_flat), bool(end_flat))


def blend_weights(
    patch_size: int, overlap: int, *, left: bool, top: bool, right: bool, bottom: bool
) -> np.ndarray:
    """2-D blending weights (float32, shape (patch_size, patch_size), axis order (H, W)).

    ``left``/``top``/``right``/``bottom`` are True where that side of the patch lies on the
    raster's border: the weight there is flat 1 instead of tapering, so border pixels are never
    weighted to zero. Interior sides taper with a cosine over ``overlap`` pixels (never exactly 0).
    """
    rows = ramp(patch_size, overlap, start_flat=top, end_flat=bottom)
    cols = ramp(patch_size, overlap, start_flat=left, end_flat=right)
    return np.outer(rows, cols)
