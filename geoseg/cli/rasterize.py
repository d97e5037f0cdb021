"""``geoseg rasterize``: burn vector labels into a mask GeoTIFF on an image's grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geoseg.cli._common import Overwrite, Quiet, echo, set_quiet


def rasterize(
    labels: Annotated[Path, typer.Argument(help="Polygons: GeoPackage, GeoJSON or Shapefile.")],
    like: Annotated[
        str,
        typer.Option(
            "--like", help="Image whose grid (CRS, transform, size) the mask gets (or a URL)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Mask GeoTIFF to write.")],
    attribute: Annotated[
        str | None,
        typer.Option("--attribute", help="Column with class ids; default: every polygon is 1."),
    ] = None,
    all_touched: Annotated[
        bool,
        typer.Option(
            "--all-touched", help="Burn every pixel a polygon touches, not only covered centres."
        ),
    ] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Burn LABELS into a uint8 mask on exactly IMAGE's grid: 0 = background, class ids where
    polygons lie, 255 (ignore) where IMAGE is nodata.

    Example: geoseg rasterize buildings.gpkg --like images/tile_00.tif --out masks/tile_00.tif
    """
    from geoseg import labels as labels_mod

    set_quiet(quiet)
    path = labels_mod.rasterize(
        labels, like, out, attribute=attribute, all_touched=all_touched, overwrite=overwrite
    )
    echo(f"wrote {path}")
