"""`geoseg train`: train a segmentation model on GeoTIFFs and labels into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from geoseg.cli._common import echo, set_quiet
from geoseg.cli._settings import Flag, with_settings
from geoseg.config import DataConfig, ModelConfig, TrainConfig

# Spellings that differ from the field name (old ones stay as hidden aliases).
_RENAMED = {
    "data.label_attribute": Flag("data.label_attribute", "--attribute", panel="Data"),
    "model.name": Flag("model.name", "--model", panel="Model"),
    "model.classes": Flag("model.classes", "--num-classes", ("--classes",), panel="Model"),
}
# Every setting of the data, model and train sections is an option, as the schema says, except
# data.images (the IMAGES argument), data.mask_mapping and data.split (mappings: use --config).
TRAIN_FLAGS = [
    _RENAMED.get(f"{section}.{name}", Flag(f"{section}.{name}", panel=panel))
    for section, model, panel in (
        ("data", DataConfig, "Data"),
        ("model", ModelConfig, "Model"),
        ("train", TrainConfig, "Training"),
    )
    for name in model.model_fields
    if f"{section}.{name}" not in ("data.images", "data.mask_mapping", "data.split")
]


@with_settings(*TRAIN_FLAGS)
def train(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder (checkpoints, metrics, plots).")
    ],
    images: Annotated[
        list[str] | None,
        typer.Argument(
            help="Folder(s), glob(s), list file or STAC JSON of GeoTIFFs "
            "(or data.images of --config).",
            show_default=False,
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Pipeline YAML; options given here override it.",
            rich_help_panel="Data",
        ),
    ] = None,
    settings: dict[str, Any] | None = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from RUN_DIR/last.ckpt.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start again in a used run folder.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train a model; writes best.ckpt, last.ckpt, metrics.csv, curves.png, preview.png to --out.

    Example: geoseg train demo/data/images --labels demo/data/buildings.gpkg --out runs/demo
    --width 16 --patch-size 128 --epochs 20
    """
    from geoseg import train as train_lib

    set_quiet(quiet)
    given = dict(settings or {})
    if images:
        given["data.images"] = images
    cfg = train_lib.configure(config_file, given, out, resume=resume)
    result = train_lib.fit(cfg, out, resume=resume, overwrite=overwrite)
    if result.rank:  # under torchrun, rank 0 reports
        return
    m = result.metrics
    runs = f"({result.epochs_run} epochs run, {result.device}, {result.precision})"
    if result.validated:
        echo(
            f"Best epoch {m.get('epoch')}: {result.monitor} "
            f"{m.get(result.monitor, float('nan')):.4f}, "
            f"mIoU {m.get('miou', float('nan')):.4f}  {runs}"
        )
    else:
        echo(f"Last epoch {m.get('epoch')}, no validation split  {runs}")
    if result.test_metrics:
        echo(f"Test split: mIoU {result.test_metrics['miou']:.4f}  -> {out / 'test_metrics.json'}")
    echo(f"Checkpoint: {result.best}")
