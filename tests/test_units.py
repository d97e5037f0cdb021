"""geoseg.units: ground metres per CRS unit, and vectorize's lengths and areas in metres."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import shapely
from rasterio.crs import CRS
from rasterio.transform import from_origin
from test_vectorize import write_mask

from geoseg import units, vectorize


def test_metres_per_unit_on_the_ground() -> None:
    wgs84 = CRS.from_epsg(4326)
    mx, my = units.metres_per_unit(wgs84, [10.0, 10.0], [0.0, 60.0])
    assert mx == pytest.approx([111_319.5, 55_800.0], rel=1e-3)  # a degree of longitude
    assert my == pytest.approx([110_574.3, 111_412.3], rel=1e-3)  # ... and of latitude
    # Web Mercator's "metre" is cos(latitude) metres on the ground: 0.6 at 52.5° N
    mx, my = units.metres_per_unit(CRS.from_epsg(3857), 1e6, 6.9e6)
    assert float(mx) == pytest.approx(0.61, abs=0.01) and float(my) == pytest.approx(0.61, abs=0.01)
    assert units.true_scale(CRS.from_epsg(32631), 500_000, 5e6)
    assert units.true_scale(CRS.from_epsg(2263), 1e6, 2e5)  # US feet: 0.3048 m each
    assert units.nominal_metres_per_unit(CRS.from_epsg(2263)) == pytest.approx(0.3048006)
    assert not units.true_scale(CRS.from_epsg(3857), 1e6, 6.9e6)
    assert not units.true_scale(wgs84, 10, 50)
    sx, sy = units.pixel_size_m(wgs84, from_origin(10, 60.0005, 1e-5, 1e-5), 100, 100)
    assert (sx, sy) == pytest.approx((0.558, 1.114), rel=1e-2)
    assert units.utm_crs(wgs84, 10.5, 60).to_epsg() == 32632
    assert units.utm_crs(wgs84, -70, -33).to_epsg() == 32719


def test_local_metres_round_trip() -> None:
    geoms = np.array([shapely.box(10, 60, 10.0001, 60.0001), shapely.box(-70, -33, -69.99, -32.99)])
    frame = units.LocalMetres(geoms, CRS.from_epsg(4326))
    local = frame.forward(geoms)
    assert shapely.area(local) == pytest.approx(
        [0.0001**2 * 55_800 * 111_412, 0.01**2 * 93_490 * 110_900], rel=2e-3
    )
    back = frame.inverse(local)
    assert all(
        shapely.equals_exact(a, b, tolerance=1e-12) for a, b in zip(back, geoms, strict=True)
    )
    utm = units.LocalMetres(geoms, CRS.from_epsg(32631))  # a metre CRS needs no frame
    assert not utm.scaled and utm.forward(geoms) is geoms


def test_web_mercator_areas_are_ground_areas(tmp_path: Path) -> None:
    # 20 x 20 pixels of 0.5 Web Mercator units at 50° N: 100 units² but 41 m² on the ground.
    y0 = 6_446_276.0  # 50° N
    m = np.zeros((40, 40), np.uint8)
    m[10:30, 10:30] = 1
    mask = write_mask(
        tmp_path / "m.tif", m, crs="EPSG:3857", transform=from_origin(260_000, y0, 0.5, 0.5)
    )
    gdf = vectorize.polygons(mask)
    expected = 100 * math.cos(math.radians(49.99)) ** 2
    assert gdf.area_m2.iloc[0] == pytest.approx(expected, rel=5e-3)
    assert gdf.perimeter_m.iloc[0] == pytest.approx(40 * math.cos(math.radians(49.99)), rel=5e-3)
    assert len(vectorize.polygons(mask, min_area_m2=50)) == 0  # 100 "m²" is not 50 m²


def test_simplify_tolerance_is_metres_in_both_directions(tmp_path: Path) -> None:
    # At 60° N a 1e-5° pixel is 0.56 m wide and 1.11 m tall. A notch one pixel deep in x
    # (0.56 m) goes with a 0.8 m tolerance; one pixel deep in y (1.11 m) stays. Degrees of
    # latitude as the unit (111,320 m) kept both.
    res = 1e-5
    m = np.zeros((40, 40), np.uint8)
    m[10:30, 10:30] = 1
    m[10, 18:22] = 0  # notch in the top edge: 1 pixel = 1.11 m deep
    m[18:22, 29] = 0  # notch in the right edge: 1 pixel = 0.56 m deep
    transform = from_origin(10.0, 60.0, res, res)
    mask = write_mask(tmp_path / "m.tif", m, crs="EPSG:4326", transform=transform)
    poly = vectorize.polygons(mask, simplify_m=0.8).geometry.iloc[0]

    def centre(row: int, col: int) -> shapely.Point:
        return shapely.Point(transform * (col + 0.5, row + 0.5))

    assert poly.contains(centre(20, 29))  # the shallow x notch is simplified away
    assert not poly.contains(centre(10, 20))  # the deeper y notch is kept
