"""STAC as a source of rasters: JSON files and trees (local, HTTP, S3) and STAC API searches.

A STAC source is one string, so it works the same on the command line, in a list file, in a
pipeline YAML and in Python:

- a static catalog, collection, item or ItemCollection JSON, local or remote:
  ``stac/catalog.json``, ``https://host/stac/collection.json``, ``s3://bucket/stac/catalog.json``
  (catalogs and collections are walked recursively with ``pystac``);
- a STAC API item search, spelled as its ``GET /search`` URL (``pystac-client`` runs it, POST or
  GET as the API prefers, following ``next`` pages):
  ``https://host/v1/search?collections=naip&bbox=-84.4,33.7,-84.3,33.8&datetime=2022-01-01/2022-12-31``
  with optional ``ids``, ``query`` (the Query extension: JSON, or pystac-client's short form
  ``eo:cloud_cover<10``) and ``limit`` (page size).

geoseg's own choices ride in the URL fragment, which is never sent to a server:
``#asset=KEY`` picks the asset of every item (default: the ``visual`` asset, else the one RGB or
single GeoTIFF data asset) and ``#max_items=N`` caps a search. In a search URL they may also be
query parameters (``?…&max_items=20&asset=image``); geoseg removes them before searching.

Asset hrefs become GDAL paths (:func:`geoseg.remote.to_gdal`); relative hrefs are resolved
against the JSON they came from.
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit

from geoseg import remote
from geoseg.errors import CatalogError, GeosegError, InputNotFoundError, RemoteError

log = logging.getLogger(__name__)

#: Asset keys taken as the RGB picture of an item when no key is given, in this order.
DEFAULT_ASSET_KEYS = ("visual", "rgb", "RGB", "image")
_JSON_SUFFIXES = (".json", ".geojson")
_TIFF_SUFFIXES = (".tif", ".tiff")
_OWN_KEYS = ("asset", "max_items")


@dataclass(frozen=True)
class Search:
    """A STAC API item search: the API and the filters pystac-client sends.

    ``bbox`` is (west, south, east, north) in WGS84 degrees; ``datetime`` an RFC 3339 instant
    or interval (``2022-01-01/2022-12-31``, open ends ``..``); ``query`` the Query extension
    (``{"eo:cloud_cover": {"lt": 10}}``) or pystac-client's short strings.
    """

    url: str
    collections: tuple[str, ...] | None = None
    bbox: tuple[float, ...] | None = None
    datetime: str | None = None
    ids: tuple[str, ...] | None = None
    query: dict[str, Any] | tuple[str, ...] | None = None
    intersects: dict[str, Any] | None = None
    limit: int | None = None
    max_items: int | None = None
    asset: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> str:
        """The API's landing page (the URL without ``/search``)."""
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/")
        if path.endswith("/search"):
            path = path[: -len("/search")]
        return urlunsplit((parts.scheme, parts.netloc, path or "/", "", ""))


def split_fragment(source: str) -> tuple[str, dict[str, str]]:
    """``"cat.json#asset=B04&max_items=3"`` -> ``("cat.json", {"asset": "B04", ...})``."""
    base, sep, fragment = source.partition("#")
    if not sep:
        return source, {}
    options = {k: v[-1] for k, v in parse_qs(fragment, keep_blank_values=True).items()}
    unknown = sorted(set(options) - set(_OWN_KEYS))
    if unknown:
        raise CatalogError(
            f"{source}: unknown option {unknown[0]!r} after '#'; use asset=KEY or max_items=N"
        )
    return base, options


def is_search(source: str) -> bool:
    """True for an ``http(s)://…/search`` URL (a STAC API item search)."""
    base, _ = split_fragment(source)
    parts = urlsplit(base)
    return parts.scheme in ("http", "https") and parts.path.rstrip("/").endswith("/search")


def is_stac(source: str) -> bool:
    """True for a STAC search URL or a ``.json``/``.geojson`` source (local or remote)."""
    base, _ = split_fragment(source)
    path = urlsplit(base).path if remote.is_remote(base) else base
    return is_search(source) or path.lower().endswith(_JSON_SUFFIXES)


