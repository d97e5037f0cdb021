"""geoseg.remote and the catalog on remote rasters: URL spelling, the GDAL environment, S3 (moto)
and HTTP servers on 127.0.0.1, range reads, retries, and the one-line errors of bad endpoints."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import make_geotiff
from rasterio.env import getenv
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window
from remote_servers import closed_port, silent_socket

from geoseg import catalog, remote
from geoseg.errors import CatalogError, InputNotFoundError, OutputExistsError, RemoteError


def _cog(path: Path, size: int = 1024, *, seed: int = 0, block: int = 256) -> Path:
    """A small 3-band uint8 COG of seeded noise (``helpers.make_geotiff``, then GDAL's COG)."""
    raw = make_geotiff(path.with_suffix(".raw.tif"), size=(size, size), seed=seed)
    rio_copy(raw, path, driver="COG", blocksize=block, compress="DEFLATE", overviews="NONE")
    raw.unlink()
    return path


# ------------------------------------------------------------------------------ spelling


def test_urls_become_gdal_paths_and_back() -> None:
    assert remote.to_gdal("s3://bkt/a/b.tif") == "/vsis3/bkt/a/b.tif"
    assert remote.to_gdal("https://h.org/x.tif") == "/vsicurl/url=https%3A%2F%2Fh.org/x.tif"
    assert remote.to_gdal("/data/x.tif") == "/data/x.tif"
    # No '//' for Path to fold, and the name is the file's.
    for typed in ("https://h.org:8080/c/x.tif", "/vsicurl/https://h.org:8080/c/x.tif"):
        p = remote.as_path(typed)
        assert (str(p), p.name, p.stem) == (
            "/vsicurl/url=https%3A%2F%2Fh.org%3A8080/c/x.tif",
            "x.tif",
            "x",
        )
        assert remote.to_url(p) == "https://h.org:8080/c/x.tif"
    signed = "https://h.org/c/x.tif?X-Amz-Signature=a%2Fb&X-Amz-Date=1"
    assert remote.to_url(remote.as_path(signed)) == signed
    assert remote.as_path(signed).name.startswith("x.tif")
    assert remote.to_url("/vsis3/bkt/k.tif") == "s3://bkt/k.tif"
    assert remote.name_of("https://h/x/scene.tif?X-Amz-Signature=abc") == "scene.tif"
    assert [
        remote.is_remote(s) for s in ("s3://b/k", "/vsis3/b/k", "/vsicurl/x", "/tmp/a.tif")
    ] == [
        True,
        True,
        True,
        False,
    ]
    assert remote.is_s3_folder("s3://bkt") and remote.is_s3_folder("s3://bkt/scenes/")
    assert remote.is_s3_folder("s3://bkt/scenes/*.tif") and not remote.is_s3_folder("s3://b/a.tif")
    assert remote.s3_parts("/vsis3/bkt/a/b.tif") == ("bkt", "a/b.tif")


def test_gdal_options_are_bounded_and_user_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GDAL_HTTP_TIMEOUT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_S3_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    options = remote.gdal_options()
    # GDAL's own defaults are no timeout and no retry: an unanswering endpoint would hang.
    assert 0 < float(options["GDAL_HTTP_TIMEOUT"]) <= 60
    assert 0 < float(options["GDAL_HTTP_CONNECTTIMEOUT"]) <= 10
    assert int(options["GDAL_HTTP_MAX_RETRY"]) >= 1
    assert options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert "AWS_S3_ENDPOINT" not in options
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "7")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.local:9000")
    options = remote.gdal_options()
    assert options["GDAL_HTTP_TIMEOUT"] == "7"
    # GDAL only knows AWS_S3_ENDPOINT: the SDKs' AWS_ENDPOINT_URL is translated for it.
    assert (options["AWS_S3_ENDPOINT"], options["AWS_HTTPS"], options["AWS_VIRTUAL_HOSTING"]) == (
        "minio.local:9000",
        "NO",
        "FALSE",
    )
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_S3_ENDPOINT", "ceph.local")
    monkeypatch.setenv("AWS_HTTPS", "NO")
    assert remote.endpoint_url() == "http://ceph.local"


