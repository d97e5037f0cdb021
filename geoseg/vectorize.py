"""Masks to footprints: class-id GeoTIFF -> valid polygons in the raster's CRS -> GeoPackage.

``polygons`` reads the mask in blocks (memory bounded by ``block_size``), polygonises each block
with :func:`rasterio.features.shapes` (always with the block's ``transform=``, so coordinates are
in the raster's CRS), merges the polygons that cross block seams into one, then cleans up
(minimum area in m², simplification in metres, optional right-angle regularisation) and adds the
attributes ``class_id``, ``class_name``, ``area_m2``, ``perimeter_m`` and ``confidence``.
``write`` saves a GeoDataFrame atomically (GeoPackage with a spatial index, GeoJSON,
FlatGeobuf or Shapefile, chosen by extension; see :data:`geoseg.io.VECTOR_DRIVERS`).

Masks are uint8 class ids (:mod:`geoseg.io`'s mask format); ``nodata`` (normally 255) is never
polygonised. Class names come from the mask's tags (:func:`geoseg.io.class_table`); without
them they are ``class_<id>``, or ``background``/``building`` for a two-class mask.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize, shapes
from rasterio.windows import Window
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geoseg import instances, io, progress, units, windows
from geoseg.config import VectorizeConfig
from geoseg.errors import ConfigError, RasterError

log = logging.getLogger(__name__)

#: The settings schema's defaults: geoseg vectorize, geoseg run and these functions agree.
DEFAULTS = VectorizeConfig()


def footprint_options(cfg: VectorizeConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`polygons` that a ``vectorize`` config section sets."""
    return {
        "classes": list(cfg.classes) or None,
        "min_area_m2": cfg.min_area_m2,
        "simplify_m": cfg.simplify_m,
        "regularize": cfg.regularize,
        "seed_erosion_m": cfg.seed_erosion_m,
        "min_confidence": cfg.min_confidence,
    }


COLUMNS = ["class_id", "class_name", "area_m2", "perimeter_m", "confidence"]
SHAPEFILE_NAMES = {"perimeter_m": "perim_m"}
#: Below this IoU with the polygon it came from, a regularised outline is rejected.
REGULARIZE_MIN_IOU = 0.7


# ----------------------------------------------------------------------------- class names


def class_names(mask: Path | str) -> list[str]:
    """The class names of a mask GeoTIFF, index = class id (:func:`geoseg.io.mask_class_names`).

    Read from the mask's tags (every dialect geoseg has written); without them the mask is
    scanned for its largest class id (nodata excluded): ``['background', 'building']`` for ids
    0-1, else ``class_0 ... class_<max>``.
    """
    with io.open_raster(mask, hint="pass a GeoTIFF mask") as src, io.reading(mask):
        io.check_mask(src, mask)
        return io.mask_class_names(src)


def select_classes(
    names: Sequence[str], classes: Sequence[str | int] | None, mask: Path | str = "mask"
) -> list[int]:
    """Class ids for names/ids given by the user (``building``, ``1``, ``class_3``).

    ``None`` selects every class except the background (id 0 or a class named ``background``).
    Raises ConfigError naming the mask and its classes for an unknown class.
    """
    if not classes:
        return [i for i, n in enumerate(names) if i != 0 and n.lower() != "background"]
    lookup = {n.lower(): i for i, n in enumerate(names)}
    ids: list[int] = []
    for c in classes:
        key = str(c).strip().lower()
        if key in lookup:
            ids.append(lookup[key])
        elif key.isdigit() and int(key) < len(names):
            ids.append(int(key))
        elif key.startswith("class_") and key[6:].isdigit() and int(key[6:]) < len(names):
            ids.append(int(key[6:]))
        else:
            listed = ", ".join(f"{i}={n}" for i, n in enumerate(names))
            raise ConfigError(
                f"{mask}: class {c!r} is not in the mask's classes ({listed}); "
                f"pass --class with one of these names or ids"
            )
    return sorted(set(ids))


# ----------------------------------------------------------------------------- polygonise


