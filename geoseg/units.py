"""Lengths on the ground: metres per CRS unit, pixel sizes in metres, local metric frames.

Wherever geoseg's interface says metres (``infer --resample`` against the checkpoint's pixel
size, ``vectorize --min-area``/``--simplify``, instance edge widths) a length is measured on the
ground (the CRS's ellipsoid, pyproj ``Geod``), not in the CRS's units: a degree of longitude is
111 km at the equator and 56 km at 60° N, and a Web Mercator "metre" is cos(latitude) metres on
the ground. Projected CRSs whose scale is true to within :data:`TRUE_SCALE_TOLERANCE` (UTM,
national grids) keep their nominal unit, so their numbers stay exactly as written.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "TRUE_SCALE_TOLERANCE",
    "LocalMetres",
    "metres_per_unit",
    "nominal_metres_per_unit",
    "pixel_size_m",
    "true_scale",
    "utm_crs",
]

#: A projected CRS whose ground scale differs from its nominal unit by less than this (relative)
#: is taken at its word; UTM's worst case is 0.1 %, Web Mercator's 0.55 % at 6° of latitude.
TRUE_SCALE_TOLERANCE = 0.005


def _pyproj(crs: Any) -> Any:
    from pyproj import CRS

    return crs if isinstance(crs, CRS) else CRS.from_wkt(crs.to_wkt())


def nominal_metres_per_unit(crs: Any) -> float | None:
    """Metres per unit of a projected CRS's axes (1 for metres, 0.3048 for feet); None for a
    geographic CRS (whose degrees have no fixed length) or no CRS."""
    if crs is None or crs.is_geographic:
        return None
    factor = crs.linear_units_factor[1] if getattr(crs, "linear_units_factor", None) else None
    if factor is None:  # a pyproj CRS
        axis = _pyproj(crs).axis_info
        factor = axis[0].unit_conversion_factor if axis else 1.0
    return float(factor)


def metres_per_unit(crs: Any, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ground metres per CRS unit along x (east) and along y (north) at points (x, y) of ``crs``.

    Measured with geodesics on the CRS's ellipsoid over a step of about 10 m: for degrees the
    two differ (x shrinks with cos(latitude)), for Web Mercator both are about cos(latitude).

    Args:
        crs: A rasterio or pyproj CRS (geographic or projected).
        x, y: Coordinates in ``crs`` (scalars or arrays of one shape).

    Returns:
        Two float64 arrays of the points' shape.
    """
    from pyproj import Geod, Transformer

    pcrs = _pyproj(crs)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    step = 1e-4 if pcrs.is_geographic else 10.0 / (nominal_metres_per_unit(pcrs) or 1.0)
    to_lonlat = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
    geod = pcrs.get_geod() or Geod(ellps="WGS84")
    lon0, lat0 = to_lonlat.transform(x, y)
    lon1, lat1 = to_lonlat.transform(x + step, y)
    lon2, lat2 = to_lonlat.transform(x, y + step)
    dx = geod.inv(lon0, lat0, lon1, lat1)[2]
    dy = geod.inv(lon0, lat0, lon2, lat2)[2]
    return np.asarray(dx, np.float64) / step, np.asarray(dy, np.float64) / step


def true_scale(crs: Any, x: float, y: float, *, area: bool = False) -> bool:
    """Whether ``crs`` is projected with a ground scale within :data:`TRUE_SCALE_TOLERANCE` of
    its nominal unit at (x, y): then lengths in its units times that unit are metres.

    ``area``: only the areal scale counts (equal-area projections such as Albers stretch one
    axis and shrink the other, keeping areas exact).
    """
    nominal = nominal_metres_per_unit(crs)
    if nominal is None:
        return False
    if _pyproj(crs).geodetic_crs is None:  # an engineering CRS: nothing to measure it against
        return True
    mx, my = (float(m) / nominal for m in metres_per_unit(crs, x, y))
    if not (math.isfinite(mx) and math.isfinite(my)):  # outside the projection's domain
        return True
    if area:
        return abs(mx * my - 1) <= TRUE_SCALE_TOLERANCE
    return abs(mx - 1) <= TRUE_SCALE_TOLERANCE and abs(my - 1) <= TRUE_SCALE_TOLERANCE


