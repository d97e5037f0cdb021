"""Built-in demo data: synthetic but realistic georeferenced aerial scenes with buildings.

No data can be downloaded, so the demo and most tests run on scenes made here, deterministic by
seed. One *scene* (roads, land-cover parcels, trees and buildings as shapely geometries, in metres
of EPSG:32631) is generated for the whole mosaic, then every tile renders its own window of it, so
neighbouring tiles continue each other like real orthophoto tiles:

* ``images/tile_XX.tif``: 3-band uint8 RGB GeoTIFFs, 0.5 m pixels, north-up, tiled 256 px,
  deflate + predictor 2, band descriptions ``red/green/blue``, ``nodata=0`` (valid pixels are
  never 0 in any band). Tiles lie on a grid of neighbours in UTM 31N (EPSG:32631) near the 6°E
  zone boundary; with ``tiles >= 2`` the **last** tile is written in UTM 32N (EPSG:32632), so its
  grid is rotated by ~4.4° against its neighbours and reading the mosaic needs reprojection.
  ``tile_00`` has a slanted nodata border on its west side (all bands 0 there), like the edge of
  an image strip.
* ``masks/tile_XX.tif``: uint8 on exactly the image grid; 0 background, 1 building, 255 where
  the image is nodata (``nodata=255``); tiled, deflate-compressed, with a colour table.
* ``buildings.gpkg``: layer ``buildings``, one polygon per building *per tile* (clipped to the
  tile footprint and to its valid pixels, so a building crossing a tile edge appears once per
  tile), columns ``building_id`` (the same for all pieces of one building), ``class`` (=1) and
  ``tile`` (``tile_XX``). All polygons are stored in **one CRS, EPSG:32631** (the majority CRS,
  metres, so areas are in m²); the EPSG:32632 tile's polygons are reprojected into it vertex by
  vertex, so reprojecting them back reproduces that tile's mask exactly. Masks are *drawn* by
  rasterising these polygons (``rasterio.features.rasterize``, ``all_touched=False``), so
  rasterising the file onto a tile's grid gives its mask back.
* ``preview.png``: ``tile_00`` beside its mask overlay.

Scene content a model has to learn rather than threshold: grass, dry grass, bare soil, gravel,
ploughed/cropped fields with rows, concrete and asphalt lots; streets with sidewalks and
dash-marked arterials; trees (textured round crowns, lit on the sun side) and buildings (houses,
L-shapes, terraces of touching units, large flat-roofed halls; 6-30 m, random orientations) whose
roof colours overlap the ground's (grey roofs vs asphalt, red-brown roofs vs soil, white roofs vs
concrete). Pitched roofs are shaded per facet from the sun direction, outlines are bright, and
everything casts a shadow computed from a height field; then a mild blur and sensor noise.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.crs import CRS
from rasterio.transform import Affine
from scipy import ndimage

from geoseg import io, progress
from geoseg.errors import ConfigError, OutputExistsError

logger = logging.getLogger(__name__)

RES_M = 0.5
"""Pixel size of every demo tile, metres."""
SCENE_EPSG = 32631
"""CRS of the scene, of most tiles and of ``buildings.gpkg`` (UTM zone 31N)."""
OTHER_EPSG = 32632
"""CRS of the last tile (UTM zone 32N, the neighbouring zone)."""
MIN_SIZE = 64
"""Smallest tile size, pixels."""
MIN_TILES = 1
NODATA_IMAGE = 0
NODATA_MASK = io.MASK_NODATA
LAYER = "buildings"

_BLOCK = 256  # image block size (smaller tiles use the largest multiple of 16 that fits)
_PAD = 48  # px rendered around each tile so shadows, blur and noise continue across tile edges
_ANCHOR_LONLAT = (6.0, 47.6)  # the 31N/32N zone boundary, Franche-Comté / Jura
_MARGIN_M = 40.0  # scene generated this far beyond the tiles' padded footprints


@dataclass
class DemoData:
    """Where :func:`make_demo_data` wrote everything.

    Attributes:
        images: ``images/tile_XX.tif`` (3-band uint8 RGB, nodata 0), in tile order.
        masks: ``masks/tile_XX.tif`` (uint8: 0 background, 1 building, 255 nodata), same order.
        buildings: ``buildings.gpkg`` (layer ``buildings``, EPSG:32631).
        preview: ``preview.png`` (the first tile beside its mask).
        crs_wkts: each tile's CRS as WKT, same order as ``images``.
        names: tile names (``tile_00`` ...).
        building_count: number of polygons in ``buildings.gpkg`` (pieces per tile).
        building_fraction: share of valid pixels that are buildings, over all tiles.
    """

    images: list[Path]
    masks: list[Path]
    buildings: Path
    preview: Path
    crs_wkts: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    building_count: int = 0
    building_fraction: float = 0.0


def make_demo_data(
    out_dir: Path,
    *,
    tiles: int = 4,
    size: int = 1024,
    seed: int = 0,
    overwrite: bool = False,
) -> DemoData:
    """Write synthetic georeferenced demo scenes, their building masks and footprints.

    Args:
        out_dir: folder to write into; created if missing; must be empty unless ``overwrite``.
        tiles: number of tiles (laid out on a grid of neighbours, ``ceil(sqrt(tiles))`` columns).
            With ``tiles >= 2`` the last tile is in EPSG:32632; ``tile_00`` always has a nodata
            border.
        size: tile width and height in pixels (0.5 m each); at least 64.
        seed: random seed; the same seed gives byte-identical rasters.
        overwrite: write into a non-empty ``out_dir``, replacing earlier demo files (stale
            ``tile_XX.tif`` left from a run with more tiles are removed).

    Returns:
        The paths written, see :class:`DemoData`. Memory: about 150 bytes per pixel of one
        tile (~0.2 GB at ``size=1024``, ~0.7 GB at 2048) on top of the imports.

    Raises:
        ConfigError: ``tiles`` or ``size`` out of range, or a negative ``seed``.
        OutputExistsError: ``out_dir`` is not empty and ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    if tiles < MIN_TILES:
        raise ConfigError(f"tiles={tiles}: expected at least {MIN_TILES}; pass e.g. tiles=4")
    if size < MIN_SIZE:
        raise ConfigError(f"size={size} px: expected at least {MIN_SIZE}; pass e.g. size=1024")
    if seed < 0:
        raise ConfigError(f"seed={seed}: expected a non-negative integer")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(
            f"{out_dir} exists and is not a folder; choose a folder for the demo data"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out_dir} is not empty; pass --overwrite to replace its demo data "
            "or choose an empty folder"
        )
    images_dir, masks_dir = out_dir / "images", out_dir / "masks"
    with io.new_folders(images_dir, masks_dir):  # removed again if nothing could be written
        return _write_demo(out_dir, tiles=tiles, size=size, seed=seed)


