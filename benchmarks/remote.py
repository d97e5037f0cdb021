"""Measure GDAL's remote-read options on one window of a COG served from 127.0.0.1.

Serves an 8192 px COG (3 bands, 512 px tiles, ~46 MB) over HTTP (the tests' Range-capable
server) and over S3 (moto), then for each set of GDAL options opens it (``/vsicurl/``,
``/vsis3/``) and reads a 1024 px window the way ``geoseg infer`` does (strips of 256-row
patches overlapping by 64 rows), and prints the requests, body bytes and wall time each needed.
Every variant reads a fresh URL, so GDAL's process-wide cache does not carry over. Examples::

    python benchmarks/remote.py
    python benchmarks/remote.py --json remote.json

Loopback has no latency, so the request count is the figure that transfers to a real network
(each request costs one round trip: tens of ms to S3). ``geoseg.remote.GDAL_OPTIONS`` is the
winner; the README quotes this output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from remote_servers import ServerProcess, make_cog  # noqa: E402

from geoseg import remote  # noqa: E402

WINDOW = (3000, 3000, 1024, 1024)  # col, row, width, height: not aligned to the 512 px tiles
PATCH, OVERLAP = 256, 64


def read_window(path: str, options: dict[str, str]) -> None:
    import rasterio
    from rasterio.windows import Window

    col, row, w, h = WINDOW
    with rasterio.Env(**options), rasterio.open(path) as src:
        for y in range(row, row + h - OVERLAP, PATCH - OVERLAP):
            src.read(window=Window(col, y, w, min(PATCH, row + h - y)))


def variants(s3: dict[str, str]) -> dict[str, dict[str, str]]:
    bounded = {
        "GDAL_HTTP_MAX_RETRY": "3",
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "GDAL_HTTP_CONNECTTIMEOUT": "10",
        "GDAL_HTTP_TIMEOUT": "60",
    }
    geoseg = dict(remote.GDAL_OPTIONS)
    return {
        name: dict(s3, **options)
        for name, options in {
            "GDAL defaults (+ retries/timeouts)": bounded,
            "geoseg": geoseg,
            "geoseg - READDIR=EMPTY_DIR": {
                k: v for k, v in geoseg.items() if k != "GDAL_DISABLE_READDIR_ON_OPEN"
            },
            "geoseg + INGESTED_BYTES_AT_OPEN=64k": dict(
                geoseg, GDAL_INGESTED_BYTES_AT_OPEN="65536"
            ),
            "geoseg + ALLOWED_EXTENSIONS=.tif": dict(
                geoseg, CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif"
            ),
            "geoseg + VSI_CACHE": dict(geoseg, VSI_CACHE="TRUE"),
            "geoseg + CHUNK_SIZE=64k": dict(geoseg, CPL_VSIL_CURL_CHUNK_SIZE="65536"),
            "geoseg + USE_HEAD=NO": dict(geoseg, CPL_VSIL_CURL_USE_HEAD="NO"),
            "geoseg + MERGE_RANGES=NO": dict(geoseg, GDAL_HTTP_MERGE_CONSECUTIVE_RANGES="NO"),
        }.items()
    }


def measure(server: ServerProcess, path: str, options: dict[str, str], size: int) -> dict:
    server.reset()
    t0 = time.perf_counter()
    read_window(path, options)
    wall = time.perf_counter() - t0
    hits = server.hits()
    sent = sum(h.body_bytes for h in hits)
    return {
        "requests": len(hits),
        "methods": {m: sum(h.method == m for h in hits) for m in sorted({h.method for h in hits})},
        "bytes": sent,
        "fraction_of_file": sent / size,
        "seconds": round(wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cog = make_cog(Path(tmp) / "big.tif")
        size = cog.stat().st_size
        http = ServerProcess("files", tmp)
        s3 = ServerProcess("s3")
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
        s3_env = {"AWS_S3_ENDPOINT": s3.host, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
        os.environ["AWS_ENDPOINT_URL"] = s3.url
        client = remote.s3_client()
        client.create_bucket(Bucket="bench")
        try:
            for k, (name, options) in enumerate(variants(s3_env).items()):
                shutil.copy(cog, Path(tmp) / f"big{k}.tif")
                client.upload_file(str(cog), "bench", f"v{k}/big.tif")
                rows.append(
                    dict(
                        options=name,
                        http=measure(http, f"/vsicurl/{http.url}/big{k}.tif", options, size),
                        s3=measure(s3, f"/vsis3/bench/v{k}/big.tif", options, size),
                    )
                )
        finally:
            http.stop()
            s3.stop()
    print(f"COG: 8192 x 8192 x 3 uint8, {size / 1e6:.1f} MB; window {WINDOW[2]}x{WINDOW[3]} px")
    print(f"{'':38s} {'HTTP':>26s}   {'S3 (moto)':>26s}")
    print(f"{'options':38s}" + f" {'requests':>9s} {'MB':>6s} {'of file':>8s}" * 2)
    # requests include the HEADs; "of file" = body bytes sent / file size
    for r in rows:
        line = f"{r['options']:38s}"
        for kind in ("http", "s3"):
            m = r[kind]
            line += (
                f" {m['requests']:9d} {m['bytes'] / 1e6:6.2f} {100 * m['fraction_of_file']:7.2f}%"
            )
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"file_bytes": size, "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