def parse_search(source: str) -> Search:
    """A :class:`Search` from a ``GET /search`` URL (filters in the query string)."""
    base, own = split_fragment(source)
    parts = urlsplit(base)
    params = {k: v for k, v in parse_qs(parts.query, keep_blank_values=True).items()}

    def one(key: str) -> str | None:
        values = params.pop(key, None)
        return values[-1] if values else None

    def many(key: str) -> tuple[str, ...] | None:
        values = params.pop(key, None)
        if not values:
            return None
        return tuple(x for v in values for x in v.split(",") if x)

    try:
        bbox_items = many("bbox")
        bbox = tuple(float(v) for v in bbox_items) if bbox_items else None
        if bbox is not None and len(bbox) not in (4, 6):
            raise ValueError("bbox needs 4 numbers: west,south,east,north")
        query_values = params.pop("query", None)
        query: dict[str, Any] | tuple[str, ...] | None = None
        if query_values:
            if query_values[-1].lstrip().startswith("{"):
                query = json.loads(query_values[-1])
            else:
                query = tuple(query_values)
        intersects_text = one("intersects")
        intersects = json.loads(intersects_text) if intersects_text else None
        limit_text = one("limit")
        max_items_text = own.get("max_items") or one("max_items")
        search = Search(
            url=urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            collections=many("collections"),
            bbox=bbox,
            datetime=one("datetime"),
            ids=many("ids"),
            query=query,
            intersects=intersects,
            limit=int(limit_text) if limit_text else None,
            max_items=int(max_items_text) if max_items_text else None,
            asset=own.get("asset") or one("asset"),
            extra={k: v[-1] for k, v in params.items()},
        )
    except ValueError as err:
        raise CatalogError(
            f"{source}: bad STAC search parameter ({err}); e.g. "
            "…/search?collections=naip&bbox=-84.4,33.7,-84.3,33.8&datetime=2022-01-01/2022-12-31"
        ) from None
    if search.max_items is not None and search.max_items < 1:
        raise CatalogError(f"{source}: max_items={search.max_items} must be >= 1")
    return search


# --------------------------------------------------------------------------------------------
# Reading JSON (local, HTTP, S3) with bounded timeouts and retries
# --------------------------------------------------------------------------------------------


def _http_settings() -> tuple[tuple[float, float], Any]:
    """(connect, read) timeouts and a urllib3 Retry, from the same settings as GDAL's reads."""
    from urllib3.util.retry import Retry

    options = remote.gdal_options()
    timeout = (float(options["GDAL_HTTP_CONNECTTIMEOUT"]), float(options["GDAL_HTTP_TIMEOUT"]))
    retries = Retry(
        total=int(options["GDAL_HTTP_MAX_RETRY"]),
        backoff_factor=float(options["GDAL_HTTP_RETRY_DELAY"]),
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,  # POST searches are read-only: retry them too
        raise_on_status=False,
    )
    return timeout, retries


def _api_io() -> Any:
    """pystac-client's requests-based StacIO with bounded timeouts and retries (searches)."""
    from pystac_client.stac_api_io import StacApiIO

    timeout, retries = _http_settings()
    return StacApiIO(timeout=timeout, max_retries=retries)


def _static_io() -> Any:
    """A pystac StacIO for static trees: local files, ``s3://`` through boto3, HTTP through
    requests with the same timeouts and retries (pystac's default urllib reader has none)."""
    import requests
    from pystac.stac_io import DefaultStacIO

    timeout, retries = _http_settings()
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(max_retries=retries)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    class _StaticIO(DefaultStacIO):
        def read_text_from_href(self, href: str) -> str:
            if href.startswith(("s3://", "/vsis3/")):
                return _read_s3(href)
            if href.startswith(("http://", "https://")):
                try:
                    response = session.get(href, timeout=timeout)
                except requests.RequestException as err:
                    raise _api_error(href, err) from None
                if response.status_code >= 400:
                    error = RuntimeError(response.reason)
                    error.status_code = response.status_code  # type: ignore[attr-defined]
                    raise _api_error(href, error)
                return response.text
            return super().read_text_from_href(href)

    return _StaticIO()


def _read_s3(href: str) -> str:
    bucket, key = remote.s3_parts(href)
    try:
        body = remote.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as err:  # noqa: BLE001 - classified by remote
        raise remote.s3_error(remote.to_url(href), err) from None
    return body.decode("utf-8")


def _api_error(source: str, err: BaseException) -> GeosegError:
    """A one-line error for a failed STAC request (pystac-client's APIError, requests errors)."""
    if isinstance(err, GeosegError):
        return err
    status = getattr(err, "status_code", None)
    text = str(err).splitlines()[0] if str(err) else err.__class__.__name__
    if status == 404:
        return InputNotFoundError(f"{source}: not found on the server (404); check the URL")
    if status in (401, 403):
        return RemoteError(
            f"{source}: access denied ({status}); this STAC API needs credentials geoseg "
            "cannot send, or the URL is wrong"
        )
    if status is not None:
        return RemoteError(f"{source}: the STAC server answered {status}; try again later")
    if remote.UNREACHABLE.search(text) or "Max retries" in text:
        host = urlsplit(source).netloc
        return RemoteError(
            f"{source}: cannot reach {host} ({text[:120]}); check the network and the URL"
        )
    return RemoteError(f"{source}: STAC request failed ({text[:160]})")


