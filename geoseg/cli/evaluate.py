"""``geoseg evaluate``: pixel metrics (masks) or building F1 (polygons) of a prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geoseg.cli._common import Overwrite, Quiet, set_quiet

Opt = typer.Option


def evaluate(
    prediction: Annotated[Path, typer.Argument(help="Predicted mask GeoTIFF or footprints file.")],
    truth: Annotated[Path, typer.Argument(help="Truth mask GeoTIFF or polygon file.")],
    iou_threshold: Annotated[
        float, Opt("--iou-threshold", min=0, max=1, help="A building match needs IoU above this.")
    ] = 0.5,
    report: Annotated[
        Path | None, Opt("--json", help="Write every figure to this JSON file.")
    ] = None,
    classes: Annotated[
        list[str] | None,
        Opt(
            "--classes",
            help="Class names by id, in order: --classes background,building,road.",
        ),
    ] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Score PREDICTION against TRUTH: two masks -> pixel IoU/F1; two polygon files -> building
    precision/recall/F1 (SpaceNet, IoU > 0.5); a mask and polygons -> both. Exits 0 whatever the
    score.

    Example: geoseg evaluate footprints.gpkg truth.geojson --json report.json
    """
    set_quiet(quiet)
    from rich.console import Console

    from geoseg import evaluate as lib

    result = lib.evaluate(
        prediction,
        truth,
        iou_threshold=iou_threshold,
        classes=classes,
        report=report,
        overwrite=overwrite,
    )
    console = Console()
    console.print(f"mode: {result['mode']}\nprediction: {prediction}\ntruth: {truth}")
    for table in lib.tables(result):
        console.print(table)
    if report is not None:
        console.print(f"report: {report}")
