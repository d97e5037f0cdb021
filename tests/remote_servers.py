"""Real servers on 127.0.0.1 for the remote-data tests: files over HTTP with Range support, a tiny
STAC API, an S3 endpoint (moto) and sockets that refuse or never answer.

Each server runs in its own process (started with ``spawn``, stopped by its fixture): GDAL holds
the GIL through parts of ``rasterio.open`` (the sidecar probes), so a server thread in the test
process can deadlock against it. The file and S3 servers record every request with the body bytes
sent back; tests read the records through ``/_control/hits``, so they can assert that GDAL read a
window with range requests instead of downloading the file.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from werkzeug.exceptions import NotFound
from werkzeug.serving import make_server
from werkzeug.utils import send_from_directory
from werkzeug.wrappers import Request, Response

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Hit:
    """One request a server answered."""

    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int


class Recorder:
    """WSGI middleware that records every request with the body bytes sent back."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.hits: list[Hit] = []
        self.active = 0  # requests still being answered
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterator[bytes]:
        status: list[int] = []

        def recording_start(status_line: str, headers: list[Any], *exc: Any) -> Any:
            status.append(int(status_line.split()[0]))
            return start_response(status_line, headers, *exc)

        with self._lock:
            self.active += 1
        sent = 0
        try:
            body = self.app(environ, recording_start)
            try:
                for chunk in body:
                    sent += len(chunk)
                    yield chunk
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
        finally:
            with self._lock:
                self.active -= 1
                self.hits.append(
                    Hit(
                        environ["REQUEST_METHOD"],
                        environ.get("PATH_INFO", ""),
                        environ.get("HTTP_RANGE"),
                        status[0] if status else 0,
                        sent,
                    )
                )

    def settled_hits(self, wait_s: float = 5.0) -> list[Hit]:
        """The hits once every request in flight has finished (the client may have read the
        last bytes before this server's thread recorded them)."""
        deadline = time.monotonic() + wait_s
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            return list(self.hits)


class FileServer:
    """A WSGI app serving ``root`` with Range requests (werkzeug's ``send_file`` answers them).

    Paths under ``/denied/`` answer 403; after ``fail_next = N`` the next N requests answer 503
    (to test retries).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fail_next = 0
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        with self._lock:
            failing = self.fail_next > 0
            self.fail_next -= 1 if failing else 0
        if failing:
            response = Response("busy", status=503)
        elif request.path.startswith("/denied/"):
            response = Response("forbidden", status=403)
        else:
            try:
                response = send_from_directory(self.root, request.path.lstrip("/"), environ)
            except NotFound:
                response = Response("not found", status=404)
        return response(environ, start_response)


class _Control:
    """Routes ``/_control/…`` to the test's controls, everything else to the recorded app."""

    def __init__(self, recorder: Recorder, files: FileServer | None) -> None:
        self.recorder, self.files = recorder, files

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/_control/"):
            return self.recorder(environ, start_response)
        request = Request(environ)
        if path == "/_control/hits":
            body = json.dumps([asdict(h) for h in self.recorder.settled_hits()])
        elif path == "/_control/reset":
            self.recorder.hits.clear()
            body = "{}"
        elif path == "/_control/fail" and self.files is not None:
            self.files.fail_next = int(request.args["n"])
            body = "{}"
        else:
            return Response("unknown control", status=404)(environ, start_response)
        return Response(body, content_type="application/json")(environ, start_response)


