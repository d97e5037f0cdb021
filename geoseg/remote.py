"""Rasters where users keep them: S3 (and S3-compatible) buckets and HTTP(S) servers.

GDAL reads a remote GeoTIFF with HTTP range requests through its virtual file systems
(``/vsis3/bucket/key.tif``, ``/vsicurl/https://host/x.tif``): opening one reads the header, and a
window read fetches only the tiles it covers, so a Cloud-Optimized GeoTIFF is never downloaded
whole. This module

- spells what users type (``s3://bucket/key.tif``, ``https://…/x.tif``) as GDAL paths
  (:func:`to_gdal`) and back (:func:`to_url`), and lists ``s3://bucket/prefix/`` folders;
- holds the GDAL options for remote reads (:data:`GDAL_OPTIONS`), applied through a scoped
  ``rasterio.Env`` (:func:`env`), never through ``os.environ``;
- turns what GDAL or S3 answered into one-line errors (:func:`explain`);
- uploads finished outputs to S3 (:func:`upload`) so that no partial object ever appears under
  the final key.

Credentials and endpoints come only from the standard AWS environment variables and profiles
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_REGION``, ``AWS_NO_SIGN_REQUEST``, ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` or GDAL's
``AWS_S3_ENDPOINT`` with ``AWS_HTTPS``/``AWS_VIRTUAL_HOSTING``): geoseg has no option that takes
a secret, so none lands in a log, a config file or a model card.

A GDAL path is carried as a :class:`pathlib.Path` like any local file: ``/vsis3/bucket/key.tif``
and, for HTTP, ``/vsicurl/url=https%3A%2F%2Fhost/x.tif`` (see :func:`to_gdal`), whose ``name``
and ``stem`` are the file's; :func:`to_url` gives the URL back for messages.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from geoseg.errors import (
    ConfigError,
    GeosegError,
    InputNotFoundError,
    OutputExistsError,
    RemoteError,
)

log = logging.getLogger(__name__)

#: GDAL options for remote reads (config option -> value). Each can be overridden by an
#: environment variable of the same name (e.g. ``GDAL_HTTP_TIMEOUT=120`` on a slow link).
#: Measured with ``benchmarks/remote.py`` (one 1024 px window of an 8192 px COG over HTTP):
#: see the README's "Remote data and STAC" section for the figures.
GDAL_OPTIONS: dict[str, str] = {
    # Opening /vsis3/bucket/a.tif would otherwise list the "folder" (a LIST request over the
    # whole prefix on S3) and, over plain HTTP, probe ten sidecar names (.aux.xml, .ovr, .msk,
    # …) with a HEAD each: 16 requests -> 6 to open and read one window over HTTP, 5 -> 4 on S3.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # Several range requests over one HTTP/2 connection (GDAL's default, written out because a
    # user's GDAL configuration may turn it off; loopback HTTP/1.1 cannot measure it).
    "GDAL_HTTP_MULTIPLEX": "YES",
    # GDAL's defaults are no retry and no timeout: one 503 fails a long inference, and an
    # endpoint that accepts connections but never answers hangs forever.
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",  # seconds, doubled at each retry
    "GDAL_HTTP_CONNECTTIMEOUT": "5",
    "GDAL_HTTP_TIMEOUT": "30",  # seconds for one request (one range of tiles)
}

#: Environment variables GDAL reads for S3 that geoseg derives from ``AWS_ENDPOINT_URL``.
_S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_VSI_S3 = "/vsis3/"
_VSI_CURL = "/vsicurl/"
_GLOB_CHARS = set("*?[")
#: GDAL's network file systems (their ``_streaming`` variants share the prefix).
_NETWORK_VSI = (
    "/vsis3",
    "/vsicurl",
    "/vsigs",
    "/vsiaz",
    "/vsiadls",
    "/vsioss",
    "/vsiswift",
    "/vsiwebhdfs",
)


# --------------------------------------------------------------------------------------------
# Spelling: user URLs <-> GDAL paths
# --------------------------------------------------------------------------------------------


def is_remote(path: str | Path) -> bool:
    """True for ``s3://``, ``http(s)://`` and GDAL's network paths (``/vsis3/``, …)."""
    s = str(path)
    return s.startswith(("s3://", "http://", "https://")) or s.startswith(_NETWORK_VSI)


