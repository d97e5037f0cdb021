"""The ``geoseg`` Typer app: global options, and one registered command per file."""

from __future__ import annotations

import importlib
import logging
from typing import Annotated

import typer

from geoseg import __version__, progress
from geoseg.cli._common import cli_errors, state

app = typer.Typer(
    name="geoseg",
    help=(
        "GeoTIFF catalogs to trained segmentation models, georeferenced masks and building "
        "footprints.\n\nExample: geoseg demo-data demo && geoseg run pipelines/demo.yaml"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# (command name, module under geoseg.cli, function name). Each module is ~20 lines: parse,
# call the library, render. Imported lazily so `geoseg --help` stays fast.
COMMANDS: list[tuple[str, str, str]] = [
    ("demo-data", "demo_data", "demo_data"),
    ("train", "train", "train"),
    ("infer", "infer", "infer"),
    ("vectorize", "vectorize", "vectorize"),
    ("rasterize", "rasterize", "rasterize"),
    ("evaluate", "evaluate", "evaluate"),
    ("run", "run", "run"),
    ("export", "export", "export"),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"geoseg {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Warnings and results only; no progress bars.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Global options; they go before the command: geoseg -q infer ..."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("geoseg").setLevel(level)
    if not verbose:
        # Third-party chatter (torchgeo's "Converting ..." lines, rasterio env notes) stays hidden.
        logging.getLogger("rasterio").setLevel(logging.ERROR)
    progress.set_enabled(not quiet)
    state["debug"] = debug


def _register() -> None:
    for name, module, func in COMMANDS:
        mod = importlib.import_module(f"geoseg.cli.{module}")
        app.command(name=name)(cli_errors(getattr(mod, func)))


_register()


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