def polygons(
    mask: Path | str,
    *,
    classes: Sequence[str | int] | None = None,
    probabilities: Path | str | None = None,
    min_area_m2: float = DEFAULTS.min_area_m2,
    simplify_m: float = DEFAULTS.simplify_m,
    regularize: bool = DEFAULTS.regularize,
    seed_erosion_m: float | None = DEFAULTS.seed_erosion_m,
    min_confidence: float = DEFAULTS.min_confidence,
    block_size: int = 2048,
    allow_ungeoreferenced: bool = False,
    separate: bool | None = None,
) -> Any:  # geopandas.GeoDataFrame
    """Polygons of the connected regions of the chosen classes of a mask GeoTIFF.

    A mask predicted by an instance-aware model (tag ``geoseg_target=instances``, classes
    background/interior/edge/contact, see :mod:`geoseg.instances`) gives one polygon per
    building instead: touching buildings are separated, and each polygon is of class
    ``building`` (id 1).

    Args:
        mask: uint8 class-id GeoTIFF (band 1); its nodata value (255 by default) is skipped.
        classes: class names or ids to polygonise; default every class but the background.
        probabilities: optional probability raster on the mask's grid, one band per class
            (float 0-1, or integers scaled by the band scale, default 1/255, as ``geoseg
            infer`` writes them); gives each polygon's ``confidence``, the mean probability of
            its class over its pixels.
        min_area_m2: drop regions smaller than this, in square metres (computed in a projected
            CRS, also for geographic rasters).
        simplify_m: Douglas-Peucker tolerance in metres (topology preserved); 0 keeps the exact
            pixel outlines.
        regularize: square building outlines (edges snapped to the dominant orientation);
            outlines that would be invalid or differ too much stay as they were.
        seed_erosion_m: instance masks: interior pixels closer than this (metres, rounded to
            whole pixels, at least one) to a non-interior pixel are no watershed seeds; None =
            one pixel (:class:`geoseg.instances.SeedSettings`).
        min_confidence: drop polygons whose ``confidence`` is below this (0 = keep all); needs
            ``probabilities``.
        block_size: side of the blocks read at once, in pixels. Memory is about
            ``block_size² × (1 + 4 × probability bands)`` bytes plus the polygons.
        allow_ungeoreferenced: accept a mask without a CRS (areas then in its transform units).
        separate: separate touching buildings (instance masks only); None = when the mask is an
            instance mask and ``classes`` asks for buildings (or nothing); False = polygons of
            the classes as they are.

    Returns:
        A GeoDataFrame in the mask's CRS, one valid Polygon per connected region (holes kept),
        with columns ``class_id``, ``class_name``, ``area_m2``, ``perimeter_m``, ``confidence``
        (NaN without probabilities).
    """
    import geopandas as gpd

    mask = Path(mask)
    if block_size < 2:
        raise ConfigError(f"block_size={block_size} is too small; use e.g. 2048 (pixels)")
    if not 0 <= min_confidence < 1:
        raise ConfigError(f"min_confidence={min_confidence} must be >= 0 and < 1; e.g. 0.7")
    if min_confidence > 0 and not probabilities:
        raise ConfigError(
            f"{mask}: min_confidence={min_confidence} needs the class probabilities; pass "
            "--probabilities MASK_prob.tif (geoseg infer --probabilities writes it) or set "
            "vectorize.min_confidence to 0"
        )
    sources = [mask, *([probabilities] if probabilities else [])]
    with io.open_raster(mask, hint="pass a GeoTIFF mask") as src, io.reading(*sources):
        io.check_mask(src, mask)
        if src.crs is None and not allow_ungeoreferenced:
            raise RasterError(
                f"{mask}: the mask has no CRS, so polygons cannot be placed on the "
                "map; fix the file (e.g. gdal_edit.py -a_srs) or pass "
                "--allow-ungeoreferenced"
            )
        names = io.mask_class_names(src)
        buildings = _separates(src, classes, separate, mask)
        if buildings:
            # one polygon per building, all of class 1 (building = interior + edge pixels)
            ids = [instances.INTERIOR]
            prob = (
                _ProbabilityReader(
                    Path(probabilities), src, names, list(instances.BUILDING_CLASSES)
                )
                if probabilities
                else None
            )
            if prob is not None:
                prob.combine(instances.INTERIOR, list(instances.BUILDING_CLASSES))
        else:
            ids = select_classes(names, classes, mask)
            prob = (
                _ProbabilityReader(Path(probabilities), src, names, ids) if probabilities else None
            )
        crs = _gpd_crs(src.crs)
        grid = (src.crs, src.transform, src.width, src.height)
        try:
            geoms, class_id, conf_sum, conf_n = _polygonize(
                src,
                ids,
                block_size,
                prob,
                separate=buildings,
                probabilities=probabilities,
                seeds=_seed_settings(src, seed_erosion_m) if buildings else None,
            )
        finally:
            if prob is not None:
                prob.close()
        if buildings:
            names = ["background", "building"]

    with np.errstate(invalid="ignore", divide="ignore"):
        # each region's mean class probability (NaN without probabilities)
        confidence = conf_sum / conf_n if prob is not None else np.full(len(geoms), np.nan)
    keep = np.arange(len(geoms))
    if min_confidence > 0:
        # a region the model is unsure of as a whole: on three towns the model never saw, 37 of
        # the 39 polygons below 0.7 matched no building (README, "Buildings on real imagery")
        keep = keep[confidence >= min_confidence]
    if min_area_m2 > 0 and len(keep):
        keep = keep[_metric_area_length(geoms[keep], crs)[0] >= min_area_m2]
    geometry = geoms[keep]
    if (simplify_m > 0 or regularize) and len(geometry):
        geometry = _clean_in_metres(geometry, crs, grid, simplify_m, regularize)
    # Polygons straight from GDAL's polygoniser and GEOS's union are valid (checked on dense
    # random masks in the tests), so only cleaned-up outlines are checked and repaired.
    geometry, parts_of = _valid_polygons(geometry, check=simplify_m > 0 or regularize)
    keep = keep[parts_of]
    area, length = _metric_area_length(geometry, crs)
    out = gpd.GeoDataFrame(
        {
            "class_id": class_id[keep].astype("int32"),
            "class_name": np.array(names, dtype=object)[class_id[keep]],
            "area_m2": area,
            "perimeter_m": length,
            "confidence": confidence[keep].astype("float64"),
        },
        geometry=geometry,
        crs=crs,
    )
    log.info("%s: %d polygons of %s", mask, len(out), ", ".join(names[i] for i in ids))
    return out


