"""Errors a user can cause. Each also inherits a builtin, so library callers can catch either.

The CLI turns any GeosegError into one line ``Error: …`` on stderr and exit code 1. Messages say
what was found, what was expected and how to fix it, and name the file involved.
"""

from __future__ import annotations


class GeosegError(Exception):
    """Base class of every error a user can cause."""


class InputNotFoundError(GeosegError, FileNotFoundError):
    """A path given by the user does not exist."""


class CatalogError(GeosegError, ValueError):
    """The image catalog is empty, unreadable or inconsistent."""


class RasterError(GeosegError, ValueError):
    """A raster cannot be used: corrupt, truncated, no CRS, wrong band count, too small."""


class LabelError(GeosegError, ValueError):
    """Labels cannot be used: unreadable, no overlap with the images, values out of range."""


class ConfigError(GeosegError, ValueError):
    """A setting is unknown or has a bad value."""


class CheckpointError(GeosegError, ValueError):
    """A file is not a geoseg checkpoint, or cannot be loaded safely."""


class OutputExistsError(GeosegError, FileExistsError):
    """An output exists and ``overwrite`` was not given."""


class OutputBusyError(OutputExistsError):
    """Another live geoseg run is writing the same output."""


class OutputWriteError(GeosegError, OSError):
    """An output could not be written: full disk, read-only folder, no permission, size limit."""


class SchedulerError(GeosegError, ConnectionError):
    """A dask scheduler address cannot be reached."""


class RemoteError(GeosegError, ConnectionError):
    """A remote raster or catalog cannot be reached or read: endpoint down, timeout, denied."""
