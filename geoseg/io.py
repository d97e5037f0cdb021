"""geoseg's on-disk conventions, in one place.

Every module that reads or writes files goes through here, so a change to the mask format or to
how outputs are published is a one-file change:

- **File kinds**: which endings are rasters, which are vectors, which OGR driver writes a
  vector ending (:data:`RASTER_SUFFIXES`, :data:`VECTOR_SUFFIXES`, :data:`VECTOR_DRIVERS`,
  :func:`file_kind`).
- **Outputs**: :func:`claim` takes an output before any work starts (refuses an existing file
  without ``overwrite``, an output that is also an input, and an output another live run is
  writing), hands out temporary names in the output's folder, and publishes by verifying,
  fsync-ing and renaming; on any error every temporary file is removed and the first error is the
  one raised. :func:`atomic_write` is the one-file form.
- **Verified GDAL writes**: GDAL reports a full disk on stderr and lets ``close()`` succeed, so
  :func:`verify_raster` re-reads what was written (block table against the file size, then the
  blocks themselves, last written first) before a raster is renamed into place.
- **Reading**: :func:`open_raster` and :func:`read_vector` turn a missing, unreadable or
  CRS-less file into a one-line error; :func:`reading` does the same for corrupt pixel data found
  while reading.
- **The mask format** (:func:`mask_profile`, :func:`write_mask`, :class:`MaskWriter`,
  :func:`class_table`): uint8 class ids, nodata 255, tiled 512 x 512, deflate, a colour table, and
  the class names as two dataset tags ``class_names`` / ``class_ids`` (JSON lists). Masks written
  by earlier versions (band tags ``CLASS_<id>``, a band tag ``classes="0=background,..."``) still
  read.
- **Fingerprints** of input files (:func:`fingerprint`, :func:`digest`) and **strict JSON**
  (:func:`write_json`: NaN and infinities become null).

Named ``io`` inside the package (``from geoseg import io``); it does not shadow the standard
library's ``io`` for absolute imports.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import math
import os
import resource
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError  # GDAL errors rasterio raises as they are
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

from geoseg import remote
from geoseg.errors import (
    ConfigError,
    GeosegError,
    InputNotFoundError,
    LabelError,
    OutputBusyError,
    OutputExistsError,
    OutputWriteError,
    RasterError,
)

log = logging.getLogger(__name__)

# ============================================================================ file kinds

#: Endings searched for when a folder is given as an image catalog (GeoTIFFs and VRTs).
CATALOG_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".gtif", ".vrt")
#: Endings of plain image tiles (``layout: tiles``: chips that may have no georeference).
TILE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: Every ending taken as a raster when a user names a file.
RASTER_SUFFIXES: frozenset[str] = frozenset((*CATALOG_SUFFIXES, *TILE_SUFFIXES, ".img", ".jp2"))
#: Every ending taken as a vector file (labels, truth, footprints). ``.parquet`` is GeoParquet,
#: read with geopandas (needs pyarrow); the rest are read through GDAL/OGR.
VECTOR_SUFFIXES: frozenset[str] = frozenset(
    (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite", ".parquet")
)
#: Vector endings geoseg writes, and the OGR driver for each.
VECTOR_DRIVERS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".shp": "ESRI Shapefile",
    ".fgb": "FlatGeobuf",
}


def is_vector(path: str | Path) -> bool:
    """Whether ``path`` names a vector file, by its ending."""
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def is_raster(path: str | Path) -> bool:
    """Whether ``path`` names a raster file, by its ending."""
    return Path(path).suffix.lower() in RASTER_SUFFIXES


def file_kind(path: str | Path) -> Literal["raster", "vector"]:
    """``raster`` or ``vector``: by the ending, else (an unknown ending) by trying GDAL.

    A folder is a vector source (a Shapefile folder, a FileGDB).

    Raises:
        InputNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if remote.is_remote(path) and is_raster(path):  # opening it says if it is there
        return "raster"
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such file; check the path")
    if is_raster(path):
        return "raster"
    if is_vector(path) or path.is_dir():
        return "vector"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path):
                return "raster"
    except RasterioIOError:
        return "vector"


def vector_driver(path: str | Path) -> str:
    """The OGR driver that writes ``path`` (by its ending).

    Raises:
        ConfigError: an ending geoseg does not write.
    """
    path = Path(path)
    driver = VECTOR_DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise ConfigError(
            f"{path}: unknown vector format {path.suffix!r}; use " + ", ".join(VECTOR_DRIVERS)
        )
    return driver


# ============================================================================ outputs

#: errno values that mean "this place cannot take the file", each with what to do about it.
_WRITE_ERRNOS = {
    errno.ENOSPC: "free some space or choose another folder",
    errno.EDQUOT: "free some space (disk quota) or choose another folder",
    errno.EFBIG: "the file size limit (ulimit -f) was reached; raise it or write a smaller file",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.EACCES: "no permission to write there; choose another folder",
    errno.EPERM: "no permission to write there; choose another folder",
}


