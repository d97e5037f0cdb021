"""Find and index the rasters of a catalog: a folder, a glob, a list file, STAC, or URLs.

``find_rasters`` turns what a user typed into a sorted list of raster paths: local files, remote
GeoTIFFs (``s3://bucket/key.tif``, ``https://…/x.tif``, GDAL's ``/vsis3/``, ``/vsicurl/``),
``s3://bucket/prefix/`` folders and STAC catalogs or API searches (:mod:`geoseg.stac`). Remote
rasters are carried in GDAL's spelling (:mod:`geoseg.remote`) and read with range requests.
``index`` opens each one once and records its grid (CRS as WKT, bounds, resolution, size,
transform), band count, dtype and nodata, so later stages never re-open files to learn them.
Mixed CRSs and resolutions are allowed: :meth:`Catalog.target` picks one target grid (the first
file's CRS and resolution unless given) onto which the others are warped, as torchgeo does.
"""

from __future__ import annotations

import glob
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from geoseg import io, remote, stac
from geoseg.errors import CatalogError, InputNotFoundError, RasterError

log = logging.getLogger(__name__)

#: File name endings treated as rasters when a folder is searched (defined in geoseg.io).
RASTER_SUFFIXES = io.CATALOG_SUFFIXES
#: Endings of plain (non-georeferenced) image tiles, used by ``layout: tiles`` (geoseg.io).
TILE_SUFFIXES = io.TILE_SUFFIXES
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class RasterInfo:
    """What geoseg needs to know about one raster file.

    ``bounds`` is (left, bottom, right, top) and ``res`` (x, y) pixel size, both in the units
    of the raster's own CRS; ``crs_wkt`` is "" for a raster without a CRS.
    """

    path: Path
    crs_wkt: str
    bounds: tuple[float, float, float, float]
    res: tuple[float, float]
    count: int
    dtype: str
    nodata: float | None
    width: int
    height: int
    transform: rasterio.Affine
    band_names: tuple[str, ...] = ()
    alpha_band: int | None = None
    """1-based index of an alpha band (excluded from the image bands by default)."""

    @property
    def crs(self) -> CRS | None:
        return CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None

    @property
    def epsg(self) -> int | None:
        crs = self.crs
        return crs.to_epsg() if crs is not None else None


@dataclass
class Catalog:
    """An indexed list of rasters (in the order found)."""

    rasters: list[RasterInfo] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rasters)

    def __iter__(self):
        return iter(self.rasters)

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self.rasters]

    def require_crs(self) -> None:
        """Raise RasterError for the first raster without a CRS (geospatial layouts need one)."""
        for r in self.rasters:
            if not r.crs_wkt:
                raise RasterError(
                    f"{r.path}: raster has no CRS; geoseg needs georeferenced GeoTIFFs for "
                    "layout 'geo' (assign one with `gdal_edit.py -a_srs EPSG:XXXX`), or use "
                    "layout 'tiles' for plain tiles"
                )

    def target(self, crs: str | None = None, res: float | None = None) -> tuple[CRS, float]:
        """The target CRS and square pixel size: given ones, else the first raster's.

        Args:
            crs: an EPSG code ("EPSG:32631"), a WKT string or None.
            res: a pixel size in target-CRS units, or None.
        """
        self.require_crs()
        if crs:
            try:
                target_crs = CRS.from_user_input(crs)
            except Exception:  # rasterio raises CRSError, a plain ValueError subclass here
                raise CatalogError(
                    f"data.crs={crs!r} is not a CRS rasterio understands; use e.g. EPSG:32631"
                ) from None
        else:
            target_crs = CRS.from_wkt(self.rasters[0].crs_wkt)
        if res is None:
            first = self.rasters[0]
            if target_crs == first.crs:
                res = float(first.res[0])
            else:
                from rasterio.vrt import WarpedVRT

                with rasterio.open(first.path) as src, WarpedVRT(src, crs=target_crs) as vrt:
                    res = float(vrt.res[0])
        if res <= 0:
            raise CatalogError(f"data.res={res} must be a positive pixel size in CRS units")
        return target_crs, float(res)


def _list_file(path: Path) -> list[Path]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if remote.is_remote(line):
            out.append(remote.as_path(line))
            continue
        p = Path(line)
        out.append(p if p.is_absolute() else (path.parent / p).resolve())
    return out


def _remote_source(s: str, suffixes: tuple[str, ...], asset: str | None) -> list[Path]:
    """Rasters of one remote source: an s3 folder or glob, a STAC source, or one raster URL."""
    if stac.is_stac(s):
        return stac.rasters(s, asset=asset)
    if remote.is_s3_folder(s):
        found = remote.list_s3(s, suffixes)
        if not found:
            raise CatalogError(
                f"{remote.to_url(s)}: no rasters ({', '.join(suffixes)}) under this S3 prefix; "
                "check the bucket and prefix"
            )
        return found
    return [remote.as_path(s)]