def test_env_is_scoped_and_only_for_remote_paths() -> None:
    with remote.env(["/data/a.tif"]):
        assert "GDAL_DISABLE_READDIR_ON_OPEN" not in getenv()  # local sidecars stay visible
    with remote.env(["/data/a.tif", "s3://bkt/b.tif"]):
        assert getenv()["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    with rasterio.Env():
        assert "GDAL_HTTP_TIMEOUT" not in getenv()


# ------------------------------------------------------------------------------ S3


def test_s3_file_prefix_and_glob_are_found_and_indexed_like_local_copies(
    bucket: str, tmp_path: Path
) -> None:
    a = _cog(tmp_path / "a.tif", 512, seed=1)
    b = _cog(tmp_path / "sub" / "b.tif", 512, seed=2)
    s3 = remote.s3_client()
    s3.upload_file(str(a), bucket, "scenes/a.tif")
    s3.upload_file(str(b), bucket, "scenes/sub/b.tif")
    s3.put_object(Bucket=bucket, Key="scenes/readme.txt", Body=b"not a raster")
    folder = catalog.find_rasters(f"s3://{bucket}/scenes/")
    assert folder == [
        Path(f"/vsis3/{bucket}/scenes/a.tif"),
        Path(f"/vsis3/{bucket}/scenes/sub/b.tif"),
    ]
    assert catalog.find_rasters(f"s3://{bucket}/scenes/*.tif") == folder[:1]
    assert catalog.find_rasters(
        [f"s3://{bucket}/scenes/a.tif", f"/vsis3/{bucket}/scenes/a.tif"]
    ) == [folder[0]]
    remote_infos = catalog.index(folder).rasters
    local_infos = catalog.index([a, b]).rasters
    for r, loc in zip(remote_infos, local_infos, strict=True):
        assert (r.crs_wkt, r.transform, r.width, r.height, r.count, r.dtype) == (
            loc.crs_wkt,
            loc.transform,
            loc.width,
            loc.height,
            loc.count,
            loc.dtype,
        )
    listing = tmp_path / "list.txt"
    listing.write_text(f"s3://{bucket}/scenes/a.tif\n{b}\n")
    assert catalog.find_rasters(str(listing)) == [folder[0], b]


def test_s3_missing_key_bucket_and_empty_prefix_are_one_line(bucket: str) -> None:
    with pytest.raises(InputNotFoundError, match=rf"s3://{bucket}/nothing.tif: .*404"):
        catalog.index([f"s3://{bucket}/nothing.tif"])
    with pytest.raises(InputNotFoundError, match="s3://no-such-bucket-x/"):
        catalog.find_rasters("s3://no-such-bucket-x/")
    with pytest.raises(CatalogError, match="no rasters"):
        catalog.find_rasters(f"s3://{bucket}/empty/")


def test_s3_denied_is_one_line(bucket: str, s3_server, tmp_path: Path, monkeypatch) -> None:
    import boto3

    src = _cog(tmp_path / "a.tif", 256)
    remote.s3_client().upload_file(str(src), bucket, "private/a.tif")
    iam = boto3.client("iam", endpoint_url=s3_server.url, region_name="us-east-1")
    user = f"nobody-{bucket}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    s3_server.set_auth(True)  # a user without any policy: every S3 call is denied
    try:
        with pytest.raises(RemoteError, match=r"access denied \(403\).*AWS_ACCESS_KEY_ID"):
            catalog.index([f"s3://{bucket}/private/a.tif"])
        with pytest.raises(RemoteError, match="access denied"):
            catalog.find_rasters(f"s3://{bucket}/private/")
    finally:
        s3_server.set_auth(False)


def test_unreachable_s3_endpoint_fails_at_once(aws_env: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{closed_port()}")
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="cannot reach http://127.0.0.1"):
        catalog.index(["s3://bkt/a.tif"])
    with pytest.raises(RemoteError, match="cannot reach"):
        catalog.find_rasters("s3://bkt/prefix/")
    assert time.monotonic() - t0 < 10


def test_endpoint_that_never_answers_times_out(aws_env: str, monkeypatch) -> None:
    sock, host = silent_socket()
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    try:
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match=r"cannot reach .*timed out"):
            catalog.index([f"/vsicurl/http://{host}/a.tif"])
        # two attempts of 1 s plus the retry delay, never a hang
        assert time.monotonic() - t0 < 8
    finally:
        sock.close()