def to_gdal(path: str | Path) -> str:
    """GDAL's name for a user path: ``s3://b/k`` -> ``/vsis3/b/k``, ``https://h/x.tif`` ->
    ``/vsicurl/url=https%3A%2F%2Fh/x.tif``; anything else unchanged.

    HTTP URLs use ``/vsicurl/``'s option form with the scheme and host percent-encoded, so the
    path has no ``//`` for :class:`pathlib.Path` to fold (``/vsicurl/https:/h/x.tif`` makes GDAL
    warn and rely on curl's leniency) while ``Path.name`` is still the file name.
    """
    s = str(path)
    if s.startswith("s3://"):
        return _VSI_S3 + s[len("s3://") :]
    if s.startswith(_VSI_CURL) and not s.startswith(_VSI_CURL + "url="):
        s = s[len(_VSI_CURL) :]
        s = re.sub(r"^(https?|ftp|file):/+", r"\1://", s)
    if s.startswith(("http://", "https://")):
        parts = urlsplit(s)
        spelled = _VSI_CURL + "url=" + quote(f"{parts.scheme}://{parts.netloc}", safe="")
        spelled += quote(parts.path, safe="/").replace("//", "/%2F")
        if parts.query:
            spelled += quote("?" + parts.query, safe="")
        return spelled
    return s


def to_url(path: str | Path) -> str:
    """The URL a user would type for a GDAL path (``/vsis3/b/k`` -> ``s3://b/k``); used in
    messages. Local paths are returned as they are."""
    s = str(path)
    if s.startswith(_VSI_S3):
        return "s3://" + s[len(_VSI_S3) :]
    if s.startswith((_VSI_CURL, "/vsicurl?")):
        rest = s[len(_VSI_CURL) :]
        for token in rest.lstrip("?").split("&"):
            if token.startswith("url="):
                return unquote(token[len("url=") :])
        return re.sub(r"^(https?):/+", r"\1://", rest)
    return s


def as_path(path: str | Path) -> Path:
    """A user path or URL as the :class:`~pathlib.Path` geoseg carries (GDAL spelling)."""
    return Path(to_gdal(path))


def name_of(path: str | Path) -> str:
    """The file name of a path or URL, without a query string (``x.tif?sig=…`` -> ``x.tif``)."""
    return urlsplit(to_url(path)).path.rsplit("/", 1)[-1] if is_remote(path) else Path(path).name


def s3_parts(path: str | Path) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key`` or ``/vsis3/bucket/key``."""
    url = to_url(path)
    if not url.startswith("s3://"):
        raise ValueError(f"{url} is not an s3:// URL")
    bucket, _, key = url[len("s3://") :].partition("/")
    return bucket, key


def is_s3_folder(path: str | Path) -> bool:
    """``s3://bucket``, ``s3://bucket/prefix/`` (trailing slash) or an s3 glob: a listing."""
    url = to_url(path)
    if not url.startswith("s3://"):
        return False
    _, key = s3_parts(url)
    return key == "" or key.endswith("/") or any(c in key for c in _GLOB_CHARS)


# --------------------------------------------------------------------------------------------
# GDAL environment
# --------------------------------------------------------------------------------------------


def endpoint_url() -> str | None:
    """The custom S3 endpoint from the environment (``scheme://host:port``), or None for AWS.

    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (the AWS SDKs' spelling) win over GDAL's
    ``AWS_S3_ENDPOINT`` (host[:port], with ``AWS_HTTPS=NO`` for plain HTTP).
    """
    for var in _S3_ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var].rstrip("/")
    host = os.environ.get("AWS_S3_ENDPOINT")
    if not host:
        return None
    if host.startswith(("http://", "https://")):
        return host.rstrip("/")
    https = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
    return f"{'https' if https else 'http'}://{host.rstrip('/')}"


def gdal_options() -> dict[str, str]:
    """GDAL config options for remote reads: :data:`GDAL_OPTIONS`, each overridable by an
    environment variable of the same name, plus the S3 endpoint spelled for GDAL when one is
    set with ``AWS_ENDPOINT_URL`` (GDAL only reads ``AWS_S3_ENDPOINT``/``AWS_HTTPS``).

    Plain strings: picklable, so dask workers can open the same environment.
    """
    options = {k: os.environ.get(k, v) for k, v in GDAL_OPTIONS.items()}
    url = endpoint_url()
    if url is not None:
        parts = urlsplit(url)
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path
        options["AWS_HTTPS"] = "YES" if parts.scheme == "https" else "NO"
        # Custom endpoints (MinIO, Ceph, moto, …) serve path-style URLs; AWS itself does not
        # need this, and a user's own AWS_VIRTUAL_HOSTING wins.
        options["AWS_VIRTUAL_HOSTING"] = os.environ.get("AWS_VIRTUAL_HOSTING", "FALSE")
    return options


