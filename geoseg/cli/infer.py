"""``geoseg infer``: a checkpoint + rasters -> georeferenced mask GeoTIFFs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from geoseg.cli._common import Overwrite, Quiet, echo, set_quiet

Opt = typer.Option


def infer(
    checkpoint: Annotated[Path, typer.Argument(help="A geoseg checkpoint (best.ckpt).")],
    inputs: Annotated[
        list[str], typer.Argument(help="GeoTIFFs, folders or globs.", metavar="INPUT...")
    ],
    out: Annotated[Path, Opt("--out", "-o", help="Mask .tif (one input) or a folder.")],
    patch_size: Annotated[
        int | None, Opt(help="Patch side in pixels (default: the checkpoint's).", min=1)
    ] = None,
    overlap: Annotated[
        int | None, Opt(help="Pixels shared by patches (default: min(64, patch/4)).", min=0)
    ] = None,
    batch_size: Annotated[
        int | None, Opt(help="Patches per forward pass (default: by device).", min=1)
    ] = None,
    probabilities: Annotated[
        bool, Opt("--probabilities", help="Also write <out>_prob.tif (uint8, p*254).")
    ] = False,
    tta: Annotated[Literal["none", "flip", "d4"], Opt(help="Test-time augmentation.")] = "none",
    precision: Annotated[Literal["auto", "32", "bf16"], Opt(help="Compute precision.")] = "auto",
    device: Annotated[Literal["auto", "cpu", "cuda"], Opt(help="Where the model runs.")] = "auto",
    workers: Annotated[int, Opt(help="Local dask worker processes (1 = in process).", min=1)] = 1,
    scheduler: Annotated[str | None, Opt(help="Existing dask scheduler, tcp://host:port.")] = None,
    cog: Annotated[bool, Opt("--cog/--no-cog", help="Cloud-Optimized GeoTIFF output.")] = True,
    overwrite: Overwrite = False,
    vectorize: Annotated[Path | None, Opt(help="Also write footprints to this GeoPackage.")] = None,
    allow_ungeoreferenced: Annotated[bool, Opt(help="Accept inputs without a CRS.")] = False,
    resample: Annotated[bool, Opt(help="Resample to the training pixel size on the fly.")] = False,
    quiet: Quiet = False,
) -> None:
    """Predict masks with a trained checkpoint (sliding windows, blended overlaps).

    Example: geoseg infer runs/demo/best.ckpt demo/images --out masks/ --tta flip
    """
    set_quiet(quiet)
    from geoseg import infer as lib

    masks = lib.predict(
        checkpoint,
        inputs,
        out,
        patch_size=patch_size,
        overlap=overlap,
        batch_size=batch_size,
        probabilities=probabilities,
        tta=tta,
        precision=precision,
        device=device,
        workers=workers,
        scheduler=scheduler,
        cog=cog,
        overwrite=overwrite,
        vectorize=vectorize,
        allow_ungeoreferenced=allow_ungeoreferenced,
        resample=resample,
    )
    for mask in masks:
        echo(str(mask))
