"""``geoseg vectorize``: a mask GeoTIFF to building footprints (GeoPackage, GeoJSON, Shapefile)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geoseg.cli._common import Overwrite, Quiet, echo, set_quiet

Opt = typer.Option


def vectorize(
    mask: Annotated[Path, typer.Argument(help="Mask GeoTIFF of class ids (from geoseg infer).")],
    out: Annotated[Path, Opt("--out", "-o", help="Output .gpkg, .geojson or .shp.")],
    classes: Annotated[
        list[str] | None,
        Opt(
            "--class",
            help="Class name or id to polygonise (repeatable); default: all but background.",
        ),
    ] = None,
    probabilities: Annotated[
        Path | None,
        Opt("--probabilities", help="Probability raster (MASK_prob.tif): per-polygon confidence."),
    ] = None,
    min_area: Annotated[
        float, Opt("--min-area", min=0, help="Drop polygons under this many m².")
    ] = 0.0,
    simplify: Annotated[
        float, Opt("--simplify", min=0, help="Simplify by this many metres.")
    ] = 0.0,
    regularize: Annotated[bool, Opt("--regularize", help="Square building outlines.")] = False,
    layer: Annotated[str, Opt("--layer", help="GeoPackage layer name.")] = "footprints",
    allow_ungeoreferenced: Annotated[
        bool, Opt("--allow-ungeoreferenced", help="Accept a mask without a CRS (transform units).")
    ] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Polygonise a mask into valid footprints in the mask's CRS (area, perimeter, confidence).

    Example: geoseg vectorize mask.tif --out footprints.gpkg --class building --min-area 4
    """
    set_quiet(quiet)
    import pyogrio

    from geoseg import vectorize as lib

    path = lib.vectorize(
        mask,
        out,
        classes=classes,
        probabilities=probabilities,
        min_area_m2=min_area,
        simplify_m=simplify,
        regularize=regularize,
        layer=layer,
        overwrite=overwrite,
        allow_ungeoreferenced=allow_ungeoreferenced,
    )
    info = pyogrio.read_info(path, layer=layer if path.suffix.lower() == ".gpkg" else None)
    echo(f"{info['features']} polygons -> {path}")