def reads_remote(path: str | Path) -> bool:
    """True for a remote path, and for a local VRT whose sources are remote (``gdalbuildvrt``
    over COGs in a bucket, ``gdal_translate -of VRT -srcwin`` of a remote scene)."""
    if is_remote(path):
        return True
    p = Path(path)
    if p.suffix.lower() != ".vrt" or not p.is_file():
        return False
    with p.open("rb") as f:
        head = f.read(1 << 20)
    return any(m.encode() in head for m in (*_NETWORK_VSI, "http://", "https://"))


@contextmanager
def env(paths: Sequence[str | Path] | None = None, **extra: Any) -> Iterator[None]:
    """A scoped ``rasterio.Env`` with :func:`gdal_options` (plus ``extra``) while any of
    ``paths`` reads remote data (:func:`reads_remote`), or always when ``paths`` is None.

    Local-only runs get no remote options: ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` would hide
    sidecar files (``.aux.xml``, ``.ovr``) next to local rasters.
    """
    import rasterio

    wanted = paths is None or any(reads_remote(p) for p in paths)
    options = dict(gdal_options(), **extra) if wanted else dict(extra)
    with rasterio.Env(**options):
        yield


def worker_options(paths: Sequence[str | Path]) -> dict[str, str]:
    """The options :func:`env` would apply for ``paths``, to pass to a worker process (dask
    workers and spawned DDP ranks start without this process's GDAL configuration)."""
    return gdal_options() if any(reads_remote(p) for p in paths) else {}


# --------------------------------------------------------------------------------------------
# S3 through boto3: listing, existence, upload
# --------------------------------------------------------------------------------------------


def _timeouts() -> tuple[float, float]:
    options = gdal_options()
    return float(options["GDAL_HTTP_CONNECTTIMEOUT"]), float(options["GDAL_HTTP_TIMEOUT"])


#: Environment variables that decide which S3 client (credentials, profile, region, endpoint).
_CLIENT_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_NO_SIGN_REQUEST",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_S3_ENDPOINT",
    "AWS_HTTPS",
    "GDAL_HTTP_CONNECTTIMEOUT",
    "GDAL_HTTP_TIMEOUT",
    "GDAL_HTTP_MAX_RETRY",
)


@lru_cache(maxsize=8)
def _client(environment: tuple[str | None, ...]) -> Any:
    # Cached per environment: making a boto3 client costs ~0.5 s (it loads the service model),
    # and boto3 reads credentials when a client is made, so a changed AWS_PROFILE or key (a
    # notebook, a test) gets a client of its own.
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    endpoint = endpoint_url()
    options = gdal_options()
    unsigned = os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "ON", "1")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    config = Config(
        connect_timeout=float(options["GDAL_HTTP_CONNECTTIMEOUT"]),
        read_timeout=float(options["GDAL_HTTP_TIMEOUT"]),
        retries={"max_attempts": 1 + int(options["GDAL_HTTP_MAX_RETRY"]), "mode": "standard"},
        signature_version=UNSIGNED if unsigned else None,
        s3={"addressing_style": "path"} if endpoint else {},
    )
    return boto3.session.Session(region_name=region).client(
        "s3", endpoint_url=endpoint, config=config
    )


