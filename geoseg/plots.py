"""Pictures of a training run: loss/IoU curves and prediction previews, as PNG files.

Matplotlib's object API (``Figure`` + the Agg canvas) is used rather than ``pyplot``, so making a
plot never changes the backend or the open figures of a notebook that calls the library.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, path)
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
    from matplotlib.patches import Patch

    n, k = len(images), len(class_names)
    fig = Figure(figsize=(10.5, 2.7 * n + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(n, 4, squeeze=False))
    fg = 1 if "building" not in class_names else list(class_names).index("building")
    for i in range(n):
        truth, pred = truths[i], predictions[i]
        valid = truth != ignore_index
        inter = np.sum((truth == fg) & (pred == fg) & valid)
        union = np.sum(((truth == fg) | (pred == fg)) & valid)
        iou = f"{inter / union:.2f}" if union else "n/a"
        errors = np.full((*truth.shape, 3), 0.92)
        errors[(pred == truth) & valid & (truth == fg)] = (0.55, 0.55, 0.55)
        errors[(pred != truth) & valid & (pred == fg)] = (1.0, 0.6, 0.0)  # false positive
        errors[(pred != truth) & valid & (truth == fg)] = (0.1, 0.4, 0.9)  # missed
        errors[(pred != truth) & valid & (truth != fg) & (pred != fg)] = (0.6, 0.0, 0.6)
        errors[~valid] = 0.0
        panels = [
            (stretch(images[i]), "image"),
            (colorize(truth, k, ignore_index), "truth"),
            (
                colorize(np.where(valid, pred, ignore_index), k, ignore_index),
                f"prediction ({class_names[fg]} IoU {iou})",
            ),
            (errors, "errors"),
        ]
        for ax, (picture, title) in zip(axes[i], panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 or title.startswith("prediction"):
                ax.set_title(title, fontsize=9)
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
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 7),
        fontsize=8,
        frameon=False,
    )
    return _save(fig, path)


def _nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