def _serve(kind: str, arg: Any, ports: Any) -> None:
    """Child process: build the app of ``kind``, bind a free port, report it, serve forever."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    handler = None
    files = None
    if kind == "files":
        files = FileServer(Path(arg))
        app: WsgiApp = _Control(Recorder(files), files)
    elif kind == "s3":
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )

        app = _Control(Recorder(DomainDispatcherApplication(create_backend_app)), None)
        handler = MotoRequestHandler
    elif kind == "stac":
        app = StacApi(arg)
    else:
        raise ValueError(kind)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=handler)
    if isinstance(app, StacApi):
        app.base = f"http://127.0.0.1:{server.server_port}"
    ports.put(server.server_port)
    server.serve_forever()


class ServerProcess:
    """A server of ``kind`` (``files`` root, ``s3``, ``stac`` items) in a child process."""

    def __init__(self, kind: str, arg: Any = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        ports = ctx.Queue()
        self.process = ctx.Process(target=_serve, args=(kind, arg, ports), daemon=True)
        self.process.start()
        port = ports.get(timeout=60)
        self.url = f"http://127.0.0.1:{port}"
        self.host = f"127.0.0.1:{port}"

    def _control(self, what: str, **params: Any) -> Any:
        import requests

        response = requests.post(f"{self.url}/_control/{what}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def hits(self) -> list[Hit]:
        """Every request answered since the last :meth:`reset`."""
        return [Hit(**h) for h in self._control("hits")]

    def reset(self) -> None:
        self._control("reset")

    def fail_next(self, n: int) -> None:
        """Answer the next ``n`` requests with 503 (file server)."""
        self._control("fail", n=n)

    def set_auth(self, enforced: bool) -> None:
        """S3: make moto check signatures and IAM policies (on) or accept anything (off)."""
        import requests

        data = b"0" if enforced else b"inf"
        requests.post(f"{self.url}/moto-api/reset-auth", data=data, timeout=10).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(timeout=10)


class StacApi:
    """A minimal STAC API (landing page, conformance, collections, ``/search`` GET and POST).

    Supports the filters geoseg passes: ``collections``, ``ids``, ``bbox``, ``datetime`` (an
    instant or ``start/end`` with open ends ``..``), ``query`` (the Query extension's
    eq/neq/lt/lte/gt/gte/in) and ``limit`` with ``next`` links, so paging is exercised.
    """

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.base = ""  # set once the server has a port
        self.searches: list[dict[str, Any]] = []

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        path = request.path.rstrip("/")
        if path == "":
            body = self._landing()
        elif path == "/conformance":
            body = {"conformsTo": self._conformance()}
        elif path == "/collections":
            body = {"collections": [self._collection(c) for c in self._collection_ids()]}
        elif path.startswith("/collections/"):
            body = self._collection(path.split("/")[2])
        elif path == "/search":
            params: dict[str, Any]
            if request.method == "POST":
                params = json.loads(request.get_data() or b"{}")
            else:
                params = {k: v for k, v in request.args.items()}
                for key in ("collections", "ids"):
                    if key in params:
                        params[key] = params[key].split(",")
                if "bbox" in params:
                    params["bbox"] = [float(v) for v in params["bbox"].split(",")]
                if "query" in params:
                    params["query"] = json.loads(params["query"])
            self.searches.append(params)
            body = self._search(params)
        else:
            return Response("not found", status=404)(environ, start_response)
        return Response(json.dumps(body), content_type="application/json")(environ, start_response)

    @staticmethod
    def _conformance() -> list[str]:
        return [
            "https://api.stacspec.org/v1.0.0/core",
            "https://api.stacspec.org/v1.0.0/item-search",
            "https://api.stacspec.org/v1.0.0/item-search#query",
            "https://api.stacspec.org/v1.0.0/collections",
        ]

    def _collection_ids(self) -> list[str]:
        return sorted({str(i.get("collection")) for i in self.items})

    def _landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog",
            "stac_version": "1.0.0",
            "id": "test-api",
            "description": "geoseg test STAC API",
            "conformsTo": self._conformance(),
            "links": [
                {"rel": "self", "href": self.base + "/", "type": "application/json"},
                {"rel": "root", "href": self.base + "/", "type": "application/json"},
                {"rel": "conformance", "href": self.base + "/conformance"},
                {"rel": "data", "href": self.base + "/collections"},
                {
                    "rel": "search",
                    "href": self.base + "/search",
                    "type": "application/geo+json",
                    "method": "GET",
                },
                {
                    "rel": "search",
                    "href": self.base + "/search",
                    "type": "application/geo+json",
                    "method": "POST",
                },
            ],
        }

    def _collection(self, cid: str) -> dict[str, Any]:
        return {
            "type": "Collection",
            "stac_version": "1.0.0",
            "id": cid,
            "description": cid,
            "license": "proprietary",
            "extent": {
                "spatial": {"bbox": [[-180, -90, 180, 90]]},
                "temporal": {"interval": [[None, None]]},
            },
            "links": [],
        }

    def _search(self, params: dict[str, Any]) -> dict[str, Any]:
        hits = [i for i in self.items if _matches(i, params)]
        limit = int(params.get("limit") or 10)
        start = int(params.get("token") or 0)
        page = hits[start : start + limit]
        links = []
        if start + limit < len(hits):
            links.append(
                {
                    "rel": "next",
                    "href": self.base + "/search",
                    "method": "POST",
                    "body": dict(params, token=str(start + limit)),
                    "merge": False,
                }
            )
        return {"type": "FeatureCollection", "features": page, "links": links}


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _matches(item: dict[str, Any], params: dict[str, Any]) -> bool:
    if params.get("collections") and item.get("collection") not in params["collections"]:
        return False
    if params.get("ids") and item.get("id") not in params["ids"]:
        return False
    if params.get("bbox"):
        w, s, e, n = params["bbox"][:4] if len(params["bbox"]) == 4 else params["bbox"][0:4]
        iw, is_, ie, in_ = item["bbox"]
        if iw > e or ie < w or is_ > n or in_ < s:
            return False
    if params.get("datetime"):
        t = _when(item["properties"]["datetime"])
        parts = str(params["datetime"]).split("/")
        lo = parts[0] if parts[0] not in ("", "..") else None
        hi = parts[-1] if parts[-1] not in ("", "..") else None
        if len(parts) == 1 and t != _when(parts[0]):
            return False
        if len(parts) == 2 and ((lo and t < _when(lo)) or (hi and t > _when(hi))):
            return False
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "eq": lambda a, b: a == b,
        "neq": lambda a, b: a != b,
        "lt": lambda a, b: a is not None and a < b,
        "lte": lambda a, b: a is not None and a <= b,
        "gt": lambda a, b: a is not None and a > b,
        "gte": lambda a, b: a is not None and a >= b,
        "in": lambda a, b: a in b,
    }
    for prop, conds in (params.get("query") or {}).items():
        value = item["properties"].get(prop)
        for op, arg in conds.items():
            if not ops[op](value, arg):
                return False
    return True


def silent_socket() -> tuple[socket.socket, str]:
    """A listening socket that never accepts: connects succeed, no byte ever comes back.

    Returns the socket (close it when done) and its ``host:port``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def closed_port() -> str:
    """``host:port`` of a port nothing listens on (connection refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def make_cog(path: Path, size: int = 8192, *, seed: int = 0) -> Path:
    """A ``size`` square 3-band uint8 Cloud-Optimized GeoTIFF (512 px tiles, ZSTD, no overviews).

    Content: a coarse gradient plus one bit of noise, so tiles compress to ~1/4 (an 8k COG is
    ~46 MB) and a window's tiles are a fair share of the file. Built from an uncompressed tiled
    temporary file, written strip by strip (memory: one 512-row strip).
    """
    import numpy as np
    import rasterio
    from rasterio.shutil import copy
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".raw.tif")
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(500000, 5000000 + size * 0.5, 0.5, 0.5),
        tiled=True,
        blockxsize=512,
        blockysize=512,
    )
    noise = np.random.default_rng(seed).integers(0, 2, (3, 512, size), dtype=np.uint8)
    cols = np.arange(size)[None, None, :] // 64
    with rasterio.open(tmp, "w", **profile) as dst:
        for y in range(0, size, 512):
            h = min(512, size - y)
            strip = (noise[:, :h] + ((cols + y // 64) % 200).astype(np.uint8)).astype(np.uint8)
            dst.write(strip, window=Window(0, y, size, h))
    copy(
        tmp,
        path,
        driver="COG",
        compress="ZSTD",
        level=1,
        blocksize=512,
        overviews="NONE",
        num_threads="ALL_CPUS",
    )
    tmp.unlink()
    return path


# --------------------------------------------------------------------------------------------
# Fixtures (imported by conftest.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ServerProcess]:
    """moto's S3 server in a child process for the whole session."""
    server = ServerProcess("s3")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the session's HTTP server serves (tests put files under unique names)."""
    return tmp_path_factory.mktemp("http_root")


@pytest.fixture(scope="session")
def http_server(http_root: Path) -> Iterator[ServerProcess]:
    """A Range-capable HTTP file server over ``http_root`` for the whole session."""
    server = ServerProcess("files", str(http_root))
    yield server
    server.stop()


@pytest.fixture
def aws_env(s3_server: ServerProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The standard AWS variables pointing at the test S3 server (and nothing of the
    developer's own AWS setup). Returns the endpoint URL."""
    for var in list(os.environ):
        if var.startswith(("AWS_", "GDAL_HTTP", "CPL_VSIL")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server.url


@pytest.fixture
def bucket(aws_env: str) -> str:
    """A fresh bucket for one test (names are unique, so GDAL's cache never mixes tests)."""
    from geoseg import remote

    name = "t-" + uuid.uuid4().hex[:16]
    remote.s3_client().create_bucket(Bucket=name)
    return name
