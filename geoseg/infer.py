"""Sliding-window prediction of georeferenced rasters into mask GeoTIFFs.

:func:`predict_raster` streams one raster through a checkpoint's model: a reader thread reads one
strip of patch rows at a time with rasterio and builds batches in the input's dtype, which are
normalised on the model's device (bf16 autocast and channels_last where that is faster), the
patches' probabilities are blended
with :func:`geoseg.windows.blend_weights` into a band of ``patch_size`` accumulator rows, and each
row-block is written by a writer thread as soon as no later patch can touch it. Memory therefore
depends on the raster's *width* and the patch size, never on its height: about
``num_classes * patch_size * width * 4`` bytes for the accumulator plus one strip of input.

With ``workers > 1`` or a ``scheduler`` address the patch rows are split into a few tall
row-blocks that dask workers stream into block files next to the output (each recomputing the one
halo patch row the block needs); the client copies them into the output in order. The blocks'
windows, batches and blending arithmetic are those of the single-process run, so both paths write
byte-identical files. On a multi-machine cluster the checkpoint, the input and the output folder
must be on storage every worker sees at the same path.

Outputs: a uint8 mask (class ids; 255 = nodata, wherever the input is nodata), with exactly the
input's CRS (as WKT), transform, width and height, class names in the tags and a colour table; a
Cloud-Optimized GeoTIFF by default. The optional probability raster has one uint8 band per class,
``round(p * 254)`` (scale tag ``1/254``, 255 = nodata). Both are written under a temporary name
and renamed only when complete.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from geoseg import config, instances, io, progress, remote, windows
from geoseg.config import InferConfig, VectorizeConfig
from geoseg.device import channels_last_pays, resolve_device, resolve_precision
from geoseg.errors import (
    CheckpointError,
    ConfigError,
    GeosegError,
    InputNotFoundError,
    RasterError,
    SchedulerError,
)

log = logging.getLogger(__name__)

NODATA = io.MASK_NODATA
PROB_SCALE = 254  # probability p is stored as round(p * 254); 255 is nodata
BLOCKSIZE = io.MASK_BLOCKSIZE
#: patches side by side whose input is read at once (a piece of a strip; see _read_pieces)
PIECE_PATCHES = 8
EMIT_ROWS = 64  # finished rows are divided, argmax-ed and queued for writing in pieces this tall
STAGED_BYTES = 64 * 2**20  # outputs up to this size (an 8k mask) wait for their COG copy in memory
RES_TOLERANCE = 0.25
#: An input band whose median lies further than this many training standard deviations from the
#: training mean cannot be what the model learnt on (refused); beyond VALUE_Z_WARN: a warning.
VALUE_Z_LIMIT = 10.0
VALUE_Z_WARN = 4.0
#: A float band whose values all lie within this fraction of the training values' size
#: (|mean| + std) is scaled differently (reflectance 0-1 against 0-255 counts): refused.
VALUE_SCALE_LIMIT = 0.02
#: Refused when more sampled pixels than this lie outside the training dtype's range.
OUT_OF_RANGE_LIMIT = 0.01
VALUE_SAMPLE_SIDE = 512  # pixels per side of the sample read by check_values
#: On the CPU a model with fewer parameters than this runs its ops on one torch thread (see
#: :func:`_make_forward`); heavier models keep torch's threads (their convolutions scale).
LIGHT_MODEL_PARAMS = 10_000
# GDAL's block cache, 32 MiB: bounds RSS yet holds the tiles a strip of patches shares with the
# next one (two rows of 512-px RGB tiles of an 8k raster, 24 MiB; wider rasters re-decode some).
# rasterio hands an int to GDALSetCacheMax64, i.e. BYTES: the former value 64 meant 64 bytes, so
# every strip decoded (and, for a remote COG, fetched) its tiles again: 3x the bytes.
GDAL_ENV = {"GDAL_CACHEMAX": 32 * 2**20, "GDAL_NUM_THREADS": "ALL_CPUS"}

__all__ = [
    "check_values",
    "client_for",
    "output_paths",
    "predict",
    "predict_raster",
    "probability_path",
]

# --------------------------------------------------------------------------------------------
# Settings that travel to dask workers (plain, picklable data only)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """The window grid and batching of one raster (identical in every worker)."""

    width: int
    height: int
    patch_size: int
    overlap: int
    batch_size: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def make(cls, width: int, height: int, patch_size: int, overlap: int, batch_size: int) -> _Plan:
        return cls(
            width,
            height,
            patch_size,
            overlap,
            batch_size,
            tuple(windows.offsets(height, patch_size, overlap)),
            tuple(windows.offsets(width, patch_size, overlap)),
        )

    @property
    def n_patches(self) -> int:
        return len(self.rows) * len(self.cols)

    def owned(self, r0: int, r1: int) -> tuple[int, int]:
        """Output rows [start, stop) that patch rows [r0, r1) finish (their row-block)."""
        start = 0 if r0 == 0 else self.rows[r0]
        stop = self.height if r1 >= len(self.rows) else self.rows[r1]
        return start, stop

    def halo_start(self, r0: int) -> int:
        """First patch row whose patches touch the row-block of patch rows starting at r0."""
        start = self.owned(r0, r0 + 1)[0]
        ph = min(self.patch_size, self.height)
        return next(r for r in range(len(self.rows)) if self.rows[r] + ph > start)


@dataclass(frozen=True)
class _Settings:
    """What a worker needs to run the model the same way as the client."""

    checkpoint: str
    device: str
    precision: str  # "32" or "bf16"
    tta: str
    channels_last: bool
    band_indexes: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    class_values: tuple[int, ...]
    target_res: float | None = None  # resample the input to this pixel size on the fly
    target_crs: str | None = None  # ... in this CRS (WKT; a geographic input's UTM zone)
    threads: int | None = None  # torch threads in a dask worker
    with_probabilities: bool = False
    per_patch: bool = False  # each patch normalised by its own mean/std (geoseg.normalize)
    # GDAL options for a remote input (geoseg.remote), so workers read it the same way;
    # credentials are not in here: each worker finds its own in its AWS environment.
    gdal_options: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------------------------
# Batch size (device and precision: geoseg.device)
# --------------------------------------------------------------------------------------------


def _default_batch_size(device: str, patch_size: int) -> int:
    scale = (512 / patch_size) ** 2
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        # ~0.5 GiB of activations per 512^2 sample for a ResNet-UNet in bf16, with headroom.
        return int(max(8, min(128, free / 2**30 * 1.5 * scale)))
    return int(max(1, min(64, 8 * scale)))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def _load_model(path: Path, device: str) -> tuple[Any, Any]:
    """Load weights + card, turning any failure into a one-line CheckpointError."""
    if not path.is_file():
        raise InputNotFoundError(f"{path}: checkpoint not found; check the path")
    from geoseg import checkpoint, export

    if export.is_onnx(path):  # an exported model: onnxruntime behind the torch call interface
        return export.load_onnx(path, device=device)

    try:
        return checkpoint.load_model(path, device=device)
    except GeosegError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to load is the same user error
        raise CheckpointError(
            f"{path}: not a geoseg checkpoint or cannot be loaded safely "
            f"({err.__class__.__name__}); pass a best.ckpt/last.ckpt written by geoseg train"
        ) from None


def _load_card(path: Path) -> Any:
    if not path.is_file():
        raise InputNotFoundError(f"{path}: checkpoint not found; check the path")
    from geoseg import checkpoint, export

    if export.is_onnx(path):
        return export.read_card(path)

    try:
        return checkpoint.load(path).card
    except GeosegError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(
            f"{path}: not a geoseg checkpoint or cannot be loaded safely "
            f"({err.__class__.__name__}); pass a best.ckpt/last.ckpt written by geoseg train"
        ) from None


# One model per worker process, keyed by checkpoint path + mtime (+ how it runs).
_MODEL_CACHE: dict[tuple[Any, ...], Any] = {}


def _cached_model(settings: _Settings) -> Any:
    import torch

    p = Path(settings.checkpoint)
    key = (str(p.resolve()), p.stat().st_mtime_ns, settings.device, settings.channels_last)
    if key not in _MODEL_CACHE:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        model, _ = _load_model(p, settings.device)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


def _tta_ops(tta: str) -> list[tuple[Callable[[Any], Any], Callable[[Any], Any]]]:
    """(transform, inverse) pairs on (B, C, H, W) tensors."""
    import torch

    def flip(dims: tuple[int, ...]) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        if not dims:
            return (lambda t: t), (lambda t: t)
        return (lambda t: torch.flip(t, dims)), (lambda t: torch.flip(t, dims))

    if tta == "none":
        return [flip(())]
    if tta == "flip":
        return [flip(()), flip((3,)), flip((2,)), flip((2, 3))]
    if tta == "d4":
        ops: list[tuple[Callable[[Any], Any], Callable[[Any], Any]]] = []
        for k in range(4):
            for f in (False, True):

                def fwd(t: Any, k: int = k, f: bool = f) -> Any:
                    return torch.rot90(torch.flip(t, (3,)) if f else t, k, (2, 3))

                def inv(t: Any, k: int = k, f: bool = f) -> Any:
                    t = torch.rot90(t, -k, (2, 3))
                    return torch.flip(t, (3,)) if f else t

                ops.append((fwd, inv))
        return ops
    raise ConfigError(f"tta={tta!r} is not one of none, flip, d4")


@dataclass(frozen=True)
class _Forward:
    """The model applied to raw batches, in two halves that run in different threads.

    The batches stay raw until ``run``: uint8 waits in the queues and crosses to a GPU at a
    quarter of float32, and ``run`` normalises them (a light model on the CPU patch by patch,
    in cache). ``run(batch, invalid)`` returns the probabilities (B, K, P, P), float32,
    averaged over the TTA transforms: a tensor on a GPU (blending and argmax happen there too),
    a numpy array on the CPU, or a list of B (K, P, P) arrays (see :func:`_stream`).
    """

    run: Callable[[np.ndarray, np.ndarray | None], Any]
    #: torch threads for the model's ops while streaming (None = torch's setting)
    torch_threads: int | None = None
    #: hands a batch's probabilities back once blended (their buffer is reused; see run)
    release: Callable[[Any], None] = lambda probs: None


def _make_forward(model: Any, settings: _Settings) -> _Forward:
    """:class:`_Forward` for ``model``: normalised with the card's mean/std (nodata pixels
    become 0, the band mean), bf16 autocast and channels_last as the settings say."""
    import torch

    ops = _tta_ops(settings.tta)
    dev = torch.device(settings.device)
    host = _host_arrays(dev.type)
    bf16 = settings.precision == "bf16"
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    mean32 = np.asarray(settings.mean, np.float32).reshape(1, -1, 1, 1)
    inv_std32 = (1 / np.asarray(settings.std, np.float32)).reshape(1, -1, 1, 1)
    mean, inv_std = torch.from_numpy(mean32).to(dev), torch.from_numpy(inv_std32).to(dev)

    std = torch.tensor(settings.std, dtype=torch.float32, device=dev)

    def per_patch(x: Any, invalid: Any) -> Any:  # x float32 [B, C, H, W] tensor, normalised
        from geoseg.normalize import patch_statistics

        m, s = patch_statistics(x, std, None if invalid is None else ~invalid)
        return (x - m) / s

    # On the host the float32 input and the probabilities go to buffers made once and reused.
    # Why: a probability batch outlives the forward pass that made it (it waits for the
    # blending in another thread), so freshly allocated ones sit between the next passes'
    # activations in glibc's heap and keep their freed memory from going back (32k raster, UNet:
    # peak RSS +~100 MiB). The forward's own temporaries come and go as with the model alone.
    inputs: list[Any] = []  # the one float32 input buffer (the model thread runs one at a time)
    spare: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()  # blended probability buffers

    def input_buffer(batch: Any) -> Any:
        if not host:
            return batch.to(dev, torch.float32, non_blocking=True, copy=True)
        if (
            not inputs
            or inputs[0].shape[0] < batch.shape[0]
            or inputs[0].shape[1:] != batch.shape[1:]
        ):
            inputs[:] = [torch.empty(batch.shape, dtype=torch.float32)]
        return inputs[0][: batch.shape[0]].copy_(batch)

    def output_buffer(shape: tuple[int, ...]) -> Any:
        while True:
            try:
                buf = spare.get_nowait()
            except queue.Empty:
                return torch.empty(shape, dtype=torch.float32)  # none free yet: a new one
            if buf.shape == shape:
                return torch.from_numpy(buf)

    def release(probs: Any) -> None:
        if isinstance(probs, np.ndarray) and probs.dtype == np.float32:
            spare.put(probs)

    def normalised(batch: Any, invalid: Any) -> Any:  # raw tensors -> float32 on the device
        # a new tensor (also from float32 input), normalised in place: no temporaries
        x = input_buffer(batch)
        bad = None if invalid is None else invalid.to(dev, non_blocking=True)
        x = per_patch(x, bad) if settings.per_patch else x.sub_(mean).mul_(inv_std)
        return x if bad is None else x.masked_fill_(bad[:, None], 0.0)

    def probabilities(x: Any, out: Callable[[tuple[int, ...]], Any] | None = None) -> Any:
        """(B, K, H, W) float32 probabilities; into ``out(shape)`` (a buffer) when given."""
        x = x.contiguous(memory_format=fmt)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            total = None
            for fwd, inv in ops:
                logits = model(fwd(x)).float()
                into = out if len(ops) == 1 else None  # TTA sums first
                if logits.shape[1] == 1:  # one-logit binary model: [1 - p, p]
                    n, _, h, w = logits.shape
                    probs = into((n, 2, h, w)) if into else logits.new_empty((n, 2, h, w))
                    torch.sigmoid(logits[:, 0], out=probs[:, 1])
                    torch.sub(torch.ones((), device=dev), probs[:, 1], out=probs[:, 0])
                elif logits.shape[1] == 2:
                    probs = _softmax_of_two(logits, into(logits.shape) if into else None)
                else:
                    probs = torch.softmax(logits, 1)
                    probs = into(probs.shape).copy_(probs) if into else probs
                probs = inv(probs)
                total = probs if total is None else total + probs
            assert total is not None  # ops is never empty
            if len(ops) > 1:
                total = total / len(ops)
                total = out(total.shape).copy_(total) if out else total
        return total

    def run(raw: np.ndarray, raw_invalid: np.ndarray | None) -> Any:
        batch = torch.from_numpy(raw)
        invalid = None if raw_invalid is None else torch.from_numpy(raw_invalid)
        if not light:
            # Normalised here, not in the reader thread: the queues hold uint8 batches, a
            # quarter of float32 (peak RSS, 32k raster: see benchmarks/infer.py --rss-only).
            if not host:
                return probabilities(normalised(batch, invalid))
            return probabilities(normalised(batch, invalid), output_buffer).numpy()

        # A light model's ops are memory-bound passes: one patch at a time, normalised here, its
        # planes stay in the CPU cache from the uint8 pixels to the probabilities (null model,
        # 8 patches of 512 px, one thread: 6 ms against 11-15 with the batch normalised ahead
        # in numpy; the same bytes).
        def patch(i: int) -> Any:
            bad = None if invalid is None else invalid[i : i + 1]
            return probabilities(normalised(batch[i : i + 1], bad))

        return [patch(i)[0].numpy() for i in range(batch.shape[0])]  # not copied into one

    n_params = sum(p.numel() for p in getattr(model, "parameters", list)())
    light = host and 0 < n_params < LIGHT_MODEL_PARAMS
    # A light model's ops on two OpenMP threads finish later than on one while the reading,
    # blending and writing threads share the cores (the null model on an 8k raster, 2-core
    # CPU: 3.5 s with 2 threads, 2.3 s with 1).
    threads = 1 if light and settings.threads is None else None
    return _Forward(run=run, torch_threads=threads, release=release)


def _softmax_of_two(logits: Any, out: Any = None) -> Any:
    """``softmax(logits, 1)`` of (B, 2, H, W) logits as ``[1 - p, p]``, ``p = sigmoid(l1 - l0)``:
    three passes where torch's softmax over a short leading axis makes more (one thread, 8
    patches of 512 px: 4 ms against 10; the values agree within 2e-7). Into ``out`` if given."""
    import torch

    probs = torch.empty_like(logits) if out is None else out
    p = probs[:, 1]
    torch.sub(logits[:, 1], logits[:, 0], out=p)
    torch.sigmoid(p, out=p)
    torch.sub(torch.ones((), dtype=p.dtype, device=p.device), p, out=probs[:, 0])
    return probs


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (None: left alone), then restored."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _host_arrays(device_type: str) -> bool:
    """Whether blending and argmax run in numpy on the host (the CPU) rather than in torch on
    the model's device (a GPU). Tests switch it off to run the device code on CPU tensors."""
    return device_type == "cpu"