def _write_demo(out_dir: Path, *, tiles: int, size: int, seed: int) -> DemoData:
    """The work of :func:`make_demo_data` (arguments checked, folders made)."""
    images_dir, masks_dir = out_dir / "images", out_dir / "masks"
    layout = _layout(tiles, size)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    scene = _make_scene(rng, layout.scene_bounds)
    logger.info(
        "demo scene: %d buildings, %d trees, %d roads over %.2f km²",
        len(scene.buildings),
        len(scene.trees),
        len(scene.roads),
        shapely.area(shapely.box(*layout.scene_bounds)) / 1e6,
    )

    names = [f"tile_{i:02d}" for i in range(tiles)]
    images: list[Path] = []
    masks: list[Path] = []
    pieces: list[Any] = []
    piece_ids: list[np.ndarray] = []
    piece_tiles: list[str] = []
    n_building = n_valid = 0
    by_crs: dict[int, _Scene] = {SCENE_EPSG: scene}
    with progress.bar(tiles, "demo tiles") as pbar:
        for i, name in enumerate(names):
            epsg, transform = layout.crs[i], layout.transforms[i]
            if epsg not in by_crs:
                by_crs[epsg] = scene.to_crs(epsg)
            tile_scene = by_crs[epsg]
            tile_rng = np.random.default_rng(np.random.SeedSequence([seed, 1, i]))
            footprint = _footprint(transform, size)
            nodata_poly = _nodata_region(tile_rng, transform, size) if i == 0 else None
            rgb, building = _render(tile_scene, tile_rng, transform, size)
            mask = building.astype(np.uint8)
            if nodata_poly is not None:
                nodata = features.rasterize(
                    [(nodata_poly, 1)], out_shape=(size, size), transform=transform, dtype=np.uint8
                ).astype(bool)
                rgb[:, nodata] = NODATA_IMAGE
                mask[nodata] = NODATA_MASK
                valid_area = shapely.difference(footprint, nodata_poly)
            else:
                valid_area = footprint
            n_building += int((mask == 1).sum())
            n_valid += int((mask != NODATA_MASK).sum())

            crs = CRS.from_epsg(epsg)
            images.append(_write_image(images_dir / f"{name}.tif", rgb, crs, transform))
            masks.append(_write_mask(masks_dir / f"{name}.tif", mask, crs, transform))

            # Footprints: the buildings clipped to this tile's valid pixels, back in the scene CRS.
            geoms = tile_scene.buildings
            hit = shapely.intersects(geoms, valid_area)
            clipped = shapely.intersection(geoms[hit], valid_area)
            clipped = _polygonal(clipped)
            keep = ~shapely.is_empty(clipped) & (shapely.area(clipped) > 0)
            clipped = clipped[keep]
            if epsg != SCENE_EPSG:
                clipped = _reproject(clipped, epsg, SCENE_EPSG)
            pieces.append(clipped)
            piece_ids.append(np.flatnonzero(hit)[keep])
            piece_tiles.extend([name] * len(clipped))
            pbar.advance()

    _remove_stale(images_dir, masks_dir, set(names))
    buildings = _write_buildings(
        out_dir / "buildings.gpkg", np.concatenate(pieces), np.concatenate(piece_ids), piece_tiles
    )
    preview = _write_preview(out_dir / "preview.png", images[0], masks[0], names[0])
    fraction = n_building / max(n_valid, 1)
    logger.info(
        "demo data in %s: %d tiles, building fraction %.1f%%", out_dir, tiles, 100 * fraction
    )
    return DemoData(
        images=images,
        masks=masks,
        buildings=buildings,
        preview=preview,
        crs_wkts=[CRS.from_epsg(e).to_wkt() for e in layout.crs],
        names=names,
        building_count=len(piece_tiles),
        building_fraction=fraction,
    )


# --------------------------------------------------------------------------------------------
# Layout: where the tiles are and in which CRS.


@dataclass
class _Layout:
    crs: list[int]
    transforms: list[Affine]
    scene_bounds: tuple[float, float, float, float]  # in SCENE_EPSG metres


def _layout(tiles: int, size: int) -> _Layout:
    from pyproj import Transformer

    ncols = int(np.ceil(np.sqrt(tiles)))
    nrows = int(np.ceil(tiles / ncols))
    tile_m = size * RES_M
    xb, yb = Transformer.from_crs(4326, SCENE_EPSG, always_xy=True).transform(*_ANCHOR_LONLAT)
    # The mosaic ends half a tile east of the zone boundary, so the last column straddles it.
    x0 = float(np.round(xb - (ncols - 0.5) * tile_m))
    y0 = float(np.round(yb + nrows * tile_m / 2))
    crs: list[int] = []
    transforms: list[Affine] = []
    outlines = []
    for i in range(tiles):
        row, col = divmod(i, ncols)
        left, top = x0 + col * tile_m, y0 - row * tile_m
        if tiles >= 2 and i == tiles - 1:
            # Same place on the ground, written in the neighbouring zone on its own north-up grid.
            cx, cy = Transformer.from_crs(SCENE_EPSG, OTHER_EPSG, always_xy=True).transform(
                left + tile_m / 2, top - tile_m / 2
            )
            left = float(np.round((cx - tile_m / 2) / RES_M) * RES_M)
            top = float(np.round((cy + tile_m / 2) / RES_M) * RES_M)
            transform = Affine(RES_M, 0.0, left, 0.0, -RES_M, top)
            outline = _reproject(np.array([_footprint(transform, size)]), OTHER_EPSG, SCENE_EPSG)[0]
            crs.append(OTHER_EPSG)
        else:
            transform = Affine(RES_M, 0.0, left, 0.0, -RES_M, top)
            outline = _footprint(transform, size)
            crs.append(SCENE_EPSG)
        transforms.append(transform)
        outlines.append(outline)
    grow = _PAD * RES_M + _MARGIN_M
    xmin, ymin, xmax, ymax = shapely.total_bounds(np.array(outlines))
    return _Layout(crs, transforms, (xmin - grow, ymin - grow, xmax + grow, ymax + grow))