def s3_client() -> Any:
    """A boto3 S3 client configured from the standard AWS environment (credentials, profile,
    region, endpoint, ``AWS_NO_SIGN_REQUEST``) with the same timeouts and retries as GDAL."""
    return _client(tuple(os.environ.get(v) for v in _CLIENT_VARS))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A shell glob as a regex over S3 keys: ``*`` and ``?`` stay within one ``/`` level and
    ``**`` crosses levels, as :func:`glob.glob` does on disk (fnmatch lets ``*`` cross ``/``,
    and Python 3.10's ``glob.translate`` does not exist yet)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 2 if pattern[i + 1 : i + 2] == "]" else i + 1)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out, i = out + "[" + ("^" + body[1:] if body.startswith("!") else body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def list_s3(url: str | Path, suffixes: Sequence[str]) -> list[Path]:
    """Rasters under an ``s3://bucket/prefix/`` folder (recursive) or matching an s3 glob
    (``s3://bucket/scenes/*.tif``), as sorted ``/vsis3/`` paths.

    Raises:
        InputNotFoundError: the bucket does not exist.
        RemoteError: access denied or the endpoint cannot be reached.
    """
    url = to_url(url)
    bucket, key = s3_parts(url)
    pattern = key if any(c in key for c in _GLOB_CHARS) else None
    prefix = key
    if pattern is not None:
        prefix = re.split(r"[*?\[]", key, maxsplit=1)[0]
    found = []
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if pattern is not None and not _glob_regex(pattern).fullmatch(k):
                    continue
                if k.lower().endswith(tuple(suffixes)):
                    found.append(Path(f"{_VSI_S3}{bucket}/{k}"))
    except Exception as err:  # noqa: BLE001 - botocore's errors are classified below
        raise s3_error(url, err) from None
    return sorted(found)


def exists(path: str | Path) -> bool:
    """Whether a local file or an S3 object exists (HTTP URLs: a HEAD request)."""
    if not is_remote(path):
        return Path(path).exists()
    url = to_url(path)
    if url.startswith("s3://"):
        bucket, key = s3_parts(url)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except Exception as err:  # noqa: BLE001
            if _status(err) == 404:
                return False
            raise s3_error(url, err) from None
    return _http_status(url) == 200


def check_output(url: str | Path, overwrite: bool, *, option: str = "--out") -> None:
    """Refuse an ``s3://`` output that exists unless ``overwrite`` (checked before any work)."""
    if not to_url(url).startswith("s3://"):
        raise ConfigError(
            f"{to_url(url)}: outputs can be written locally or to s3:// only; choose a local "
            f"{option} or an S3 URL"
        )
    if not overwrite and exists(url):
        raise OutputExistsError(
            f"{to_url(url)} exists; pass --overwrite to replace it or choose another {option}"
        )


def fingerprint(path: str | Path) -> list[Any]:
    """``[URL, size, ETag or Last-Modified]`` of a remote file, like :func:`geoseg.io.fingerprint`
    rows for local files (size and mtime): equal fingerprints mean "same object, unchanged"."""
    url = to_url(path)
    try:
        if url.startswith("s3://"):
            bucket, key = s3_parts(url)
            head = s3_client().head_object(Bucket=bucket, Key=key)
            return [url, int(head["ContentLength"]), str(head.get("ETag", ""))]
        import requests

        response = requests.head(url, timeout=_timeouts(), allow_redirects=True)
        if response.status_code == 200:
            h = response.headers
            size = int(h["Content-Length"]) if "Content-Length" in h else None
            return [url, size, h.get("ETag") or h.get("Last-Modified")]
    except Exception:  # noqa: BLE001 - an unreadable file fingerprints as "not there"
        pass
    return [url, None, None]


def upload(local: Path, url: str | Path) -> str:
    """Upload a finished local file to ``s3://bucket/key``; returns the URL.

    Atomic under the final key: S3 makes an object visible only once its upload is complete,
    both for a single PUT and for a multipart upload (the parts stay invisible until
    CompleteMultipartUpload; boto3's transfer manager aborts the upload on error), and a reader
    of an existing key sees the old object until then. Uploading to a temporary key and copying
    would add a visible temporary object and a second full write, and the copy is itself just
    another atomic PUT.
    """
    target = to_url(url)
    bucket, key = s3_parts(target)
    try:
        s3_client().upload_file(str(local), bucket, key)
    except Exception as err:  # noqa: BLE001
        raise s3_error(target, err) from None
    log.info("uploaded %s -> %s", local, target)
    return target


class Staging:
    """Local stand-ins for remote outputs: write each finished file locally, then upload it.

    ``local(path)`` is ``path`` itself for a local output; for an ``s3://`` (``/vsis3/``) output
    it is a file of the same name in a private temporary folder of its own. ``publish(local,
    path)`` uploads the finished stand-in and what was written beside it with :func:`upload`
    (each atomic under its final key). The folder is removed
    on exit, whatever happened, so a failed run leaves nothing behind locally or on S3.
    """

    def __init__(self) -> None:
        self._tmp: Path | None = None
        self._count = 0

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def local(self, path: Path) -> Path:
        """Where to write ``path``: itself when local, else a local file of the same name."""
        if not is_remote(path):
            return path
        if not to_url(path).startswith("s3://"):
            raise ConfigError(
                f"{to_url(path)}: outputs can be written locally or to s3:// only; "
                "choose a local --out or an S3 URL"
            )
        if self._tmp is None:
            import tempfile

            self._tmp = Path(tempfile.mkdtemp(prefix="geoseg-upload-"))
        self._count += 1
        folder = self._tmp / str(self._count)
        folder.mkdir()
        return folder / path.name

    def publish(self, local: Path | None, path: Path | None) -> list[str]:
        """Upload a finished stand-in to ``path``, with the files written next to it (a
        probability raster, a QGIS ``.qml`` style) under the same S3 prefix; nothing to do for
        a local output. Returns the URLs uploaded."""
        if local is None or path is None or local == path:
            return []
        prefix = to_url(path)[: -len(path.name)]
        urls = [upload(f, prefix + f.name) for f in sorted(local.parent.iterdir()) if f.is_file()]
        for f in local.parent.iterdir():
            f.unlink(missing_ok=True)
        return urls


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata", {})
        code = response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
            return 404
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId"):
            return 403
        return meta.get("HTTPStatusCode")
    return None


def _fix_credentials() -> str:
    return (
        "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or set "
        "AWS_NO_SIGN_REQUEST=YES for a public bucket"
    )


def _unreachable(url: str, detail: str) -> RemoteError:
    where = endpoint_url() if url.startswith("s3://") else urlsplit(url).netloc
    hint = (
        "check the network and AWS_ENDPOINT_URL / AWS_S3_ENDPOINT"
        if url.startswith("s3://")
        else "check the network and the URL"
    )
    return RemoteError(f"{url}: cannot reach {where or 'the server'} ({detail}); {hint}")


def s3_error(url: str, err: BaseException) -> GeosegError:
    status = _status(err)
    if status == 404:
        return InputNotFoundError(f"{url}: no such bucket or key on S3 (404); check the URL")
    if status in (401, 403):
        return RemoteError(f"{url}: access denied (403); {_fix_credentials()}")
    text = str(err).splitlines()[0] if str(err) else err.__class__.__name__
    if err.__class__.__name__ in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
    ):
        return _unreachable(url, err.__class__.__name__)
    if err.__class__.__name__ == "NoCredentialsError":
        return RemoteError(f"{url}: no AWS credentials found; {_fix_credentials()}")
    return RemoteError(f"{url}: S3 request failed ({text[:160]}); {_fix_credentials()}")