def _read_json(href: str) -> dict[str, Any]:
    io = _static_io()
    try:
        text = io.read_text(remote.to_url(href))
    except GeosegError:
        raise
    except FileNotFoundError:
        raise InputNotFoundError(f"{href}: no such file; check the path") from None
    except Exception as err:  # noqa: BLE001 - pystac-client wraps every HTTP failure
        raise _api_error(remote.to_url(href), err) from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise CatalogError(
            f"{href}: not JSON; expected a STAC catalog, collection or item"
        ) from None
    if not isinstance(doc, dict):
        raise CatalogError(f"{href}: expected a STAC JSON object, found {type(doc).__name__}")
    return doc


# --------------------------------------------------------------------------------------------
# Items and their assets
# --------------------------------------------------------------------------------------------


def _is_tiff(asset: dict[str, Any]) -> bool:
    kind = str(asset.get("type", "")).lower()
    href = urlsplit(str(asset.get("href", ""))).path.lower()
    return "tiff" in kind or href.endswith(_TIFF_SUFFIXES)


def _is_rgb(asset: dict[str, Any]) -> bool:
    bands = asset.get("eo:bands") or asset.get("bands") or []
    names = [str(b.get("common_name", b.get("eo:common_name", ""))).lower() for b in bands]
    return names[:3] == ["red", "green", "blue"]


def pick_asset(item: dict[str, Any], asset: str | None, source: str) -> tuple[str, dict[str, Any]]:
    """The (key, asset) of ``item`` to read: ``asset`` if given, else the RGB picture.

    Default order: a key in :data:`DEFAULT_ASSET_KEYS`, an asset with role ``visual``, a
    GeoTIFF whose bands are red, green, blue, the only GeoTIFF with role ``data`` (or the only
    GeoTIFF).

    Raises:
        CatalogError: the item lacks ``asset``, or no default can be chosen (lists its assets).
    """
    assets: dict[str, Any] = item.get("assets") or {}
    name = item.get("id", "?")
    keys = ", ".join(sorted(assets)) or "none"
    if asset is not None:
        if asset not in assets:
            raise CatalogError(
                f"{source}: item {name!r} has no asset {asset!r} (it has: {keys}); choose one "
                "with #asset=KEY"
            )
        return asset, assets[asset]
    for key in DEFAULT_ASSET_KEYS:
        if key in assets:
            return key, assets[key]
    for key, a in assets.items():
        if "visual" in (a.get("roles") or []):
            return key, a
    tiffs = {k: a for k, a in assets.items() if _is_tiff(a)}
    for key, a in tiffs.items():
        if _is_rgb(a):
            return key, a
    data = {k: a for k, a in tiffs.items() if "data" in (a.get("roles") or [])}
    for group in (data, tiffs):
        if len(group) == 1:
            return next(iter(group.items()))
    raise CatalogError(
        f"{source}: item {name!r} has no 'visual' asset and "
        f"{'no' if not tiffs else 'several'} GeoTIFF asset to default to (it has: {keys}); "
        "choose one with #asset=KEY"
    )


def _resolve(href: str, base: str | None) -> str:
    """An asset href made absolute against the document it came from."""
    if href.startswith("file://"):
        href = href[len("file://") :]
    if remote.is_remote(href) or posixpath.isabs(href) or base is None:
        return href
    if base.startswith("s3://"):
        bucket, key = remote.s3_parts(base)
        return f"s3://{bucket}/{posixpath.normpath(posixpath.join(posixpath.dirname(key), href))}"
    if remote.is_remote(base):
        return urljoin(base, href)
    return str((Path(base).parent / href).resolve())


