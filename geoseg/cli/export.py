"""``geoseg export``: a checkpoint -> ONNX with GIS metadata and/or a STAC MLM item."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geoseg.cli._common import Overwrite, Quiet, echo, set_quiet

Opt = typer.Option


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A geoseg checkpoint (best.ckpt).")],
    out: Annotated[
        Path | None, Opt("--out", "-o", help="ONNX file to write (QGIS Deepness, GeoDeep).")
    ] = None,
    stac: Annotated[
        Path | None, Opt("--stac", help="STAC Item (MLM extension) JSON to write.")
    ] = None,
    opset: Annotated[int, Opt(help="ONNX opset.")] = 17,
    tile_size: Annotated[
        int | None, Opt(help="Fixed tile side in pixels (default: the checkpoint's).", min=1)
    ] = None,
    dynamic_size: Annotated[
        bool, Opt("--dynamic-size", help="Any tile height/width (not for Deepness/GeoDeep).")
    ] = False,
    input_scale: Annotated[
        float, Opt(help="Graph input = raw / this; 255 for GeoDeep on 8-bit images.", min=1e-9)
    ] = 1.0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Export a checkpoint as ONNX (takes raw pixels; classes, resolution and tile size in its
    metadata) and/or describe it as a STAC Item with the Machine Learning Model extension.

    Example: geoseg export runs/demo/best.ckpt --out model.onnx --stac model.json
    """
    set_quiet(quiet)
    if out is None and stac is None:
        raise typer.BadParameter("give --out MODEL.onnx, --stac MODEL.json or both")
    if out is not None and out.suffix.lower() != ".onnx":
        raise typer.BadParameter(f"{out}: the ONNX file name must end in .onnx", param_hint="--out")
    from geoseg import export as lib
    from geoseg import io

    for path, option in ((out, "--out"), (stac, "--stac")):
        if path is not None:  # both checked before any work starts
            io.check_output(path, overwrite=overwrite, inputs=[checkpoint], option=option)
    if out is not None:
        lib.onnx(
            checkpoint,
            out,
            opset=opset,
            tile_size=tile_size,
            dynamic_size=dynamic_size,
            input_scale=input_scale,
            overwrite=overwrite,
        )
        echo(f"wrote {out}")
    if stac is not None:
        lib.stac(checkpoint, stac, onnx=out, overwrite=overwrite)
        echo(f"wrote {stac}")
