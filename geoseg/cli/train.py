"""`geoseg train`: train a segmentation model on GeoTIFFs and labels into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from geoseg.cli._common import echo, set_quiet

_T = "Training"
_M = "Model"


def _opt(*names: str, help: str, panel: str = _T):  # noqa: A002 - mirrors typer's own keyword
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=False)


def _csv(value: Optional[str], cast: type) -> Optional[list]:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{value!r}: expected a comma-separated list, e.g. 1,5") from None


def train(
    images: Annotated[Optional[list[str]], typer.Argument(help="Folder(s), glob(s), list file or STAC JSON of GeoTIFFs "
                                                          "(or data.images of --config).", show_default=False)] = None,
    labels: Annotated[Optional[str], _opt("--labels", help="Mask folder, or vector file of polygons.", panel="Data")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, metrics, plots).")] = ...,
    config_file: Annotated[Optional[Path], _opt("--config", help="Pipeline YAML; options given here override it.",
                                                panel="Data")] = None,
    layout: Annotated[Optional[Literal["geo", "tiles"]], _opt("--layout", help="geo (GeoTIFFs) or tiles (img/ + mask/).", panel="Data")] = None,
    attribute: Annotated[Optional[str], _opt("--attribute", help="Vector labels: class id column.", panel="Data")] = None,
    model: Annotated[Optional[str], _opt("--model", help="unet, unet-resnet34, ... (default unet).", panel=_M)] = None,
    width: Annotated[Optional[int], _opt("--width", help="Plain UNet base channels (default 64).", panel=_M)] = None,
    classes: Annotated[Optional[int], _opt("--classes", help="Number of classes incl. background (default 2).", panel=_M)] = None,
    class_names: Annotated[Optional[str], _opt("--class-names", help="background,building,...", panel=_M)] = None,
    patch_size: Annotated[Optional[int], _opt("--patch-size", help="Patch side in pixels (default 256).")] = None,
    batch_size: Annotated[Optional[int], _opt("--batch-size", help="Patches per batch (default 8).")] = None,
    epochs: Annotated[Optional[int], _opt("--epochs", help="Epochs (default 100).")] = None,
    lr: Annotated[Optional[float], _opt("--lr", help="Learning rate (default 1e-3).")] = None,
    optimizer: Annotated[Optional[Literal["adamw", "adam", "sgd"]], _opt("--optimizer", help="Default adamw.")] = None,
    scheduler: Annotated[Optional[Literal["cosine", "plateau", "step", "onecycle", "none"]], _opt("--scheduler", help="Default cosine.")] = None,
    loss: Annotated[Optional[str], _opt("--loss", help="ce, dice, focal or a sum, e.g. ce+dice (default ce).")] = None,
    class_weights: Annotated[Optional[str], _opt("--class-weights", help="One per class, e.g. 1,5.")] = None,
    ignore_index: Annotated[Optional[int], _opt("--ignore-index", help="Mask value to ignore (default 255).")] = None,
    precision: Annotated[Optional[Literal["auto", "32", "bf16", "16"]], _opt("--precision", help="auto: bf16 where the hardware is fast at it, else fp16 on GPUs, fp32 on CPUs.")] = None,
    device: Annotated[Optional[Literal["auto", "cpu", "cuda"]], _opt("--device", help="Default auto.")] = None,
    devices: Annotated[Optional[int], _opt("--devices", help="Processes/GPUs on this machine (DDP) (default 1).")] = None,
    num_nodes: Annotated[Optional[int], _opt("--num-nodes", help="Machines (under torchrun) (default 1).")] = None,
    seed: Annotated[Optional[int], _opt("--seed", help="Random seed (default 0).")] = None,
    early_stop: Annotated[Optional[int], _opt("--early-stop", help="Stop after N epochs without gain.")] = None,
    workers: Annotated[Optional[int], _opt("--workers", help="Data loader processes (default 0).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/last.ckpt.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start again in a used run folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train a model; writes best.ckpt, last.ckpt, metrics.csv, curves.png, preview.png to --out.

    Example: geoseg train demo/data/images --labels demo/data/buildings.gpkg --out runs/demo --epochs 20 --width 16
    """
    from geoseg import config, train as train_lib

    set_quiet(quiet)
    given = {"data.labels": labels, "data.layout": layout, "data.label_attribute": attribute,
             "data.ignore_index": ignore_index, "model.name": model, "model.width": width,
             "model.classes": classes, "model.class_names": _csv(class_names, str),
             "train.patch_size": patch_size, "train.batch_size": batch_size, "train.epochs": epochs,
             "train.lr": lr, "train.optimizer": optimizer, "train.scheduler": scheduler, "train.loss": loss,
             "train.class_weights": _csv(class_weights, float), "train.precision": precision,
             "train.device": device, "train.devices": devices, "train.num_nodes": num_nodes,
             "train.seed": seed, "train.early_stop": early_stop, "train.workers": workers,
             "data.images": images or None}
    cfg = train_lib.configure(config_file, {k: v for k, v in given.items() if v is not None}, out, resume=resume)
    result = train_lib.fit(cfg, out, resume=resume, overwrite=overwrite)
    m = result.metrics
    echo(f"Best epoch {m.get('epoch')}: {result.monitor} {m.get(result.monitor, float('nan')):.4f}, "
         f"mIoU {m.get('miou', float('nan')):.4f}  ({result.epochs_run} epochs run, {result.device}, {result.precision})")
    if result.test_metrics:
        echo(f"Test split: mIoU {result.test_metrics['miou']:.4f}  -> {out / 'test_metrics.json'}")
    echo(f"Checkpoint: {result.best}")
