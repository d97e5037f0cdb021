"""What every command shares: the error boundary, common options, result output."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import click
import typer

from geoseg.errors import ConfigError, GeosegError

F = TypeVar("F", bound=Callable[..., Any])

#: Set by the app callback (``--debug``): show tracebacks instead of one-line errors.
state: dict[str, bool] = {"debug": False}

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that exist.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; warnings only.")]

#: Exit status of a bad setting (an option, --set or a config file value), as click's usage
#: errors; every other user error (missing file, bad raster, output exists) exits 1.
BAD_SETTING_EXIT = 2

#: What to do about an OSError, by errno (reading or writing).
_OS_HINTS = {
    "ENOSPC": "free some space or choose another folder",
    "EDQUOT": "free some space (disk quota) or choose another folder",
    "EFBIG": "the file size limit (ulimit -f) was reached",
    "EROFS": "the file system is read-only; choose another folder",
    "EACCES": "no permission; choose another file or folder",
    "EPERM": "no permission; choose another file or folder",
    "ENOENT": "check the path",
    "EISDIR": "a folder was given where a file is expected",
    "ENOTDIR": "a file was given where a folder is expected",
}


def error_line(err: BaseException) -> str | None:
    """The one line ``Error: …`` says for an error a user can cause (None: a bug, show it).

    GeosegError says it itself. OSError (full disk, read-only or unwritable folder, a missing
    file), rasterio/GDAL errors (corrupt data: GDAL's message names the file) and pydantic
    validation errors (a bad setting) are worded here, naming the file or the setting.
    """
    import errno as errno_mod

    if isinstance(err, GeosegError):
        return _first_line(err) or err.__class__.__name__
    if isinstance(err, OSError) and err.strerror:
        name = errno_mod.errorcode.get(err.errno or 0, "")
        hint = _OS_HINTS.get(name, "check the file and the folder's permissions")
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}; {hint}"
    from rasterio.errors import RasterioError

    from geoseg.io import CPLE_BaseError, gdal_message

    if isinstance(err, (RasterioError, CPLE_BaseError, OSError)):
        return f"{gdal_message(err)} (GDAL); check the file named here"
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        return None
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "setting"
        return f"invalid setting {loc}: {first.get('msg', '')} (got {first.get('input')!r})"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def cli_errors(func: F) -> F:
    """The CLI's one error boundary: a user-caused error becomes ``Error: …`` on stderr.

    Exit 2 for a bad setting (ConfigError, a pydantic ValidationError), 1 for every other user
    error (see :func:`error_line`); anything else (a bug) keeps its traceback. With ``--debug``
    every error keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not state["debug"]:
            from geoseg import io

            io.silence_libtiff()  # geoseg reports failed raster writes itself, in one line
        try:
            return func(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, typer.Exit):
            raise
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        except Exception as err:
            msg = None if state["debug"] else error_line(err)
            if msg is None:
                raise
            typer.echo(f"Error: {msg}", err=True)
            raise typer.Exit(BAD_SETTING_EXIT if _is_bad_setting(err) else 1) from None

    return wrapper  # type: ignore[return-value]


def _is_bad_setting(err: BaseException) -> bool:
    if isinstance(err, ConfigError):
        return True
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(err, ValidationError)


def set_quiet(quiet: bool) -> None:
    """Apply a command's own ``--quiet``: fewer log lines and no progress bars."""
    from geoseg import progress

    if quiet:
        logging.getLogger("geoseg").setLevel(logging.WARNING)
        progress.set_enabled(False)


def echo(msg: str) -> None:
    """Print a result line on stdout (results go to stdout, logs and progress to stderr)."""
    typer.echo(msg)
