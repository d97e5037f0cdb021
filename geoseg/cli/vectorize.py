"""``geoseg vectorize``: a mask GeoTIFF to building footprints (GeoPackage, GeoJSON, Shapefile)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from geoseg.cli._common import Overwrite, Quiet, echo, set_quiet
from geoseg.cli._settings import Flag, section_settings, with_settings

Opt = typer.Option

# The footprint settings, as the schema (and `geoseg run`) has them. The classes stay a
# repeatable --class of their own: `--class building --class roof` must keep both.
FOOTPRINT_FLAGS = [
    Flag("vectorize.min_area_m2", name="--min-area"),
    Flag("vectorize.simplify_m", name="--simplify"),
    Flag("vectorize.regularize"),
    Flag("vectorize.seed_erosion_m", name="--seed-erosion"),
    Flag("vectorize.min_confidence"),
]
VECTORIZE_FLAGS = [*FOOTPRINT_FLAGS, Flag("vectorize.layer")]


@with_settings(*VECTORIZE_FLAGS)
def vectorize(
    mask: Annotated[Path, typer.Argument(help="Mask GeoTIFF of class ids (from geoseg infer).")],
    out: Annotated[Path, Opt("--out", "-o", help="Output .gpkg, .geojson or .shp.")],
    settings: dict[str, Any],
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
    from geoseg.config import VectorizeConfig

    given = section_settings(settings, "vectorize")
    cfg = VectorizeConfig(**given, classes=classes or [])
    path = lib.vectorize(
        mask,
        out,
        probabilities=probabilities,
        layer=cfg.layer,
        overwrite=overwrite,
        allow_ungeoreferenced=allow_ungeoreferenced,
        **lib.footprint_options(cfg),
    )
    layer = cfg.layer if path.suffix.lower() == ".gpkg" else None
    info = pyogrio.read_info(path, layer=layer)
    echo(f"{info['features']} polygons -> {path}")
