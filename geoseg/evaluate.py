"""Scores of a prediction against the truth: pixel metrics for masks, building F1 for polygons.

- Two rasters: one confusion matrix over the whole area (:class:`geoseg.metrics.ConfusionMatrix`,
  the same code training reports), read in blocks; nodata/ignore pixels of either side left out.
  A truth on another grid is resampled (nearest) onto the prediction's grid, with a warning.
- Two vector files: the SpaceNet building metric (:func:`objects`): proposals taken in order of
  descending ``confidence``, each matched to the still-unmatched truth polygon of highest IoU,
  a true positive when that IoU is strictly above the threshold.
- A raster prediction and a vector truth: the prediction is vectorised (building class) and
  scored as objects, and the truth is burned onto the prediction's grid for pixel metrics
  (``mode`` = ``objects+pixels``). A vector prediction against a raster truth is the mirror image.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geoseg import io, progress, remote, vectorize, windows
from geoseg.errors import LabelError, RasterError

if TYPE_CHECKING:
    from geoseg.metrics import ConfusionMatrix

log = logging.getLogger(__name__)

CONFIDENCE_COLUMNS = ("confidence", "conf", "score")


# ----------------------------------------------------------------------------- objects


def objects(
    prediction: Path | str | Any,
    truth: Path | str | Any,
    *,
    iou_threshold: float = 0.5,
    regions: Any = None,
) -> dict[str, Any]:
    """SpaceNet building metric: greedy one-to-one matching of proposals to truth polygons.

    Proposals are taken in order of descending ``confidence`` (or ``conf``/``score``) when such
    a column exists, else in file order (ties keep file order). Each takes the still-unmatched
    truth polygon with the highest IoU; if that IoU is strictly greater than ``iou_threshold``
    it is a true positive and the truth polygon leaves the pool, otherwise a false positive.
    Unmatched truth polygons are false negatives. Both sides are brought to one projected CRS
    (the truth's if projected, else its estimated UTM zone) and repaired if invalid. Candidate
    pairs come from one STRtree query, IoUs from array-wise intersections: 100k buildings take
    seconds. Where a ratio has a zero denominator (no proposals, no truth) it is 0.

    Args:
        prediction: proposals: a vector file or a GeoDataFrame of polygons.
        truth: ground-truth polygons: a vector file or a GeoDataFrame.
        iou_threshold: IoU a match must exceed.
        regions: polygons (a GeoDataFrame in any CRS) to score inside, e.g. the test split's
            regions: only proposals and truth polygons whose representative point lies in one
            take part (both sides cut the same way). None = all.

    Returns:
        ``{'tp', 'fp', 'fn', 'precision', 'recall', 'f1', 'iou_threshold', 'mean_iou',
        'matches'}``; ``matches`` lists ``{'prediction': row, 'truth': row, 'iou'}`` (rows are
        positions in the inputs as read).
    """
    pred_name, pred = _read_vector(prediction)
    truth_name, ref = _read_vector(truth)
    pred, pred_pos = _in_regions(pred, regions)
    ref, ref_pos = _in_regions(ref, regions)
    pred, ref = _common_projected_crs(pred, ref, pred_name, truth_name)
    p_geoms, p_rows = _polygonal(pred.geometry.values.to_numpy())
    t_geoms, t_rows = _polygonal(ref.geometry.values.to_numpy())
    _check_overlap(p_geoms, t_geoms, pred_name, truth_name, pred.crs)

    # Order of the proposals: descending confidence (NaN last), stable so ties keep file order.
    column = next((c for c in CONFIDENCE_COLUMNS if c in pred.columns), None)
    rank = np.arange(len(p_geoms))
    if column is not None and len(p_geoms):
        score = pred[column].to_numpy(dtype=np.float64, na_value=np.nan)[p_rows]
        order = np.argsort(np.where(np.isnan(score), np.inf, -score), kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))

    p_idx, t_idx, iou = _pair_ious(p_geoms, t_geoms, above=iou_threshold)
    # Only pairs above the threshold can be matched: the best unmatched truth of a proposal is a
    # match exactly when it is one of them. Sort by proposal rank, then IoU (desc), then truth.
    above = iou > iou_threshold
    p_idx, t_idx, iou = p_idx[above], t_idx[above], iou[above]
    order = np.lexsort((t_idx, -iou, rank[p_idx]))
    used_p = np.zeros(len(p_geoms), dtype=bool)
    used_t = np.zeros(len(t_geoms), dtype=bool)
    matches: list[dict[str, Any]] = []
    # The greedy pass is inherently sequential; it runs over the (few) candidate pairs only.
    pairs = zip(p_idx[order].tolist(), t_idx[order].tolist(), iou[order].tolist(), strict=True)
    for p, t, v in pairs:
        if used_p[p] or used_t[t]:
            continue
        used_p[p] = used_t[t] = True
        matches.append(
            {"prediction": int(pred_pos[p_rows[p]]), "truth": int(ref_pos[t_rows[t]]), "iou": v}
        )
    tp = len(matches)
    fp = len(p_geoms) - tp
    fn = len(t_geoms) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    log.info("objects: tp=%d fp=%d fn=%d f1=%.4f", tp, fp, fn, f1)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "iou_threshold": float(iou_threshold),
        "mean_iou": float(np.mean([m["iou"] for m in matches])) if matches else math.nan,
        "matches": sorted(matches, key=lambda m: m["prediction"]),
    }


def _in_regions(gdf: Any, regions: Any) -> tuple[Any, np.ndarray]:
    """The rows whose representative point lies in ``regions``, and their positions in ``gdf``."""
    if regions is None:
        return gdf, np.arange(len(gdf))
    if not len(gdf):
        return gdf, np.arange(0)
    points = gdf.geometry.representative_point()
    if gdf.crs is not None and regions.crs is not None:
        points = points.to_crs(regions.crs)
    keep = points.within(regions.union_all()).to_numpy()
    return gdf[keep].reset_index(drop=True), np.flatnonzero(keep)


def with_matches(proposals: Any, result: dict[str, Any]) -> Any:
    """The proposals with each one's match written back, as columns.

    Args:
        proposals: the GeoDataFrame (or file) that was passed to :func:`objects` as prediction.
        result: what :func:`objects` returned for it.

    Returns:
        A copy with ``match_iou`` (the IoU with its truth polygon; NaN for a false positive) and
        ``truth_row`` (row of the matched truth polygon; -1 for a false positive).
    """
    _, gdf = _read_vector(proposals)
    gdf = gdf.copy()
    iou = np.full(len(gdf), np.nan)
    row = np.full(len(gdf), -1, dtype=np.int64)
    for m in result["matches"]:
        iou[m["prediction"]] = m["iou"]
        row[m["prediction"]] = m["truth"]
    gdf["match_iou"] = iou
    gdf["truth_row"] = row
    return gdf


def _pair_ious(
    a: np.ndarray, b: np.ndarray, above: float = -1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The intersecting (a, b) pairs whose IoU may exceed ``above``, with their IoU, array-wise."""
    if not len(a) or not len(b):
        e = np.empty(0, dtype=np.int64)
        return e, e, np.empty(0)
    ia, ib = shapely.STRtree(b).query(a, predicate="intersects")
    area_a, area_b = shapely.area(a)[ia], shapely.area(b)[ib]
    # Cheap upper bound first: |A ∩ B| <= min(|A|, |B|, |bbox(A) ∩ bbox(B)|). Pairs that cannot
    # pass ``above`` (neighbours that merely touch) skip the costly exact intersection.
    ba, bb = shapely.bounds(a)[ia], shapely.bounds(b)[ib]
    w = np.minimum(ba[:, 2], bb[:, 2]) - np.maximum(ba[:, 0], bb[:, 0])
    h = np.minimum(ba[:, 3], bb[:, 3]) - np.maximum(ba[:, 1], bb[:, 1])
    bound = np.minimum(np.clip(w, 0, None) * np.clip(h, 0, None), np.minimum(area_a, area_b))
    with np.errstate(invalid="ignore", divide="ignore"):
        possible = bound / (area_a + area_b - bound) >= above - 1e-9
    ia, ib, area_a, area_b = ia[possible], ib[possible], area_a[possible], area_b[possible]
    inter = shapely.area(shapely.intersection(a[ia], b[ib]))
    # |A ∪ B| = |A| + |B| - |A ∩ B| (cheaper than computing the union geometries).
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return ia.astype(np.int64), ib.astype(np.int64), iou


def _polygonal(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid polygonal geometries and their row numbers (null, empty, non-areal rows dropped)."""
    geoms = np.asarray(geoms, dtype=object)
    rows = np.arange(len(geoms))
    present = ~shapely.is_missing(geoms)
    geoms, rows = geoms[present], rows[present]
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        log.warning("%d invalid polygons repaired with make_valid", int(bad.sum()))
        geoms = geoms.copy()
        fixed = shapely.make_valid(geoms[bad])
        # Keep the areal parts of each repaired geometry (make_valid may return collections).
        parts, idx = shapely.get_parts(fixed, return_index=True)
        areal = np.isin(
            shapely.get_type_id(parts),
            [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON],
        )
        out = np.full(len(fixed), None, dtype=object)
        if areal.any():
            polys = shapely.get_parts(parts[areal], return_index=True)
            shapely.multipolygons(polys[0], indices=idx[areal][polys[1]], out=out)
        geoms[bad] = out
    keep = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms) & (shapely.area(geoms) > 0)
    return geoms[keep], rows[keep]


def _read_vector(source: Path | str | Any) -> tuple[str, Any]:
    import geopandas as gpd

    if isinstance(source, gpd.GeoDataFrame):
        return "<GeoDataFrame>", source.reset_index(drop=True)
    path = Path(source)
    gdf = io.read_vector(path)
    if gdf.crs is not None and gdf.crs.is_geographic and len(gdf):
        # A common mistake: projected coordinates in a file that declares longitude/latitude.
        b = gdf.total_bounds
        if np.isfinite(b).all() and (b[0] < -180.5 or b[2] > 360.5 or b[1] < -90.5 or b[3] > 90.5):
            raise LabelError(
                f"{path}: coordinates {_fmt(b)} are not longitude/latitude, but the file declares "
                f"{gdf.crs.to_string()}; fix its CRS (e.g. ogr2ogr -a_srs EPSG:XXXX)"
            )
    return str(path), gdf


def _common_projected_crs(
    pred: Any, truth: Any, pred_name: str, truth_name: str
) -> tuple[Any, Any]:
    """Both frames in one projected CRS: the truth's if projected, else an estimated UTM zone."""
    if pred.crs is None and truth.crs is None:
        return pred, truth
    if pred.crs is None or truth.crs is None:
        missing, other = (pred_name, truth_name) if pred.crs is None else (truth_name, pred_name)
        log.warning("%s has no CRS; assuming that of %s", missing, other)
        crs = truth.crs or pred.crs
        pred, truth = (
            pred.set_crs(crs, allow_override=True),
            truth.set_crs(crs, allow_override=True),
        )
    target = truth.crs
    if not target.is_projected:
        base = truth if len(truth) else pred
        target = base.geometry.estimate_utm_crs() if len(base) else target
    return (
        pred.to_crs(target) if pred.crs != target else pred,
        truth.to_crs(target) if truth.crs != target else truth,
    )


def _check_overlap(p: np.ndarray, t: np.ndarray, pred_name: str, truth_name: str, crs: Any) -> None:
    if not len(p) or not len(t):
        return
    pb, tb = shapely.total_bounds(p), shapely.total_bounds(t)
    if pb[0] > tb[2] or tb[0] > pb[2] or pb[1] > tb[3] or tb[1] > pb[3]:
        unit = f" ({crs.name})" if crs is not None else ""
        raise LabelError(
            f"{pred_name} extent {_fmt(pb)} and {truth_name} extent {_fmt(tb)} do not "
            f"overlap{unit}; check that both cover the same area and declare the right CRS"
        )


def _fmt(b: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in b) + ")"


# ----------------------------------------------------------------------------- pixels


def pixels(
    prediction: Path | str,
    truth: Path | str,
    *,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    block_size: int = 2048,
    regions: Any = None,
) -> dict[str, Any]:
    """Pixel metrics from one confusion matrix over the prediction raster (or its regions).

    Args:
        prediction: mask GeoTIFF of class ids (band 1); its nodata (default 255) is left out.
        truth: mask GeoTIFF of class ids; its nodata and ``ignore_index`` are left out. On another
            grid it is resampled (nearest) onto the prediction's, with a warning.
        class_names: names by class id; default from the masks' ``class_names`` tags, else
            ``class_<id>`` (``background``/``building`` for two classes).
        ignore_index: truth value of unlabelled pixels.
        block_size: side of the blocks read at once (pixels); memory ~ 10 × block_size² bytes.
        regions: polygons (a GeoDataFrame in any CRS) to score inside, e.g. the test split's
            regions; pixels whose centre lies outside every polygon are left out. None = all.

    Returns:
        :meth:`geoseg.metrics.ConfusionMatrix.scores`: ``per_class`` (name -> ``iou``, ``f1``,
        ``precision``, ``recall``, ``support``), ``miou``, ``accuracy``, ``confusion_matrix``
        (rows = truth, columns = prediction).
    """
    names = _pixel_class_names(Path(prediction), Path(truth), class_names)
    cm = confusion_matrix(
        prediction,
        truth,
        num_classes=len(names),
        ignore_index=ignore_index,
        block_size=block_size,
        regions=regions,
    )
    return cm.scores(names)


def confusion_matrix(
    prediction: Path | str,
    truth: Path | str,
    *,
    num_classes: int,
    ignore_index: int = 255,
    block_size: int = 2048,
    regions: Any = None,
) -> ConfusionMatrix:
    """The confusion matrix behind :func:`pixels`, to add up over several rasters (``merge``).

    Arguments as :func:`pixels`; ``num_classes`` is the matrix size (class ids 0..K-1).
    """
    pred_path, truth_path = Path(prediction), Path(truth)
    with (
        io.open_raster(pred_path, hint="pass a mask GeoTIFF") as pred,
        io.open_raster(truth_path, hint="pass a mask GeoTIFF") as ref,
        io.reading(pred_path, truth_path),
    ):
        same = (
            ref.crs == pred.crs
            and ref.transform.almost_equals(pred.transform)
            and (ref.width, ref.height) == (pred.width, pred.height)
        )
        args = (num_classes, ignore_index, block_size, pred_path, regions)
        if same:
            return _confusion(pred, ref, ref.nodata, *args)
        if pred.crs is None or ref.crs is None:
            raise RasterError(
                f"{truth_path}: grid differs from {pred_path} and one has no CRS, so "
                "they cannot be aligned; give both a CRS or the same grid"
            )
        _check_raster_overlap(pred, ref, pred_path, truth_path)
        msg = (
            f"{truth_path}: grid differs from the prediction's; resampled (nearest) onto "
            f"{pred_path}'s grid"
        )
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
        nodata = ref.nodata if ref.nodata is not None else ignore_index
        with WarpedVRT(
            ref,
            crs=pred.crs,
            transform=pred.transform,
            width=pred.width,
            height=pred.height,
            resampling=Resampling.nearest,
            nodata=nodata,
            src_nodata=nodata,
        ) as vrt:
            return _confusion(pred, vrt, nodata, *args)


def _confusion(
    pred: Any,
    truth: Any,
    truth_nodata: float | None,
    num_classes: int,
    ignore_index: int,
    block_size: int,
    source: Path,
    regions: Any,
) -> ConfusionMatrix:
    from geoseg.metrics import ConfusionMatrix  # torch: imported when scoring, not with the module

    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    inside = _RegionMask(regions, pred)
    blocks = list(windows.read_blocks(pred.width, pred.height, block_size))
    with progress.bar(len(blocks), "evaluate", unit="blocks") as bar:
        for window in blocks:
            p, t = _aligned_block(
                pred, truth.read(1, window=window), truth_nodata, window, ignore_index
            )
            outside = inside.outside(window)
            if outside is not None:
                t[outside] = ignore_index
            cm.update(p, t, source=str(source))
            bar.advance()
    return cm


class _RegionMask:
    """Which pixels of an open raster's windows lie outside the scoring regions."""

    def __init__(self, regions: Any, like: Any) -> None:
        self.like = like
        self.geoms: np.ndarray | None = None
        if regions is not None:
            gdf = regions.to_crs(like.crs) if regions.crs is not None and like.crs else regions
            self.geoms = np.asarray(gdf.geometry.values.to_numpy(), dtype=object)
            self.tree = shapely.STRtree(self.geoms)

    def outside(self, window: Window) -> np.ndarray | None:
        """Boolean (rows, cols) of ``window``: True where a pixel centre is in no region."""
        if self.geoms is None:
            return None
        shape = (int(window.height), int(window.width))
        hits = self.tree.query(shapely.box(*rasterio.windows.bounds(window, self.like.transform)))
        if not len(hits):
            return np.ones(shape, dtype=bool)
        burned = rasterize(
            ((g, 1) for g in self.geoms[hits]),
            out_shape=shape,
            transform=self.like.window_transform(window),
            fill=0,
            dtype="uint8",
        )
        return burned == 0


def _aligned_block(
    pred: Any,
    truth_block: np.ndarray,
    truth_nodata: float | None,
    window: Window,
    ignore_index: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and truth of one window as int64 with every left-out pixel = ignore_index."""
    p = pred.read(1, window=window).astype(np.int64)
    t = truth_block.astype(np.int64)
    pred_nodata = pred.nodata if pred.nodata is not None else 255
    out = p == pred_nodata
    if truth_nodata is not None:
        out |= truth_block == truth_nodata
    out |= t == ignore_index
    p[out] = ignore_index
    t[out] = ignore_index
    return p, t


def _pixel_class_names(
    pred_path: Path, truth_path: Path, class_names: Sequence[str] | None
) -> list[str]:
    if class_names:
        return [str(n) for n in class_names]
    with (
        io.open_raster(pred_path, hint="pass a mask GeoTIFF") as pred,
        io.open_raster(truth_path, hint="pass a mask GeoTIFF") as ref,
    ):
        for src in (pred, ref):
            if io.class_table(src) is not None:
                return io.mask_class_names(src)
        top = max(io.max_class_id(pred), io.max_class_id(ref))
    return io.default_class_names(top)


def _check_raster_overlap(pred: Any, ref: Any, pred_path: Path, truth_path: Path) -> None:
    tb = transform_bounds(ref.crs, pred.crs, *ref.bounds)
    pb = tuple(pred.bounds)
    if pb[0] >= tb[2] or tb[0] >= pb[2] or pb[1] >= tb[3] or tb[1] >= pb[3]:
        raise LabelError(
            f"{pred_path} extent {_fmt(pb)} and {truth_path} extent {_fmt(tb)} do "
            f"not overlap (in {pred.crs}); check that both cover the same area and "
            "declare the right CRS"
        )


def _pixels_with_vector(
    raster: Path,
    polygons: Any,
    names: list[str],
    building: int,
    *,
    raster_is_prediction: bool,
    vector_name: str,
    ignore_index: int = 255,
    block_size: int = 2048,
) -> dict[str, Any]:
    """Pixel metrics of a mask against polygons burned onto its grid (building id inside)."""
    from geoseg.metrics import ConfusionMatrix

    with io.open_raster(raster, hint="pass a mask GeoTIFF") as src, io.reading(raster):
        geoms = (
            polygons.to_crs(src.crs).geometry.values.to_numpy()
            if (polygons.crs is not None and src.crs is not None)
            else polygons.geometry.values.to_numpy()
        )
        geoms, _ = _polygonal(geoms)
        if len(polygons) and not len(geoms):
            raise LabelError(
                f"{vector_name}: no polygon lands on {raster}'s CRS ({src.crs}); check that both "
                "declare the right CRS"
            )
        if len(geoms):
            box = shapely.box(*src.bounds)
            if not shapely.intersects(box, shapely.box(*shapely.total_bounds(geoms))):
                raise LabelError(
                    f"{raster} extent {_fmt(src.bounds)} and {vector_name} extent "
                    f"{_fmt(shapely.total_bounds(geoms))} do not overlap; check that "
                    "both cover the same area and declare the right CRS"
                )
        tree = shapely.STRtree(geoms)
        cm = ConfusionMatrix(len(names), ignore_index=ignore_index)
        blocks = list(windows.read_blocks(src.width, src.height, block_size))
        with progress.bar(len(blocks), "evaluate", unit="blocks") as bar:
            for window in blocks:
                wt = src.window_transform(window)
                hits = tree.query(shapely.box(*rasterio.windows.bounds(window, src.transform)))
                shape = (int(window.height), int(window.width))
                burned = (
                    rasterize(
                        ((g, building) for g in geoms[hits]),
                        out_shape=shape,
                        transform=wt,
                        fill=0,
                        dtype="uint8",
                    )
                    if len(hits)
                    else np.zeros(shape, dtype=np.uint8)
                )
                mask, other = _aligned_block(src, burned, None, window, ignore_index)
                p, t = (mask, other) if raster_is_prediction else (other, mask)
                cm.update(p, t, source=str(raster))
                bar.advance()
    return cm.scores(names)


# ----------------------------------------------------------------------------- dispatch


def evaluate(
    prediction: Path | str,
    truth: Path | str,
    *,
    iou_threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    report: Path | str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score a prediction against the truth; what is done depends on the two file types.

    Two rasters: pixel metrics (``mode='pixels'``). Two vector files: object metrics
    (``mode='objects'``). A raster and a vector file: the raster is vectorised (building class)
    and scored as objects, and the vector side is burned onto the raster's grid for pixel
    metrics (``mode='objects+pixels'``).

    Args:
        prediction: mask GeoTIFF or polygon file.
        truth: mask GeoTIFF or polygon file.
        iou_threshold: IoU a building match must exceed (object metrics).
        class_names: class names by id for pixel metrics (default: the masks' tags).
        report: optional JSON file to write the report to (atomically; NaN written as null).
        overwrite: replace ``report`` if it exists.

    Returns:
        The report: ``mode``, ``prediction``, ``truth``, then the object keys (``tp``, ``fp``,
        ``fn``, ``precision``, ``recall``, ``f1``, ``iou_threshold``, ``mean_iou``, ``matches``)
        and/or the pixel keys (``per_class``, ``miou``, ``accuracy``, ``confusion_matrix``).
    """
    prediction, truth = remote.as_path(prediction), remote.as_path(truth)
    claim = (
        io.claim(report, overwrite=overwrite, inputs=[prediction, truth], option="--json")
        if report is not None
        else contextlib.nullcontext()
    )
    with claim as output, remote.env([prediction, truth]):
        out = _evaluate(prediction, truth, iou_threshold, class_names)
        if output is not None:
            io.write_json(out, output, indent=_indent(out))
    return out


def _evaluate(
    prediction: Path, truth: Path, iou_threshold: float, class_names: Sequence[str] | None
) -> dict[str, Any]:
    kinds = (io.file_kind(prediction), io.file_kind(truth))
    out: dict[str, Any] = {"prediction": remote.to_url(prediction), "truth": remote.to_url(truth)}
    if kinds == ("raster", "raster"):
        out["mode"] = "pixels"
        out.update(pixels(prediction, truth, class_names=class_names))
    elif kinds == ("vector", "vector"):
        out["mode"] = "objects"
        out.update(objects(prediction, truth, iou_threshold=iou_threshold))
    else:
        raster, vector = (prediction, truth) if kinds[0] == "raster" else (truth, prediction)
        out["mode"] = "objects+pixels"
        names = list(class_names) if class_names else vectorize.class_names(raster)
        lower = [n.lower() for n in names]
        building = lower.index("building") if "building" in lower else len(names) - 1
        polys = vectorize.polygons(raster, classes=[building], allow_ungeoreferenced=True)
        _, vec = _read_vector(vector)
        scored = (polys, vec) if kinds[0] == "raster" else (vec, polys)
        # Pixel metrics first: they give the clearer no-overlap error (with the raster's extent).
        pix = _pixels_with_vector(
            raster,
            vec,
            names,
            building,
            raster_is_prediction=kinds[0] == "raster",
            vector_name=str(vector),
        )
        # Only the polygons on the raster's valid pixels can be found (or be right) there.
        inside = _on_valid_pixels(raster, vec)
        vec = vec[inside].reset_index(drop=True)
        scored = (polys, vec) if kinds[0] == "raster" else (vec, polys)
        out.update(objects(*scored, iou_threshold=iou_threshold))
        out.update(pix)
        out["vectorized"] = str(raster)
        out["rasterized"] = str(vector)
        out["polygons_outside_raster"] = int((~inside).sum())
    return out


def _on_valid_pixels(raster: Path, polygons: Any) -> np.ndarray:
    """True for polygons whose representative point falls on a valid (not nodata) pixel."""
    keep = np.zeros(len(polygons), dtype=bool)
    if not len(polygons):
        return keep
    with io.open_raster(raster, hint="pass a mask GeoTIFF") as src, io.reading(raster):
        geoms = polygons.geometry
        if polygons.crs is not None and src.crs is not None:
            geoms = geoms.to_crs(src.crs)
        xy = shapely.get_coordinates(shapely.point_on_surface(geoms.values.to_numpy()))
        present = ~shapely.is_missing(geoms.values.to_numpy()) & ~geoms.is_empty.to_numpy()
        inv = ~src.transform
        cols = np.floor(inv.c + inv.a * xy[:, 0] + inv.b * xy[:, 1])
        rows = np.floor(inv.f + inv.d * xy[:, 0] + inv.e * xy[:, 1])
        on_grid = (cols >= 0) & (cols < src.width) & (rows >= 0) & (rows < src.height)
        idx = np.flatnonzero(present)[on_grid]
        nodata = src.nodata if src.nodata is not None else 255
        values = [v[0] for v in src.sample(xy[on_grid], indexes=1)] if len(idx) else []
        keep[idx] = np.asarray(values) != nodata
    return keep


def write_json(report: dict[str, Any], path: Path, *, overwrite: bool = True) -> Path:
    """Write a report as strict JSON (NaN -> null), atomically (:func:`geoseg.io.write_json`)."""
    return io.write_json(report, path, indent=_indent(report), overwrite=overwrite)


def _indent(report: dict[str, Any]) -> int | None:
    # Indented for people; large reports (thousands of matches) compact, as the indenting
    # encoder is pure Python and takes seconds there.
    return 2 if len(report.get("matches", ())) <= 2000 else None