# --------------------------------------------------------------------------------------------
# Reading: the source (optionally resampled), strips, patches, batches
# --------------------------------------------------------------------------------------------


@contextmanager
def _open_source(
    path: str | Path, target_res: float | None, target_crs: str | None = None
) -> Iterator[Any]:
    """The raster to predict: the file itself, or a WarpedVRT of it at ``target_res`` (in the
    input's CRS, or reprojected into ``target_crs``, WKT, with that CRS's units)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            if target_res is None:
                yield src
                return
            from rasterio.vrt import WarpedVRT

            crs = rasterio.crs.CRS.from_wkt(target_crs) if target_crs else src.crs
            width, height, transform = _resampled_grid(src, target_res, crs)
            extra: dict[str, Any] = {}
            if target_crs and src.nodata is None and not _has_alpha(src):
                # Corners of the reprojected grid outside the input are nodata, not zeros.
                extra["add_alpha"] = True
            with WarpedVRT(
                src,
                crs=crs,
                transform=transform,
                width=width,
                height=height,
                resampling=Resampling.bilinear,
                # Warping is most of a resampled read: on all cores (the same values).
                warp_extras={"NUM_THREADS": "ALL_CPUS"},
                **extra,
            ) as vrt:
                yield vrt


def _resampled_grid(src: Any, target_res: float, crs: Any = None) -> tuple[int, int, Any]:
    """(width, height, transform) of ``src``'s extent at ``target_res`` (in ``crs``, default the
    source's own CRS: the same bounds, square pixels)."""
    from rasterio.transform import from_origin

    if crs is not None and crs != src.crs:
        from rasterio.warp import calculate_default_transform

        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds, resolution=target_res
        )
        return int(width), int(height), transform
    left, bottom, right, top = src.bounds
    width = max(1, math.ceil((right - left) / target_res - 1e-6))
    height = max(1, math.ceil((top - bottom) / target_res - 1e-6))
    return width, height, from_origin(left, top, target_res, target_res)


def _has_alpha(src: Any) -> bool:
    return ColorInterp.alpha in src.colorinterp


def _all_valid(src: Any) -> bool:
    return all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums)


def _valid_rows(src: Any, y0: int, y1: int, bands: tuple[int, ...] = ()) -> np.ndarray | None:
    """Boolean (h, W) of pixels where the input has data (any band valid, as GDAL's mask
    says: nodata value, internal mask or alpha band) and, in a float raster, every one of
    ``bands`` is finite: NaN is nodata whether or not the file declares it. None = all valid.
    """
    window = Window(0, y0, src.width, y1 - y0)
    valid = _valid_window(src, window)
    if bands and np.dtype(src.dtypes[0]).kind == "f":
        valid = _and_finite(valid, src.read(list(bands), window=window))
    return valid


def _valid_window(src: Any, window: Window) -> np.ndarray | None:
    """Boolean (h, w) of the ``window``'s pixels where the input has data, as GDAL's mask
    says (nodata value, internal mask or alpha band); None = all valid."""
    return None if _all_valid(src) else src.dataset_mask(window=window) > 0


def _and_finite(valid: np.ndarray | None, data: np.ndarray) -> np.ndarray | None:
    """``valid`` and where every band of a float (C, h, W) block is finite (None = all)."""
    if data.dtype.kind != "f":
        return valid
    finite = np.isfinite(data).all(0)
    if finite.all():
        return valid
    return finite if valid is None else valid & finite


def _output_valid(src: Any, y0: int, h: int, settings: _Settings) -> np.ndarray | None:
    """Where rows [y0, y0 + h) of the predicted grid get a class (None = everywhere).

    A resampled grid is predicted everywhere: the mask warped back onto the input's grid takes
    its nodata from the input itself, and a resampled pixel half outside the input (or next to
    its nodata) still gives the class of input pixels that are valid.
    """
    if settings.target_res is not None:
        return None
    return _valid_rows(src, y0, y0 + h, settings.band_indexes)


