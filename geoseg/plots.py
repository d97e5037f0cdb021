"""Pictures of a training run: loss/IoU curves and prediction previews, as PNG files.

Matplotlib's object API (``Figure`` + the Agg canvas) is used rather than ``pyplot``, so making a
plot never changes the backend or the open figures of a notebook that calls the library.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoseg import io

log = logging.getLogger(__name__)

#: Mask colours by class id (background light grey, building red, then tab10); ignored = black.
PALETTE = [
    "#e8e8e8",
    "#d62728",
    "#1f77b4",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
IGNORE_COLOR = "#000000"


def _save(fig: Any, path: Path, dpi: int = 110) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path = Path(path)
    with io.atomic_write(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def curves(
    history: Sequence[dict[str, Any]],
    path: Path,
    *,
    monitor: str | None = None,
    best_epoch: int | None = None,
) -> Path:
    """Loss (train, val) and validation IoU (per class, mean) against the epoch.

    Args:
        history: Rows of metrics.csv: ``epoch``, ``train_loss``, ``val_loss``, ``iou_<class>``,
            ``miou`` (NaN values are left out).
        path: PNG file to write (atomically).
        monitor: The metric that picks the best checkpoint; drawn thicker.
        best_epoch: Marked with a dashed line in both panels.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_iou = fig.subplots(1, 2)
    marker = "o" if len(epochs) <= 30 else None
    for key, label, colour in (
        ("train_loss", "train", "#1f77b4"),
        ("val_loss", "validation", "#ff7f0e"),
    ):
        ax_loss.plot(
            epochs,
            [_nan(r.get(key)) for r in history],
            marker=marker,
            ms=3,
            label=label,
            color=colour,
        )
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="loss")
    iou_keys = [k for k in (history[0] if history else {}) if k.startswith("iou_")] + ["miou"]
    for i, key in enumerate(iou_keys):
        label = "mean IoU" if key == "miou" else f"IoU {key[4:]}"
        # class i in its preview colour; class 0 (background) in grey, the mean in black
        colour = "#333333" if key == "miou" else PALETTE[i % len(PALETTE)] if i else "#999999"
        ax_iou.plot(
            epochs,
            [_nan(r.get(key)) for r in history],
            marker=marker,
            ms=3,
            label=label,
            color=colour,
            lw=2.5 if key == monitor else 1.2,
            ls="--" if key == "miou" else "-",
        )
    ax_iou.set(title="Validation IoU", xlabel="epoch", ylabel="IoU", ylim=(0, 1))
    for ax in (ax_loss, ax_iou):
        if best_epoch:
            ax.axvline(
                best_epoch, color="#2ca02c", ls=":", lw=1.2, label=f"best (epoch {best_epoch})"
            )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if monitor and history:
        best = [r for r in history if r["epoch"] == best_epoch]
        if best and not math.isnan(_nan(best[0].get(monitor))):
            fig.suptitle(
                f"best {monitor} = {best[0][monitor]:.3f} at epoch {best_epoch}", fontsize=10
            )
    return _save(fig, path)