def item_hrefs(
    items: list[dict[str, Any]], asset: str | None, source: str, base: str | None = None
) -> list[Path]:
    """The chosen asset of each item as a GDAL path (relative hrefs resolved against the item's
    own ``self`` link, else ``base``)."""
    out = []
    for item in items:
        _, chosen = pick_asset(item, asset, source)
        self_href = next(
            (link.get("href") for link in item.get("links") or [] if link.get("rel") == "self"),
            None,
        )
        href = _resolve(str(chosen.get("href", "")), self_href or base)
        out.append(remote.as_path(href))
    return out


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _pystac_items(url: str) -> list[dict[str, Any]]:
    """Items of a Catalog, Collection or Item read with pystac (child and item links followed
    recursively), as dicts whose asset hrefs are absolute."""
    import pystac

    try:
        obj = pystac.read_file(url, stac_io=_static_io())
        found = (
            [obj]
            if isinstance(obj, pystac.Item)
            else list(cast(pystac.Catalog, obj).get_items(recursive=True))  # or a Collection
        )
        return [
            {
                "id": item.id,
                "assets": {
                    k: dict(a.to_dict(), href=a.get_absolute_href() or a.href)
                    for k, a in item.assets.items()
                },
            }
            for item in found
        ]
    except GeosegError:
        raise
    except FileNotFoundError as err:
        raise InputNotFoundError(
            f"{url}: a STAC link points to a missing file ({err.filename}); fix the catalog"
        ) from None
    except Exception as err:  # noqa: BLE001 - pystac's STACError / APIError from links
        if getattr(err, "status_code", None) is not None or "HTTP" in type(err).__name__:
            raise _api_error(url, err) from None
        text = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise CatalogError(f"{url}: not a readable STAC tree ({text[:160]})") from None


def static_items(href: str) -> list[dict[str, Any]]:
    """Items of a STAC JSON: an ItemCollection, an Item, or every item under a Catalog or
    Collection (local path, ``https://`` or ``s3://``)."""
    doc = _read_json(href)
    url = remote.to_url(href)
    if doc.get("type") == "FeatureCollection" or "features" in doc:
        # Read as plain dicts: an ItemCollection has no links to follow, and geoseg has always
        # accepted minimal ones (assets with hrefs relative to the file).
        features = doc.get("features")
        if not isinstance(features, list):
            raise CatalogError(f"{href}: expected a STAC ItemCollection (a 'features' list)")
        return [f for f in features if isinstance(f, dict)]
    if doc.get("type") in ("Feature", "Catalog", "Collection"):
        return _pystac_items(url if remote.is_remote(url) else str(Path(url).resolve()))
    raise CatalogError(
        f"{href}: not a STAC catalog, collection, item or ItemCollection (type={doc.get('type')!r})"
    )


def search_items(search: Search) -> list[dict[str, Any]]:
    """Run a STAC API item search with pystac-client; the items as dicts (at most
    ``max_items``)."""
    from pystac_client import Client

    try:
        client = Client.open(search.root, stac_io=_api_io())
        result = client.search(
            collections=list(search.collections) if search.collections else None,
            bbox=list(search.bbox) if search.bbox else None,
            datetime=search.datetime,
            ids=list(search.ids) if search.ids else None,
            query=search.query if not isinstance(search.query, tuple) else list(search.query),
            intersects=search.intersects,
            limit=search.limit,
            max_items=search.max_items,
            **search.extra,
        )
        items = list(result.items_as_dicts())
    except GeosegError:
        raise
    except Exception as err:  # noqa: BLE001 - APIError, requests errors, NotImplementedError
        raise _api_error(search.url, err) from None
    log.info("STAC search %s: %d item(s)", search.url, len(items))
    return items


def rasters(source: str, *, asset: str | None = None) -> list[Path]:
    """Raster paths (GDAL spelling) of a STAC source string (see the module docstring).

    ``asset`` is the default asset key for sources without ``#asset=``.

    Raises:
        CatalogError: the source is not STAC, a search matched nothing, an item lacks the asset.
        InputNotFoundError: a JSON file or URL does not exist (404).
        RemoteError: a server cannot be reached or denies access.
    """
    if is_search(source):
        search = parse_search(source)
        items = search_items(search)
        chosen = search.asset or asset
        if not items:
            raise CatalogError(
                f"{source}: the STAC search matched no items; widen bbox/datetime, check the "
                "collection ids, or drop the query"
            )
        return item_hrefs(items, chosen, remote.to_url(search.url))
    base, own = split_fragment(source)
    items = static_items(base)
    if own.get("max_items"):
        items = items[: int(own["max_items"])]
    if not items:
        raise CatalogError(f"{base}: the STAC source holds no items")
    return item_hrefs(items, own.get("asset") or asset, base, base=remote.to_url(base))


__all__ = [
    "DEFAULT_ASSET_KEYS",
    "Search",
    "is_search",
    "is_stac",
    "item_hrefs",
    "parse_search",
    "pick_asset",
    "rasters",
    "search_items",
    "split_fragment",
    "static_items",
]
