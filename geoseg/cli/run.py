"""`geoseg run`: the whole chain from one pipeline file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from geoseg.cli._common import echo, set_quiet

STAGE_HELP = "train, infer, vectorize or evaluate"


def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML (see pipelines/).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: --set train.epochs=2 (repeatable)."),
    ] = None,
    from_stage: Annotated[
        str | None, typer.Option("--from", help=f"First stage: {STAGE_HELP}.")
    ] = None,
    until_stage: Annotated[
        str | None, typer.Option("--until", help=f"Last stage: {STAGE_HELP}.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rerun stages even if already done.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run train -> infer -> vectorize -> evaluate into one run folder, resuming where it stopped.

    Example: geoseg run pipelines/demo.yaml --set train.epochs=2
    """
    from geoseg import config
    from geoseg import pipeline as pipeline_mod

    set_quiet(quiet)
    cfg = config.load(pipeline, set_ or [])

    def show(stage: pipeline_mod.StageOutcome) -> None:
        what = (
            "skipped (done, inputs unchanged)"
            if stage.skipped
            else f"done in {stage.seconds:.0f} s"
        )
        echo(
            f"{stage.name:<9} {what}: {', '.join(str(p) for p in stage.outputs[:3])}"
            + (" ..." if len(stage.outputs) > 3 else "")
        )

    result = pipeline_mod.run(
        cfg,
        from_stage=cast("pipeline_mod.Stage | None", from_stage),  # checked by pipeline.run
        until_stage=cast("pipeline_mod.Stage | None", until_stage),
        force=force,
        on_stage=show,
    )
    echo(f"Run folder: {result.run_dir}")
    if result.report:
        r = result.report
        for key, label in (
            ("building_iou", "building IoU (pixels)"),
            ("building_f1", "building F1 (objects)"),
            ("miou", "mIoU"),
        ):
            if r.get(key) is not None:
                echo(f"{label:<22} {r[key]:.3f}  [{r['area']}]")
    if result.preview:
        echo(f"Preview: {result.preview}")
