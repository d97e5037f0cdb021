"""The CLI shell: help, version, exit codes and the one-line error convention."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer
from helpers import assert_one_line_error
from typer.testing import CliRunner

import geoseg
from geoseg.cli import main as cli_main
from geoseg.cli._common import cli_errors
from geoseg.errors import CatalogError, GeosegError

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