def find_rasters(
    sources: list[str] | str | Path,
    *,
    suffixes: tuple[str, ...] = RASTER_SUFFIXES,
    asset: str | None = None,
) -> list[Path]:
    """Expand what a user gave as IMAGES into raster paths.

    Each source may be a folder (searched recursively for GeoTIFFs), a glob (``data/*.tif``,
    ``**`` allowed), a text file with one path or URL per line (relative paths are relative to
    the file), a raster file, a remote raster (``s3://bucket/key.tif``, ``https://…/x.tif``,
    ``/vsis3/…``, ``/vsicurl/…``), an S3 folder or glob (``s3://bucket/prefix/``,
    ``s3://bucket/scenes/*.tif``), or a STAC source: a catalog, collection, item or
    ItemCollection JSON (local, HTTP or S3) or a STAC API ``…/search?…`` URL (see
    :mod:`geoseg.stac`; ``asset`` is the default asset key, ``#asset=KEY`` overrides it per
    source). Remote rasters come back in GDAL's spelling (``/vsis3/bucket/key.tif``). Order:
    as given, each source's files sorted; duplicates dropped.

    Raises:
        InputNotFoundError: a source (or a local path listed in a list file / STAC) does not
            exist.
        CatalogError: nothing raster-like was found; a STAC search matched nothing or an item
            lacks the asset.
        RemoteError: a server or bucket cannot be reached or denies access.
    """
    if isinstance(sources, str | Path):
        sources = [str(sources)]
    found: list[Path] = []
    for src in sources:
        s = str(src)
        if remote.is_remote(s):
            found += _remote_source(s, suffixes, asset)
            continue
        p = Path(s)
        if any(ch in s for ch in _GLOB_CHARS) and not p.exists():
            matches = sorted(Path(m) for m in glob.glob(s, recursive=True))
            found += [m for m in matches if m.is_file() and m.suffix.lower() in suffixes]
            if not matches:
                raise InputNotFoundError(f"{s}: the glob matches no files; check the pattern")
            continue
        if s.startswith("/vsi"):
            found.append(p)
            continue
        local, _ = stac.split_fragment(s)
        if local != s and stac.is_stac(s) and Path(local).is_file():
            p = Path(local)
        if not p.exists():
            raise InputNotFoundError(f"{s}: no such file or folder; check the path")
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in suffixes)
        elif p.suffix.lower() in suffixes:
            found.append(p)
        else:
            listed = stac.rasters(s, asset=asset) if stac.is_stac(s) else _list_file(p)
            for q in listed:
                if not remote.is_remote(q) and not str(q).startswith("/vsi") and not q.exists():
                    raise InputNotFoundError(
                        f"{q}: listed in {p} but does not exist; fix the entry"
                    )
            found += listed
    unique = list(dict.fromkeys(found))  # first occurrence of each, in order
    if not unique:
        raise CatalogError(
            f"no rasters found in {', '.join(map(str, sources))}; expected GeoTIFFs "
            f"({', '.join(suffixes)}) in a folder, a glob, a list file, an S3 prefix or STAC"
        )
    return unique


def _info(path: Path) -> RasterInfo:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with remote.env([path]), rasterio.open(path) as src:
                # A truncated TIFF opens fine (the header is intact) and fails on its last block;
                # reading one pixel there catches it here instead of mid-training.
                w = rasterio.windows.Window(src.width - 1, src.height - 1, 1, 1)
                src.read(window=w)
                crs_wkt = src.crs.to_wkt() if src.crs else ""
                from rasterio.enums import ColorInterp

                interp = list(src.colorinterp)
                alpha = interp.index(ColorInterp.alpha) + 1 if ColorInterp.alpha in interp else None
                names = tuple(d or f"band_{i + 1}" for i, d in enumerate(src.descriptions))
                return RasterInfo(
                    path=Path(path),
                    crs_wkt=crs_wkt,
                    bounds=tuple(src.bounds),
                    res=(float(src.res[0]), float(src.res[1])),
                    count=src.count,
                    dtype=src.dtypes[0],
                    nodata=src.nodata,
                    width=src.width,
                    height=src.height,
                    transform=src.transform,
                    band_names=names,
                    alpha_band=alpha,
                )
        except RasterioIOError as err:
            if remote.is_remote(path):
                raise remote.explain(path, err) from None
            msg = str(err).splitlines()[0] if str(err) else "unreadable"
            raise RasterError(
                f"{path}: cannot read this raster, it is corrupt or truncated ({msg[:160]}); "
                "re-export or re-download it, or remove it from the catalog"
            ) from None


def index(paths: list[Path] | list[str]) -> Catalog:
    """Open each raster once and record its grid, bands, dtype and nodata.

    Remote rasters (GDAL paths or URLs) are opened with :func:`geoseg.remote.env`: the header
    only, with range requests; GDAL keeps it cached for the later reads of this process.

    Raises:
        InputNotFoundError: a path does not exist (404 for a remote one).
        RasterError: a file is corrupt or truncated (the message names it).
        RemoteError: a remote raster cannot be reached or access is denied.
        CatalogError: ``paths`` is empty.
    """
    if not paths:
        raise CatalogError("the catalog is empty; expected at least one GeoTIFF")
    rasters = []
    for p in paths:
        p = remote.as_path(p)
        if not str(p).startswith("/vsi") and not p.exists():
            raise InputNotFoundError(f"{p}: no such file; check the path")
        rasters.append(_info(p))
    log.debug("indexed %d rasters", len(rasters))
    return Catalog(rasters)
