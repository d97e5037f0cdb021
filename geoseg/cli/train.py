"""`geoseg train`: train a segmentation model on GeoTIFFs and labels into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from geoseg.cli._common import echo, set_quiet

_T = "Training"
_M = "Model"


def _opt(*names: str, help: str, panel: str = _T):  # noqa: A002 - mirrors typer's own keyword
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=False)


def _csv(value: str | None, cast: type) -> list | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{value!r}: expected a comma-separated list, e.g. 1,5") from None


def train(
    images: Annotated[
        list[str] | None,
        typer.Argument(
            help="Folder(s), glob(s), list file or STAC JSON of GeoTIFFs "
            "(or data.images of --config).",
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        str | None, _opt("--labels", help="Mask folder, or vector file of polygons.", panel="Data")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder (checkpoints, metrics, plots).")
    ] = ...,
    config_file: Annotated[
        Path | None,
        _opt("--config", help="Pipeline YAML; options given here override it.", panel="Data"),
    ] = None,
    layout: Annotated[
        Literal["geo", "tiles"] | None,
        _opt("--layout", help="geo (GeoTIFFs) or tiles (img/ + mask/).", panel="Data"),
    ] = None,
    attribute: Annotated[
        str | None, _opt("--attribute", help="Vector labels: class id column.", panel="Data")
    ] = None,
    model: Annotated[
        str | None, _opt("--model", help="unet, unet-resnet34, ... (default unet).", panel=_M)
    ] = None,
    width: Annotated[
        int | None, _opt("--width", help="Plain UNet base channels (default 64).", panel=_M)
    ] = None,
    classes: Annotated[
        int | None,
        _opt("--classes", help="Number of classes incl. background (default 2).", panel=_M),
    ] = None,
    class_names: Annotated[
        str | None, _opt("--class-names", help="background,building,...", panel=_M)
    ] = None,
    patch_size: Annotated[
        int | None, _opt("--patch-size", help="Patch side in pixels (default 256).")
    ] = None,
    batch_size: Annotated[
        int | None, _opt("--batch-size", help="Patches per batch (default 8).")
    ] = None,
    epochs: Annotated[int | None, _opt("--epochs", help="Epochs (default 100).")] = None,
    lr: Annotated[float | None, _opt("--lr", help="Learning rate (default 1e-3).")] = None,
    optimizer: Annotated[
        Literal["adamw", "adam", "sgd"] | None, _opt("--optimizer", help="Default adamw.")
    ] = None,
    scheduler: Annotated[
        Literal["cosine", "plateau", "step", "onecycle", "none"] | None,
        _opt("--scheduler", help="Default cosine."),
    ] = None,
    loss: Annotated[
        str | None, _opt("--loss", help="ce, dice, focal or a sum, e.g. ce+dice (default ce).")
    ] = None,
    class_weights: Annotated[
        str | None, _opt("--class-weights", help="One per class, e.g. 1,5.")
    ] = None,
    ignore_index: Annotated[
        int | None, _opt("--ignore-index", help="Mask value to ignore (default 255).")
    ] = None,
    precision: Annotated[
        Literal["auto", "32", "bf16", "16"] | None,
        _opt(
            "--precision",
            help="auto: bf16 where the hardware is fast at it, else fp16 on GPUs, fp32 on CPUs.",
        ),
    ] = None,
    device: Annotated[
        Literal["auto", "cpu", "cuda"] | None, _opt("--device", help="Default auto.")
    ] = None,
    devices: Annotated[
        int | None, _opt("--devices", help="Processes/GPUs on this machine (DDP) (default 1).")
    ] = None,
    num_nodes: Annotated[
        int | None, _opt("--num-nodes", help="Machines (under torchrun) (default 1).")
    ] = None,
    seed: Annotated[int | None, _opt("--seed", help="Random seed (default 0).")] = None,
    early_stop: Annotated[
        int | None, _opt("--early-stop", help="Stop after N epochs without gain.")
    ] = None,
    workers: Annotated[
        int | None, _opt("--workers", help="Data loader processes (default 0).")
    ] = None,
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
    given = {
        "data.labels": labels,
        "data.layout": layout,
        "data.label_attribute": attribute,
        "data.ignore_index": ignore_index,
        "model.name": model,
        "model.width": width,
        "model.classes": classes,
        "model.class_names": _csv(class_names, str),
        "train.patch_size": patch_size,
        "train.batch_size": batch_size,
        "train.epochs": epochs,
        "train.lr": lr,
        "train.optimizer": optimizer,
        "train.scheduler": scheduler,
        "train.loss": loss,
        "train.class_weights": _csv(class_weights, float),
        "train.precision": precision,
        "train.device": device,
        "train.devices": devices,
        "train.num_nodes": num_nodes,
        "train.seed": seed,
        "train.early_stop": early_stop,
        "train.workers": workers,
        "data.images": images or None,
    }
    cfg = train_lib.configure(
        config_file, {k: v for k, v in given.items() if v is not None}, out, resume=resume
    )
    result = train_lib.fit(cfg, out, resume=resume, overwrite=overwrite)
    if result.rank:  # under torchrun, rank 0 reports
        return
    m = result.metrics
    echo(
        f"Best epoch {m.get('epoch')}: {result.monitor} {m.get(result.monitor, float('nan')):.4f}, "
        f"mIoU {m.get('miou', float('nan')):.4f}  "
        f"({result.epochs_run} epochs run, {result.device}, {result.precision})"
    )
    if result.test_metrics:
        echo(f"Test split: mIoU {result.test_metrics['miou']:.4f}  -> {out / 'test_metrics.json'}")
    echo(f"Checkpoint: {result.best}")