def _samefile(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    option: str = "--out",
) -> Path:
    """Refuse an output that exists (without ``overwrite``) or that is one of ``inputs``.

    An output that is also an input is refused even with ``overwrite``: writing it would destroy
    the input before it is read. Paths are compared as files (``os.path.samefile``: links and
    ``..`` do not hide it) and as resolved names.

    Args:
        path: The output file.
        overwrite: Replace an existing output.
        inputs: The files the command reads (None entries are skipped).
        option: The option that named the output, for the message (``--out``, ``--json``).

    Returns:
        ``path`` as a Path.

    Raises:
        ConfigError: ``path`` is one of ``inputs``.
        OutputExistsError: ``path`` exists and not ``overwrite``.
    """
    if remote.is_remote(path):  # an s3:// output (written locally, then uploaded)
        if any(inp is not None and remote.to_url(inp) == remote.to_url(path) for inp in inputs):
            raise ConfigError(f"{remote.to_url(path)} is also an input; choose another {option}")
        remote.check_output(path, overwrite, option=option)
        return remote.as_path(path)
    path = Path(path)
    resolved = path.resolve()
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp)
        if _samefile(path, inp) or resolved == inp.resolve():
            raise ConfigError(
                f"{path} is also an input ({inp}); writing it would destroy the input, even "
                f"with --overwrite; choose another {option}"
            )
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(
            f"{path} exists; pass --overwrite to replace it or choose another {option}"
        )
    return path


def _temp_name(path: Path, tag: str = "", suffix: str = "") -> Path:
    # Hidden, and not ending like the output (folder scans for *.tif never pick it up): an
    # interrupted run never leaves a file that looks finished. The pid keeps two processes
    # apart; the lock (see claim) keeps two runs apart. ``suffix`` only for drivers that
    # go by the extension (OGR's: GeoPackage warns, FlatGeobuf makes a folder without it).
    return path.with_name(f".{path.name}.{tag + '.' if tag else ''}partial-{os.getpid()}{suffix}")


def _temp_glob(path: Path) -> str:
    return str(path.parent / f".{glob.escape(path.name)}.*partial-*")


def _lock_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def write_failure(path: Path, err: BaseException | None = None) -> OutputWriteError:
    """An OutputWriteError naming ``path`` and, where it can be told, why the write failed."""
    # A GDAL error's ``errno`` is GDAL's error number (1 = CPLE_AppDefined), not the OS's.
    code = None if isinstance(err, CPLE_BaseError) else getattr(err, "errno", None)
    if code in _WRITE_ERRNOS:
        why = f"{os.strerror(code)}; {_WRITE_ERRNOS[code]}"
    elif isinstance(err, OSError) and err.strerror:
        why = f"{err.strerror}; check the folder and its permissions"
    else:  # GDAL's errors do not say why: look at the limit and the free space
        why = _why_write_failed(path.parent) or (
            "the file was incomplete when read back"
            if err is None or isinstance(err, GeosegError)
            else f"{gdal_message(err)}; check the disk and the folder's permissions"
        )
    return OutputWriteError(f"{path}: could not be written ({why}); nothing was written")


def _why_write_failed(folder: Path) -> str | None:
    """What likely made a write fail when the error itself does not say (GDAL's, OGR's).

    A nearly full file system, else a file size limit (``ulimit -f``) if one is set.
    """
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < 4 * 2**20:
            return f"{os.strerror(errno.ENOSPC)}; {_WRITE_ERRNOS[errno.ENOSPC]}"
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return f"{os.strerror(errno.EFBIG)}; {_WRITE_ERRNOS[errno.EFBIG]}"
    return None


def _is_write_error(err: BaseException, temps: Sequence[Path]) -> bool:
    """Whether ``err`` (raised while writing temps) means the file system refused the write."""
    if isinstance(err, GeosegError):
        return False
    if isinstance(err, OSError) and getattr(err, "errno", None) in _WRITE_ERRNOS:
        return True
    if isinstance(err, OSError) and err.filename is not None:
        return any(str(t) in str(err.filename) for t in temps)
    text = str(err)
    if isinstance(err, RasterioError) and text.startswith("Write failed"):
        return True
    gdal_or_ogr = isinstance(err, (RasterioError, OSError, CPLE_BaseError)) or _from_pyogrio(err)
    return gdal_or_ogr and any(t.name in text for t in temps)


def _from_pyogrio(err: BaseException) -> bool:
    """An OGR error raised by pyogrio (FeatureError, DataSourceError, ...)."""
    return type(err).__module__.startswith("pyogrio")