def pixel_size_m(crs: Any, transform: Any, width: int, height: int) -> tuple[float, float]:
    """Ground size of a pixel (metres along its columns, metres along its rows) at the centre
    of a ``width`` x ``height`` raster; without a CRS the transform's units are taken as metres.
    """
    if crs is None:
        return abs(transform.a), abs(transform.e)
    cx, cy = transform @ (width / 2, height / 2)
    mx, my = (float(m) for m in metres_per_unit(crs, cx, cy))
    if not (math.isfinite(mx) and math.isfinite(my) and mx > 0 and my > 0):
        # outside the projection's domain: its nominal unit (degrees: at the equator)
        mx = my = nominal_metres_per_unit(crs) or 111_320.0
    return abs(transform.a) * mx, abs(transform.e) * my


def utm_crs(crs: Any, x: float, y: float) -> Any:
    """The WGS 84 UTM zone (a rasterio CRS) of the point (x, y) of ``crs``."""
    from pyproj import Transformer
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info
    from rasterio.crs import CRS

    pcrs = _pyproj(crs)
    lon, lat = Transformer.from_crs(pcrs, "EPSG:4326", always_xy=True).transform(x, y)
    lon = (lon + 180) % 360 - 180
    info = query_utm_crs_info("WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    if not info:  # beyond UTM's 84° N / 80° S: the polar stereographic grids
        return CRS.from_epsg(3413 if lat > 0 else 3031)
    return CRS.from_epsg(int(info[0].code))


class LocalMetres:
    """Each geometry scaled about its own centre so that one unit is one ground metre along x
    and along y there (a local equirectangular frame: exact to well under 0.1 % across a few
    km), and back. Simplification tolerances and right angles then mean what they say on
    geographic and Web Mercator rasters. Array-wise (shapely 2), no per-polygon loops.

    A CRS of true scale (:func:`true_scale` at the geometries' centre) needs no frame:
    ``scaled`` is then False and the geometries pass through untouched (metre CRSs) or are
    scaled by the constant unit (feet).
    """

    def __init__(self, geoms: np.ndarray, crs: Any) -> None:
        import shapely

        self.n = len(geoms)
        self.scaled = False
        self.factor = np.ones((self.n, 2))
        self.centre = np.zeros((self.n, 2))
        if crs is None or not self.n:
            return
        box = shapely.total_bounds(geoms)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        nominal = nominal_metres_per_unit(crs)
        if nominal is not None and true_scale(crs, cx, cy):
            self.factor[:] = nominal
            self.scaled = nominal != 1.0
            return
        centre = shapely.get_coordinates(shapely.centroid(geoms))
        mx, my = metres_per_unit(crs, centre[:, 0], centre[:, 1])
        factor = np.column_stack([mx, my])
        ok = np.isfinite(factor) & (factor > 0)  # (outside the projection's domain: nominal)
        self.factor = np.where(ok, factor, nominal or 111_320.0)
        self.centre = centre
        self.scaled = True

    def forward(self, geoms: np.ndarray) -> np.ndarray:
        """Geometries in the local metric frames (one per geometry)."""
        return self._map(geoms, lambda xy, i: (xy - self.centre[i]) * self.factor[i])

    def inverse(self, geoms: np.ndarray) -> np.ndarray:
        """Geometries of :meth:`forward` back in the CRS (same order and count)."""
        return self._map(geoms, lambda xy, i: xy / self.factor[i] + self.centre[i])

    def _map(self, geoms: np.ndarray, fn: Any) -> np.ndarray:
        import shapely

        geoms = np.asarray(geoms, dtype=object)
        if not self.scaled or not len(geoms):
            return geoms
        xy, idx = shapely.get_coordinates(geoms, return_index=True)
        if not len(xy):
            return geoms
        return shapely.set_coordinates(geoms.copy(), fn(xy, idx))