def _http_status(url: str) -> int:
    import requests

    connect, read = _timeouts()
    try:
        response = requests.head(url, timeout=(connect, read), allow_redirects=True)
    except requests.RequestException as err:
        raise _unreachable(url, err.__class__.__name__) from None
    return response.status_code


UNREACHABLE = re.compile(
    r"Could not connect|Couldn't connect|Connection refused|timed out|Timeout was reached|"
    r"Could not resolve|Failed to connect|Connection reset|Empty reply|Recv failure|"
    r"Operation too slow",
    re.I,
)
_DENIED = re.compile(
    r"Access ?Denied|\b403\b|Forbidden|InvalidAccessKeyId|SignatureDoesNotMatch", re.I
)
_MISSING = re.compile(r"does not exist|NoSuchKey|NoSuchBucket|\b404\b|No such file", re.I)


def explain(path: str | Path, err: BaseException) -> GeosegError:
    """A one-line error for a remote raster GDAL failed to open or read.

    GDAL's message decides when it is clear (unreachable endpoint, denied, missing key); an
    unclear one ("not recognized as a supported file format" after a failed request) is settled
    by asking the server directly (S3 HEAD through boto3, or an HTTP HEAD).
    """
    url = to_url(path)
    text = str(err).splitlines()[0] if str(err) else err.__class__.__name__
    if UNREACHABLE.search(text):
        return _unreachable(url, text[:120])
    if _DENIED.search(text):
        return RemoteError(f"{url}: access denied (403); {_fix_credentials()}")
    if _MISSING.search(text):
        return InputNotFoundError(f"{url}: not found on the server (404); check the URL")
    try:
        if url.startswith("s3://"):
            present = exists(url)
            status = 200 if present else 404
        else:
            status = _http_status(url)
    except GeosegError as probed:
        return probed
    if status == 404:
        return InputNotFoundError(f"{url}: not found on the server (404); check the URL")
    if status in (401, 403):
        return RemoteError(f"{url}: access denied ({status}); {_fix_credentials()}")
    if status >= 400:
        return RemoteError(f"{url}: the server answered {status}; try again later")
    from geoseg.errors import RasterError

    return RasterError(
        f"{url}: cannot be read as a raster ({text[:160]}); check that it is a GeoTIFF"
    )
