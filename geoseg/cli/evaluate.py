"""``geoseg evaluate``: pixel metrics (masks) or building F1 (polygons) of a prediction."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from geoseg.cli._common import Overwrite, Quiet, set_quiet

Opt = typer.Option


def evaluate(
    prediction: Annotated[
        str, typer.Argument(help="Predicted mask GeoTIFF (or its URL) or footprints file.")
    ],
    truth: Annotated[str, typer.Argument(help="Truth mask GeoTIFF (or its URL) or polygon file.")],
    iou_threshold: Annotated[
        float, Opt("--iou-threshold", min=0, max=1, help="A building match needs IoU above this.")
    ] = 0.5,
    report: Annotated[
        Path | None, Opt("--json", help="Write every figure to this JSON file.")
    ] = None,
    class_names: Annotated[
        list[str] | None,
        Opt(
            "--class-names",
            help="Class names by id, in order: --class-names background,building,road.",
        ),
    ] = None,
    old_class_names: Annotated[list[str] | None, Opt("--classes", hidden=True)] = None,
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
        class_names=_names([*(class_names or []), *(old_class_names or [])]),
        report=report,
        overwrite=overwrite,
    )
    console = Console()
    console.print(f"mode: {result['mode']}\nprediction: {prediction}\ntruth: {truth}")
    for table in tables(result):
        console.print(table)
    if report is not None:
        console.print(f"report: {report}")


def _names(given: list[str] | None) -> list[str] | None:
    """``--class-names a,b,c`` and ``--class-names a --class-names b`` both work."""
    names = [n.strip() for item in given or [] for n in item.split(",") if n.strip()]
    return names or None


def tables(report: dict[str, Any]) -> list[Table]:
    """Terminal tables of an evaluate report: building matches and/or per-class pixel scores."""
    out = []
    if "tp" in report:
        t = Table(title=f"buildings (IoU > {report['iou_threshold']:g})")
        for col in ("TP", "FP", "FN", "precision", "recall", "F1", "mean IoU"):
            t.add_column(col, justify="right")
        t.add_row(
            *(str(report[k]) for k in ("tp", "fp", "fn")),
            *(_num(report[k]) for k in ("precision", "recall", "f1", "mean_iou")),
        )
        out.append(t)
    if "per_class" in report:
        t = Table(
            title=f"pixels (mIoU {_num(report['miou'])}, accuracy {_num(report['accuracy'])})"
        )
        t.add_column("class")
        for col in ("IoU", "F1", "precision", "recall", "pixels"):
            t.add_column(col, justify="right")
        for name, s in report["per_class"].items():
            t.add_row(
                name,
                *(_num(s[k]) for k in ("iou", "f1", "precision", "recall")),
                str(s.get("support", "")),
            )
        out.append(t)
    return out


def _num(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
