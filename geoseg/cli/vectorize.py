"""``geoseg vectorize``: a mask GeoTIFF to building footprints (GeoPackage, GeoJSON, Shapefile)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from geoseg.cli._common import Overwrite, Quiet, check_output, echo, set_quiet


def vectorize(
    mask: Annotated[Path, typer.Argument(help="Mask GeoTIFF of class ids (from geoseg infer).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .gpkg, .geojson or .shp.")],
    classes: Annotated[Optional[list[str]], typer.Option(  # noqa: UP007 (typer needs Optional)
        "--class", help="Class name or id to polygonise (repeatable); default: all but background.")] = None,
    probabilities: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--probabilities", help="Probability raster (MASK_prob.tif) for a per-polygon confidence.")] = None,
    min_area: Annotated[float, typer.Option("--min-area", min=0, help="Drop polygons under this many m².")] = 0.0,
    simplify: Annotated[float, typer.Option("--simplify", min=0, help="Simplify by this many metres.")] = 0.0,
    regularize: Annotated[bool, typer.Option("--regularize", help="Square building outlines.")] = False,
    layer: Annotated[str, typer.Option("--layer", help="GeoPackage layer name.")] = "footprints",
    allow_ungeoreferenced: Annotated[bool, typer.Option(
        "--allow-ungeoreferenced", help="Accept a mask without a CRS (coordinates in its transform).")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Polygonise a mask into valid footprints in the mask's CRS, with area, perimeter, confidence.

    Example: geoseg vectorize tile_mask.tif --out footprints.gpkg --class building --min-area 4 --simplify 0.5
    """
    set_quiet(quiet)
    check_output(out, overwrite)
    from geoseg import vectorize as lib

    path = lib.vectorize(mask, out, classes=classes, probabilities=probabilities,
                         min_area_m2=min_area, simplify_m=simplify, regularize=regularize,
                         layer=layer, overwrite=overwrite,
                         allow_ungeoreferenced=allow_ungeoreferenced)
    import pyogrio

    count = pyogrio.read_info(path, layer=layer if path.suffix.lower() == ".gpkg" else None)["features"]
    echo(f"{count} polygons -> {path}")