def _separates(
    src: rasterio.DatasetReader,
    classes: Sequence[str | int] | None,
    separate: bool | None,
    mask: Path,
) -> bool:
    """Whether to label buildings one by one (an instance mask asked for its buildings)."""
    if separate is False:
        return False
    is_instance = instances.is_instance_mask(src)
    if separate and not is_instance:
        raise ConfigError(
            f"{mask}: not an instance mask (no {instances.TARGET_TAG}={instances.TARGET_INSTANCES} "
            "tag), so touching buildings cannot be separated; predict it with a model trained "
            "with data.target: instances"
        )
    if not is_instance:
        return False
    wanted = {str(c).strip().lower() for c in classes or []}
    building_words = {"building", "buildings", "interior", "edge", "1", "2", "class_1", "class_2"}
    return not wanted or wanted <= building_words


def _seed_settings(
    src: rasterio.DatasetReader, seed_erosion_m: float | None
) -> instances.SeedSettings:
    """Seed settings of a mask: ``seed_erosion_m`` in whole pixels of its grid (at least 1)."""
    if seed_erosion_m is None:
        return instances.SeedSettings()
    # (ungeoreferenced: the transform's units are taken as metres)
    pixel_m = instances.pixel_size_m(src.crs, src.transform, src.width, src.height)
    return instances.SeedSettings(erosion_px=max(1, round(seed_erosion_m / pixel_m)))


