"""``geoseg infer``: a checkpoint + rasters -> georeferenced mask GeoTIFFs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from geoseg.cli._common import Overwrite, Quiet, echo, set_quiet
from geoseg.cli._settings import Flag, section_settings, with_settings
from geoseg.cli.vectorize import FOOTPRINT_FLAGS
from geoseg.config import InferConfig, VectorizeConfig
from geoseg.errors import ConfigError

# Every inference setting but the inputs (the arguments here) is an option, as the schema says.
INFER_FLAGS = [Flag(f"infer.{name}") for name in InferConfig.model_fields if name != "inputs"]
# The footprints of --vectorize take the settings `geoseg vectorize` (and `geoseg run`) take.
VECTORIZE_PANEL = "Footprints (with --vectorize)"
INFER_VECTORIZE_FLAGS = [dataclasses.replace(f, panel=VECTORIZE_PANEL) for f in FOOTPRINT_FLAGS]


@with_settings(*INFER_FLAGS, *INFER_VECTORIZE_FLAGS)
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
        str | None,
        typer.Option(
            help="Also write footprints to this GeoPackage (a folder for several inputs).",
            rich_help_panel=VECTORIZE_PANEL,
        ),
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

    footprint_settings = section_settings(settings, "vectorize")
    if footprint_settings and vectorize is None:
        given = ", ".join(f.spelling for f in FOOTPRINT_FLAGS if f.key in settings)
        raise ConfigError(f"{given}: footprint settings need --vectorize OUT.gpkg; add it")
    masks = lib.predict(
        checkpoint,
        inputs,
        out,
        settings=lib.settings_from(**section_settings(settings, "infer")),
        overwrite=overwrite,
        vectorize=vectorize,
        vectorize_settings=VectorizeConfig(**footprint_settings),
        allow_ungeoreferenced=allow_ungeoreferenced,
    )
    for mask in masks:
        echo(remote.to_url(mask))