def _footprint(transform: Affine, size: int) -> Any:
    left, top = transform.c, transform.f
    return shapely.box(left, top - size * RES_M, left + size * RES_M, top)


def _apply(t: Affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An affine transform applied to coordinate arrays."""
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


def _reproject(geoms: np.ndarray, src: int, dst: int) -> np.ndarray:
    from pyproj import Transformer

    tr = Transformer.from_crs(src, dst, always_xy=True)

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geoms, fn)


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """Keep only the polygon parts of clipping results (drop slivers of lines/points)."""
    out = geoms.copy()
    kinds = shapely.get_type_id(out)
    for j in np.flatnonzero(kinds == 7):  # GeometryCollection: rare, a handful per scene
        parts = [p for p in shapely.get_parts(out[j]) if shapely.get_type_id(p) in (3, 6)]
        out[j] = shapely.union_all(parts) if parts else shapely.Polygon()
    out[(kinds != 3) & (kinds != 6) & (kinds != 7)] = shapely.Polygon()
    return out


def _nodata_region(rng: np.random.Generator, transform: Affine, size: int) -> Any:
    """A slanted strip along the west edge, like the end of an image strip (world coords)."""
    top_x = rng.uniform(0.14, 0.26) * size
    bottom_x = rng.uniform(0.03, 0.10) * size
    px = np.array([[-1.0, -1.0], [top_x, -1.0], [bottom_x, size + 1.0], [-1.0, size + 1.0]])
    xs, ys = _apply(transform, px[:, 0], px[:, 1])
    return shapely.Polygon(np.column_stack([xs, ys]))


# --------------------------------------------------------------------------------------------
# The scene: geometries in metres plus per-geometry attributes.

# Land covers: base RGB, texture amplitude (low, mid, fine frequency), draw probability.
_GRASS, _DRY, _SOIL, _FIELD, _CONCRETE, _ASPHALT, _GRAVEL = range(7)
_COVER_RGB = np.array(
    [
        [88, 118, 60],
        [146, 140, 92],
        [138, 110, 84],
        [100, 118, 64],
        [170, 168, 160],
        [98, 98, 100],
        [156, 146, 128],
    ],
    dtype=np.float32,
)
_COVER_TEX = np.array(
    [
        [0.10, 0.09, 0.07],
        [0.10, 0.08, 0.07],
        [0.09, 0.08, 0.08],
        [0.06, 0.05, 0.05],
        [0.05, 0.04, 0.04],
        [0.05, 0.03, 0.05],
        [0.06, 0.06, 0.09],
    ],
    dtype=np.float32,
)
_COVER_P = np.array([0.41, 0.10, 0.12, 0.11, 0.10, 0.08, 0.08])
_FIELD_SOIL = np.array([128, 104, 78], dtype=np.float32)

# Roofs: pitched (tiles/slate/metal) and flat (membrane/gravel/concrete) palettes, RGB.
_ROOF_PITCHED = np.array(
    [[148, 84, 62], [172, 98, 72], [126, 94, 78], [74, 76, 82], [106, 106, 108], [138, 112, 90]],
    dtype=np.float32,
)
_ROOF_PITCHED_P = np.array([0.24, 0.14, 0.16, 0.18, 0.18, 0.10])
_ROOF_FLAT = np.array(
    [[196, 194, 188], [104, 104, 106], [70, 72, 76], [178, 164, 138], [150, 150, 146]],
    dtype=np.float32,
)
_ROOF_FLAT_P = np.array([0.30, 0.28, 0.14, 0.14, 0.14])
_TREE_RGB = np.array([[52, 82, 40], [62, 92, 46], [70, 90, 52], [40, 62, 38]], dtype=np.float32)
_SIDEWALK_RGB = np.array([164, 161, 154], dtype=np.float32)
_ROAD_RGB = np.array([92, 92, 95], dtype=np.float32)
_MARKING_RGB = np.array([228, 228, 222], dtype=np.float32)
_FLAT, _GABLE, _HIP = 0, 1, 2


@dataclass
class _Scene:
    epsg: int
    sun_az: float  # radians, clockwise from north, towards the sun
    sun_el: float  # radians
    cells: np.ndarray  # land-cover parcels
    cell_cover: np.ndarray
    cell_rgb: np.ndarray  # (n, 3)
    cell_angle: np.ndarray  # field row direction, radians
    cell_period: np.ndarray  # field row period, px
    sidewalks: np.ndarray
    roads: np.ndarray
    road_rgb: np.ndarray
    markings: np.ndarray
    trees: np.ndarray  # crown discs
    tree_xy: np.ndarray  # (n, 2) centres
    tree_r: np.ndarray  # radius, m
    tree_h: np.ndarray  # height, m
    tree_rgb: np.ndarray
    buildings: np.ndarray  # footprints
    building_h: np.ndarray  # m
    building_rgb: np.ndarray
    building_tex: np.ndarray  # roof texture amplitude
    facets: np.ndarray  # roof facets (several per building), drawn in order
    facet_building: np.ndarray  # index into buildings
    facet_shade: np.ndarray  # brightness factor from the facet's slope and the sun

    def to_crs(self, epsg: int) -> _Scene:
        """The same scene with every geometry and centre reprojected to ``epsg``."""
        from pyproj import Transformer

        kw = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("cells", "sidewalks", "roads", "markings", "trees", "buildings", "facets"):
            kw[k] = _reproject(kw[k], self.epsg, epsg)
        if len(self.tree_xy):
            x, y = Transformer.from_crs(self.epsg, epsg, always_xy=True).transform(
                self.tree_xy[:, 0], self.tree_xy[:, 1]
            )
            kw["tree_xy"] = np.column_stack([x, y])
        kw["epsg"] = epsg
        return _Scene(**kw)


def _corners(c: np.ndarray, e1: np.ndarray, a: float, b: float) -> np.ndarray:
    """Corners (4, 2) centre ``c``, half-lengths ``a`` along ``e1``, ``b`` across it."""
    e2 = np.array([-e1[1], e1[0]])
    return np.array(
        [c + a * e1 + b * e2, c - a * e1 + b * e2, c - a * e1 - b * e2, c + a * e1 - b * e2]
    )


def _rect(c: np.ndarray, e1: np.ndarray, a: float, b: float) -> Any:
    """Rectangle centred on ``c`` with half-lengths ``a`` along unit ``e1`` and ``b`` across."""
    return shapely.Polygon(_corners(c, e1, a, b))


def _shade(downslope: np.ndarray, slope: float, sun_az: float, sun_el: float) -> float:
    """Lambertian brightness of a roof facet relative to flat ground (ambient light included)."""
    sun = np.array([np.sin(sun_az), np.cos(sun_az)])  # x east, y north
    incidence = np.sin(slope) * np.cos(sun_el) * float(downslope @ sun) + np.cos(slope) * np.sin(
        sun_el
    )
    ambient = 0.45
    return float((ambient + max(incidence, 0.0)) / (ambient + np.sin(sun_el)))


def _roof_facets(
    c: np.ndarray,
    e1: np.ndarray,
    a: float,
    b: float,
    kind: int,
    slope: float,
    sun_az: float,
    sun_el: float,
    rng: np.random.Generator,
) -> list[tuple[Any, float]]:
    """Facets of a rectangular roof with its ridge along ``e1`` (``a`` half-length along it)."""
    e2 = np.array([-e1[1], e1[0]])
    jitter = lambda: float(rng.normal(1.0, 0.03))  # noqa: E731 - facets differ a little
    if kind == _FLAT:
        return [(_rect(c, e1, a, b), jitter())]
    if kind == _GABLE or a <= b:
        return [
            (_rect(c + 0.5 * b * e2, e1, a, 0.5 * b), _shade(e2, slope, sun_az, sun_el) * jitter()),
            (
                _rect(c - 0.5 * b * e2, e1, a, 0.5 * b),
                _shade(-e2, slope, sun_az, sun_el) * jitter(),
            ),
        ]
    p1, p2 = c + a * e1 + b * e2, c - a * e1 + b * e2
    p3, p4 = c - a * e1 - b * e2, c + a * e1 - b * e2
    r1, r2 = c + (a - b) * e1, c - (a - b) * e1
    return [
        (shapely.Polygon([p1, p2, r2, r1]), _shade(e2, slope, sun_az, sun_el) * jitter()),
        (shapely.Polygon([p3, p4, r1, r2]), _shade(-e2, slope, sun_az, sun_el) * jitter()),
        (shapely.Polygon([p1, r1, p4]), _shade(e1, slope, sun_az, sun_el) * jitter()),
        (shapely.Polygon([p2, p3, r2]), _shade(-e1, slope, sun_az, sun_el) * jitter()),
    ]


def _make_scene(rng: np.random.Generator, bounds: tuple[float, float, float, float]) -> _Scene:
    xmin, ymin, xmax, ymax = bounds
    box = shapely.box(*bounds)
    area = (xmax - xmin) * (ymax - ymin)
    centre = np.array([(xmin + xmax) / 2, (ymin + ymax) / 2])
    half = 0.5 * float(np.hypot(xmax - xmin, ymax - ymin))
    sun_az = float(rng.uniform(np.radians(130), np.radians(230)))
    sun_el = float(rng.uniform(np.radians(42), np.radians(58)))

    # Land-cover parcels: Voronoi cells, ~one per 45 m x 45 m.
    n_cells = max(8, int(area / 2000))
    seeds = np.column_stack([rng.uniform(xmin, xmax, n_cells), rng.uniform(ymin, ymax, n_cells)])
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=box))
    cells = shapely.intersection(cells, box)
    cover = rng.choice(len(_COVER_P), size=len(cells), p=_COVER_P)
    cell_rgb = _COVER_RGB[cover] * rng.normal(1.0, 0.06, (len(cells), 1)) + rng.normal(
        0, 4, (len(cells), 3)
    )
    cell_angle = rng.uniform(0, np.pi, len(cells))
    cell_period = rng.uniform(3.0, 6.0, len(cells))

    # Streets: a rotated grid of blocks plus one diagonal arterial.
    alpha = float(rng.uniform(0, np.pi / 2))
    eu = np.array([np.cos(alpha), np.sin(alpha)])
    ev = np.array([-eu[1], eu[0]])
    road_lines: list[tuple[Any, float, bool]] = []  # (centre line, width m, arterial)

    def offsets(lo: float, hi: float) -> np.ndarray:
        out, v = [], lo + rng.uniform(0, 60)
        while v < hi:
            out.append(v)
            v += rng.uniform(75, 125)
        return np.array(out)

    v_roads = offsets(-half, half)
    u_roads = offsets(-half, half)
    for v in v_roads:  # long streets along eu
        art = rng.random() < 0.3
        w = rng.uniform(10, 13) if art else rng.uniform(6, 8.5)
        road_lines.append(
            (shapely.LineString([centre - half * eu + v * ev, centre + half * eu + v * ev]), w, art)
        )
    vb = np.concatenate([[-half], v_roads, [half]])
    for u in u_roads:  # cross streets along ev, some block sides left out (T-junctions)
        for v0, v1 in zip(vb[:-1], vb[1:], strict=True):
            if rng.random() < 0.8:
                road_lines.append(
                    (
                        shapely.LineString([centre + u * eu + v0 * ev, centre + u * eu + v1 * ev]),
                        rng.uniform(6, 8),
                        False,
                    )
                )
    if rng.random() < 0.8:
        beta = alpha + rng.uniform(np.radians(25), np.radians(65))
        ed = np.array([np.cos(beta), np.sin(beta)])
        p = centre + rng.uniform(-0.3, 0.3) * half * ev
        road_lines.append(
            (shapely.LineString([p - 2 * half * ed, p + 2 * half * ed]), rng.uniform(10, 13), True)
        )
    lines = np.array([r[0] for r in road_lines])
    widths = np.array([r[1] for r in road_lines])
    arterial = np.array([r[2] for r in road_lines])
    roads = shapely.buffer(lines, widths / 2, cap_style="flat")
    sidewalks = shapely.buffer(lines, widths / 2 + 2.0, cap_style="flat")
    road_rgb = _ROAD_RGB * rng.normal(1.0, 0.07, (len(roads), 1)) + rng.normal(
        0, 2, (len(roads), 3)
    )
    marks = []
    for line, art in zip(lines, arterial, strict=True):
        if not art:
            continue
        (ax_, ay_), (bx_, by_) = line.coords
        p0, d = np.array([ax_, ay_]), np.array([bx_ - ax_, by_ - ay_]) / line.length
        starts = np.arange(rng.uniform(0, 6), line.length - 3.0, 9.0)  # 3 m dashes every 9 m
        ends = np.stack([p0 + starts[:, None] * d, p0 + (starts[:, None] + 3.0) * d], axis=1)
        marks.append(shapely.linestrings(ends))
    markings = (
        shapely.buffer(np.concatenate(marks), 0.2, cap_style="flat")
        if marks
        else np.array([], dtype=object)
    )
    road_zone = shapely.union_all(
        shapely.buffer(sidewalks, 0.5, cap_style="flat", join_style="mitre")
    )
    shapely.prepare(road_zone)
    fields = (
        shapely.union_all(cells[cover == _FIELD]) if (cover == _FIELD).any() else shapely.Polygon()
    )
    shapely.prepare(fields)

    # Building candidates as groups (one house, one L, one terrace ...), then a greedy pick of
    # groups that keep 1.6 m from each other and from streets, until ~20% of the ground is covered.
    groups: list[list[dict[str, Any]]] = []

    def house(
        c: np.ndarray, e1: np.ndarray, length: float, depth: float, kind: str
    ) -> list[dict[str, Any]]:
        # ``length`` along e1 (the street), ``depth`` across; ridge along the longer side.
        if kind == "big":
            roof = _GABLE if rng.random() < 0.15 else _FLAT
            h = rng.uniform(6, 14)
        elif kind == "shed":
            roof = rng.choice([_FLAT, _GABLE], p=[0.5, 0.5])
            h = rng.uniform(3, 5)
        else:
            roof = rng.choice([_FLAT, _GABLE, _HIP], p=[0.12, 0.58, 0.30])
            h = rng.uniform(5, 9)
        parts = [(c, e1, length / 2, depth / 2)]
        if kind in ("house", "big") and rng.random() < 0.3 and length > 9:
            # L-shape: a wing across the main block at one end, sticking out at the back.
            e2 = np.array([-e1[1], e1[0]])
            ww = rng.uniform(0.3, 0.45) * length
            ext = rng.uniform(0.4, 0.9) * depth
            s1 = rng.choice([-1, 1])
            wc = c + s1 * (length / 2 - ww / 2) * e1 + (ext / 2) * e2
            parts.insert(0, (wc, e2, (depth + ext) / 2, ww / 2))
        return [dict(parts=parts, roof=roof, h=h, flat=roof == _FLAT)]

    def row(base: np.ndarray, e1: np.ndarray, side: float, road_w: float, behind: float) -> None:
        e2 = np.array([-e1[1], e1[0]]) * side
        u = -half + rng.uniform(0, 10)
        while u < half:
            r = rng.random()
            setback = road_w / 2 + 2.0 + rng.uniform(2.5, 7) + behind
            if r < 0.52:
                ln, dp = rng.uniform(9, 17), rng.uniform(8, 13)
                c = base + (u + ln / 2) * e1 + (setback + dp / 2) * e2
                ang = rng.normal(0, 0.05)
                groups.append(house(c, _rot(e1, ang), ln, dp, "house"))
            elif r < 0.72:
                n, uw, dp = int(rng.integers(3, 7)), rng.uniform(5.5, 7.5), rng.uniform(9, 12)
                ln = n * uw
                c0 = base + u * e1 + (setback + dp / 2) * e2
                roof = _GABLE if rng.random() < 0.8 else _FLAT
                h = rng.uniform(7, 10)
                groups.append(
                    [
                        dict(
                            parts=[(c0 + (k + 0.5) * uw * e1, e1, uw / 2, dp / 2)],
                            roof=roof,
                            h=h + rng.normal(0, 0.3),
                            flat=roof == _FLAT,
                            terrace=True,
                        )
                        for k in range(n)
                    ]
                )
            elif r < 0.90:
                ln, dp = rng.uniform(18, 30), rng.uniform(14, 24)
                c = base + (u + ln / 2) * e1 + (setback + dp / 2) * e2
                groups.append(house(c, e1, ln, dp, "big"))
            else:
                ln = rng.uniform(4, 10)
            u += ln + rng.uniform(2.5, 7)

    for line, w in zip(lines[: len(v_roads)], widths[: len(v_roads)], strict=True):
        (x0, y0), _ = line.coords
        base = np.array([x0, y0]) + half * eu
        for side in (-1.0, 1.0):
            row(base, eu, side, w, 0.0)
            row(base, eu, side, w, rng.uniform(15, 22))  # a second row behind the first
    n_scatter = int(area / 200)
    for _ in range(n_scatter):  # everything else: random place, random orientation
        c = np.array([rng.uniform(xmin, xmax), rng.uniform(ymin, ymax)])
        e1 = _rot(np.array([1.0, 0.0]), rng.uniform(0, np.pi))
        if rng.random() < 0.25:
            groups.append(house(c, e1, rng.uniform(6, 9), rng.uniform(6, 8), "shed"))
        elif rng.random() < 0.8:
            groups.append(house(c, e1, rng.uniform(8, 18), rng.uniform(7, 13), "house"))
        else:
            groups.append(house(c, e1, rng.uniform(16, 30), rng.uniform(12, 22), "big"))

    corners = np.array([_corners(*p) for g in groups for b in g for p in b["parts"]])
    part_group = np.repeat(
        np.arange(len(groups)), [sum(len(b["parts"]) for b in g) for g in groups]
    )
    parts = shapely.polygons(corners)
    outlines = parts[np.searchsorted(part_group, np.arange(len(groups)))]  # each group's first
    for i in np.flatnonzero(np.bincount(part_group) > 1):  # L-shapes and terraces
        outlines[i] = shapely.union_all(parts[part_group == i])
    ok = ~shapely.intersects(outlines, road_zone) & ~shapely.intersects(outlines, fields)
    ok &= shapely.within(outlines, box)
    order = np.flatnonzero(ok)
    grown = shapely.buffer(outlines, 0.8, join_style="mitre")
    pairs = shapely.STRtree(grown).query(grown, predicate="intersects")
    neighbours: dict[int, list[int]] = {}
    for a_, b_ in pairs.T:
        if a_ != b_:
            neighbours.setdefault(int(a_), []).append(int(b_))
    target = rng.uniform(0.19, 0.23) * area
    # Street-front groups first (in random order), then the scattered ones. A greedy pick over
    # the STRtree's conflict pairs (hand-written: a few thousand groups, no library does this).
    front = [i for i in order if i < len(groups) - n_scatter]
    back = [i for i in order if i >= len(groups) - n_scatter]
    front = list(np.array(front)[rng.permutation(len(front))]) if front else []
    taken = np.zeros(len(groups), dtype=bool)
    covered = 0.0
    for i in front + back:
        if covered >= target:
            break
        if any(taken[j] for j in neighbours.get(int(i), ())):
            continue
        taken[i] = True
        covered += float(shapely.area(outlines[i]))

    b_geoms: list[Any] = []
    b_h, b_rgb, b_tex, f_geoms, f_b, f_shade = [], [], [], [], [], []
    for i in np.flatnonzero(taken):
        terrace_rgb = None
        for b in groups[i]:
            if b["flat"]:
                rgb = _ROOF_FLAT[rng.choice(len(_ROOF_FLAT), p=_ROOF_FLAT_P)]
            elif b.get("terrace") and terrace_rgb is not None and rng.random() < 0.6:
                rgb = terrace_rgb
            else:
                rgb = _ROOF_PITCHED[rng.choice(len(_ROOF_PITCHED), p=_ROOF_PITCHED_P)]
            terrace_rgb = rgb
            bi = len(b_geoms)
            rects = []
            slope = rng.uniform(np.radians(28), np.radians(42))
            for c, e1, a, bb in b["parts"]:
                rects.append(_rect(c, e1, a, bb))
                if a < bb and not b.get("terrace"):  # ridge along the longer side
                    c, e1, a, bb = c, np.array([-e1[1], e1[0]]), bb, a
                for poly, shade in _roof_facets(
                    c, e1, a, bb, b["roof"], slope, sun_az, sun_el, rng
                ):
                    f_geoms.append(poly)
                    f_b.append(bi)
                    f_shade.append(shade)
            b_geoms.append(shapely.union_all(rects) if len(rects) > 1 else rects[0])
            b_h.append(b["h"])
            b_rgb.append(rgb * rng.normal(1.0, 0.05) + rng.normal(0, 3, 3))
            b_tex.append(0.03 if b["flat"] else 0.06)
    buildings = np.array(b_geoms, dtype=object)

    # Trees: street rows, garden trees and small woods; never over a building or a carriageway.
    n_trees = int(area / 160)
    pts = np.column_stack([rng.uniform(xmin, xmax, n_trees), rng.uniform(ymin, ymax, n_trees)])
    clumps = np.column_stack(
        [
            rng.uniform(xmin, xmax, max(1, n_trees // 25)),
            rng.uniform(ymin, ymax, max(1, n_trees // 25)),
        ]
    )
    near = clumps[rng.integers(0, len(clumps), n_trees // 2)] + rng.normal(0, 9, (n_trees // 2, 2))
    pts = np.vstack([pts, near])
    for line, w in zip(lines, widths, strict=True):
        if rng.random() < 0.35:
            ln = line.length
            s = np.arange(rng.uniform(0, 8), ln, rng.uniform(8, 14))
            side = rng.choice([-1, 1])
            off = shapely.offset_curve(line, side * (w / 2 + 1.2))
            if not off.is_empty and off.length > 0:
                p = shapely.line_interpolate_point(off, s * off.length / ln)
                pts = np.vstack([pts, shapely.get_coordinates(p)])
    radii = rng.uniform(1.8, 4.5, len(pts))
    discs = shapely.buffer(shapely.points(pts), radii, quad_segs=8)
    blocked = shapely.STRtree(np.concatenate([shapely.buffer(buildings, 0.8), roads]))
    hit = np.unique(blocked.query(discs, predicate="intersects")[0])
    keep = np.ones(len(discs), dtype=bool)
    keep[hit] = False
    keep &= rng.random(len(discs)) < 0.7
    tree_h = radii * rng.uniform(1.6, 2.6, len(pts))
    tree_rgb = _TREE_RGB[rng.integers(0, len(_TREE_RGB), len(pts))] * rng.normal(
        1.0, 0.07, (len(pts), 1)
    )

    return _Scene(
        epsg=SCENE_EPSG,
        sun_az=sun_az,
        sun_el=sun_el,
        cells=cells,
        cell_cover=cover,
        cell_rgb=cell_rgb.astype(np.float32),
        cell_angle=cell_angle,
        cell_period=cell_period,
        sidewalks=sidewalks,
        roads=roads,
        road_rgb=road_rgb.astype(np.float32),
        markings=markings,
        trees=discs[keep],
        tree_xy=pts[keep],
        tree_r=radii[keep],
        tree_h=tree_h[keep],
        tree_rgb=tree_rgb[keep].astype(np.float32),
        buildings=buildings,
        building_h=np.array(b_h),
        building_rgb=np.array(b_rgb, dtype=np.float32),
        building_tex=np.array(b_tex, dtype=np.float32),
        facets=np.array(f_geoms, dtype=object),
        facet_building=np.array(f_b, dtype=np.int64),
        facet_shade=np.array(f_shade, dtype=np.float32),
    )


def _rot(v: np.ndarray, ang: float) -> np.ndarray:
    c, s = np.cos(ang), np.sin(ang)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


# --------------------------------------------------------------------------------------------
# Rendering one tile.


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth unit-variance noise with features ~``scale`` px (bicubic upsampled white noise)."""
    if scale <= 1:
        return rng.standard_normal(shape).astype(np.float32)
    low = rng.standard_normal((int(shape[0] / scale) + 4, int(shape[1] / scale) + 4)).astype(
        np.float32
    )
    up = ndimage.zoom(low, scale, order=3, prefilter=False)[: shape[0], : shape[1]]
    return (up - up.mean()) / (up.std() + 1e-6)


def _render(
    scene: _Scene, rng: np.random.Generator, transform: Affine, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Render a tile: RGB uint8 (3, size, size) and the building mask (size, size) bool."""
    n = size + 2 * _PAD
    shape = (n, n)
    tf = transform @ Affine.translation(-_PAD, -_PAD)
    left, top = tf.c, tf.f
    pad_box = shapely.box(left, top - n * RES_M, left + n * RES_M, top)

    def burn(
        geoms: np.ndarray, values: np.ndarray | None = None, all_touched: bool = False
    ) -> np.ndarray:
        if len(geoms) == 0:
            return np.zeros(shape, dtype=np.int32)
        idx = np.flatnonzero(shapely.intersects(geoms, pad_box))
        if len(idx) == 0:
            return np.zeros(shape, dtype=np.int32)
        vals = (idx + 1) if values is None else values[idx]
        return features.rasterize(
            zip(geoms[idx], vals.tolist(), strict=True),
            out_shape=shape,
            transform=tf,
            fill=0,
            dtype=np.int32,
            all_touched=all_touched,
        )

    rows, cols = np.mgrid[0:n, 0:n].astype(np.float32)
    n_low, n_mid, n_fine = _noise(rng, shape, 40), _noise(rng, shape, 7), _noise(rng, shape, 1.6)
    white = rng.standard_normal(shape).astype(np.float32)

    # Ground.
    cid = burn(scene.cells)
    cover = np.concatenate([[_GRASS], scene.cell_cover])[cid]
    rgb = np.concatenate([_COVER_RGB[:1], scene.cell_rgb])[cid]  # (n, n, 3)
    tex = _COVER_TEX[cover]
    is_field = cover == _FIELD
    if is_field.any():
        ang = np.concatenate([[0.0], scene.cell_angle])[cid][is_field]
        per = np.concatenate([[4.0], scene.cell_period])[cid][is_field]
        phase = (cols[is_field] * np.cos(ang) + rows[is_field] * np.sin(ang)) / per
        stripe = (0.5 + 0.5 * np.sin(2 * np.pi * phase))[:, None] ** 1.5
        rgb[is_field] = rgb[is_field] * stripe + _FIELD_SOIL * (1 - stripe)
    lum = 1 + tex[..., 0] * n_low + tex[..., 1] * n_mid + tex[..., 2] * white
    rgb *= lum[..., None]

    # Streets.
    side = burn(scene.sidewalks) > 0
    rgb[side] = _SIDEWALK_RGB * (1 + 0.04 * n_mid[side] + 0.04 * white[side])[:, None]
    rid = burn(scene.roads)
    on = rid > 0
    road_rgb = np.concatenate([_ROAD_RGB[None], scene.road_rgb])[rid[on]]
    rgb[on] = road_rgb * (1 + 0.05 * n_low[on] + 0.03 * n_fine[on] + 0.04 * white[on])[:, None]
    mk = burn(scene.markings, all_touched=True) > 0
    rgb[mk] = 0.3 * rgb[mk] + 0.7 * _MARKING_RGB

    heights = np.zeros(shape, dtype=np.float32)
    sun_x, sun_y = np.sin(scene.sun_az), -np.cos(scene.sun_az)  # towards the sun, in (col, row)

    # Trees: domed crowns lit on the sun side, clumpy foliage.
    tid = burn(scene.trees)
    on = tid > 0
    if on.any():
        inv = ~tf
        tc, tr_ = _apply(inv, scene.tree_xy[:, 0], scene.tree_xy[:, 1])
        k = tid[on] - 1
        rad = scene.tree_r[k] / RES_M
        dx, dy = (cols[on] - tc[k]) / rad, (rows[on] - tr_[k]) / rad
        r2 = np.clip(dx * dx + dy * dy, 0, 1)
        shade = 0.78 + 0.32 * (dx * sun_x + dy * sun_y) - 0.22 * r2
        leaf = 1 + 0.20 * n_fine[on] + 0.10 * white[on]
        rgb[on] = scene.tree_rgb[k] * (shade * leaf)[:, None]
        heights[on] = scene.tree_h[k] * (0.65 + 0.35 * np.sqrt(1 - r2))

    # Buildings: the mask is the rasterised footprints; facets give the roof shading.
    bid = burn(scene.buildings)
    inside = bid > 0
    if inside.any():
        fid = burn(scene.facets)
        gap = inside & (fid == 0)
        if gap.any():  # facet edges can miss a pixel centre the footprint covers: nearest facet
            _, (ri, ci) = ndimage.distance_transform_edt(fid == 0, return_indices=True)
            fid[gap] = fid[ri[gap], ci[gap]]
        fk = fid[inside] - 1
        bk = bid[inside] - 1
        roof = scene.building_rgb[bk] * scene.facet_shade[fk][:, None]
        amp = scene.building_tex[bk]
        roof *= (1 + amp * n_fine[inside] + 0.5 * amp * white[inside] + 0.03 * n_mid[inside])[
            :, None
        ]
        rgb[inside] = roof
        # Bright eaves along outlines, dark seams between touching buildings, light ridges.
        outline = inside & ~ndimage.binary_erosion(
            inside, structure=np.ones((3, 3), bool), border_value=1
        )
        seam = inside & _edges(bid)
        ridge = inside & _edges(fid) & ~seam
        rgb[ridge] *= 1.08
        rgb[outline] = rgb[outline] * 1.22 + 8
        rgb[seam & ~outline] *= 0.8
        heights[inside] = scene.building_h[bk]

    # Shadows from the height field: march towards the sun, a pixel is shadowed when something
    # along that ray rises above the line to the sun. (Hand-written: no library does this.)
    step_drop = RES_M * np.tan(scene.sun_el)
    shadow = np.zeros(shape, dtype=bool)
    for s in range(1, int(np.ceil(heights.max() / step_drop)) + 1):
        dc, dr = int(round(s * sun_x)), int(round(s * sun_y))
        shifted = _shift(heights, dr, dc)
        shadow |= shifted - s * step_drop > heights + 0.3
    soft = ndimage.gaussian_filter(shadow.astype(np.float32), 0.7)
    dark = np.array([0.42, 0.45, 0.55], dtype=np.float32)
    rgb *= 1 - soft[..., None] * (1 - dark)

    # Sensor: slight blur, per-tile colour balance, noise.
    rgb = ndimage.gaussian_filter(rgb, sigma=(0.6, 0.6, 0))
    rgb *= rng.normal(1.0, 0.03, 3).astype(np.float32)
    rgb += rng.normal(0, 2.0, rgb.shape).astype(np.float32)
    crop = slice(_PAD, _PAD + size)
    out = np.clip(np.rint(rgb[crop, crop]), 1, 255).astype(np.uint8).transpose(2, 0, 1)
    return np.ascontiguousarray(out), inside[crop, crop]


def _edges(ids: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has a different non-zero id."""
    e = np.zeros(ids.shape, dtype=bool)
    d = (ids[:, 1:] != ids[:, :-1]) & (ids[:, 1:] > 0) & (ids[:, :-1] > 0)
    e[:, 1:] |= d
    d = (ids[1:, :] != ids[:-1, :]) & (ids[1:, :] > 0) & (ids[:-1, :] > 0)
    e[1:, :] |= d
    return e


def _shift(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``out[r, c] = a[r + dr, c + dc]``, zero outside."""
    out = np.zeros_like(a)
    h, w = a.shape
    r0, r1 = max(0, -dr), min(h, h - dr)
    c0, c1 = max(0, -dc), min(w, w - dc)
    if r0 < r1 and c0 < c1:
        out[r0:r1, c0:c1] = a[r0 + dr : r1 + dr, c0 + dc : c1 + dc]
    return out


# --------------------------------------------------------------------------------------------
# Writing.


def _block(size: int) -> int:
    # Small tiles get at least 2 x 2 blocks, so readers (rasterio's profile) see a tiled file.
    return _BLOCK if size > _BLOCK else max(16, size // 2 // 16 * 16)


def _write_image(path: Path, rgb: np.ndarray, crs: CRS, transform: Affine) -> Path:
    blk = _block(rgb.shape[1])
    with io.atomic_write(path, overwrite=True, verify=io.verify_raster) as tmp:
        with rasterio.open(
            tmp,
            "w",
            driver="GTiff",
            width=rgb.shape[2],
            height=rgb.shape[1],
            count=3,
            dtype="uint8",
            crs=crs,
            transform=transform,
            nodata=NODATA_IMAGE,
            tiled=True,
            blockxsize=blk,
            blockysize=blk,
            compress="deflate",
            predictor=2,
            photometric="RGB",
            interleave="pixel",
        ) as dst:
            dst.write(rgb)
            dst.descriptions = ("red", "green", "blue")
    return path


def _write_mask(path: Path, mask: np.ndarray, crs: CRS, transform: Affine) -> Path:
    grid = dict(crs=crs, transform=transform, width=mask.shape[1], height=mask.shape[0])
    return io.write_mask(mask, path, grid, class_names=["background", "building"])


def _remove_stale(images_dir: Path, masks_dir: Path, names: set[str]) -> None:
    """Drop ``tile_XX.tif`` an earlier, larger run left behind (only with ``overwrite``)."""
    for folder in (images_dir, masks_dir):
        for p in folder.glob("tile_*.tif"):
            if re.fullmatch(r"tile_\d+", p.stem) and p.stem not in names:
                logger.info("removing stale %s", p)
                p.unlink()


def _write_buildings(path: Path, geoms: np.ndarray, ids: np.ndarray, tiles: list[str]) -> Path:
    import geopandas as gpd

    gdf = gpd.GeoDataFrame(
        {
            "building_id": ids.astype(np.int64),
            "class": np.ones(len(geoms), dtype=np.int32),
            "tile": tiles,
        },
        geometry=list(geoms),
        crs=f"EPSG:{SCENE_EPSG}",
    )
    return io.write_vector(gdf, path, layer=LAYER, overwrite=True)


def _write_preview(path: Path, image: Path, mask: Path, name: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with rasterio.open(image) as src:
        rgb = src.read().transpose(1, 2, 0)
        crs = src.crs
    with rasterio.open(mask) as src:
        m = src.read(1)
    fig = Figure(figsize=(13, 6.8), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.imshow(rgb, interpolation="antialiased")
    ax1.set_title("image")
    ax2.imshow(rgb, interpolation="antialiased")
    overlay = np.ma.masked_equal(np.where(m == NODATA_MASK, 2, m), 0)
    ax2.imshow(
        overlay,
        cmap=ListedColormap(["#ff2d55", "#7f7f7f"]),
        vmin=1,
        vmax=2,
        alpha=0.55,
        interpolation="nearest",
    )
    ax2.set_title("mask over image")
    ax2.legend(
        handles=[
            Patch(color="#ff2d55", alpha=0.7, label="building (1)"),
            Patch(color="#7f7f7f", alpha=0.7, label="nodata (255)"),
        ],
        loc="lower right",
        framealpha=0.9,
    )
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    from pyproj import CRS as ProjCRS

    epsg = crs.to_epsg()
    crs_name = ProjCRS.from_wkt(crs.to_wkt()).name + (f" (EPSG:{epsg})" if epsg else "")
    fig.suptitle(f"{name} — {crs_name} — {rgb.shape[1]}×{rgb.shape[0]} px at {RES_M} m")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    with io.atomic_write(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path
