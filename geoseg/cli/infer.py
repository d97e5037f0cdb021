"""``geoseg infer``: a checkpoint + rasters -> georeferenced mask GeoTIFFs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from geoseg.cli._common import Overwrite, Quiet, echo, set_quiet
from geoseg.cli._settings import Flag, section_settings, with_settings
from geoseg.config import InferConfig

# Every inference setting but the inputs (the arguments here) is an option, as the schema says.
INFER_FLAGS = [Flag(f"infer.{name}") for name in InferConfig.model_fields if name != "inputs"]


@with_settings(*INFER_FLAGS)
def infer(
    checkpoint: Annotated[
        Path, typer.Argument(help="A geoseg checkpoint (best.ckpt) or its export (model.onnx).")
    ],
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="GeoTIFFs, folders, globs, s3:// or https:// URLs, STAC.", metavar="INPUT..."
        ),
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Mask .tif (one input) or a folder (or s3://…).")
    ],
    settings: dict[str, Any],
    overwrite: Overwrite = False,
    vectorize: Annotated[
        str | None, typer.Option(help="Also write footprints to this GeoPackage.")
    ] = None,
    allow_ungeoreferenced: Annotated[
        bool, typer.Option(help="Accept inputs without a CRS.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Predict masks with a trained checkpoint (sliding windows, blended overlaps).

    Example: geoseg infer runs/demo/best.ckpt demo/images --out masks/ --tta flip
    """
    set_quiet(quiet)
    from geoseg import infer as lib
    from geoseg import remote

    masks = lib.predict(
        checkpoint,
        inputs,
        out,
        settings=lib.settings_from(**section_settings(settings, "infer")),
        overwrite=overwrite,
        vectorize=vectorize,
        allow_ungeoreferenced=allow_ungeoreferenced,
    )
    for mask in masks:
        echo(remote.to_url(mask))