def _polygonize(
    src: rasterio.DatasetReader,
    ids: list[int],
    block_size: int,
    prob: _ProbabilityReader | None,
    *,
    separate: bool = False,
    probabilities: Path | str | None = None,
    seeds: instances.SeedSettings | None = None,
) -> tuple[np.ndarray, ...]:
    """Block pass + seam merge. Returns geometries (CRS), class ids, confidence sums, counts.

    With ``separate``, the blocks are building labels (:class:`geoseg.instances.BuildingLabels`):
    polygons take the building's id as value, so pieces of one building on both sides of a seam
    merge and touching buildings do not; their class is set to 1 after the merge.
    """
    transform = src.transform
    inverse = ~transform
    blocks = list(windows.read_blocks(src.width, src.height, block_size))
    geoms, values, on_seam, sums, counts = [], [], [], [], []
    nodata = src.nodata if src.nodata is not None else 255
    wanted = np.array([i for i in ids if i != nodata], dtype=np.int64)

    def add(window: Window, block: np.ndarray, selected: np.ndarray) -> None:
        wt = src.window_transform(window)
        g, v = _shapes(block, selected, wt)
        geoms.append(g)
        values.append(v)
        on_seam.append(_touches_inner_edge(g, inverse, window, src.width, src.height))
        if prob is not None:
            cls = np.full(len(v), ids[0], dtype=np.int64) if separate else v
            s, n = prob.sums(g, cls, window, wt)
            sums.append(s)
            counts.append(n)

    if separate:
        with instances.BuildingLabels(
            src,
            block_size=block_size,
            probabilities=Path(probabilities) if probabilities else None,
            seeds=seeds,
        ) as labels:
            with progress.bar(len(blocks), "vectorize", unit="blocks") as bar, _gc_paused():
                for window, regions in labels.regions():
                    selected = regions > 0
                    if selected.any():
                        add(window, regions, selected)
                    bar.advance()
            # region labels -> building ids; regions with several seeds are polygonised again
            # from their watershed split
            values = [labels.ids(v) for v in values]
            with _gc_paused():
                for window, split in labels.split():
                    add(window, split, split > 0)
        keep = [v >= 0 for v in values]
        geoms = [g[k] for g, k in zip(geoms, keep, strict=True)]
        on_seam = [x[k] for x, k in zip(on_seam, keep, strict=True)]
        sums = [x[k] for x, k in zip(sums, keep, strict=True)] if sums else sums
        counts = [x[k] for x, k in zip(counts, keep, strict=True)] if counts else counts
        values = [v[k] for v, k in zip(values, keep, strict=True)]
    else:
        with progress.bar(len(blocks), "vectorize", unit="blocks") as bar, _gc_paused():
            for window in blocks:
                block = src.read(1, window=window)
                selected = block == wanted[0] if len(wanted) == 1 else np.isin(block, wanted)
                if selected.any():
                    add(window, block, selected)
                bar.advance()
    if not geoms:
        empty = np.empty(0)
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64), empty, empty
    g = np.concatenate(geoms)
    v = np.concatenate(values)
    seam = np.concatenate(on_seam)
    s = np.concatenate(sums) if sums else np.zeros(len(g))
    n = np.concatenate(counts) if counts else np.zeros(len(g))
    if seam.any():
        mg, mv, ms, mn = _merge_seams(g[seam], v[seam], s[seam], n[seam], transform)
        whole = ~seam
        g = np.concatenate([g[whole], mg])
        v = np.concatenate([v[whole], mv])
        s = np.concatenate([s[whole], ms])
        n = np.concatenate([n[whole], mn])
    if separate:
        v = np.full(len(v), ids[0], dtype=np.int64)
    return g, v, s, n


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while many acyclic objects are made.

    ``shapes`` builds a dict, lists and tuples per polygon; they have no reference cycles and are
    freed by reference counting, but their sheer number triggers full collections that scan
    everything alive (measured: ~20% of the whole vectorize run on 20,000 buildings).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _shapes(
    block: np.ndarray, selected: np.ndarray, transform: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Polygons of the selected regions of one block, in CRS coordinates, and their class ids."""
    # rasterio.features.shapes yields GeoJSON-like dicts one by one; collecting them into flat
    # coordinate arrays and building all polygons in one shapely call is the cheapest conversion
    # (shapely.geometry.shape per dict was ~30x slower on a 2048² block of buildings).
    found = list(shapes(block, mask=selected, connectivity=4, transform=transform))
    if not found:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    geojson, vals = zip(*found, strict=True)
    polygon_rings = list(map(itemgetter("coordinates"), geojson))
    rings = list(chain.from_iterable(polygon_rings))
    ring_counts = np.fromiter(map(len, polygon_rings), dtype=np.int64, count=len(polygon_rings))
    ring_len = np.fromiter(map(len, rings), dtype=np.int64, count=len(rings))
    flat = chain.from_iterable(chain.from_iterable(rings))  # x0, y0, x1, y1, ... (C-level loops)
    xy = np.fromiter(flat, dtype=np.float64, count=2 * int(ring_len.sum())).reshape(-1, 2)
    ring_offsets = np.concatenate([[0], np.cumsum(ring_len)])
    geom_offsets = np.concatenate([[0], np.cumsum(ring_counts)])
    polys = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, xy, (ring_offsets, geom_offsets)
    )
    return polys, np.asarray(vals, dtype=np.int64)


def _touches_inner_edge(
    geoms: np.ndarray, inverse: Any, window: Window, width: int, height: int
) -> np.ndarray:
    """True for polygons whose pixel bounds reach an edge of the block shared with another block."""
    b = shapely.bounds(geoms)
    # Bounds corners to pixel space; for rotated transforms this over-selects, which is harmless
    # (an extra candidate is merged with nothing).
    xs = b[:, [0, 2, 0, 2]]
    ys = b[:, [1, 1, 3, 3]]
    cols = inverse.a * xs + inverse.b * ys + inverse.c
    rows = inverse.d * xs + inverse.e * ys + inverse.f
    c0, c1 = cols.min(1), cols.max(1)
    r0, r1 = rows.min(1), rows.max(1)
    left, top = window.col_off, window.row_off
    right, bottom = left + window.width, top + window.height
    eps = 1e-6
    seam = np.zeros(len(geoms), dtype=bool)
    if left > 0:
        seam |= c0 <= left + eps
    if top > 0:
        seam |= r0 <= top + eps
    if right < width:
        seam |= c1 >= right - eps
    if bottom < height:
        seam |= r1 >= bottom - eps
    return seam


def _merge_seams(
    geoms: np.ndarray, values: np.ndarray, sums: np.ndarray, counts: np.ndarray, transform: Any
) -> tuple[np.ndarray, ...]:
    """Union the seam polygons that share an edge (same class) into one polygon each.

    Every vertex from ``shapes`` is a pixel corner, so the candidates are taken to whole pixel
    coordinates first: the two sides of a seam then coincide exactly (in CRS units they can
    differ in the last bit, block origins being computed separately), and the union is exact.
    Pairs that share an edge (DE-9IM boundary/boundary of dimension 1) come from one STRtree
    query; their connected groups (scipy connected components) are unioned. Regions that touch
    only at a corner stay apart, as with 4-connectivity on the whole raster; candidates with no
    partner pass through untouched.
    """
    n = len(geoms)
    inverse = ~transform
    px = shapely.transform(geoms, lambda xy: np.rint(_apply(inverse, xy)))
    a, b = shapely.STRtree(px).query(px, predicate="intersects")
    pair = (a < b) & (values[a] == values[b])
    a, b = a[pair], b[pair]
    edge = shapely.relate_pattern(px[a], px[b], "****1****") if len(a) else np.zeros(0, bool)
    a, b = a[edge], b[edge]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    n_groups, group = connected_components(graph, directed=False)
    size = np.bincount(group, minlength=n_groups)
    alone = size[group] == 1
    # Groups of two (nearly all: a building cut by one seam) are unioned in one array call;
    # larger groups (a building over a block corner or several seams) one by one.
    members = np.flatnonzero(~alone)
    members = members[np.argsort(group[members], kind="stable")]
    starts = np.flatnonzero(np.r_[True, np.diff(group[members]) != 0])
    lengths = np.diff(np.r_[starts, len(members)])
    twos = starts[lengths == 2]
    merged: Any = list(shapely.union(px[members[twos]], px[members[twos + 1]]))
    for start, length in zip(starts[lengths > 2], lengths[lengths > 2], strict=True):
        merged.append(shapely.union_all(px[members[start : start + length]]))
    order = np.r_[twos, starts[lengths > 2]]
    merged_group = group[members[order]]
    merged = np.asarray(merged, dtype=object)
    # Drop the vertices the seams left on straight edges (exactly collinear in whole pixels),
    # so merged outlines have the vertices a whole-raster polygonisation gives.
    merged = shapely.transform(shapely.simplify(merged, 0.0), lambda xy: _apply(transform, xy))
    group_sums = np.bincount(group, weights=sums, minlength=n_groups)
    group_counts = np.bincount(group, weights=counts, minlength=n_groups)
    first_of_group = np.full(n_groups, -1)
    first_of_group[group[::-1]] = np.arange(n)[::-1]
    return (
        np.concatenate([geoms[alone], merged]),
        np.concatenate([values[alone], values[first_of_group[merged_group]]]),
        np.concatenate([sums[alone], group_sums[merged_group]]),
        np.concatenate([counts[alone], group_counts[merged_group]]),
    )


def _apply(affine: Any, xy: np.ndarray) -> np.ndarray:
    """An affine transform applied to an (N, 2) coordinate array."""
    x, y = xy[:, 0], xy[:, 1]
    # GDAL's geotransform order (origin + col * a + row * b), as rasterio's shapes computes it
    return np.column_stack(
        [affine.c + affine.a * x + affine.b * y, affine.f + affine.d * x + affine.e * y]
    )


class _ProbabilityReader:
    """Per-block sums of a class probability over polygon pixels (for ``confidence``)."""

    def __init__(
        self, path: Path, mask: rasterio.DatasetReader, names: list[str], ids: list[int]
    ) -> None:
        self.path = path
        self.src = io.open_raster(path, hint="pass the *_prob.tif written with this mask")
        s = self.src
        if (s.width, s.height) != (mask.width, mask.height) or not s.transform.almost_equals(
            mask.transform
        ):
            s.close()
            raise RasterError(
                f"{path}: probability grid {s.width}x{s.height} {tuple(s.transform)[:6]} "
                f"differs from the mask's {mask.width}x{mask.height} "
                f"{tuple(mask.transform)[:6]}; pass the *_prob.tif written with this mask"
            )
        table = io.class_table(mask)
        order = list(table) if table else list(range(len(names)))  # class value of each band
        if s.count == len(order) and all(i in order for i in ids):
            band = {i: order.index(i) + 1 for i in ids}
        elif s.count == 1 and len(ids) == 1:
            band = {ids[0]: 1}  # a single band: the probability of the one class asked for
        else:
            s.close()
            raise RasterError(
                f"{path}: {s.count} probability bands but the mask has "
                f"{len(order)} classes; expected one band per class"
            )
        self.bands = sorted(band.values())
        self.slot = np.zeros(max(ids) + 1, dtype=np.int64)
        for cls, b in band.items():
            self.slot[cls] = self.bands.index(b)
        self.extra: dict[int, list[int]] = {}
        # Integer bands hold p scaled to 0-255 (or to the band scale, e.g. 1/254 from geoseg
        # infer, which keeps 255 for nodata); float bands hold p itself.
        scale = s.scales[self.bands[0] - 1]
        if np.dtype(s.dtypes[0]).kind in "ui":
            self.scale = scale if scale not in (0, 1) else 1 / 255
        else:
            self.scale = 1.0

    def combine(self, cls: int, classes: list[int]) -> None:
        """Make the probability of ``cls`` the sum of those of ``classes`` (all read)."""
        self.extra[cls] = [self.slot[c] for c in classes]

    def sums(
        self, geoms: np.ndarray, values: np.ndarray, window: Window, transform: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(geoms)
        ids = rasterize(
            zip(geoms, range(1, n + 1), strict=True),
            out_shape=(int(window.height), int(window.width)),
            transform=transform,
            fill=0,
            dtype="int32",
        )
        rows, cols = np.nonzero(ids)
        poly = ids[rows, cols] - 1
        data = self.src.read(self.bands, window=window)
        if self.extra:  # one class whose probability is a sum of bands (instance masks)
            (slots,) = self.extra.values()
            p = data[slots][:, rows, cols].astype(np.float64).sum(0) * self.scale
        else:
            p = data[self.slot[values[poly]], rows, cols].astype(np.float64) * self.scale
        return (
            np.bincount(poly, weights=p, minlength=n),
            np.bincount(poly, minlength=n).astype(np.float64),
        )

    def close(self) -> None:
        self.src.close()


# ----------------------------------------------------------------------------- clean-up


def regularize_polygons(
    geoms: np.ndarray, *, tolerance: float, min_iou: float = REGULARIZE_MIN_IOU
) -> np.ndarray:
    """Building-like outlines: every edge parallel or perpendicular to the dominant orientation.

    The orientation is that of each polygon's minimum rotated rectangle. In that rotated frame
    the (simplified) rings' edges are classed horizontal or vertical, runs of one class become
    one straight line at their length-weighted mean position, and corners are where consecutive
    lines cross. A result that is invalid, or whose IoU with the input is below ``min_iou``,
    falls back to the simplified input. Hand-written (array-wise over all rings) because
    shapely has no orthogonalisation; ``tolerance`` (CRS units, about a pixel) removes the pixel
    staircase first.
    """
    geoms = np.asarray(geoms, dtype=object)
    base = shapely.simplify(geoms, tolerance, preserve_topology=True)
    env = shapely.oriented_envelope(base)
    angle = np.zeros(len(geoms))
    is_poly = shapely.get_type_id(env) == shapely.GeometryType.POLYGON
    if is_poly.any():
        ring = shapely.get_coordinates(shapely.get_exterior_ring(env[is_poly])).reshape(-1, 5, 2)
        d = ring[:, 1] - ring[:, 0]
        angle[is_poly] = np.mod(np.arctan2(d[:, 1], d[:, 0]), np.pi / 2)
    centre = shapely.get_coordinates(shapely.centroid(base))
    rotated = _rotate(base, -angle, centre)

    rings, poly_of_ring = shapely.get_rings(rotated, return_index=True)
    xy, ring_of = shapely.get_coordinates(rings, return_index=True)
    same = ring_of[1:] == ring_of[:-1]
    start = xy[:-1][same]
    d = (xy[1:] - xy[:-1])[same]
    edge_ring = ring_of[:-1][same]
    horizontal = np.abs(d[:, 0]) >= np.abs(d[:, 1])
    length = np.hypot(d[:, 0], d[:, 1])
    mid = start + d / 2
    # Runs of consecutive edges of one direction within a ring (the last run of a ring joins the
    # first when both have the same direction: rings are closed).
    new_ring = np.r_[True, edge_ring[1:] != edge_ring[:-1]]
    run_start = new_ring | np.r_[True, horizontal[1:] != horizontal[:-1]]
    run = np.cumsum(run_start) - 1
    first_edge = np.flatnonzero(new_ring)
    last_edge = np.r_[first_edge[1:], len(edge_ring)] - 1
    wrap = (horizontal[first_edge] == horizontal[last_edge]) & (run[first_edge] != run[last_edge])
    remap = np.arange(run.max() + 1 if len(run) else 0)
    remap[run[last_edge[wrap]]] = run[first_edge[wrap]]
    run = remap[run]
    run_ids, run = np.unique(run, return_inverse=True)
    nrun = len(run_ids)
    weight = np.bincount(run, weights=length, minlength=nrun)
    pos = np.where(horizontal, mid[:, 1], mid[:, 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        level = np.bincount(run, weights=length * pos, minlength=nrun) / weight
    run_h = np.zeros(nrun, dtype=bool)
    run_h[run] = horizontal
    run_ring = np.zeros(nrun, dtype=np.int64)
    run_ring[run] = edge_ring
    # Runs in ring order (run ids increase along each ring; the wrapped run keeps its first id).
    runs_per_ring = np.bincount(run_ring, minlength=len(rings))
    ring_ok = (runs_per_ring >= 4) & (runs_per_ring % 2 == 0)
    nxt = np.arange(1, nrun + 1)
    ring_first = np.r_[0, np.cumsum(runs_per_ring)[:-1]]
    last_of_ring = np.r_[run_ring[1:] != run_ring[:-1], True]
    nxt[last_of_ring] = ring_first[run_ring[last_of_ring]]
    nxt = np.minimum(nxt, nrun - 1) if nrun else nxt
    vx = np.where(run_h, level[nxt], level)
    vy = np.where(run_h, level, level[nxt])
    good = ring_ok[run_ring]
    # Rings that cannot be squared keep their (rotated, simplified) coordinates.
    keep_old = ~ring_ok[ring_of]
    coords = np.concatenate([np.column_stack([vx, vy])[good], xy[keep_old]])
    coord_ring = np.concatenate([run_ring[good], ring_of[keep_old]])
    order = np.argsort(coord_ring, kind="stable")
    new_rings = shapely.linearrings(coords[order], indices=coord_ring[order])
    result = np.full(len(geoms), None, dtype=object)
    if len(new_rings):
        shapely.polygons(new_rings, indices=poly_of_ring, out=result)
    result = _rotate(result, angle, centre)
    bad = ~shapely.is_valid(result) | shapely.is_empty(result)
    bad |= shapely.get_type_id(result) != shapely.GeometryType.POLYGON
    ok = np.flatnonzero(~bad)
    # IoU against the simplified outline (within a pixel of the input, far fewer vertices)
    inter = shapely.area(shapely.intersection(result[ok], base[ok]))
    union = shapely.area(base[ok]) + shapely.area(result[ok]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    bad[ok[iou < min_iou]] = True
    if bad.any():
        log.debug("regularize: %d of %d outlines kept unsquared", int(bad.sum()), len(geoms))
    return np.where(bad, base, result)


def _rotate(geoms: np.ndarray, angle: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Rotate each geometry by its own angle (radians, counter-clockwise) about its centre."""
    xy, idx = shapely.get_coordinates(geoms, return_index=True)
    if not len(xy):
        return geoms
    c, s = np.cos(angle[idx]), np.sin(angle[idx])
    rel = xy - centre[idx]
    out = centre[idx] + np.column_stack(
        [c * rel[:, 0] - s * rel[:, 1], s * rel[:, 0] + c * rel[:, 1]]
    )
    return shapely.set_coordinates(geoms.copy(), out)


def _valid_polygons(geoms: np.ndarray, *, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Repair invalid geometries and split multi-part results; returns parts and their source."""
    geoms = np.asarray(geoms, dtype=object)
    if not len(geoms):
        return geoms, np.empty(0, dtype=np.int64)
    invalid = ~shapely.is_valid(geoms) if check else np.zeros(len(geoms), dtype=bool)
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    if (shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON).all():
        parts, source = geoms, np.arange(len(geoms))  # get_parts would copy every polygon
    else:
        parts, source = shapely.get_parts(geoms, return_index=True)
    keep = (shapely.get_type_id(parts) == shapely.GeometryType.POLYGON) & ~shapely.is_empty(parts)
    keep &= shapely.area(parts) > 0
    return parts[keep], source[keep]


def _metric_area_length(geoms: np.ndarray, crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Area (m²) and perimeter (m) of each geometry, on the ground.

    Geographic CRSs, and projected ones whose areal scale is not true where the polygons are
    (Web Mercator: 1/cos²(latitude), 27 % too large at 27° N), go through their estimated UTM
    zone; other projected CRSs (UTM, equal-area Albers) use their unit; without a CRS the units
    are the transform's.
    """
    if not len(geoms) or crs is None:
        return shapely.area(geoms), shapely.length(geoms)
    box = shapely.total_bounds(geoms)
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    if crs.is_geographic or not units.true_scale(crs, *centre, area=True):
        import geopandas as gpd

        series = gpd.GeoSeries(geoms, crs=crs)
        geoms = series.to_crs(series.estimate_utm_crs()).values.to_numpy()
        return shapely.area(geoms), shapely.length(geoms)
    factor = units.nominal_metres_per_unit(crs) or 1.0
    return shapely.area(geoms) * factor**2, shapely.length(geoms) * factor


def _clean_in_metres(
    geoms: np.ndarray, crs: Any, grid: tuple[Any, Any, int, int], simplify_m: float, square: bool
) -> np.ndarray:
    """Simplify (tolerance in metres) and regularise polygons in a local metric frame per
    polygon (:class:`geoseg.units.LocalMetres`): on a geographic raster a degree of longitude
    is shorter than one of latitude, so a tolerance or a right angle in degrees is not one on
    the ground."""
    frame = units.LocalMetres(geoms, crs)
    local = frame.forward(geoms)
    if simplify_m > 0:
        local = shapely.simplify(local, simplify_m, preserve_topology=True)
    if square:
        # about a pixel: in metres in the local frames, else in the CRS's (metre) units
        if frame.scaled:
            pixel = math.sqrt(math.prod(units.pixel_size_m(*grid)))
        else:
            pixel = math.sqrt(abs(grid[1].determinant))
        local = regularize_polygons(local, tolerance=max(simplify_m, pixel))
    return frame.inverse(local)


# ----------------------------------------------------------------------------- output


def write(
    gdf: Any, out: Path | str, *, layer: str = DEFAULTS.layer, overwrite: bool = False
) -> Path:
    """Write polygons atomically: GeoPackage (spatial index), GeoJSON, FlatGeobuf or Shapefile.

    The format follows the extension (:data:`geoseg.io.VECTOR_DRIVERS`). The file is written
    under a temporary name in the same folder, read back and renamed when complete, so a reader
    never sees half a file. An empty GeoDataFrame gives an empty layer with the schema and the
    CRS. ``layer`` names the GeoPackage layer (ignored by the other formats). Shapefiles name
    ``perimeter_m`` ``perim_m`` (DBF names have at most 10 characters).

    Raises:
        ConfigError: an extension geoseg does not write.
        OutputExistsError: ``out`` exists and not ``overwrite``.
        OutputWriteError: the folder cannot take the file (full, read-only, no permission).
    """
    io.vector_driver(out)
    with io.claim(out, overwrite=overwrite) as output:
        return _write_claimed(gdf, output, layer)


def _write_claimed(gdf: Any, output: io.Output, layer: str) -> Path:
    """Write ``gdf`` into a claimed output (see :func:`write`)."""
    driver = io.vector_driver(output.path)
    options: dict[str, Any] = {"geometry_type": "Polygon"}
    if driver == "GPKG":
        options["SPATIAL_INDEX"] = "YES"
    if driver == "ESRI Shapefile":  # DBF field names are at most 10 characters
        gdf = gdf.rename(columns=SHAPEFILE_NAMES)
    from geoseg import export

    io.write_vector(
        gdf,
        output,
        layer=layer,
        # A default QGIS style in the GeoPackage's layer_styles table, before it is published.
        finish=(lambda tmp: export.footprint_style(tmp, layer=layer)) if driver == "GPKG" else None,
        **options,
    )
    log.info("wrote %d polygons to %s", len(gdf), output.path)
    return output.path


def vectorize(
    mask: Path | str,
    out: Path | str,
    *,
    layer: str = DEFAULTS.layer,
    overwrite: bool = False,
    **kwargs: Any,
) -> Path:
    """``polygons(mask, **kwargs)`` written to ``out`` (see :func:`polygons`, :func:`write`).

    ``out`` is claimed before the polygons are computed: an existing output, an output that is
    the mask itself, or an unwritable folder fail at once.
    """
    io.vector_driver(out)
    inputs = [mask, kwargs.get("probabilities")]
    with io.claim(out, overwrite=overwrite, inputs=inputs) as output:
        gdf = polygons(mask, **kwargs)
        return _write_claimed(gdf, output, layer)


# ----------------------------------------------------------------------------- helpers


def _gpd_crs(crs: Any) -> Any:
    """A pyproj CRS from a rasterio CRS, through WKT (custom CRSs have no EPSG code)."""
    if crs is None:
        return None
    from pyproj import CRS

    epsg = crs.to_epsg(confidence_threshold=100)
    return CRS.from_epsg(epsg) if epsg else CRS.from_wkt(crs.to_wkt())