def _patch_index_range(plan: _Plan, rh: int, r1: int) -> tuple[int, int]:
    """Global patch index range [i0, i1) of the batches that hold patch rows [rh, r1)."""
    nc, bs = len(plan.cols), plan.batch_size
    i0 = (rh * nc) // bs * bs
    i1 = min(plan.n_patches, -(-(r1 * nc) // bs) * bs)
    return i0, i1


def _torch_friendly(a: np.ndarray) -> np.ndarray:
    # torch has no arithmetic on uint16/uint32; widen them (lossless) before the device copy.
    if a.dtype.kind == "u" and a.dtype.itemsize > 1:
        return a.astype(np.int32 if a.dtype.itemsize == 2 else np.int64)
    return a


def _read_pieces(
    src: Any, plan: _Plan, settings: _Settings, i0: int, i1: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray | None]]:
    """The input under patches [i0, i1), in order, as pieces of strips:
    ``(r, x0, data (C, h, w), nodata mask (h, w) or None)`` for patch row ``r`` from column
    ``x0``, each under :data:`PIECE_PATCHES` patches side by side (the last of a row fewer).

    One handle: GDAL decodes the tiles of each piece on all cores (GDAL_NUM_THREADS; warping
    too, see :func:`_open_source`) and its block cache keeps the tiles that neighbouring pieces
    and strips share. Pieces, not whole strips: on a 32k-wide raster a strip is 48 MiB of RGB,
    a piece of 8 patches 6. Several handles reading at once were measured: 1.7x the decoding
    CPU (each decodes the shared tile rows again) and slower on 2 cores, 8k deflate GeoTIFF.
    """
    idx = list(settings.band_indexes)
    nc, h = len(plan.cols), min(plan.patch_size, plan.height)
    for r in range(i0 // nc, -(-i1 // nc)):
        for c0 in range(0, nc, PIECE_PATCHES):
            c1 = min(c0 + PIECE_PATCHES, nc)
            if r * nc + c1 <= i0 or r * nc + c0 >= i1:
                continue  # no patch of [i0, i1) lies on this piece
            y0, x0 = plan.rows[r], plan.cols[c0]
            window = Window(x0, y0, min(plan.cols[c1 - 1] + plan.patch_size, plan.width) - x0, h)
            raw = src.read(idx, window=window)
            valid = _and_finite(_valid_window(src, window), raw)
            data = _torch_friendly(raw)
            yield r, x0, data, None if valid is None else ~valid
            del raw, valid, data  # one piece in memory while the next is read


def _host_array(shape: tuple[int, ...], dtype: np.dtype, pinned: bool) -> np.ndarray:
    """An empty array; page-locked when it will be copied to a GPU (the copy is then async)."""
    if not pinned:
        return np.empty(shape, dtype)
    import torch

    like = torch.from_numpy(np.empty(0, dtype))
    return torch.empty(shape, dtype=like.dtype, pin_memory=True).numpy()


def _read_batches(
    src: Any, plan: _Plan, settings: _Settings, i0: int, i1: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None, range]]:
    """Raw batches (B, C, P, P) in the input's dtype, their nodata masks (B, P, P) or None,
    and the global patch indices [i0, i1) they hold.

    Batches are the global, row-major chunks of ``batch_size`` patches, so a dask block sees
    exactly the batches of the single-process run. Each strip of patch rows is read once.
    Patches sticking out of a raster smaller than one patch are reflect-padded. Normalisation
    happens on the model's device (:func:`_make_forward`): a uint8 batch crosses to a GPU at a
    quarter of the float32 size.
    """
    yield from _assemble(_read_pieces(src, plan, settings, i0, i1), plan, settings, i0, i1)


def _assemble(
    pieces: Iterator[tuple[int, int, np.ndarray, np.ndarray | None]],
    plan: _Plan,
    settings: _Settings,
    i0: int,
    i1: int,
) -> Iterator[tuple[np.ndarray, np.ndarray | None, range]]:
    """The batches of patches [i0, i1) cut from ``pieces`` (see :func:`_read_pieces`)."""
    P, nc = plan.patch_size, len(plan.cols)
    pinned = settings.device.startswith("cuda")
    w = min(P, plan.width)
    row, start, end = -1, 0, 0  # the piece held: its patch row, its columns [start, end)
    data: np.ndarray | None = None
    bad: np.ndarray | None = None
    for b0 in range(i0, i1, plan.batch_size):
        b1 = min(b0 + plan.batch_size, plan.n_patches)
        batch: np.ndarray | None = None
        invalid: np.ndarray | None = None
        for n, i in enumerate(range(b0, b1)):
            r, c = divmod(i, nc)
            x0 = plan.cols[c]
            # patches come in row-major order: an old piece is never needed again
            while row < r or end < x0 + w:
                data = bad = None  # dropped before the next is read
                row, start, data, bad = next(pieces)
                end = start + data.shape[2]
            assert data is not None  # r >= 0 = the first piece's row
            if batch is None:
                batch = _host_array((b1 - b0, len(settings.band_indexes), P, P), data.dtype, pinned)
            x = x0 - start
            patch = data[:, :, x : x + w]
            pad = ((0, P - patch.shape[1]), (0, P - patch.shape[2]))
            if pad[0][1] or pad[1][1]:
                patch = np.pad(patch, ((0, 0), *pad), mode="reflect")
            batch[n] = patch
            if bad is not None:
                if invalid is None:
                    invalid = _host_array((b1 - b0, P, P), np.dtype(bool), pinned)
                    invalid[:] = False
                m = bad[:, x : x + w]
                invalid[n] = np.pad(m, pad, mode="reflect") if pad[0][1] or pad[1][1] else m
        assert batch is not None  # b1 > b0
        yield batch, invalid, range(b0, b1)


@contextmanager
def _closed_after(it: Iterator[Any]) -> Iterator[None]:
    """Close a generator when the block ends (its cleanup, e.g. stopping an earlier stage's
    thread, runs now rather than at garbage collection); plain iterators need nothing."""
    try:
        yield
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _run_model(
    batches: Iterator[tuple[np.ndarray, np.ndarray | None, range]],
    run: Callable[[np.ndarray, np.ndarray | None], Any],
) -> Iterator[tuple[Any, range]]:
    with _closed_after(batches):
        for batch, invalid, indexes in batches:
            yield run(batch, invalid), indexes


def _threaded(it: Iterator[Any], maxsize: int = 2, name: str = "reader") -> Iterator[Any]:
    """Run an iterator in a thread of its own with a bounded queue (its work overlaps ours)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
    done = object()
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():  # the consumer may be gone: never block for good
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in it:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            put(err)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # the generator's own cleanup (earlier stages' threads) runs here

    t = threading.Thread(target=run, name=f"geoseg-{name}", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


# --------------------------------------------------------------------------------------------
# Blending and streaming (on the model's device)
# --------------------------------------------------------------------------------------------


def _weight_sum(length: int, patch_size: int, overlap: int) -> np.ndarray:
    """Sum over the patches along one axis of their 1-D blending weights (float32, (length,))."""
    offs = windows.offsets(length, patch_size, overlap)
    total = np.zeros(length, np.float32)
    n = min(patch_size, length)
    for k, o in enumerate(offs):
        w = windows.ramp(patch_size, overlap, start_flat=k == 0, end_flat=k == len(offs) - 1)
        total[o : o + n] += w[:n]
    return total


def _stream(
    source: str | Path | Any,
    plan: _Plan,
    settings: _Settings,
    forward: _Forward,
    r0: int,
    r1: int,
    *,
    threaded: bool = True,
    bar: Any = None,
) -> Iterator[tuple[int, Any]]:
    """Blended probabilities of the row-block of patch rows [r0, r1), in finished pieces.

    The input is read from ``source``: a path (opened, resampled to ``settings.target_res`` if
    set, through a handle of the stream's own) or an open raster no other thread uses (the
    handle the caller checked the input with: a remote raster's tiles are not fetched twice);
    with ``threaded`` the batches are read and cut
    in a thread of their own, a bounded queue ahead of the model, and
    ``forward.run`` maps them to probabilities (B, K, P, P) in another, a bounded queue ahead
    of the blending in this one.

    The accumulator lives where the probabilities are: on a GPU a tensor there, so nothing but
    the batches crosses the bus until :func:`_finalize` brings back uint8; on the CPU a numpy
    array (numpy's single-threaded arithmetic beats torch's here: its OpenMP barrier per small
    op costs more than the op when other processes share the cores), blended by torch when it
    runs on one thread. The host and the device blend alike: the same bytes on the CPU.

    Yields ``(y0, probs)`` with probs float32 (K, h, W) (numpy, or a tensor on the device) for
    output rows [y0, y0 + h), in order, covering exactly ``plan.owned(r0, r1)``: blended
    probabilities with ``settings.with_probabilities``, else their weighted sums (the same
    argmax; a view of the accumulator, valid until the next item). Only ``patch_size``
    accumulator rows are held.
    """
    import torch

    dev = torch.device(settings.device)
    host = _host_arrays(dev.type)

    def on_device(a: np.ndarray) -> Any:
        return a if host else torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    P, ov = plan.patch_size, plan.overlap
    nc, H, W = len(plan.cols), plan.height, plan.width
    ph, pw = min(P, H), min(P, W)
    K = settings.num_classes
    start, stop = plan.owned(r0, r1)
    rh = plan.halo_start(r0)
    i0, i1 = _patch_index_range(plan, rh, r1)
    wsum_rows = on_device(_weight_sum(H, P, ov)[:, None])
    wsum_cols = on_device(_weight_sum(W, P, ov)[None, :])
    weights: dict[tuple[bool, bool, bool, bool], Any] = {}

    acc = on_device(np.zeros((K, ph, W), np.float32))
    # torch's in-place multiply-add on the device, and on the host when torch runs on one
    # thread (a light model, see _make_forward): one pass where numpy makes two (null model,
    # 8k raster: 0.25 against 0.45 ms a patch). With more threads numpy's, see above.
    fused = not host or forward.torch_threads == 1
    acc_t = torch.as_tensor(acc)  # the same memory
    scratch = np.empty((K, ph, pw) if not fused else 0, np.float32)
    band_row = rh  # patch row whose offset is the accumulator's first row
    band_top = plan.rows[rh]
    carried = 0  # the accumulator's first rows that hold sums from the patch row above

    def emit(y_end: int) -> Iterator[tuple[int, Any]]:
        # Rows [band_top, y_end) are final: hand out the owned part (divided by the weight sum
        # when probabilities are written).
        n = y_end - band_top
        lo, hi = max(band_top, start), min(y_end, stop)
        # In pieces of EMIT_ROWS rows: the float temporaries stay small on wide rasters.
        for a in range(lo, hi, EMIT_ROWS):
            b = min(hi, a + EMIT_ROWS)
            rows = acc[:, a - band_top : b - band_top]
            # The classes alone need no division: every class of a pixel shares its weight sum.
            yield a, rows / (wsum_rows[a:b] * wsum_cols) if settings.with_probabilities else rows
        # The rows later patches still add to move up (numpy copies overlapping slices safely);
        # the rows below them are stale until the next patch row assigns them (see _blend).
        acc[:, : ph - n] = acc[:, n:] if host else acc[:, n:].clone()

    with (
        _torch_threads(forward.torch_threads),
        _open_source(source, settings.target_res, settings.target_crs)
        if isinstance(source, str | Path)
        else nullcontext(source) as src,
    ):
        batches = _read_batches(src, plan, settings, i0, i1)
        if threaded:
            batches = _threaded(batches)
        outputs = _run_model(batches, forward.run)
        if threaded:  # the model runs in a thread of its own too, the blending here beside it
            outputs = _threaded(outputs, maxsize=1, name="model")  # float32: one waits
        with _closed_after(outputs):
            for probs, indexes in outputs:
                if not host:
                    probs = torch.as_tensor(probs, device=dev)
                if bar is not None:
                    bar.advance(len(indexes))
                for n, i in enumerate(indexes):
                    r, c = divmod(i, nc)
                    if r < rh or r >= r1:
                        continue  # a batch-mate outside this block: computed to keep batches equal
                    if r != band_row:
                        yield from emit(plan.rows[r])
                        carried = ph - (plan.rows[r] - band_top)
                        band_row, band_top = r, plan.rows[r]
                    key = (c == 0, r == 0, c == nc - 1, r == len(plan.rows) - 1)
                    if key not in weights:
                        weights[key] = on_device(
                            windows.blend_weights(
                                P, ov, left=key[0], top=key[1], right=key[2], bottom=key[3]
                            )[:ph, :pw]
                        )
                    x0 = plan.cols[c]
                    # columns the patch to the left covered (a block's rows start at column 0)
                    done = 0 if c == 0 else min(pw, plan.cols[c - 1] + pw - x0)
                    _blend(
                        (acc_t if fused else acc)[:, :, x0 : x0 + pw],
                        probs[n][:, :ph, :pw],
                        weights[key],
                        carried,
                        done,
                        scratch,
                    )
                forward.release(probs)
    end = H if r1 >= len(plan.rows) else plan.rows[r1]
    yield from emit(end)


def _blend(acc: Any, probs: Any, weights: Any, rows: int, cols: int, scratch: np.ndarray) -> None:
    """``acc += probs * weights`` for one patch ((K, h, w) views; tensors, or numpy arrays with
    a ``scratch`` as large), where only the first ``rows`` rows and, below them, the first
    ``cols`` columns hold sums already: the rest is assigned, not added (not read, and never
    zeroed beforehand: 5 MB of traffic a 512-px patch instead of 9; the same values, as
    ``0 + x`` is ``x``).

    Patches come in row-major order and overlap their neighbours by at most ``overlap``, so
    what lies below the rows carried from the patch row above and right of the previous patch
    is untouched.
    """
    regions = [(slice(0, rows), slice(None)), (slice(rows, None), slice(0, cols))]
    fresh = (slice(rows, None), slice(cols, None))
    if isinstance(acc, np.ndarray):
        np.multiply(probs[:, fresh[0], fresh[1]], weights[fresh], out=acc[:, fresh[0], fresh[1]])
        for r, c in regions:
            part = probs[:, r, c]
            tmp = scratch.reshape(-1)[: part.size].reshape(part.shape)
            np.multiply(part, weights[r, c], out=tmp)
            acc[:, r, c] += tmp
    else:
        import torch

        probs, weights = torch.as_tensor(probs), torch.as_tensor(weights)
        torch.mul(probs[:, fresh[0], fresh[1]], weights[fresh], out=acc[:, fresh[0], fresh[1]])
        for r, c in regions:
            acc[:, r, c].addcmul_(probs[:, r, c], weights[r, c])


def _argmax0(probs: Any) -> Any:
    """Index of the first largest value along axis 0 of (K, h, W) probabilities: uint8 (h, W).

    Hand-written (numpy array or torch tensor alike): numpy's and torch's argmax over the
    leading axis are 2-15x slower than these K passes; the result (first maximum) is theirs.
    """
    numpy = isinstance(probs, np.ndarray)
    if not numpy:
        import torch
    if probs.shape[0] == 2:  # one comparison; a bool is a 0/1 byte
        greater = probs[1] > probs[0]
        return greater.view(np.uint8) if numpy else greater.view(torch.uint8)
    if numpy:
        best: Any = probs[0].copy()
        index: Any = np.zeros(probs.shape[1:], np.uint8)
        maximum: Any = np.maximum
    else:
        best = probs[0].clone()
        index = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
        maximum = torch.maximum
    for k in range(1, probs.shape[0]):
        index[probs[k] > best] = k
        if k < probs.shape[0] - 1:
            maximum(best, probs[k], out=best)
    return index


def _finalize(
    probs: Any, valid: np.ndarray | None, settings: _Settings
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class ids (uint8, 255 = nodata) and optional uint8 probabilities from (K, h, W) floats.

    ``probs`` is a numpy array or a tensor on the model's device; argmax and the probability
    encoding run there, and only the uint8 results cross back to the host.
    """
    index = _argmax0(probs)
    identity = settings.class_values == tuple(range(len(settings.class_values)))
    prob8 = None
    if isinstance(probs, np.ndarray):
        classes = index if identity else np.asarray(settings.class_values, np.uint8)[index]
        if settings.with_probabilities:
            prob8 = np.rint(np.clip(probs, 0.0, 1.0) * PROB_SCALE).astype(np.uint8)
    else:
        import torch

        if not identity:
            values = torch.tensor(settings.class_values, dtype=torch.uint8, device=probs.device)
            index = values[index.long()]
        classes = index.cpu().numpy()
        if settings.with_probabilities:
            prob8 = torch.round(probs.clamp(0.0, 1.0) * PROB_SCALE).to(torch.uint8).cpu().numpy()
    if valid is not None:
        classes[~valid] = NODATA
        if prob8 is not None:
            prob8[:, ~valid] = NODATA
    return classes, prob8


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass
class _Outputs:
    """The temporary mask (and probability) GeoTIFFs being written, with row buffering."""

    profile: dict[str, Any]
    mask_tmp: Path
    prob_tmp: Path | None
    class_names: list[str]
    class_values: list[int]
    meta: dict[str, str]
    final: bool  # the temp files are the final format (no COG copy follows)
    _rows: Any = None  # the row of tiles being filled: (BLOCKSIZE, W) uint8
    _prob_rows: Any = None  # its probabilities: (K, BLOCKSIZE, W) uint8
    _first: int = 0  # pixel row of the first buffered row
    _n: int = 0  # rows buffered
    _mask: Any = None
    _prob: Any = None

    def _profile(self, count: int) -> dict[str, Any]:
        profile = io.mask_profile(self.profile, count=count, final=self.final)
        if _staged_in_memory(self.mask_tmp):  # not packed: only the COG copy reads it
            for key in ("compress", "predictor", "zlevel"):
                profile.pop(key)
        return profile

    def __enter__(self) -> _Outputs:
        self._mask = rasterio.open(self.mask_tmp, "w", **self._profile(1))
        io.describe_mask(self._mask, self.class_names, self.class_values, **self.meta)
        if self.prob_tmp is not None:
            k = len(self.class_names)
            self._prob = rasterio.open(self.prob_tmp, "w", **self._profile(k))
            for b, name in enumerate(self.class_names, 1):
                self._prob.set_band_description(b, f"p({name})")
            self._prob.scales = [1.0 / PROB_SCALE] * k
            self._prob.update_tags(
                **io.class_tags(self.class_names, self.class_values),
                **self.meta,
                encoding=f"uint8 round(p*{PROB_SCALE}); p = value/{PROB_SCALE}; {NODATA} = nodata",
            )
        return self

    def write(self, y0: int, classes: np.ndarray, probs: np.ndarray | None) -> None:
        """Buffer rows and write them in whole rows of TIFF tiles (none is rewritten partly).

        Rows come in order. The buffer holds one row of tiles, made once: pieces copied into
        it rather than kept and concatenated (16 MiB less at the peak on a 32k-wide mask).
        """
        height, width = classes.shape
        if self._rows is None:
            self._rows = np.empty((BLOCKSIZE, width), np.uint8)
            if self._prob is not None:
                self._prob_rows = np.empty((len(self.class_names), BLOCKSIZE, width), np.uint8)
            self._first, self._n = y0, 0
        assert y0 == self._first + self._n, "rows must come in order"
        done = 0
        while done < height:
            tile_end = min((self._first // BLOCKSIZE + 1) * BLOCKSIZE, self.profile["height"])
            take = min(height - done, tile_end - y0 - done)
            at = (y0 + done) % BLOCKSIZE  # the buffer's rows are those of one row of tiles
            self._rows[at : at + take] = classes[done : done + take]
            if probs is not None:
                self._prob_rows[:, at : at + take] = probs[:, done : done + take]
            done += take
            self._n += take
            if self._first + self._n == tile_end:
                self._flush()

    def _flush(self) -> None:
        top, n = self._first % BLOCKSIZE, self._n
        win = Window(0, self._first, self._rows.shape[1], n)
        self._mask.write(self._rows[None, top : top + n], window=win)
        if self._prob is not None:
            self._prob.write(self._prob_rows[:, top : top + n], window=win)
        self._first, self._n = self._first + n, 0

    def __exit__(self, *exc: Any) -> None:
        for ds in (self._mask, self._prob):
            if ds is not None:
                ds.close()


class _Writer:
    """A writer thread with a bounded queue in front of :class:`_Outputs`."""

    def __init__(self, outputs: _Outputs) -> None:
        self.outputs = outputs
        self.q: queue.Queue[Any] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, name="geoseg-writer", daemon=True)
        self.t.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.outputs.write(*item)
                except BaseException as err:  # noqa: BLE001 - re-raised by put/close
                    self.error = err

    def put(self, y0: int, classes: np.ndarray, probs: np.ndarray | None) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((y0, classes, probs))

    def close(self) -> None:
        self.q.put(None)
        self.t.join()
        if self.error is not None:
            raise self.error


def _to_cog(tmp: Path, dst: Path, *, resampling: str) -> None:
    from rasterio.shutil import copy

    copy(
        tmp,
        dst,
        driver="COG",
        COMPRESS="DEFLATE",
        PREDICTOR="YES",
        BLOCKSIZE=BLOCKSIZE,
        OVERVIEW_RESAMPLING=resampling,
        BIGTIFF="IF_SAFER",
        NUM_THREADS="ALL_CPUS",
    )


# --------------------------------------------------------------------------------------------
# dask
# --------------------------------------------------------------------------------------------


def _block_task(
    src_path: str,
    plan: _Plan,
    settings: _Settings,
    r0: int,
    r1: int,
    mask_path: str,
    prob_path: str | None,
    class_names: list[str],
) -> tuple[int, int, str, str | None]:
    """Worker side: stream the row-block of patch rows [r0, r1) into its own block GeoTIFF(s).

    The worker recomputes the halo patch rows the block needs and writes only the rows it owns,
    so its memory is bounded like the single-process run. Returns (start, stop, paths).

    Errors reach the client as one GeosegError (unreadable input) or an OSError naming the block
    file (a failed write, which the client's output claim reports under the output's name).
    """
    # The client verifies every block file (GDAL does not report a full disk), so libtiff's own
    # stderr line about it would only add noise to the worker's terminal.
    io.silence_libtiff()
    failure: BaseException | None = None
    try:
        return _write_block(src_path, plan, settings, r0, r1, mask_path, prob_path, class_names)
    except GeosegError as err:
        failure = err
    except (OSError, rasterio.errors.RasterioError, io.CPLE_BaseError) as err:
        failure = OSError(f"{mask_path}: {io.gdal_message(err)}")
    # Raised outside the except clauses, without the chain: distributed pickles an exception
    # with its __context__, and GDAL's CPLE_* errors cannot be unpickled (the client would get a
    # bare Exception instead of the error).
    failure.__context__ = None
    raise failure


def _write_block(
    src_path: str,
    plan: _Plan,
    settings: _Settings,
    r0: int,
    r1: int,
    mask_path: str,
    prob_path: str | None,
    class_names: list[str],
) -> tuple[int, int, str, str | None]:
    """The work of :func:`_block_task`."""
    model = _cached_model(settings)
    forward = _make_forward(model, settings)
    start, stop = plan.owned(r0, r1)
    profile = dict(width=plan.width, height=stop - start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with (
            rasterio.Env(**GDAL_ENV, **dict(settings.gdal_options)),
            # the readers have their own handle
            _open_source(src_path, settings.target_res, settings.target_crs) as mask_src,
            io.reading(src_path),
            _Outputs(
                profile,
                Path(mask_path),
                Path(prob_path) if prob_path else None,
                class_names,
                list(settings.class_values),
                {},
                final=False,
            ) as outputs,
        ):
            writer = _Writer(outputs)
            try:
                for y0, probs in _stream(src_path, plan, settings, forward, r0, r1):
                    h = probs.shape[1]
                    cls, prb = _finalize(probs, _output_valid(mask_src, y0, h, settings), settings)
                    writer.put(y0 - start, cls, prb)
            finally:
                writer.close()
    return start, stop, mask_path, prob_path


def _blocks(plan: _Plan, n_workers: int) -> list[tuple[int, int]]:
    """Row-blocks of whole patch rows: one per worker (two on tall rasters, to balance load).

    Each block but the first recomputes one halo patch row, so few, tall blocks waste least;
    the workers stream them into block files, so a tall block costs no extra memory.
    """
    n = len(plan.rows)
    k = max(1, n_workers) * (2 if n >= 16 * max(1, n_workers) else 1)
    per = max(1, math.ceil(n / k))
    return [(r, min(n, r + per)) for r in range(0, n, per)]


@contextmanager
def client_for(workers: int = 1, scheduler: str | None = None) -> Iterator[Any]:
    """A dask client: an existing cluster at ``scheduler``, ``workers`` local processes, or None.

    Workers must see the checkpoint and input paths (shared storage on a multi-machine cluster).
    """
    if scheduler:
        from distributed import Client

        try:
            client = Client(scheduler, timeout="5s")
        except (OSError, TimeoutError, ValueError) as err:
            raise SchedulerError(
                f"cannot reach the dask scheduler at {scheduler} ({err.__class__.__name__}); "
                "start one with `dask scheduler` and pass its tcp://host:port, or use --workers N"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    if workers <= 1:
        yield None
        return
    from distributed import Client, LocalCluster

    # The local scheduler logs its start-up at INFO into this process's log: keep it to errors
    # unless geoseg itself logs at debug level (-vv).
    quiet_workers = logging.getLogger("geoseg").getEffectiveLevel() > logging.DEBUG
    if quiet_workers:
        logging.getLogger("distributed").setLevel(logging.ERROR)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # no dashboard wanted; ":0" avoids the 8787-is-taken warning
            # A failed block is reported once, by the client; the workers' own "Compute Failed"
            # and shutdown chatter stays out of the terminal unless geoseg logs at debug level.
            silence_logs=logging.CRITICAL if quiet_workers else logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _n_workers(client: Any) -> int:
    try:
        return max(1, len(client.scheduler_info()["workers"]))
    except Exception:  # noqa: BLE001
        return 1


def _run_dask(
    client: Any,
    src_path: Path,
    plan: _Plan,
    settings: _Settings,
    writer: Any,
    bar: Any,
    outputs: _Outputs,
    job: _Job,
) -> None:
    """Predict the row-blocks on the cluster; copy each block file into the output, in order.

    Block files are written next to the output (workers on other machines must see that folder,
    the checkpoint and the input at the same paths: shared storage).
    """
    blocks = _blocks(plan, _n_workers(client))
    futures = []
    for k, (r0, r1) in enumerate(blocks):
        assert job.mask_out is not None  # claimed by predict_raster
        mask_path = job.mask_out.temp(f"block{k}")
        prob_path = job.prob_out.temp(f"block{k}") if job.prob_out is not None else None
        futures.append(
            client.submit(
                _block_task,
                str(src_path),
                plan,
                settings,
                r0,
                r1,
                str(mask_path),
                str(prob_path) if prob_path else None,
                outputs.class_names,
                pure=False,
            )
        )
    nc = len(plan.cols)
    for (r0, r1), fut in zip(blocks, futures, strict=True):
        start, stop, mask_path, prob_path = fut.result()
        _verified(Path(mask_path), job.mask_out)  # a worker's GDAL does not report a full disk
        if prob_path:
            _verified(Path(prob_path), job.prob_out)
        with (
            rasterio.open(mask_path) as m,
            rasterio.open(prob_path) if prob_path else nullcontext() as pr,
        ):
            for y in range(0, stop - start, BLOCKSIZE):
                win = Window(0, y, plan.width, min(BLOCKSIZE, stop - start - y))
                writer.put(
                    start + y,
                    m.read(1, window=win),
                    pr.read(window=win) if pr is not None else None,
                )
        for p in (mask_path, prob_path):
            if p:
                Path(p).unlink(missing_ok=True)
        bar.advance((r1 - r0) * nc)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_inputs(src: Any, path: Path, card: Any, ckpt: Path, allow_ungeoreferenced: bool) -> None:
    indexes = list(card.band_indexes or range(1, card.in_channels + 1))
    all_bands = indexes == list(range(1, card.in_channels + 1))
    # An alpha band is no image band: training leaves it out (catalog.alpha_band) and uses it
    # as the validity mask, and so does infer (GDAL's dataset mask is the alpha band).
    alpha = [i for i, ci in enumerate(src.colorinterp, 1) if ci == ColorInterp.alpha]
    image_bands = src.count - len([i for i in alpha if i not in indexes])
    if max(indexes) > src.count or (all_bands and image_bands != card.in_channels):
        found = f"{src.count} band(s)" + (f" (band {alpha[0]} alpha)" if alpha else "")
        raise RasterError(
            f"{path}: has {found} but the checkpoint {ckpt.name} expects "
            f"{card.in_channels} (bands {indexes}); use an image with {card.in_channels} band(s) "
            "or a checkpoint trained on this kind of image"
        )
    if src.crs is None and not allow_ungeoreferenced:
        raise RasterError(
            f"{path}: has no CRS; georeference it (e.g. gdal_edit.py -a_srs EPSG:xxxx) or pass "
            "--allow-ungeoreferenced to write a mask without a CRS"
        )


def _resolution_target(
    src: Any, path: Path, card: Any, resample: bool
) -> tuple[float, str | None] | None:
    """The pixel size (and CRS as WKT, None = the input's own) to predict ``src`` at, or None
    to predict it as it is; warns when the pixel sizes differ and ``resample`` is off.

    In the checkpoint's CRS (or without one) pixel sizes are compared in CRS units, as the
    model saw them. Across CRSs (a UTM-trained model on a longitude/latitude or a feet raster)
    they are compared as ground metres at the raster's centre (:mod:`geoseg.units`): the card's
    0.5 m is never taken as 0.5°. A geographic raster is then predicted through the UTM zone of
    its centre (square metre pixels) and the mask warped back onto its exact grid.
    """
    if src.crs is None or not getattr(card, "res", None):
        return None
    card_crs = _card_crs(card)
    if card_crs is None or card_crs == src.crs:
        res = abs(src.res[0])
        diff = abs(res - card.res) / card.res
        if resample and diff > 0.01:
            log.info(
                "%s: resampling %.4g -> %.4g CRS units per pixel for the model",
                path,
                res,
                card.res,
            )
            return float(card.res), None
        if diff > RES_TOLERANCE:
            log.warning(
                "%s: pixel size %.4g differs from the training pixel size %.4g by %.0f%%; results "
                "may be poor: pass --resample to resample on the fly",
                path,
                res,
                card.res,
                100 * diff,
            )
        return None
    from geoseg import units

    cx, cy = src.transform @ (src.width / 2, src.height / 2)
    train_m = _card_res_m(card, card_crs, src.crs, cx, cy)
    sx, sy = units.pixel_size_m(src.crs, src.transform, src.width, src.height)
    diff = max(abs(sx - train_m), abs(sy - train_m)) / train_m
    own = f"{abs(src.res[0]):.3g} x {abs(src.res[1]):.3g} " + (
        "degrees" if src.crs.is_geographic else "CRS units"
    )
    if resample and diff > 0.01:
        if src.crs.is_geographic:
            utm = units.utm_crs(src.crs, cx, cy)
            log.info(
                "%s: predicting through %s at %.4g m per pixel (the input's pixels: %.3g x %.3g m, "
                "%s); the mask is warped back onto the input's grid",
                path,
                utm.to_string(),
                train_m,
                sx,
                sy,
                own,
            )
            return train_m, utm.to_wkt()
        mx, my = units.metres_per_unit(src.crs, cx, cy)
        res = train_m / math.sqrt(float(mx) * float(my))
        log.info("%s: resampling %s -> %.4g CRS units per pixel (%.4g m)", path, own, res, train_m)
        return res, None
    if diff > RES_TOLERANCE:
        log.warning(
            "%s: pixel size %.2g x %.2g m (%s) differs from the training pixel size %.3g m by "
            "%.0f%%; results may be poor: pass --resample to predict at %.3g m%s",
            path,
            sx,
            sy,
            own,
            train_m,
            100 * diff,
            train_m,
            " (through the raster's UTM zone)" if src.crs.is_geographic else "",
        )
    return None


def _card_crs(card: Any) -> Any:
    """The checkpoint's training CRS (rasterio), or None when the card has none."""
    wkt = getattr(card, "crs_wkt", None)
    if not wkt:
        return None
    try:
        return rasterio.crs.CRS.from_wkt(wkt)
    except rasterio.errors.CRSError:
        return None


def _card_res_m(card: Any, card_crs: Any, crs: Any, x: float, y: float) -> float:
    """The card's training pixel size in metres: its CRS unit for a projected CRS, the ground
    length of its degrees at the point (x, y) of ``crs`` for a geographic one."""
    from geoseg import units

    nominal = units.nominal_metres_per_unit(card_crs)
    if nominal is not None:
        return float(card.res) * nominal
    from rasterio.warp import transform as warp_points

    xs, ys = warp_points(crs, card_crs, [x], [y])
    mx, my = units.metres_per_unit(card_crs, xs[0], ys[0])
    return float(card.res) * math.sqrt(float(mx) * float(my))


def _value_sample(src: Any, bands: list[int], *, overviews: bool = True) -> np.ndarray:
    """Valid, finite pixel values of ``bands`` as float64 (C, N), from a small sample: an
    overview-sized read when the raster has overviews (and ``overviews``), else up to 3 x 3
    windows across it. A remote raster is sampled in windows: full-resolution tiles that the
    prediction reads next come from GDAL's HTTP cache, an overview's would be fetched too."""
    side = VALUE_SAMPLE_SIDE
    small = src.width <= side and src.height <= side
    if small or (overviews and src.overviews(bands[0])):
        scale = max(1.0, max(src.width, src.height) / side)
        shape = (len(bands), max(1, int(src.height / scale)), max(1, int(src.width / scale)))
        parts = [src.read(bands, out_shape=shape, masked=True)]
    else:
        w, h = min(src.width, side // 3), min(src.height, side // 3)
        parts = [
            src.read(bands, window=Window(x, y, w, h), masked=True)
            for y in np.linspace(0, src.height - h, 3).astype(int)
            for x in np.linspace(0, src.width - w, 3).astype(int)
        ]
    cols = []
    for part in parts:
        data = np.ma.getdata(part).reshape(len(bands), -1).astype(np.float64)
        ok = ~np.ma.getmaskarray(part).reshape(len(bands), -1).any(0)
        ok &= np.isfinite(data).all(0)
        cols.append(data[:, ok])
    return np.concatenate(cols, axis=1)


def check_values(
    src: Any, path: Path | str, card: Any, source: str = "the checkpoint", *, overviews: bool = True
) -> None:
    """Refuse a raster whose pixel values the model cannot have learnt on.

    From a small sample of the raster's valid pixels (about 512² values), per band of the
    card's ``band_indexes``: more than 1 % of them outside the range of the training dtype
    (``card.dtype``: uint16 values above 255 against a uint8-trained model, negative int16), a
    median more than :data:`VALUE_Z_LIMIT` training standard deviations from the training mean,
    or a float band whose values all lie within 2 % of the training values' size (|mean| + std:
    reflectance 0-1 against a model trained on 0-255 counts). Such inputs give garbage masks
    without any other sign; a median beyond :data:`VALUE_Z_WARN` standard deviations only warns.

    Args:
        src: The open raster (rasterio dataset).
        path: Its name, for the message.
        card: The model card (``mean``, ``std``, ``band_indexes``, optional ``dtype``).
        source: The checkpoint's name, for the message.
        overviews: Sample the raster's overviews when it has some (False for remote rasters).

    Raises:
        RasterError: naming the file, what was found and expected, and ``--no-check-values``.
    """
    bands = list(card.band_indexes or range(1, card.in_channels + 1))
    sample = _value_sample(src, bands, overviews=overviews)
    if sample.shape[1] < 64:  # (almost) all nodata: nothing to judge
        return
    dtype = np.dtype(src.dtypes[bands[0] - 1])
    trained = np.dtype(card.dtype) if getattr(card, "dtype", None) else None
    fix = (
        "rescale it to the training range (e.g. gdal_translate -scale -ot "
        f"{_gdal_type(trained) if trained is not None else 'Byte'}), use a checkpoint trained "
        "on this kind of image, or pass --no-check-values to predict it anyway"
    )
    if trained is not None and trained.kind in "ui" and trained != dtype:
        info = np.iinfo(trained)
        outside = (sample < info.min) | (sample > info.max)
        if outside.mean() > OUT_OF_RANGE_LIMIT:
            raise RasterError(
                f"{path}: {outside.mean():.0%} of its sampled pixels ({dtype}, "
                f"{sample.min():g}..{sample.max():g}) are outside the {trained} range "
                f"{info.min}..{info.max} that {source} was trained on; {fix}"
            )
    for k, band in enumerate(bands):
        mean, std = float(card.mean[k]), float(card.std[k])
        if not std > 1e-3 * max(1.0, abs(mean)):  # a constant training band: nothing to compare
            continue
        values = sample[k]
        median = float(np.median(values))
        z = (median - mean) / std
        lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
        if abs(z) > VALUE_Z_LIMIT:
            raise RasterError(
                f"{path}: band {band} has a median of {median:g} ({dtype}, {lo:g}..{hi:g}), "
                f"{abs(z):.0f} standard deviations from the training mean {mean:g} "
                f"(std {std:g}{f', {trained}' if trained is not None else ''}) of {source}; "
                f"{fix}"
            )
        scale = abs(mean) + std  # the size of the training values
        if dtype.kind == "f" and lo < hi and max(abs(lo), abs(hi)) < VALUE_SCALE_LIMIT * scale:
            raise RasterError(
                f"{path}: band {band} spans only {lo:g}..{hi:g} ({dtype}) where the data "
                f"{source} was trained on has a mean of {mean:g} (std {std:g}): scaled "
                f"differently (e.g. reflectance 0-1 against counts 0-255); {fix}"
            )
        if abs(z) > VALUE_Z_WARN:
            log.warning(
                "%s: band %d has a median of %g, %.0f standard deviations from the training mean "
                "%g (std %g) of %s; results may be poor",
                path,
                band,
                median,
                abs(z),
                mean,
                std,
                source,
            )


def _gdal_type(dtype: np.dtype) -> str:
    names = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32"}
    names.update(int32="Int32", float32="Float32", float64="Float64")
    return names.get(dtype.name, dtype.name)


def settings_from(settings: InferConfig | None = None, **overrides: Any) -> InferConfig:
    """The inference settings a call stands for: ``settings`` (default: the schema's defaults)
    with ``overrides`` (names of :class:`~geoseg.config.InferConfig` fields) in place.

    Raises:
        ConfigError: an unknown setting name or a bad value.
    """
    return config.override(settings or InferConfig(), overrides, source="infer")


def predict_raster(
    src: Path,
    dst: Path,
    *,
    checkpoint: Path,
    settings: InferConfig | None = None,
    probabilities: Path | None = None,
    overwrite: bool = False,
    allow_ungeoreferenced: bool = False,
    client: Any = None,
    **overrides: Any,
) -> Path:
    """Predict one raster with a checkpoint into a georeferenced mask GeoTIFF.

    The settings are one :class:`geoseg.config.InferConfig` (the ``infer`` section of a pipeline
    file, the options of ``geoseg infer``): pass ``settings=``, or any of its fields as keywords
    (``predict_raster(src, dst, checkpoint=ckpt, tta="flip", overlap=32)``), or both (keywords
    win). Fields left unset keep the schema's defaults; ``inputs`` is not used here.

    Args:
        src: Input GeoTIFF; the checkpoint's ``band_indexes`` (1-based) are read from it.
        dst: Output mask: uint8 class ids (the card's ``class_ids``), 255 = nodata where the
            input is nodata (declared nodata, internal mask, alpha band 0, NaN or infinite in
            a float band); exactly ``src``'s CRS, transform, width and height.
        checkpoint: A geoseg checkpoint (weights + model card; the card supplies bands,
            normalisation, class names, patch size and training pixel size).
        settings: The inference settings: ``patch_size`` (default: the card's; divisible by
            the model's downsampling), ``overlap`` (pixels shared by neighbouring patches,
            blended with a cosine window; default min(64, patch_size // 4)), ``batch_size``
            (default: 8 at 512 px on CPU, by free memory on CUDA), ``tta`` (``none``, ``flip``:
            4 flips, ``d4``: 8 dihedral transforms, averaged as probabilities), ``precision``
            (``auto``: bf16 on CUDA with bf16 and on CPUs with native bf16, else fp32),
            ``device``, ``cog`` (tiled 512, deflate, overviews), ``workers`` (local dask
            processes; 1 = in process, streaming), ``scheduler`` (``tcp://host:port`` of an
            existing dask cluster whose workers see the same paths), ``resample`` (predict at
            the training pixel size, WarpedVRT bilinear, and bring the mask back to the input
            grid, nearest, when the pixel sizes differ; compared in ground metres across CRSs,
            and a geographic input is predicted through its UTM zone), ``probabilities`` (write
            ``<dst stem>_prob.tif`` when no ``probabilities`` path is given), ``check_values``
            (refuse inputs whose values cannot match the training data: :func:`check_values`).
        probabilities: Also write a probability GeoTIFF here: one uint8 band per class,
            ``round(p * 254)`` (p = value / 254), 255 = nodata.
        overwrite: Replace existing outputs.
        allow_ungeoreferenced: Accept an input without CRS (the mask then has none either).
        client: An existing ``distributed.Client`` to use (overrides ``workers``/``scheduler``).
        **overrides: Fields of :class:`~geoseg.config.InferConfig`, replacing ``settings``'.

    Returns:
        ``dst``. Memory: about ``num_classes * patch_size * width * 4`` bytes plus one strip of
        input and the model's batch, independent of the raster's height.

    Raises:
        InputNotFoundError, RasterError (bands, CRS, values), CheckpointError, OutputExistsError,
        SchedulerError, ConfigError (bad settings, patch size or overlap).
    """
    cfg = settings_from(settings, **overrides)
    src, dst, ckpt = remote.as_path(src), Path(dst), Path(checkpoint)
    if probabilities is None and cfg.probabilities:
        probabilities = probability_path(dst)
    if not remote.is_remote(src) and not src.is_file():
        raise InputNotFoundError(f"{src}: input raster not found; check the path")
    device = resolve_device(cfg.device, setting="infer.device")
    dev = str(device)
    prec = resolve_precision(cfg.precision, device, setting="infer.precision")
    tta = cfg.tta
    card = _load_card(ckpt)
    if ckpt.suffix.lower() == ".onnx":
        prec = "32"  # onnxruntime runs the exported graph in float32
    with io.open_raster(src, hint="check the file") as handle:
        _check_inputs(handle, src, card, ckpt, allow_ungeoreferenced)
        target = _resolution_target(handle, src, card, cfg.resample)
        scales = _scales(cfg.scales, handle, src, target)
        profile = dict(width=handle.width, height=handle.height, transform=handle.transform)
        if handle.crs is not None:
            profile["crs"] = handle.crs
    P = cfg.patch_size or card.patch_size
    overlap = cfg.resolved_overlap(P)
    check_patch(P, overlap, card.architecture, ckpt.name)
    if ckpt.suffix.lower() == ".onnx":
        from geoseg import export

        export.check_tile_size(ckpt, P)
    bs = cfg.batch_size or _default_batch_size(dev, P)

    class_names = list(card.class_names)
    class_values = list(getattr(card, "class_ids", None) or range(len(class_names)))
    runtime = _Settings(
        checkpoint=str(ckpt.resolve()),
        device=dev,
        precision=prec,
        tta=tta,
        channels_last=channels_last_pays(device, prec),
        band_indexes=tuple(card.band_indexes or range(1, card.in_channels + 1)),
        mean=tuple(float(m) for m in card.mean),
        std=tuple(float(s) or 1.0 for s in card.std),
        num_classes=len(class_names),
        class_values=tuple(class_values),
        target_res=target[0] if target else None,
        target_crs=target[1] if target else None,
        with_probabilities=probabilities is not None,
        per_patch=getattr(card, "normalization", "meanstd") == "patch",
        gdal_options=tuple(remote.worker_options([src]).items()),
    )
    meta = {  # after the class tags (geoseg.io.describe_mask)
        "nodata_meaning": "255 = no data in the input",
        "checkpoint": ckpt.name,
        "architecture": str(card.architecture),
        "patch_size": str(P),
        "overlap": str(overlap),
        "tta": tta,
        **({"tta_scales": ",".join(f"{x:g}" for x in cfg.scales)} if scales else {}),
        "precision": prec,
        "software": "geoseg",
    }
    if getattr(card, "target", "semantic") == "instances":  # vectorize separates buildings
        meta[instances.TARGET_TAG] = instances.TARGET_INSTANCES
    t0 = time.perf_counter()
    job = _Job(
        profile=profile,
        settings=runtime,
        patch_size=P,
        overlap=overlap,
        batch_size=bs,
        class_names=class_names,
        class_values=class_values,
        meta=meta,
        workers=cfg.workers,
        scheduler=cfg.scheduler,
        client=client,
    )
    if cfg.check_values:
        overviews = not remote.reads_remote(src)
        job.check = lambda ds: check_values(ds, src, card, ckpt.name, overviews=overviews)
    with ExitStack() as claims:
        # Claimed before the work: an existing output, an output that is an input, another
        # run writing it or an unwritable folder fail now, not after the prediction.
        inputs = [src, ckpt]
        job.mask_out = claims.enter_context(io.claim(dst, overwrite=overwrite, inputs=inputs))
        if probabilities is not None:
            job.prob_out = claims.enter_context(
                io.claim(probabilities, overwrite=overwrite, inputs=[*inputs, dst])
            )
        # A COG is a copy of a finished raster: up to STAGED_BYTES, stage that raster in memory
        # (uncompressed), so the copy is its only write and nothing is decoded again.
        bands = 1 + (len(class_names) if probabilities is not None else 0)
        staged = cfg.cog and profile["width"] * profile["height"] * bands <= STAGED_BYTES
        mask_tmp = claims.enter_context(_staging(job.mask_out, staged))
        prob_tmp = claims.enter_context(_staging(job.prob_out, staged))
        with remote.env([src], **GDAL_ENV):
            assert mask_tmp is not None  # job.mask_out is always claimed
            if scales:
                _predict_scales(src, job, mask_tmp, prob_tmp, scales, final=not cfg.cog)
            elif target is None:
                _predict_to(src, job, mask_tmp, prob_tmp, final=not cfg.cog)
            else:
                _predict_resampled(src, job, mask_tmp, prob_tmp, final=not cfg.cog)
            _publish(
                [(job.mask_out, mask_tmp, "NEAREST"), (job.prob_out, prob_tmp, "AVERAGE")],
                cfg.cog,
            )
    from geoseg import export

    export.mask_style(dst)  # QGIS style sidecar <mask>.qml; the mask itself is not touched
    mp = profile["width"] * profile["height"] / 1e6
    log.info("%s -> %s: %.2f MP in %.1f s", src.name, dst, mp, time.perf_counter() - t0)
    return dst


@contextmanager
def _staging(output: io.Output | None, in_memory: bool) -> Iterator[Path | None]:
    """Where ``output`` is written before it is published: a temporary file next to it, or a
    GDAL in-memory file (``/vsimem/``, freed on exit) that only the COG copy reads."""
    if output is None:
        yield None
    elif not in_memory:
        yield output.temp()
    else:
        from rasterio.io import MemoryFile

        memory = MemoryFile(ext=".tif")
        try:
            yield Path(memory.name)
        finally:
            memory.close()


def _staged_in_memory(path: Path) -> bool:
    return str(path).startswith("/vsimem/")


def check_patch(patch_size: int, overlap: int, architecture: str, source: str) -> None:
    """Check a patch size and overlap for a model before any work starts.

    Args:
        patch_size: Side of a predicted patch in pixels.
        overlap: Pixels shared by neighbouring patches.
        architecture: The model's registered name (its downsampling factor must divide the patch).
        source: Where the model comes from (a checkpoint's name, ``model.name``), for the message.

    Raises:
        ConfigError: naming the bad value and a valid one.
    """
    try:
        from geoseg import models

        factor = models.downsampling(architecture)
    except Exception:  # noqa: BLE001 - unknown architecture: checkpoint.load_model reports it
        factor = 1
    if patch_size < 1 or patch_size % factor:
        lo = max(factor, patch_size // factor * factor)
        raise ConfigError(
            f"patch_size={patch_size} is not divisible by {factor}, as {architecture} "
            f"({source}) needs; use {lo} or {lo + factor}"
        )
    if overlap < 0 or overlap >= patch_size:
        raise ConfigError(
            f"overlap={overlap} must be >= 0 and < patch_size={patch_size}; e.g. {patch_size // 8}"
        )


@dataclass
class _Job:
    """What the plain and the resampled path of one raster's prediction share."""

    profile: dict[str, Any]
    settings: _Settings
    patch_size: int
    overlap: int
    batch_size: int
    class_names: list[str]
    class_values: list[int]
    meta: dict[str, str]
    workers: int
    scheduler: str | None
    client: Any
    mask_out: io.Output | None = None  # the claimed outputs (their temporary files die with them)
    prob_out: io.Output | None = None
    # check_values on the raster handle the prediction reads (its tiles stay in GDAL's block
    # cache: a remote raster's are not fetched twice); None = not checked
    check: Callable[[Any], None] | None = None


def _predict_to(
    src: Path, job: _Job, mask_tmp: Path, prob_tmp: Path | None, *, final: bool
) -> None:
    """Predict ``src`` (resampled to ``settings.target_res`` if set) into temporary GeoTIFFs.

    ``final``: written with the final compression (no COG copy follows).
    """
    settings = job.settings
    with _open_source(src, settings.target_res, settings.target_crs) as source, io.reading(src):
        if job.check is not None:
            job.check(source)
        plan = _Plan.make(source.width, source.height, job.patch_size, job.overlap, job.batch_size)
        grid_profile = dict(
            job.profile, width=source.width, height=source.height, transform=source.transform
        )
        if source.crs is not None:  # the work grid of a reprojected input has its own CRS
            grid_profile["crs"] = source.crs
        with (
            client_for(job.workers, job.scheduler)
            if job.client is None
            else nullcontext(job.client) as cl,
            # GDAL handles are not thread-safe: the readers have their own, this one masks.
            _open_source(src, settings.target_res, settings.target_crs) as mask_src,
            _Outputs(
                grid_profile,
                mask_tmp,
                prob_tmp,
                job.class_names,
                job.class_values,
                job.meta,
                final=final,
            ) as outputs,
            progress.bar(plan.n_patches, f"infer {src.name}", unit="patches") as bar,
        ):
            writer = _Writer(outputs)
            try:
                if cl is None:
                    model = _cached_model(settings)
                    forward = _make_forward(model, settings)
                    # `source` is idle from here on: the stream's reader thread reads it.
                    for y0, probs in _stream(
                        source, plan, settings, forward, 0, len(plan.rows), bar=bar
                    ):
                        h = probs.shape[1]
                        valid = _output_valid(mask_src, y0, h, settings)
                        writer.put(y0, *_finalize(probs, valid, settings))
                else:
                    settings = _with_threads(settings, cl)
                    _run_dask(cl, src, plan, settings, writer, bar, outputs, job)
            finally:
                writer.close()


def _with_threads(settings: _Settings, client: Any) -> _Settings:
    """Local workers share this machine's cores: cores / workers torch threads each.

    Workers of a remote cluster keep torch's default (all cores of their machine): start one
    ``dask worker --nworkers 1`` per machine, or set OMP_NUM_THREADS on the workers.
    """
    from dataclasses import replace

    from distributed import LocalCluster

    if not isinstance(getattr(client, "cluster", None), LocalCluster):
        return settings
    n = _n_workers(client)
    return replace(settings, threads=max(1, (os.cpu_count() or 1) // n))


def _publish(items: list[tuple[io.Output | None, Path | None, str]], cog: bool) -> None:
    """Verify the finished temp files, convert them (to COG) and verify again, then rename
    them all into place. GDAL does not report a full disk: what it wrote is read back."""
    ready = []
    for output, tmp, resampling in items:
        if output is None or tmp is None:
            continue
        if not _staged_in_memory(tmp):  # memory has no full disk to check for
            _verified(tmp, output)
        if cog:
            cog_tmp = output.temp("cog")
            try:
                _to_cog(tmp, cog_tmp, resampling=resampling)
            except (OSError, rasterio.errors.RasterioError, io.CPLE_BaseError) as err:
                raise io.write_failure(output.path, err) from None
            tmp = _verified(cog_tmp, output)
        ready.append((output, tmp))
    for output, tmp in ready:
        output.commit(tmp)


def _verified(tmp: Path, output: io.Output | None) -> Path:
    """``tmp`` if it is a complete raster, else an OutputWriteError naming the output."""
    try:
        io.verify_raster(tmp)
    except GeosegError as err:
        raise io.write_failure(output.path if output else tmp, err) from None
    return tmp


def _predict_resampled(
    src: Path, job: _Job, mask_tmp: Path, prob_tmp: Path | None, *, final: bool
) -> None:
    """Predict at the training pixel size, then bring the result back to the input grid."""
    from rasterio.vrt import WarpedVRT

    assert job.mask_out is not None  # claimed by predict_raster
    profile = job.profile
    work = job.mask_out.temp("work")
    work_prob = job.prob_out.temp("work") if job.prob_out is not None else None
    _predict_to(src, job, work, work_prob, final=False)
    _verified(work, job.mask_out)  # a full disk shows here, not as an unreadable input below
    if work_prob is not None:
        _verified(work_prob, job.prob_out)
    W, H = profile["width"], profile["height"]
    grid = _onto_input(profile, Resampling.nearest)
    with (
        rasterio.open(src) as orig,
        rasterio.open(work) as wm,
        WarpedVRT(wm, **grid) as vm,
        io.reading(src),
        _Outputs(
            profile,
            mask_tmp,
            prob_tmp,
            job.class_names,
            job.class_values,
            dict(job.meta, **_resampled_tags(job.settings)),
            final=final,
        ) as outputs,
    ):
        wp = rasterio.open(work_prob) if work_prob else None
        vp = WarpedVRT(wp, **grid) if wp is not None else None
        try:
            for y0 in range(0, H, BLOCKSIZE):
                win = Window(0, y0, W, min(BLOCKSIZE, H - y0))
                cls = vm.read(1, window=win)
                prb = vp.read(window=win) if vp is not None else None
                valid = _valid_rows(orig, y0, y0 + win.height, job.settings.band_indexes)
                if valid is not None:
                    cls[~valid] = NODATA
                    if prb is not None:
                        prb[:, ~valid] = NODATA
                outputs.write(y0, cls, prb)
        finally:
            for ds in (vp, wp):
                if ds is not None:
                    ds.close()


def _onto_input(profile: dict[str, Any], resampling: Resampling, **extra: Any) -> dict[str, Any]:
    """WarpedVRT arguments that bring a work grid's raster back onto the input's grid."""
    return dict(
        crs=profile["crs"],
        transform=profile["transform"],
        width=profile["width"],
        height=profile["height"],
        resampling=resampling,
        **extra,
    )


def _scales(
    factors: list[float], src: Any, path: Path, target: tuple[float, str | None] | None
) -> list[tuple[float, str | None] | None]:
    """The grids of a multi-scale prediction: per zoom factor, (pixel size, CRS WKT) to
    resample to, or None for the input as it is; ``[]`` = a plain prediction (scales [1])."""
    if len(factors) == 1 and abs(factors[0] - 1.0) < 1e-9:
        return []
    if src.crs is None:
        raise RasterError(
            f"{path}: has no CRS, so it cannot be predicted at several scales; georeference it "
            "or leave infer.scales at [1]"
        )
    res, crs = target if target is not None else (abs(src.res[0]), None)
    return [None if target is None and abs(f - 1.0) < 1e-9 else (res / f, crs) for f in factors]


def _predict_scales(
    src: Path,
    job: _Job,
    mask_tmp: Path,
    prob_tmp: Path | None,
    grids: list[tuple[float, str | None] | None],
    *,
    final: bool,
) -> None:
    """Multi-scale test-time augmentation: predict the probabilities at each grid, bring them
    back onto the input grid (bilinear), average them and take the most probable class.

    Memory: the average of a few rows at a time (about 2 MP of probabilities), whatever the size.
    """
    from rasterio.vrt import WarpedVRT

    assert job.mask_out is not None  # claimed by predict_raster
    profile = job.profile
    W, H = profile["width"], profile["height"]
    works: list[tuple[Path, bool]] = []
    for k, grid in enumerate(grids):
        settings = replace(
            job.settings,
            target_res=None if grid is None else grid[0],
            target_crs=None if grid is None else grid[1],
            with_probabilities=True,
        )
        scaled = replace(job, settings=settings, check=job.check if k == 0 else None)
        work, work_prob = job.mask_out.temp(f"s{k}"), job.mask_out.temp(f"s{k}p")
        log.info("%s: scale %d of %d", src, k + 1, len(grids))
        _predict_to(src, scaled, work, work_prob, final=False)
        # a full disk shows here, naming the output, not as an unreadable input below
        _verified(work_prob, job.mask_out)
        works.append((work_prob, grid is None))
    onto = _onto_input(profile, Resampling.bilinear, src_nodata=NODATA, nodata=NODATA)
    k_classes = job.settings.num_classes
    meta = job.meta
    if job.settings.target_res is not None:  # the pixel size the zooms are relative to
        meta = dict(meta, **_resampled_tags(job.settings))
    rows = int(min(BLOCKSIZE, max(16, 2**21 // max(1, W))))
    with (
        rasterio.open(src) as orig,
        io.reading(src),
        ExitStack() as opened,
        _Outputs(
            profile, mask_tmp, prob_tmp, job.class_names, job.class_values, meta, final=final
        ) as outputs,
    ):
        views = []
        for path, as_is in works:
            ds = opened.enter_context(rasterio.open(path))
            views.append(ds if as_is else opened.enter_context(WarpedVRT(ds, **onto)))
        for y0 in range(0, H, rows):
            win = Window(0, y0, W, min(rows, H - y0))
            total = np.zeros((k_classes, win.height, W), np.float32)
            count = np.zeros((win.height, W), np.float32)
            for view in views:
                p = view.read(window=win)
                seen = p[0] != NODATA
                total += np.where(seen, p, 0)
                count += seen
            # the stored values (p * PROB_SCALE) back to probabilities, for the plain path's
            # argmax, class ids, encoding and nodata
            mean = total / (np.maximum(count, 1) * PROB_SCALE)
            valid = count > 0
            input_valid = _valid_rows(orig, y0, y0 + win.height, job.settings.band_indexes)
            if input_valid is not None:
                valid &= input_valid
            outputs.write(y0, *_finalize(mean, valid, job.settings))


def _resampled_tags(settings: _Settings) -> dict[str, str]:
    """Mask tags saying at which pixel size (and CRS) the model saw the input."""
    tags = {"resampled_from": str(settings.target_res)}
    if settings.target_crs:
        crs = rasterio.crs.CRS.from_wkt(settings.target_crs)
        tags["resampled_crs"] = crs.to_string()
    return tags


def output_paths(inputs: list[Path], out: Path) -> list[Path]:
    """Mask paths for ``inputs``: ``out`` itself for one input with a .tif name, else out/<name>."""
    if len(inputs) == 1 and out.suffix.lower() in (".tif", ".tiff"):
        return [out]
    return [out / f"{Path(remote.name_of(p)).stem}.tif" for p in inputs]


def probability_path(mask: Path) -> Path:
    """``<mask stem>_prob.tif`` next to the mask."""
    return mask.with_name(f"{mask.stem}_prob.tif")


def _expand(inputs: list[Path] | list[str]) -> list[Path]:
    from geoseg import catalog

    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        # A named image file is taken as it is (PNG/JPEG tiles too, with
        # --allow-ungeoreferenced); folders, globs, lists and STAC go through the catalog.
        if p.is_file() and p.suffix.lower() in catalog.TILE_SUFFIXES:
            found.append(p)
        else:
            found += catalog.find_rasters([str(item)])
    if any(remote.is_remote(p) for p in found):
        # A remote input that is missing, denied or unreachable fails here (one header read
        # each, which GDAL caches for the prediction), before any output folder is made.
        catalog.index([p for p in found if remote.is_remote(p)])
    return found


def predict(
    checkpoint: Path,
    inputs: list[Path] | list[str],
    out: Path | str,
    *,
    settings: InferConfig | None = None,
    overwrite: bool = False,
    vectorize: Path | str | None = None,
    vectorize_settings: VectorizeConfig | None = None,
    allow_ungeoreferenced: bool = False,
    client: Any = None,
    **overrides: Any,
) -> list[Path]:
    """Predict several rasters (files, folders, globs): one mask per input.

    With one input and ``out`` ending in .tif, ``out`` is the mask; otherwise ``out`` is a folder
    and each mask keeps its input's base name. ``settings`` (and keyword ``overrides`` of its
    fields) are those of :func:`predict_raster`; ``settings.probabilities`` adds
    ``<mask>_prob.tif``, ``settings.workers``/``scheduler`` start one dask client for all inputs
    (unless ``client`` is given). ``vectorize``: also write building footprints (one GeoPackage,
    or a folder of them for several inputs) with :func:`geoseg.vectorize.vectorize` and
    ``vectorize_settings`` (default: its defaults; a ``min_confidence`` also writes the
    probabilities it is measured on). All outputs are checked for existence before any work
    starts.
    """
    cfg = settings_from(settings, **overrides)
    footprint = vectorize_settings or VectorizeConfig()
    if vectorize is not None and footprint.needs_probabilities and not cfg.probabilities:
        cfg = cfg.model_copy(update={"probabilities": True})
    out = remote.as_path(out)
    paths = _expand(inputs)
    masks = output_paths(paths, out)
    if len(set(masks)) != len(masks):
        raise ConfigError(
            f"two inputs share a base name, so their masks would collide in {out}; "
            "predict them into different --out folders"
        )
    gpkgs: list[Path | None] = [None] * len(masks)
    if vectorize is not None:
        vectorize = remote.as_path(vectorize)
        gpkgs = (
            [vectorize]
            if len(masks) == 1 and vectorize.suffix
            else [vectorize / f"{m.stem}.gpkg" for m in masks]
        )
    # Every output is checked before any work starts (each is claimed when it is written).
    readers = [*paths, Path(checkpoint)]
    for m, g in zip(masks, gpkgs, strict=True):
        for p in (m, probability_path(m) if cfg.probabilities else None):
            if p is not None:
                io.check_output(p, overwrite=overwrite, inputs=readers)
        if g is not None:
            io.vector_driver(g)
            io.check_output(g, overwrite=overwrite, inputs=readers, option="--vectorize")
    # Outputs to S3 are written locally, complete, then uploaded (remote.Staging).
    staged: list[Path] = []
    try:
        with (
            remote.Staging() as staging,
            client_for(cfg.workers, cfg.scheduler) if client is None else nullcontext(client) as cl,
        ):
            for src, m, g in zip(paths, masks, gpkgs, strict=True):
                mask = staging.local(m)
                staged.append(mask)
                prob = probability_path(mask) if cfg.probabilities else None
                gpkg = staging.local(g) if g is not None else None
                predict_raster(
                    src,
                    mask,
                    checkpoint=Path(checkpoint),
                    settings=cfg,
                    probabilities=prob,
                    overwrite=overwrite,
                    allow_ungeoreferenced=allow_ungeoreferenced,
                    client=cl,
                )
                if gpkg is not None:
                    from geoseg import vectorize as vectorize_mod

                    vectorize_mod.vectorize(
                        mask,
                        gpkg,
                        probabilities=prob,
                        layer=footprint.layer,
                        overwrite=overwrite,
                        **vectorize_mod.footprint_options(footprint),
                    )
                staging.publish(mask, m)  # with its probabilities and style
                staging.publish(gpkg, g)
    except BaseException:
        # A failed raster's claim is released while its dask workers may still be writing
        # block files; the local cluster is closed (its workers stopped) only now.
        for mask in staged:
            io.remove_temps(mask)
            io.remove_temps(probability_path(mask))
        raise
    return masks