def stretch(image: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """An image ``(C, H, W)`` as displayable ``(H, W, 3)`` floats in [0, 1].

    The first 3 bands as RGB (1 band: grey; 2 bands: the first as grey), each band stretched
    between its ``low`` and ``high`` percentiles (non-finite values ignored).
    """
    image = np.asarray(image, dtype=np.float64)
    bands = image[:3] if image.shape[0] >= 3 else image[:1].repeat(3, axis=0)
    out = np.empty_like(bands)
    for i, band in enumerate(bands):
        finite = band[np.isfinite(band)]
        lo, hi = np.percentile(finite, [low, high]) if finite.size else (0.0, 1.0)
        out[i] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return np.nan_to_num(out.transpose(1, 2, 0))


def colorize(mask: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """A class-id mask ``(H, W)`` as ``(H, W, 3)`` floats, in :data:`PALETTE` colours."""
    from matplotlib.colors import to_rgb

    colours = np.array(
        [to_rgb(PALETTE[i % len(PALETTE)]) for i in range(num_classes)] + [to_rgb(IGNORE_COLOR)]
    )
    ids = np.where((mask == ignore_index) | (mask < 0) | (mask >= num_classes), num_classes, mask)
    return colours[ids.astype(np.int64)]


def _foreground(class_names: Sequence[str]) -> int:
    return list(class_names).index("building") if "building" in class_names else 1


def _iou_text(truth: np.ndarray, pred: np.ndarray, fg: int, ignore_index: int) -> str:
    valid = truth != ignore_index
    inter = np.sum((truth == fg) & (pred == fg) & valid)
    union = np.sum(((truth == fg) | (pred == fg)) & valid)
    return f"{inter / union:.2f}" if union else "n/a"


def errors_image(
    truth: np.ndarray, pred: np.ndarray, fg: int, ignore_index: int = 255
) -> np.ndarray:
    """``(H, W, 3)`` picture of agreement for class ``fg``: found grey, false orange, missed blue.

    Other confusions (between two non-``fg`` classes) are purple; ignored pixels black.
    """
    valid = truth != ignore_index
    out = np.full((*truth.shape, 3), 0.92)
    out[(pred == truth) & valid & (truth == fg)] = (0.55, 0.55, 0.55)
    out[(pred != truth) & valid & (pred == fg)] = (1.0, 0.6, 0.0)  # false positive
    out[(pred != truth) & valid & (truth == fg)] = (0.1, 0.4, 0.9)  # missed
    out[(pred != truth) & valid & (truth != fg) & (pred != fg)] = (0.6, 0.0, 0.6)
    out[~valid] = 0.0
    return out


def _legend(
    fig: Any,
    class_names: Sequence[str],
    ignore_index: int,
    extra: list | None = None,
    ncol: int = 7,
) -> None:
    from matplotlib.patches import Patch

    k, fg = len(class_names), _foreground(class_names)
    handles = [
        Patch(facecolor=PALETTE[c % len(PALETTE)], edgecolor="#666666", label=f"{c} {name}")
        for c, name in enumerate(class_names)
    ]
    handles.append(Patch(facecolor=IGNORE_COLOR, label=f"{ignore_index} ignored / nodata"))
    handles += [
        Patch(facecolor=(0.55, 0.55, 0.55), label=f"found {class_names[fg]}"),
        Patch(facecolor=(1.0, 0.6, 0.0), label=f"false {class_names[fg]}"),
        Patch(facecolor=(0.1, 0.4, 0.9), label=f"missed {class_names[fg]}"),
    ]
    if k > 2:
        handles.append(Patch(facecolor=(0.6, 0.0, 0.6), label="other confusion"))
    handles += extra or []
    ncol = min(len(handles), ncol)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)


def preview(
    images: np.ndarray,
    truths: np.ndarray,
    predictions: np.ndarray,
    path: Path,
    *,
    class_names: Sequence[str],
    ignore_index: int = 255,
) -> Path:
    """Patches side by side: image, truth, prediction, and where the prediction is wrong.

    Args:
        images: ``(N, C, H, W)`` patches in image units (de-normalised; stretched here).
        truths: ``(N, H, W)`` class ids, ``ignore_index`` = not labelled.
        predictions: ``(N, H, W)`` predicted class ids.
        path: PNG file to write (atomically).
        class_names: Names by class id, for the legend and the per-patch IoU.
        ignore_index: Mask value drawn black and left out of scores.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    n, k = len(images), len(class_names)
    fig = Figure(figsize=(10.5, 2.7 * n + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(n, 4, squeeze=False))
    fg = _foreground(class_names)
    for i in range(n):
        truth, pred = truths[i], predictions[i]
        valid = truth != ignore_index
        iou = _iou_text(truth, pred, fg, ignore_index)
        panels = [
            (stretch(images[i]), "image"),
            (colorize(truth, k, ignore_index), "truth"),
            (
                colorize(np.where(valid, pred, ignore_index), k, ignore_index),
                f"prediction ({class_names[fg]} IoU {iou})",
            ),
            (errors_image(truth, pred, fg, ignore_index), "errors"),
        ]
        for ax, (picture, title) in zip(axes[i], panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 or title.startswith("prediction"):
                ax.set_title(title, fontsize=9)
    _legend(fig, class_names, ignore_index)
    return _save(fig, path)


def _window_for(pred: Path, regions: Any, size: int) -> Any:
    """A window of at most ``size`` px on ``pred``'s grid: inside a test region when given."""
    import rasterio
    import shapely
    from rasterio.windows import Window, from_bounds

    with rasterio.open(pred) as src:
        full = Window(0, 0, src.width, src.height)
        win = full
        if regions is not None and src.crs is not None and len(regions):
            area = shapely.intersection(
                regions.to_crs(src.crs).union_all(), shapely.box(*src.bounds)
            )
            part = max(getattr(area, "geoms", [area]), key=lambda g: g.area)
            if part.is_empty or part.area < abs(src.res[0] * src.res[1]) * 64:  # under 8x8 px
                return None
            win = from_bounds(*part.bounds, transform=src.transform)
        col, row = int(round(win.col_off)), int(round(win.row_off))
        w, h = int(round(win.width)), int(round(win.height))
        if w > size:  # centre a size-wide crop on the region part
            col, w = col + (w - size) // 2, size
        if h > size:
            row, h = row + (h - size) // 2, size
        try:
            return Window(col, row, max(w, 1), max(h, 1)).intersection(full)
        except rasterio.errors.WindowError:  # the region only touches this raster
            return None


def pipeline_preview(
    cfg: Any,
    predictions: Sequence[Path],
    truths: Sequence[Path | None],
    footprints: Path | None,
    regions: Any,
    out: Path,
    *,
    size: int = 512,
) -> Path | None:
    """One test area of a pipeline run: image with footprints, truth, prediction, errors.

    Args:
        cfg: The run's PipelineConfig (image sources, class names, ignore value).
        predictions: Predicted mask GeoTIFFs (class ids, nodata 255).
        truths: Truth masks on each prediction's grid (model class ids), or None each.
        footprints: The run's footprints GeoPackage (outlined on the image), or None.
        regions: Test-split regions (GeoDataFrame) to pick the area from, or None.
        out: PNG file to write (atomically).
        size: Largest side of the area shown, in pixels.

    Returns:
        ``out``, or None when there is nothing to show (no prediction) or the picture could not
        be made (logged as a warning: a preview never stops a run).
    """
    try:
        return _pipeline_preview(cfg, predictions, truths, footprints, regions, out, size=size)
    except Exception as err:  # noqa: BLE001 - a picture must not fail the evaluate stage
        log.warning("no preview: %s: %s", type(err).__name__, err)
        return None


def _pipeline_preview(
    cfg: Any,
    predictions: Sequence[Path],
    truths: Sequence[Path | None],
    footprints: Path | None,
    regions: Any,
    out: Path,
    *,
    size: int = 512,
) -> Path | None:
    # the body of pipeline_preview
    import rasterio
    import shapely
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from geoseg import catalog

    names = cfg.model.resolved_class_names
    ignore = cfg.data.ignore_index
    picked = None
    for i, pred in enumerate(predictions):
        win = _window_for(pred, regions, size)
        if win is not None:
            picked = (i, win)
            break
    if picked is None:
        return None
    i, win = picked
    pred_path = Path(predictions[i])
    with rasterio.open(pred_path) as src:
        pred = src.read(1, window=win)
        transform, crs, grid = src.window_transform(win), src.crs, (src.transform, src.shape)
    truth = None
    if i < len(truths) and truths[i] is not None:
        with rasterio.open(truths[i]) as src:
            truth = src.read(1, window=win)
    image = None
    try:  # the input image of the same name, read on the prediction's grid
        sources = cfg.infer.inputs or cfg.data.images
        match = [p for p in catalog.find_rasters(sources) if p.stem == pred_path.stem]
        if match:
            with rasterio.open(match[0]) as src:
                if (src.transform, src.shape) == grid:
                    bands = (cfg.data.bands or list(range(1, src.count + 1)))[:3]
                    image = (
                        src.read(bands, window=win, masked=True).astype("float64").filled(np.nan)
                    )
    except (OSError, ValueError) as err:  # a preview never stops a run
        log.info("preview: no image for %s (%s)", pred_path.name, err)
    outlines = []
    if footprints is not None and Path(footprints).is_file():
        from geoseg import io

        gdf = io.read_vector(footprints)
        if len(gdf) and crs is not None and gdf.crs is not None:
            gdf = gdf.to_crs(crs)
        box = shapely.box(*rasterio.windows.bounds(win, grid[0]))
        inv = ~transform
        for geom in gdf.geometry[gdf.intersects(box)]:
            for poly in getattr(geom, "geoms", [geom]):
                xy = np.asarray(poly.exterior.coords)
                cols, rows = inv @ (xy[:, 0], xy[:, 1])
                outlines.append((np.asarray(cols) - 0.5, np.asarray(rows) - 0.5))
    fg, k = _foreground(names), len(names)
    panels: list[tuple[np.ndarray, str]] = []
    panels.append(
        (
            stretch(image) if image is not None else colorize(pred, k, ignore),
            "image + predicted footprints" if image is not None else "prediction + footprints",
        )
    )
    if truth is not None:
        panels.append((colorize(truth, k, ignore), "truth"))
        valid_pred = np.where(truth != ignore, pred, ignore)
        iou = _iou_text(truth, pred, fg, ignore)
        panels.append((colorize(valid_pred, k, ignore), f"prediction ({names[fg]} IoU {iou})"))
        panels.append((errors_image(truth, pred, fg, ignore), "errors"))
    else:
        panels.append((colorize(pred, k, ignore), "prediction"))
    aspect = pred.shape[1] / max(pred.shape[0], 1)
    panel = 4.0 * min(1.0, max(aspect, 0.4))  # width of one panel, inches; 4 in high
    fig = Figure(figsize=(max(7.0, len(panels) * panel + 0.4), 5.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for j, (ax, (picture, title)) in enumerate(zip(axes, panels, strict=True)):
        ax.imshow(picture, interpolation="nearest")
        if j == 0:
            for cols, rows in outlines:
                ax.plot(cols, rows, color="#ffdd00", lw=0.9)
            ax.set_xlim(-0.5, picture.shape[1] - 0.5)
            ax.set_ylim(picture.shape[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    where = "in a test region" if regions is not None else "of the raster"
    fig.suptitle(
        f"{pred_path.name}: {int(win.width)}x{int(win.height)} px at column {int(win.col_off)}, "
        f"row {int(win.row_off)} ({where})",
        fontsize=10,
    )
    extra = [Line2D([], [], color="#ffdd00", lw=1.5, label="footprint")] if outlines else []
    _legend(fig, names, ignore, extra, ncol=4)
    return _save(fig, out)


def _nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
