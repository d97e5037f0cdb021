"""The window grid, the blending weights, and stitching: stitched == direct (pointwise model)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from geoseg import infer, windows


def _coverage(width: int, height: int, patch: int, overlap: int) -> np.ndarray:
    hits = np.zeros((height, width), int)
    for w in windows.grid(width, height, patch, overlap):
        assert w.col_off >= 0 and w.row_off >= 0
        assert w.col_off + w.width <= width and w.row_off + w.height <= height  # never outside
        hits[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    return hits


@pytest.mark.parametrize(
    "width,height,patch,overlap",
    [
        (100, 70, 32, 8),
        (64, 64, 64, 0),
        (65, 200, 64, 16),
        (10, 7, 32, 8),
        (1, 1, 16, 4),
    ],
)
def test_grid_covers_the_raster_exactly(width: int, height: int, patch: int, overlap: int) -> None:
    assert (_coverage(width, height, patch, overlap) >= 1).all()


def test_last_patch_is_shifted_back_inside() -> None:
    assert windows.offsets(100, 32, 8) == [0, 24, 48, 68]
    assert windows.offsets(80, 32, 8) == [0, 24, 48]  # 48 + 32 == 80: no extra patch
    assert windows.offsets(20, 32, 8) == [0]
    w = windows.grid(20, 10, 32, 8)
    assert [(x.col_off, x.row_off, x.width, x.height) for x in w] == [(0, 0, 20, 10)]


def test_bad_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap=32"):
        windows.offsets(100, 32, 32)


def test_blend_weights_are_flat_on_raster_borders_and_positive_inside() -> None:
    w = windows.blend_weights(32, 8, left=True, top=True, right=False, bottom=False)
    assert w.shape == (32, 32) and w.dtype == np.float32
    assert (w[0, :24] == 1).all() and (w[:24, 0] == 1).all()  # raster border: never blanked
    assert (w > 0).all() and (w <= 1).all()
    assert w[-1, -1] < 0.01 and w[16, 16] == 1  # interior edge tapers, middle is 1
    inner = windows.blend_weights(32, 8, left=False, top=False, right=False, bottom=False)
    assert inner[0, 16] < 0.05 and inner[16, 0] < 0.05
    # The rising and falling edges of two neighbours add up to 1 over a plain overlap.
    r = windows.ramp(32, 8, start_flat=False, end_flat=False)
    np.testing.assert_allclose(r[:8] + r[-8:], 1.0, atol=1e-6)


def _pointwise(batch: np.ndarray) -> np.ndarray:
    """An identity-like "model": each pixel's class probabilities depend on that pixel only."""
    logits = np.stack([batch[:, 0], 2 * batch[:, 1] - batch[:, 2], -batch[:, 0] * 0.5], axis=1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _normalized(raw: np.ndarray, invalid: np.ndarray | None, s: infer._Settings) -> np.ndarray:
    x = (raw.astype(np.float32) - np.array(s.mean, np.float32)[:, None, None]) * (
        1 / np.array(s.std, np.float32)
    )[:, None, None]
    if invalid is not None:
        x[np.broadcast_to(invalid[:, None], x.shape)] = 0
    return x


def _settings(**kw: object) -> infer._Settings:
    base = dict(
        checkpoint="",
        device="cpu",
        precision="32",
        tta="none",
        channels_last=False,
        band_indexes=(1, 2, 3),
        mean=(10.0, 20.0, 30.0),
        std=(5.0, 10.0, 20.0),
        num_classes=3,
        class_values=(0, 1, 2),
        with_probabilities=True,  # blended probabilities (else their weighted sums)
    )
    base.update(kw)
    return infer._Settings(**base)  # type: ignore[arg-type]


def _stitch(
    data: np.ndarray,
    patch: int,
    overlap: int,
    batch: int,
    blocks: list[tuple[int, int]] | None = None,
    *,
    fused: bool = False,
    probabilities: bool = True,
) -> np.ndarray:
    """Streamed output of a pointwise model; ``fused``: blended in torch (as for a model that
    runs on one torch thread) rather than numpy."""
    _, h, w = data.shape
    s = _settings(with_probabilities=probabilities)
    plan = infer._Plan.make(w, h, patch, overlap, batch)
    out = np.full((3, h, w), np.nan, np.float32)
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            width=w,
            height=h,
            count=3,
            dtype="float32",
            transform=from_origin(0, 1000, 1, 1),
        ) as dst:
            dst.write(data)
        for r0, r1 in blocks or [(0, len(plan.rows))]:
            forward = infer._Forward(
                run=lambda raw, invalid: _pointwise(_normalized(raw, invalid, s)),
                torch_threads=1 if fused else None,
            )
            for y0, probs in infer._stream(
                mem.name, plan, s, forward, r0, r1, threaded=r0 % 2 == 0
            ):
                assert np.isnan(out[:, y0 : y0 + probs.shape[1]]).all()  # each row once
                out[:, y0 : y0 + probs.shape[1]] = np.asarray(probs)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    patch=st.integers(4, 40),
    overlap_frac=st.floats(0, 0.9),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    fused=st.booleans(),
)
def test_stitched_equals_direct(
    height: int, width: int, patch: int, overlap_frac: float, batch: int, seed: int, fused: bool
) -> None:
    """Blending never alters a pointwise model's output: no seams, no blanked borders."""
    overlap = min(patch - 1, int(patch * overlap_frac))
    data = np.random.default_rng(seed).normal(20, 15, (3, height, width)).astype(np.float32)
    stitched = _stitch(data, patch, overlap, batch, fused=fused)
    s = _settings()
    norm = (data - np.array(s.mean, np.float32)[:, None, None]) / np.array(s.std, np.float32)[
        :, None, None
    ]
    direct = _pointwise(norm[None])[0]
    np.testing.assert_allclose(stitched, direct, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 120),
    patch=st.integers(4, 24),
    overlap_frac=st.floats(0, 0.7),
    batch=st.integers(1, 7),
    per=st.integers(1, 4),
    fused=st.booleans(),
    probabilities=st.booleans(),
)
def test_row_blocks_are_byte_identical_to_one_pass(
    height: int,
    patch: int,
    overlap_frac: float,
    batch: int,
    per: int,
    fused: bool,
    probabilities: bool,
) -> None:
    """What a dask block computes (halo patch rows + the same batches) is bit for bit the same."""
    overlap = min(patch - 1, int(patch * overlap_frac))
    data = np.random.default_rng(height).normal(20, 15, (3, height, 37)).astype(np.float32)
    n_rows = len(windows.offsets(height, patch, overlap))
    blocks = [(r, min(n_rows, r + per)) for r in range(0, n_rows, per)]
    kw = dict(fused=fused, probabilities=probabilities)
    whole = _stitch(data, patch, overlap, batch, **kw)
    pieces = _stitch(data, patch, overlap, batch, blocks, **kw)
    assert whole.tobytes() == pieces.tobytes()


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(1, 70),
    patch=st.integers(4, 24),
    overlap_frac=st.floats(0, 0.7),
    fused=st.booleans(),
)
def test_classes_alone_skip_the_division_and_keep_the_argmax(
    size: int, patch: int, overlap_frac: float, fused: bool
) -> None:
    """Without probabilities the stream hands out weighted sums: the blended probabilities
    times each pixel's weight sum, so the same classes."""
    overlap = min(patch - 1, int(patch * overlap_frac))
    data = np.random.default_rng(size).normal(20, 15, (3, size, size + 3)).astype(np.float32)
    probs = _stitch(data, patch, overlap, 3, fused=fused)
    sums = _stitch(data, patch, overlap, 3, fused=fused, probabilities=False)
    weight = sums.sum(0)  # probabilities sum to 1: the sums of a pixel add up to its weight
    assert (weight >= 1 - 1e-5).all()  # border patches are flat 1, inner ones overlap
    np.testing.assert_allclose(sums / weight, probs, rtol=1e-5, atol=1e-6)
    assert (infer._argmax0(sums) == infer._argmax0(probs))[np.ptp(probs, 0) > 1e-4].all()


def test_border_rows_and_columns_keep_full_weight() -> None:
    """The outer row/column of the stitched result equals the model's output there (not 0)."""
    data = np.random.default_rng(1).normal(20, 15, (3, 50, 61)).astype(np.float32)
    stitched = _stitch(data, 16, 6, 3)
    assert not np.isnan(stitched).any()
    for edge in (stitched[:, 0], stitched[:, -1], stitched[:, :, 0], stitched[:, :, -1]):
        np.testing.assert_allclose(edge.sum(0), 1.0, atol=1e-5)  # probabilities, never blanked


def test_read_blocks_tile_the_raster_exactly_once() -> None:
    for width, height, rows, cols in [(100, 70, 32, None), (5, 3, 8, None), (1000, 9, 4, 300)]:
        cover = np.zeros((height, width), int)
        for w in windows.read_blocks(width, height, rows, cols):
            assert w.height <= rows and w.width <= (cols or rows)
            cover[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
        assert (cover == 1).all()