def test_upload_is_whole_and_output_guard(bucket: str, tmp_path: Path) -> None:
    src = _cog(tmp_path / "m.tif", 256)
    url = f"s3://{bucket}/out/m.tif"
    remote.check_output(url, overwrite=False)
    assert remote.upload(src, url) == url
    body = remote.s3_client().get_object(Bucket=bucket, Key="out/m.tif")["Body"].read()
    assert body == src.read_bytes()
    with pytest.raises(OutputExistsError, match=f"{url} exists; pass --overwrite"):
        remote.check_output(url, overwrite=False)
    remote.check_output(url, overwrite=True)


# ------------------------------------------------------------------------------ HTTP


def test_http_cog_window_read_uses_range_requests(http_server, http_root: Path) -> None:
    src = _cog(http_root / "window" / "big.tif", 2048, block=256)
    size = src.stat().st_size
    url = f"{http_server.url}/window/big.tif"
    [path] = catalog.find_rasters(url)
    assert path == remote.as_path(url) and remote.to_url(path) == url
    http_server.reset()
    [info] = catalog.index([path]).rasters
    assert (info.width, info.height) == (2048, 2048)
    with remote.env([path]), rasterio.open(path) as ds, rasterio.open(src) as local:
        win = Window(700, 900, 300, 200)
        assert np.array_equal(ds.read(window=win), local.read(window=win))
    hits = http_server.hits()
    sent = sum(h.body_bytes for h in hits)
    assert all(h.method == "HEAD" or h.range for h in hits), hits  # never a whole-file GET
    # the header, the last tile (the index's truncation check) and a 2x2 block of 256 px tiles
    assert sent < size / 4, (sent, size)


def test_http_404_403_and_retry_on_503(http_server, http_root: Path) -> None:
    _cog(http_root / "denied" / "a.tif", 256)
    _cog(http_root / "retry" / "a.tif", 256)
    with pytest.raises(InputNotFoundError, match=r"/nothing\.tif: not found on the server \(404\)"):
        catalog.index([f"{http_server.url}/nothing.tif"])
    with pytest.raises(RemoteError, match=r"/denied/a\.tif: access denied \(403\)"):
        catalog.index([f"{http_server.url}/denied/a.tif"])
    http_server.reset()
    http_server.fail_next(2)  # two 503s, then the file: GDAL_HTTP_MAX_RETRY=3 rides them out
    [info] = catalog.index([f"{http_server.url}/retry/a.tif"]).rasters
    assert info.width == 256
    assert [h.status for h in http_server.hits()][:2] == [503, 503]


def test_local_sidecars_still_read_next_to_remote_inputs(tmp_path: Path, make_geotiff) -> None:
    # A local .aux.xml carrying nodata must still be seen in a run that also has remote inputs
    # (the remote-only option is scoped to remote paths).
    p = make_geotiff("side.tif", size=(8, 8))
    shutil.copy(p, tmp_path / "copy.tif")
    (tmp_path / "copy.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><NoDataValue>7</NoDataValue></PAMRasterBand>'
        "</PAMDataset>"
    )
    assert catalog.index([tmp_path / "copy.tif"]).rasters[0].nodata == 7
