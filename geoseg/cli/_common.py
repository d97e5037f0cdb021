"""What every command shares: the error convention, output-exists checks, common options."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from geoseg.errors import ConfigError, GeosegError, OutputExistsError

F = TypeVar("F", bound=Callable[..., Any])

#: Set by the app callback (``--debug``): show tracebacks instead of one-line errors.
state: dict[str, bool] = {"debug": False}

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that exist.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; warnings only.")]


#: Exit status of a bad setting (an option, --set or a config file value), as click's usage
#: errors; every other user error (missing file, bad raster, output exists) exits 1.
BAD_SETTING_EXIT = 2


def cli_errors(func: F) -> F:
    """Turn a GeosegError into ``Error: …`` on stderr and exit 1, or 2 for a ConfigError (a bad
    setting); no traceback unless --debug."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GeosegError as err:
            if state["debug"]:
                raise
            msg = str(err).splitlines()[0] if str(err) else err.__class__.__name__
            typer.echo(f"Error: {msg}", err=True)
            raise typer.Exit(BAD_SETTING_EXIT if isinstance(err, ConfigError) else 1) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless ``--overwrite``."""
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} exists; pass --overwrite to replace it or choose another --out"
        )


def set_quiet(quiet: bool) -> None:
    """Apply a command's own ``--quiet``: fewer log lines and no progress bars."""
    from geoseg import progress

    if quiet:
        logging.getLogger("geoseg").setLevel(logging.WARNING)
        progress.set_enabled(False)


def echo(msg: str) -> None:
    """Print a result line on stdout (results go to stdout, logs and progress to stderr)."""
    typer.echo(msg)
