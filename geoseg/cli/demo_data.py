"""``geoseg demo-data``: write the built-in synthetic demo scenes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geoseg.cli._common import Overwrite, Quiet, echo, set_quiet


def demo_data(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write into; must be new or empty.", file_okay=False)
    ],
    tiles: Annotated[
        int, typer.Option("--tiles", help="Number of tiles (the last one is in UTM 32N).")
    ] = 4,
    size: Annotated[
        int, typer.Option("--size", help="Tile width and height in pixels (0.5 m each).")
    ] = 1024,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed gives the same files.")
    ] = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Write synthetic aerial GeoTIFFs with buildings, their masks and footprint polygons.

    Example: geoseg demo-data demo --tiles 4 --size 1024 --seed 0
    """
    from geoseg import synthetic

    if tiles < synthetic.MIN_TILES:
        raise typer.BadParameter(
            f"{tiles} tiles; expected at least {synthetic.MIN_TILES}", param_hint="--tiles"
        )
    if size < synthetic.MIN_SIZE:
        raise typer.BadParameter(
            f"{size} px; expected at least {synthetic.MIN_SIZE}", param_hint="--size"
        )
    if seed < 0:
        raise typer.BadParameter(f"{seed}; expected a non-negative integer", param_hint="--seed")
    set_quiet(quiet)
    demo = synthetic.make_demo_data(out_dir, tiles=tiles, size=size, seed=seed, overwrite=overwrite)
    echo(f"images:    {out_dir / 'images'} ({len(demo.images)} GeoTIFFs, {size}x{size} px, 0.5 m)")
    echo(f"masks:     {out_dir / 'masks'} (0 background, 1 building, 255 nodata)")
    echo(
        f"buildings: {demo.buildings} (layer {synthetic.LAYER}, "
        f"{demo.building_count} polygons, EPSG:{synthetic.SCENE_EPSG})"
    )
    echo(f"preview:   {demo.preview}")