def _fsync_path(path: Path) -> None:
    """Flush a file (written by us or by GDAL) or a folder to the disk (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    """Remove a file or folder; never raises (a failed cleanup must not hide the first error)."""
    try:
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                _remove(child)
            path.rmdir()
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError as err:
        log.debug("could not remove %s: %s", path, err)


class Output:
    """An output file claimed for writing: see :func:`claim`.

    Attributes:
        path: The final file name.
    """

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._temps: list[Path] = []
        self._lock_fd: int | None = None

    # -- claiming ---------------------------------------------------------------------------

    def _acquire(self) -> None:
        """Take the output's lock file (``.<name>.lock``, flock'ed) and clear dead runs' temps."""
        import fcntl

        lock = _lock_name(self.path)
        for _ in range(5):
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise write_failure(self.path, err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise OutputBusyError(
                    f"{self.path} is being written by another geoseg run{owner}; wait for it "
                    "to finish or choose another output"
                ) from None
            except OSError as err:  # a file system without flock: claim without a lock
                log.debug("no lock on %s (%s); claiming without one", lock, err)
                os.close(fd)
                with contextlib.suppress(OSError):
                    lock.unlink()
                self._clear_stale()
                return
            # The previous holder may have removed the lock file between our open and flock:
            # then we hold a lock on a deleted file; start again on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                self._lock_fd = fd
                self._clear_stale()
                return
            os.close(fd)
        raise OutputBusyError(f"{self.path}: could not take its lock file {lock}; try again")

    def _clear_stale(self) -> None:
        # We hold the lock, so temporary files of this output belong to runs that died.
        for stale in glob.glob(_temp_glob(self.path)):
            log.info("removing %s left by an interrupted run", stale)
            _remove(Path(stale))

    # -- writing ----------------------------------------------------------------------------

    def temp(self, tag: str = "", *, suffix: str = "") -> Path:
        """A temporary path in the output's folder, removed on release unless committed.

        ``tag`` tells several temporary files of one output apart (``cog``, ``block3``);
        ``suffix`` is appended for drivers that go by the extension (OGR's).
        """
        tmp = _temp_name(self.path, tag, suffix)
        _remove(tmp)
        self._temps.append(tmp)
        return tmp

    def temp_dir(self, tag: str = "d") -> Path:
        """A temporary folder for multi-file formats (Shapefile): commit moves its files."""
        tmp = self.temp(tag)
        tmp.mkdir()
        return tmp

    def commit(self, tmp: Path, *, verify: Callable[[Path], None] | None = None) -> Path:
        """Publish ``tmp`` as the output: verify, flush to disk, rename (atomic), flush the folder.

        ``tmp`` may be a folder from :meth:`temp_dir`: each file in it (``<stem>.<ext>``
        parts) is renamed next to the output.

        Raises:
            OutputWriteError: ``verify`` found the file incomplete, or a file system error.
        """
        try:
            if verify is not None:
                verify(tmp)
        except GeosegError as err:
            log.debug("%s: %s", self.path, err)
            raise write_failure(self.path, err) from None
        try:
            parts = sorted(tmp.iterdir()) if tmp.is_dir() else [tmp]
            if self.fsync:
                for part in parts:
                    _fsync_path(part)
            if tmp.is_dir():
                for part in parts:
                    os.replace(part, self.path.with_name(part.name))
            else:
                os.replace(tmp, self.path)
        except (OSError, RasterioError) as err:
            raise write_failure(self.path, err) from err
        if self.fsync:
            _fsync_path(self.path.parent)
        return self.path

    def release(self) -> None:
        """Remove every temporary file that was not committed and give up the lock."""
        for tmp in self._temps:
            # with what drivers leave next to it (SQLite journals, GDAL's .aux.xml)
            for path in [tmp, *map(Path, glob.glob(glob.escape(str(tmp)) + "?*"))]:
                _remove(path)
        self._temps.clear()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(_lock_name(self.path))
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Output:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        temps = list(self._temps)
        # Tell why before cleaning up: the temporary files still fill the disk.
        failure = (
            write_failure(self.path, exc)
            if exc is not None and _is_write_error(exc, temps)
            else None
        )
        self.release()
        if failure is not None:
            raise failure from exc


def _read_owner(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid, host = os.pread(fd, 200, 0).decode().split()[:2]
        return f" (pid {pid} on {host})"
    return ""


def claim(
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    option: str = "--out",
    fsync: bool = True,
) -> Output:
    """Claim an output before the work that produces it starts.

    Checks it (:func:`check_output`), creates its folder, and takes its lock file
    ``.<name>.lock`` (an ``flock``, released by the kernel if the process dies), so a second run
    writing the same output fails at once instead of both succeeding and one silently replacing
    the other. Temporary files of runs that died are removed. Use as a context manager: leaving
    it removes every temporary file that was not committed and the lock; an OSError or GDAL write
    error from writing a temporary file becomes one :class:`OutputWriteError` naming the output.

    Example::

        with io.claim(out, overwrite=overwrite, inputs=[src]) as output:
            ...                               # the long work; nothing is written yet
            tmp = output.temp()
            write_somehow(tmp)
            output.commit(tmp, verify=io.verify_raster)

    Raises:
        ConfigError, OutputExistsError: see :func:`check_output`.
        OutputBusyError: another live run holds the output.
        OutputWriteError: the folder cannot be written (read-only, no permission, full).
    """
    path = check_output(path, overwrite=overwrite, inputs=inputs, option=option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_failure(path, err) from None
    out = Output(path, fsync=fsync)
    out._acquire()
    if path.exists() and not overwrite:  # written by a run that finished while we waited
        out.release()
        check_output(path, overwrite=overwrite, option=option)
    return out


@contextlib.contextmanager
def atomic_write(
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    option: str = "--out",
    verify: Callable[[Path], None] | None = None,
    fsync: bool = True,
) -> Iterator[Path]:
    """Write one file atomically: yields a temporary path in the same folder to write to.

    On success the temporary file is verified (``verify(tmp)`` raises if it is incomplete),
    flushed and renamed over ``path``; on any error it is removed and ``path`` is untouched. See
    :func:`claim` for the checks and the lock.

    Example::

        with io.atomic_write(out, overwrite=True) as tmp:
            tmp.write_text(text)
    """
    with claim(path, overwrite=overwrite, inputs=inputs, option=option, fsync=fsync) as output:
        tmp = output.temp()
        yield tmp
        output.commit(tmp, verify=verify)


def remove_temps(path: str | Path) -> None:
    """Remove this process's temporary files of ``path`` (``.<name>.*partial-<pid>*``).

    For files written on this process's behalf after its claim was released (dask workers of a
    local cluster, which stop only when the cluster closes). Never raises.
    """
    path = Path(path)
    pattern = str(path.parent / f".{glob.escape(path.name)}.*partial-{os.getpid()}*")
    for tmp in glob.glob(pattern):
        _remove(Path(tmp))


@contextlib.contextmanager
def new_folders(*folders: str | Path) -> Iterator[None]:
    """Create ``folders`` (parents first); if the block fails, remove those it created that are
    still empty, so a failed command leaves no empty output tree behind."""
    created: list[Path] = []
    for folder in map(Path, folders):
        missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_failure(folder, err) from None
        created += [p for p in missing if p not in created]
    try:
        yield
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        raise


def write_text(path: str | Path | Output, text: str, *, overwrite: bool = True) -> Path:
    """Write a text file (UTF-8) atomically, to a path or into a claimed :class:`Output`."""
    if isinstance(path, Output):
        tmp = path.temp()
        tmp.write_text(text, encoding="utf-8")
        return path.commit(tmp)
    with atomic_write(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_vector(
    gdf: Any,
    path: str | Path | Output,
    *,
    layer: str | None = None,
    overwrite: bool = False,
    finish: Callable[[Path], None] | None = None,
    **options: Any,
) -> Path:
    """Write a GeoDataFrame atomically and verified; the format follows the ending.

    Args:
        gdf: The features.
        path: The output (any ending of :data:`VECTOR_DRIVERS`), or a claimed :class:`Output`.
        layer: Layer name (GeoPackage; other formats have one unnamed layer).
        overwrite: Replace an existing file (for a path).
        finish: Called with the written temporary file before it is verified and published
            (e.g. to add a QGIS style table to a GeoPackage).
        options: More ``GeoDataFrame.to_file`` arguments (e.g. ``geometry_type``,
            ``SPATIAL_INDEX``).

    A Shapefile's parts (.shp, .dbf, .prj, ...) are written into a temporary folder and renamed
    next to the output together.
    """
    if not isinstance(path, Output):
        vector_driver(path)
        with claim(path, overwrite=overwrite) as output:
            return write_vector(gdf, output, layer=layer, finish=finish, **options)
    output = path
    driver = vector_driver(output.path)
    kwargs: dict[str, Any] = {"driver": driver, "engine": "pyogrio", **options}
    if driver == "GPKG" and layer:
        kwargs["layer"] = layer
    if driver == "ESRI Shapefile":
        tmp = output.temp_dir()
        target = tmp / output.path.name
    else:
        tmp = output.temp(suffix=output.path.suffix)  # OGR drivers go by the extension
        target = tmp
    try:
        gdf.to_file(target, **kwargs)
        if finish is not None:
            finish(tmp)
    except Exception as err:
        if isinstance(err, OSError) or _from_pyogrio(err):  # OGR's errors: a failed write
            raise write_failure(output.path, err) from None
        raise
    read_layer = layer if driver == "GPKG" else None
    return output.commit(tmp, verify=lambda p: verify_vector(p, layer=read_layer, count=len(gdf)))


# ============================================================================ verified GDAL writes

#: Decoded bytes of the last-written blocks that are read again after a raster write (every
#: block of rasters up to this size). A failed write loses the end of the file.
VERIFY_READ_BYTES = 64 * 2**20


def verify_raster(path: str | Path) -> None:
    """Check that a GeoTIFF GDAL reported as written really is complete.

    GDAL reports write errors (a full disk, a file size limit) on stderr and still closes the
    file without an error, so this re-reads it: the header must open, every block must lie
    inside the file, and the blocks written last (:data:`VERIFY_READ_BYTES` of pixels, so every
    block of a small raster) must decode. Measured on a full tmpfs: a truncated file either
    fails to open or fails to decode its last block; the block table alone can look intact.

    Raises:
        RasterError: the file is incomplete (the caller names the output and the cause).
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioError as err:
        raise RasterError(f"{path}: incomplete ({_first_line(err)})") from None
    with src:
        if src.driver != "GTiff":
            return
        bands = [1] if src.interleaving == rasterio.enums.Interleaving.pixel else src.indexes
        blocks = []  # (offset, nbytes, band, window)
        for b in bands:
            for (row, col), window in src.block_windows(b):
                offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=b)
                nbytes = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=b)
                if offset is None or nbytes is None:
                    continue  # not a plain GeoTIFF block table (GDAL answers None)
                offset, nbytes = int(offset), int(nbytes)
                if offset == 0 or offset + nbytes > size:
                    raise RasterError(f"{path}: block ({row}, {col}) of band {b} is missing")
                blocks.append((offset, nbytes, b, window))
        budget = VERIFY_READ_BYTES
        try:
            for _, _, b, window in sorted(blocks, key=lambda x: x[0], reverse=True):
                budget -= src.read(b, window=window).nbytes
                if budget <= 0:
                    break
        except RasterioError as err:
            raise RasterError(f"{path}: a block does not decode ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def gdal_message(err: BaseException) -> str:
    """The informative line of a rasterio/GDAL error.

    rasterio raises ``Read failed. See previous exception for details.``; GDAL's own message
    (which names the file: ``a.tif, band 1: IReadBlock failed ...``) is the exception's cause.
    """
    seen: BaseException | None = err
    while seen is not None:
        text = _first_line(seen)
        if "previous exception" not in text:
            return text
        seen = seen.__cause__ or seen.__context__
    return _first_line(err)


def verify_vector(path: str | Path, *, layer: str | None = None, count: int | None = None) -> None:
    """Check that a vector file written by OGR opens and holds ``count`` features.

    Raises:
        LabelError: it does not open, or it holds another number of features.
    """
    import pyogrio

    path = Path(path)
    target = path
    if path.is_dir():  # a Shapefile's parts in a temporary folder
        shp = sorted(path.glob("*.shp"))
        target = shp[0] if shp else path
    try:
        info = pyogrio.read_info(target, layer=layer)
    except Exception as err:  # noqa: BLE001 - pyogrio raises several error types per driver
        raise LabelError(f"{path}: incomplete ({_first_line(err)})") from None
    if count is not None and info["features"] != count:
        raise LabelError(f"{path}: {info['features']} features written of {count}")


# ============================================================================ reading


def open_raster(
    path: str | Path,
    *,
    require_crs: bool = False,
    hint: str = "pass a GeoTIFF",
) -> Any:  # rasterio.DatasetReader
    """Open a raster for reading, with one-line errors that name the file.

    Args:
        path: The raster file.
        require_crs: Refuse a raster without a CRS.
        hint: What the user should pass instead, ending the "not a raster" message.

    Raises:
        InputNotFoundError: no such file.
        RasterError: not a raster GDAL reads (truncated header, another format), or no CRS.
    """
    path = remote.as_path(path)
    if not remote.is_remote(path) and not path.exists():
        raise InputNotFoundError(f"{path}: no such file; check the path")
    try:
        with warnings.catch_warnings(), remote.env([path]):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioError as err:
        if remote.is_remote(path):  # missing key, denied, endpoint down: say which
            raise remote.explain(path, err) from None
        raise RasterError(f"{path}: not a readable raster ({_first_line(err)}); {hint}") from None
    if require_crs and src.crs is None:
        src.close()
        raise RasterError(
            f"{path}: has no CRS; georeference it (e.g. gdal_edit.py -a_srs EPSG:xxxx)"
        )
    return src


@contextlib.contextmanager
def reading(*paths: str | Path) -> Iterator[None]:
    """Turn a GDAL read error inside the block into a RasterError naming the file.

    Truncated or corrupt pixel data shows only when its blocks are read (GDAL opens such a file
    happily). With several ``paths`` the one GDAL's message mentions is named (else the first).
    """
    try:
        yield
    except GeosegError:
        raise
    except (RasterioError, CPLE_BaseError) as err:
        if _first_line(err).startswith("Write failed"):  # an output's error (see claim)
            raise
        text = gdal_message(err)
        named = next((Path(p) for p in paths if Path(p).name in str(err)), None)
        path = named or (Path(paths[0]) if paths else None)
        if path is not None and remote.is_remote(path):  # a network failure, not a bad file
            raise remote.explain(path, err) from None
        raise RasterError(
            f"{path}: cannot read its pixels ({text}); the file is truncated or corrupt: "
            "re-create or re-download it"
        ) from None


def read_vector(path: str | Path, *, what: str = "polygons") -> Any:  # GeoDataFrame
    """Read a vector file (any of :data:`VECTOR_SUFFIXES`) into a GeoDataFrame.

    Raises:
        InputNotFoundError: no such file.
        LabelError: unreadable (message names the file and what GDAL said).
    """
    import geopandas as gpd
    import pyogrio

    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such file; check the path")
    try:
        if path.suffix.lower() == ".parquet":
            return gpd.read_parquet(path)
        layer = None
        if path.suffix.lower() == ".gpkg":
            # A GeoPackage's QGIS style table (layer_styles, see geoseg.export.footprint_style)
            # is no second layer: read the only spatial one, without pyogrio's warning.
            spatial = [name for name, geom in pyogrio.list_layers(path) if geom is not None]
            layer = spatial[0] if len(spatial) == 1 else None
        return gpd.read_file(path, engine="pyogrio", layer=layer)
    except ImportError as err:
        raise LabelError(
            f"{path}: reading GeoParquet needs {err.name or 'pyarrow'} "
            "(pip install pyarrow), or convert it: ogr2ogr out.gpkg in.parquet"
        ) from None
    except Exception as err:  # noqa: BLE001 - pyogrio raises DataSourceError and others
        raise LabelError(
            f"{path}: cannot read {what} as a vector file ({_first_line(err)[:160]}); "
            "pass a GeoPackage, GeoJSON or Shapefile"
        ) from None


def require_polygons(gdf: Any, path: str | Path, *, role: str = "labels") -> np.ndarray:
    """Which rows of ``gdf`` have an area (polygons), refusing a file that has none.

    Points and lines have no area: burned as labels they would mark single pixels or nothing,
    scored as buildings they match nothing (F1 0). A file with a few of them among polygons
    gets a warning (they are left out by the caller).

    Args:
        gdf: The GeoDataFrame as read.
        path: Its name, for the message.
        role: What the caller takes it as (``labels``, ``truth``, ``prediction``).

    Returns:
        A bool array, True for the rows with a (Multi)Polygon, or a collection with an area.

    Raises:
        LabelError: geometries are present but none has an area (names the kind found).
    """
    import shapely

    geoms = np.asarray(gdf.geometry.values, dtype=object)
    present = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    kind = shapely.get_type_id(geoms)
    polygon = (kind == shapely.GeometryType.POLYGON) | (kind == shapely.GeometryType.MULTIPOLYGON)
    areal = present & polygon  # (an invalid bow-tie of area 0 too: it is repaired later)
    collection = present & (kind == shapely.GeometryType.GEOMETRYCOLLECTION)
    areal[collection] = shapely.area(geoms[collection]) > 0
    other = present & ~areal
    if other.any():
        kinds = sorted({str(t) for t in gdf.geometry[other].geom_type.unique()})
        if not areal.any():
            raise LabelError(
                f"{path}: holds {int(other.sum())} {'/'.join(kinds)} geometries and no polygon, "
                f"but {role} must be polygons (building outlines, class areas); buffer points or "
                "lines into polygons first (e.g. geopandas: gdf.buffer(2) in metres of a "
                "projected CRS)"
            )
        log.warning(
            "%s: %d %s geometries without an area are left out of the %s",
            path,
            int(other.sum()),
            "/".join(kinds),
            role,
        )
    return areal


# ============================================================================ the mask format

#: Mask value for "no data / unknown": image nodata, outside the image, unlabelled.
MASK_NODATA = 255
#: Tile side of mask GeoTIFFs (also the COG block size of ``geoseg infer``).
MASK_BLOCKSIZE = 512
#: Colours of class 0, 1, 2, ... (RGBA) in the colour table; nodata is transparent.
PALETTE: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 0, 0),
    (230, 25, 75, 255),
    (60, 180, 75, 255),
    (255, 225, 25, 255),
    (0, 130, 200, 255),
    (245, 130, 48, 255),
    (145, 30, 180, 255),
    (70, 240, 240, 255),
    (240, 50, 230, 255),
    (210, 245, 60, 255),
    (250, 190, 212, 255),
    (0, 128, 128, 255),
    (170, 110, 40, 255),
)


def mask_profile(
    grid: dict[str, Any], *, count: int = 1, final: bool = True, nodata: int = MASK_NODATA
) -> dict[str, Any]:
    """The GeoTIFF creation profile of masks (and of ``geoseg infer``'s probability rasters).

    uint8, nodata 255, tiled :data:`MASK_BLOCKSIZE`, deflate (predictor 2 for final files; a
    fast setting for intermediate files that are converted to COG afterwards), BigTIFF when
    needed. ``nodata`` differs from 255 only for a truth mask with another ignore value.
    ``grid`` holds ``width``, ``height``, ``transform`` and optionally ``crs``.
    """
    profile = dict(
        driver="GTiff",
        width=grid["width"],
        height=grid["height"],
        count=count,
        dtype="uint8",
        nodata=nodata,
        tiled=True,
        blockxsize=MASK_BLOCKSIZE,
        blockysize=MASK_BLOCKSIZE,
        compress="deflate",
        predictor=2 if final else 1,
        zlevel=6 if final else 1,
        bigtiff="IF_SAFER",
    )
    for key in ("crs", "transform"):  # a dask block file has neither
        if grid.get(key) is not None:
            profile[key] = grid[key]
    return profile


def class_tags(
    class_names: Sequence[str], class_ids: Sequence[int] | None = None
) -> dict[str, str]:
    """The dataset tags that name a mask's classes: ``class_names`` and ``class_ids`` (JSON)."""
    ids = list(class_ids) if class_ids is not None else list(range(len(class_names)))
    if len(ids) != len(class_names):
        raise ConfigError(f"{len(class_names)} class names but {len(ids)} class ids")
    return {
        "class_names": json.dumps([str(n) for n in class_names]),
        "class_ids": json.dumps([int(i) for i in ids]),
    }


def colormap(class_ids: Sequence[int] | None = None) -> dict[int, tuple[int, int, int, int]]:
    """The colour table of a mask: :data:`PALETTE` in class order; nodata transparent."""
    ids = list(class_ids) if class_ids is not None else list(range(len(PALETTE)))
    cmap = {int(v): PALETTE[k % len(PALETTE)] for k, v in enumerate(ids)}
    cmap[MASK_NODATA] = (0, 0, 0, 0)
    return cmap


def describe_mask(
    dst: Any,
    class_names: Sequence[str] | None = None,
    class_ids: Sequence[int] | None = None,
    **tags: str,
) -> None:
    """Label an open mask being written: band description, class tags, colour table, ``tags``."""
    dst.set_band_description(1, "class")
    if class_names is not None:
        dst.update_tags(**class_tags(class_names, class_ids), **tags)
    elif tags:
        dst.update_tags(**tags)
    dst.write_colormap(1, colormap(class_ids))


def write_mask(
    mask: np.ndarray,
    out: str | Path,
    grid: dict[str, Any],
    *,
    class_names: Sequence[str] | None = None,
    class_ids: Sequence[int] | None = None,
    overwrite: bool = True,
    inputs: Iterable[str | Path | None] = (),
    nodata: int = MASK_NODATA,
) -> Path:
    """Write a whole uint8 (H, W) mask in the mask format, atomically and verified.

    ``grid`` holds crs, transform, width, height. For masks too large for memory use
    :class:`MaskWriter`.
    """
    out = Path(out)
    with claim(out, overwrite=overwrite, inputs=inputs) as output:
        tmp = output.temp()
        with MaskWriter(
            tmp, grid, class_names=class_names, class_ids=class_ids, nodata=nodata
        ) as w:
            w.write(mask, Window(0, 0, grid["width"], grid["height"]))
        output.commit(tmp, verify=verify_raster)
    return out


class MaskWriter:
    """A mask GeoTIFF being written window by window (use inside :func:`claim`).

    Example::

        with io.claim(out, overwrite=True) as output:
            tmp = output.temp()
            with io.MaskWriter(tmp, grid, class_names=names) as w:
                for window in windows:
                    w.write(block, window)
            output.commit(tmp, verify=io.verify_raster)
    """

    def __init__(
        self,
        path: Path,
        grid: dict[str, Any],
        *,
        class_names: Sequence[str] | None = None,
        class_ids: Sequence[int] | None = None,
        final: bool = True,
        nodata: int = MASK_NODATA,
        **tags: str,
    ) -> None:
        self.path = Path(path)
        self.dst = rasterio.open(self.path, "w", **mask_profile(grid, final=final, nodata=nodata))
        describe_mask(self.dst, class_names, class_ids, **tags)

    def write(self, block: np.ndarray, window: Window) -> None:
        """Write a uint8 (h, w) block at ``window``."""
        self.dst.write(np.asarray(block, dtype=np.uint8), 1, window=window)

    def close(self) -> None:
        self.dst.close()

    def __enter__(self) -> MaskWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def class_table(src: Any) -> dict[int, str] | None:
    """Mask value -> class name from an open mask's tags, or None when it has none.

    Reads the current dialect (dataset tags ``class_names``, a JSON list, with optional
    ``class_ids``, default 0..K-1) and those of earlier versions: ``class_names``
    comma-separated, band-1 tags ``CLASS_<value>=<name>``, and a band-1 tag
    ``classes="0=background,1=building,255=nodata"`` (the nodata entry is left out).
    """
    tags = {k.lower(): v for k, v in src.tags().items()}
    if "class_names" in tags:
        raw = tags["class_names"]
        try:
            names = json.loads(raw)
        except ValueError:
            names = [n.strip() for n in raw.split(",")]
        try:
            ids = json.loads(tags["class_ids"]) if "class_ids" in tags else list(range(len(names)))
        except ValueError:
            ids = list(range(len(names)))
        if isinstance(names, list) and names and isinstance(ids, list) and len(ids) == len(names):
            return {int(i): str(n) for i, n in zip(ids, names, strict=True)}
    band = src.tags(1)
    by_value = {k[6:]: v for k, v in band.items() if k.upper().startswith("CLASS_")}
    if by_value and all(k.isdigit() for k in by_value):
        return {int(k): v for k, v in sorted(by_value.items(), key=lambda kv: int(kv[0]))}
    raw = next((v for k, v in band.items() if k.lower() == "classes"), None)
    if raw:
        pairs = [p.split("=", 1) for p in raw.split(",") if "=" in p]
        nodata = src.nodata if src.nodata is not None else MASK_NODATA
        table = {int(k): v.strip() for k, v in pairs if k.strip().isdigit() and int(k) != nodata}
        if table:
            return dict(sorted(table.items()))
    return None


#: An untagged single-band raster with more distinct values than this in a sample of its pixels
#: is an image or a scaled probability map, not class ids.
MASK_MAX_DISTINCT = 100


def check_mask(src: Any, path: str | Path, *, role: str = "mask") -> None:
    """Refuse a raster that is not a class mask, before any work: one line saying what it is.

    A mask is one band of integer class ids (geoseg's mask format: uint8, 255 = nodata; an alpha
    band besides is accepted). Refused: a probability raster (``geoseg infer --probabilities``'
    one band per class, or any float raster), several bands (an RGB image), and an untagged
    band with more than :data:`MASK_MAX_DISTINCT` distinct values in a sample of about 512²
    pixels (a grey image, probabilities scaled to 0-255).

    Args:
        src: The open raster.
        path: Its name, for the message.
        role: What the caller takes it as (``mask``, ``prediction``, ``truth``), for the message.

    Raises:
        RasterError: naming the file, what was found and what a mask is.
    """
    from rasterio.enums import ColorInterp

    expected = (
        f"a {role} is one band of integer class ids (uint8, 255 = nodata) as geoseg infer and "
        "geoseg rasterize write"
    )
    tags = {k.lower(): v for k, v in src.tags().items()}
    descriptions = [d or "" for d in src.descriptions]
    if "round(p*" in tags.get("encoding", "") or any(d.startswith("p(") for d in descriptions):
        stem = Path(str(path)).stem
        mask = f"{stem[:-5]}.tif" if stem.endswith("_prob") else "the mask next to it"
        raise RasterError(
            f"{path}: is a probability raster ({src.count} bands, one per class, from geoseg infer "
            f"--probabilities); {expected}: pass {mask} (vectorize takes this file as "
            "--probabilities)"
        )
    bands = [i for i, ci in enumerate(src.colorinterp, 1) if ci != ColorInterp.alpha]
    if len(bands) > 1:
        interp = [ci.name for ci in src.colorinterp]
        kind = " (an RGB image)" if interp[:3] == ["red", "green", "blue"] else ""
        raise RasterError(
            f"{path}: has {src.count} bands of {src.dtypes[0]}{kind}; {expected}: pass a mask, "
            "not an image"
        )
    dtype = np.dtype(src.dtypes[0])
    if dtype.kind not in "ui":
        raise RasterError(
            f"{path}: has {dtype} pixels (probabilities or measurements?); {expected}: threshold "
            "probabilities first (gdal_calc.py -A in.tif --calc='A>0.5' --type=Byte), or convert "
            "whole-number classes (gdal_translate -ot Byte)"
        )
    if class_table(src) is None:
        values = _sample_values(src)
        if len(values) > MASK_MAX_DISTINCT:
            raise RasterError(
                f"{path}: has {len(values)} distinct values ({values.min()}..{values.max()}) in a "
                f"sample, no class names: an image or probabilities scaled to integers, not class "
                f"ids; {expected}"
            )


def _sample_values(src: Any, side: int = 512) -> np.ndarray:
    """Distinct values of band 1 outside nodata, in up to 3 x 3 windows across the raster."""
    w, h = min(src.width, side // 3), min(src.height, side // 3)
    nodata = src.nodata if src.nodata is not None else MASK_NODATA
    found: set[int] = set()
    for y in sorted({int(v) for v in np.linspace(0, src.height - h, 3)}):
        for x in sorted({int(v) for v in np.linspace(0, src.width - w, 3)}):
            block = src.read(1, window=Window(x, y, w, h))
            found.update(np.unique(block[block != nodata]).tolist())
    return np.array(sorted(found), dtype=np.int64)


def max_class_id(src: Any) -> int:
    """Largest class id in band 1 outside nodata, read block by block (memory: one block)."""
    top = 0
    nodata = src.nodata if src.nodata is not None else MASK_NODATA
    for _, window in src.block_windows(1):
        block = src.read(1, window=window)
        valid = block[block != nodata]
        if valid.size:
            top = max(top, int(valid.max()))
    return top


def default_class_names(top: int) -> list[str]:
    """Names of classes 0..top without tags: background/building for two, else class_<id>."""
    return ["background", "building"] if top <= 1 else [f"class_{i}" for i in range(top + 1)]


def mask_class_names(src: Any) -> list[str]:
    """An open mask's class names, index = class id; gaps and untagged masks get defaults.

    From :func:`class_table`; without tags the mask is scanned for its largest class id
    (:func:`default_class_names`).
    """
    table = class_table(src)
    if table is None:
        return default_class_names(max_class_id(src))
    names = [f"class_{i}" for i in range(max(table) + 1)]
    for value, name in table.items():
        names[value] = name
    return names


# ============================================================================ fingerprints, JSON


def fingerprint(paths: Iterable[str | Path]) -> list[list[Any]]:
    """``[resolved path, size, mtime_ns]`` of every file under ``paths``, sorted.

    Folders are walked; a Shapefile brings its sidecar files (``.dbf``, ``.prj``, ...); a path
    that does not exist (a glob, an output not written yet) is ``[text, None, None]``. Equal
    fingerprints mean "same files, unchanged" for caches and the pipeline's stage records.
    """
    rows: list[list[Any]] = []
    for p in paths:
        if remote.is_remote(p):
            rows.append(remote.fingerprint(p))
            continue
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file())
        elif path.suffix.lower() == ".shp":
            files = sorted(path.parent.glob(glob.escape(path.stem) + ".*"))
        else:
            files = [path]
        for f in files:
            if f.is_file():
                st = f.stat()
                rows.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
            else:
                rows.append([str(f), None, None])
    return sorted(rows, key=lambda r: (r[0], r[1] or 0, r[2] or 0))


def digest(payload: Any) -> str:
    """A short (16 hex) SHA-256 of a JSON-able payload (keys sorted; other objects as str)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and NaN/inf as None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(
    obj: Any, path: str | Path | Output, *, indent: int | None = 2, overwrite: bool = True
) -> Path:
    """Write strict JSON (NaN and infinities as null) atomically, to a path or an Output."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    return write_text(path, text, overwrite=overwrite)


# ============================================================================ GDAL's stderr


def silence_libtiff() -> None:
    """Stop libtiff printing I/O errors (``_tiffWriteProc: No space left on device.``) to stderr.

    GDAL's TIFF I/O layer reports a failed write through libtiff's process-wide default error
    handler, which prints straight to file descriptor 2, past Python's logging; the write itself
    then "succeeds". geoseg verifies every raster it writes (:func:`verify_raster`) and reports a
    failure in one line, so the raw line is only noise. Uses libtiff's own API
    (``TIFFSetErrorHandler(NULL)``) on the libtiff GDAL loaded; a no-op where it cannot be found.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "libtiff" in line.rsplit("/", 1)[-1]}
    except OSError:
        return
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
            lib.TIFFSetErrorHandler(None)
        except (OSError, AttributeError) as err:
            log.debug("cannot silence %s: %s", path, err)
