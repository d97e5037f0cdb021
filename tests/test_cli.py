"""The CLI shell: help, version, exit codes and the one-line error convention."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from helpers import assert_one_line_error
from typer.testing import CliRunner

import geoseg
from geoseg.cli import main as cli_main
from geoseg.cli._common import cli_errors, state
from geoseg.errors import CatalogError, ConfigError, GeosegError

runner = CliRunner()


def test_package_imports_and_has_version() -> None:
    assert geoseg.__version__.count(".") == 2


def test_version_flag_prints_version() -> None:
    result = runner.invoke(cli_main.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"geoseg {geoseg.__version__}"


def test_help_lists_every_registered_command_with_an_example() -> None:
    result = runner.invoke(cli_main.app, ["--help"])
    assert result.exit_code == 0
    registered = [c.name for c in cli_main.app.registered_commands]
    assert "demo-data" in registered
    for name in registered:
        assert name in result.stdout
        sub = runner.invoke(cli_main.app, [name, "--help"])
        assert sub.exit_code == 0, sub.output
        assert "geoseg " + name in sub.stdout, f"`geoseg {name} --help` shows no example"


def test_unknown_option_exits_2() -> None:
    result = runner.invoke(cli_main.app, ["demo-data", "--no-such-flag"])
    assert result.exit_code == 2


def test_geoseg_error_becomes_one_line_and_exit_1() -> None:
    def boom(path: str) -> None:
        raise CatalogError(f"{path}: no GeoTIFFs found; point IMAGES at a folder of .tif files")

    app = typer.Typer()
    app.command("boom")(cli_errors(boom))
    app.command("noop")(lambda: None)  # two commands, so `boom` is a subcommand
    result = runner.invoke(app, ["boom", "scenes/"])
    line = assert_one_line_error(result)
    assert line == "Error: scenes/: no GeoTIFFs found; point IMAGES at a folder of .tif files"


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("geoseg")
    proc = subprocess.run(
        [str(exe), "run", str(tmp_path / "missing.yaml")], capture_output=True, text=True
    )
    assert_one_line_error(proc, "missing.yaml")


def test_errors_inherit_builtins() -> None:
    from geoseg import errors

    assert issubclass(errors.InputNotFoundError, FileNotFoundError)
    assert issubclass(errors.CatalogError, ValueError)
    assert issubclass(errors.OutputExistsError, FileExistsError)
    assert all(
        issubclass(getattr(errors, n), GeosegError)
        for n in errors.__dict__
        if n.endswith("Error") and n != "GeosegError"
    )


def _raise_gdal_read_error() -> None:
    import rasterio

    from geoseg.io import CPLE_BaseError

    try:
        raise CPLE_BaseError(1, 1, "scene.tif, band 1: IReadBlock failed at X offset 0")
    except CPLE_BaseError as err:
        raise rasterio.errors.RasterioIOError("Read failed. See previous exception.") from err


def _raise_validation_error() -> None:
    from pydantic import BaseModel, PositiveFloat

    class Train(BaseModel):
        lr: PositiveFloat

    Train(lr=-1)


@pytest.mark.parametrize(
    ("boom", "code", "needles"),
    [
        (
            lambda: _raise(OSError(28, "No space left on device", "out/m.tif")),
            1,
            ["out/m.tif", "No space left", "free some space"],
        ),
        (
            lambda: _raise(PermissionError(13, "Permission denied", "/ro/x.gpkg")),
            1,
            ["/ro/x.gpkg", "Permission denied"],
        ),
        (
            lambda: _raise(OSError(30, "Read-only file system", "/mnt/x.tif")),
            1,
            ["/mnt/x.tif", "read-only"],
        ),
        (_raise_gdal_read_error, 1, ["scene.tif, band 1: IReadBlock failed"]),
        (_raise_validation_error, 2, ["lr", "greater than 0"]),
        (lambda: _raise(ConfigError("overlap=-1 must be >= 0")), 2, ["overlap=-1"]),
    ],
    ids=["ENOSPC", "EACCES", "EROFS", "GDAL read", "pydantic", "ConfigError"],
)
def test_error_boundary_turns_user_errors_into_one_line(boom, code: int, needles: list) -> None:
    app = typer.Typer()
    app.command("boom")(cli_errors(boom))
    app.command("noop")(lambda: None)
    assert_one_line_error(runner.invoke(app, ["boom"]), *needles, code=code)


def _raise(err: BaseException) -> None:
    raise err


def test_a_bug_keeps_its_traceback_and_debug_keeps_every_traceback() -> None:
    app = typer.Typer()
    app.command("bug")(cli_errors(lambda: _raise(KeyError("not a user error"))))
    app.command("user")(cli_errors(lambda: _raise(CatalogError("x: no GeoTIFFs found"))))
    result = runner.invoke(app, ["bug"])
    assert isinstance(result.exception, KeyError)  # not swallowed into one line
    state["debug"] = True
    try:
        result = runner.invoke(app, ["user"])
        assert isinstance(result.exception, CatalogError)
    finally:
        state["debug"] = False
