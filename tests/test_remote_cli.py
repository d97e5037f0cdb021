"""The commands on remote rasters: ``geoseg infer`` (and train, rasterize, evaluate) on s3:// and
https:// inputs give the same bytes as on local copies; ``--out s3://`` uploads whole files;
bad endpoints, keys, permissions and STAC searches end in one line, exit 1, nothing left."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import assert_one_line_error
from rasterio.shutil import copy as rio_copy
from remote_servers import closed_port, make_cog
from test_infer import make_checkpoint
from typer.testing import CliRunner

from geoseg import remote
from geoseg.cli.main import app

runner = CliRunner()


def _geoseg(*args: object):
    return runner.invoke(app, [*map(str, args)])


def _keys(bucket: str, prefix: str = "") -> list[str]:
    listing = remote.s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture(scope="module")
def local_cogs(demo_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's demo images and masks as COGs (the form remote imagery takes)."""
    root = tmp_path_factory.mktemp("cogs")
    for kind, files in (("images", demo_data.images), ("masks", demo_data.masks)):
        (root / kind).mkdir()
        for f in files:
            rio_copy(f, root / kind / f.name, driver="COG", blocksize=128, compress="DEFLATE")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "rgb.ckpt", patch_size=64)


@pytest.fixture
def s3_cogs(bucket: str, local_cogs: Path) -> str:
    """The COGs uploaded to a fresh bucket: s3://<bucket>/images/…, s3://<bucket>/masks/…"""
    s3 = remote.s3_client()
    for f in sorted(local_cogs.rglob("*.tif")):
        s3.upload_file(str(f), bucket, f"{f.parent.name}/{f.name}")
    return bucket


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR for the command, so a test can see that staging files are gone afterwards."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return tmp


def test_infer_s3_inputs_and_outputs_equal_local_copies(
    s3_cogs: str, local_cogs: Path, ckpt: Path, tmp_path: Path, private_tmp: Path
) -> None:
    common = ["--overlap", 16, "--probabilities", "--precision", "32", "-q"]
    res = _geoseg("infer", ckpt, local_cogs / "images", "--out", tmp_path / "local", *common)
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert len([n for n in names if n.endswith(".tif")]) == 8  # 4 masks, 4 probabilities
    out = f"s3://{s3_cogs}/masks-out/"
    res = _geoseg("infer", ckpt, f"s3://{s3_cogs}/images/", "--out", out, *common)
    assert res.exit_code == 0, res.output
    masks = [n for n in names if n.endswith(".tif") and not n.endswith("_prob.tif")]
    assert res.stdout.split() == [f"{out}{n}" for n in masks]
    assert _keys(s3_cogs, "masks-out/") == [f"masks-out/{n}" for n in names]
    for name in names:
        body = remote.s3_client().get_object(Bucket=s3_cogs, Key=f"masks-out/{name}")["Body"]
        assert body.read() == (tmp_path / "local" / name).read_bytes()
    assert list(private_tmp.iterdir()) == []  # the local stand-ins are gone
    # Objects are outputs like files: no overwrite without --overwrite, checked before any work.
    again = _geoseg("infer", ckpt, f"s3://{s3_cogs}/images/", "--out", out, *common)
    assert_one_line_error(again, f"{out}tile_00.tif exists; pass --overwrite")


def test_one_mask_and_its_footprints_to_s3_keys(
    s3_cogs: str, local_cogs: Path, ckpt: Path, tmp_path: Path
) -> None:
    import geopandas as gpd

    key, gpkg = f"s3://{s3_cogs}/out/one.tif", f"s3://{s3_cogs}/out/one.gpkg"
    src = f"s3://{s3_cogs}/images/tile_01.tif"
    res = _geoseg("infer", ckpt, src, "--out", key, "--vectorize", gpkg, "-q")
    assert res.exit_code == 0, res.output
    local = tmp_path / "one.tif"
    res = _geoseg("infer", ckpt, local_cogs / "images" / "tile_01.tif", "--out", local, "-q")
    assert res.exit_code == 0, res.output
    s3 = remote.s3_client()
    assert s3.get_object(Bucket=s3_cogs, Key="out/one.tif")["Body"].read() == local.read_bytes()
    assert _keys(s3_cogs, "out/") == ["out/one.gpkg", "out/one.qml", "out/one.tif"]
    s3.download_file(s3_cogs, "out/one.gpkg", str(tmp_path / "one.gpkg"))
    with rasterio.open(local) as mask:
        assert gpd.read_file(tmp_path / "one.gpkg").crs == mask.crs


@pytest.mark.slow
def test_dask_workers_read_the_s3_input_themselves(
    s3_cogs: str, local_cogs: Path, ckpt: Path, tmp_path: Path
) -> None:
    src = f"s3://{s3_cogs}/images/tile_02.tif"
    res = _geoseg("infer", ckpt, src, "--out", tmp_path / "dask.tif", "--workers", 2, "-q")
    assert res.exit_code == 0, res.output
    local = tmp_path / "local.tif"
    res = _geoseg("infer", ckpt, local_cogs / "images" / "tile_02.tif", "--out", local, "-q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "dask.tif").read_bytes() == local.read_bytes()


# ------------------------------------------------------------------------------ range reads


@pytest.fixture(scope="session")
def big_cog(http_root: Path) -> Path:
    """An 8192 px COG (3 bands, 512 px tiles, ~46 MB), made once per session."""
    return make_cog(http_root / "big" / "scene8k.tif")


def _crop_vrt(path: Path, source: str, src: Path, col: int, row: int, size: int) -> Path:
    """A VRT of a ``size`` px window of ``source`` (what ``gdal_translate -srcwin`` writes)."""
    with rasterio.open(src) as ds:
        t = ds.transform @ rasterio.Affine.translation(col, row)
        crs = ds.crs.to_wkt()
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        f"<SourceBand>{b}</SourceBand>"
        f'<SrcRect xOff="{col}" yOff="{row}" xSize="{size}" ySize="{size}"/>'
        f'<DstRect xOff="0" yOff="0" xSize="{size}" ySize="{size}"/>'
        "</SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{crs}</SRS>'
        f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>{bands}</VRTDataset>"
    )
    return path


def test_inference_of_a_1k_window_of_an_8k_cog_fetches_a_small_share(
    http_server, big_cog: Path, ckpt: Path, tmp_path: Path
) -> None:
    url = f"{http_server.url}/big/{big_cog.name}"
    vrt = _crop_vrt(tmp_path / "window.vrt", str(remote.as_path(url)), big_cog, 3000, 3000, 1024)
    http_server.reset()
    out = tmp_path / "window.tif"
    res = _geoseg("infer", ckpt, vrt, "--out", out, "--patch-size", 256, "--no-cog", "-q")
    assert res.exit_code == 0, res.output
    hits = http_server.hits()
    fetched = sum(h.body_bytes for h in hits)
    size = big_cog.stat().st_size
    print(f"1k window of an 8k COG: {fetched} of {size} bytes ({100 * fetched / size:.2f}%)")
    assert all(h.method == "HEAD" or h.range for h in hits)  # ranges only, no whole-file GET
    # 3x3 of the 512 px tiles (the window is not tile-aligned) = 9/256 of the tiles, ~3.6%
    assert fetched < size / 20, (fetched, size)
    with rasterio.open(out) as mask, rasterio.open(vrt) as ref:
        assert (mask.crs, mask.transform, mask.shape) == (ref.crs, ref.transform, ref.shape)


# ------------------------------------------------------------------------------ bad input


def test_bad_remote_inputs_are_one_line_errors_and_leave_nothing(
    bucket: str, http_server, ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "masks"
    assert_one_line_error(
        _geoseg("infer", ckpt, f"s3://{bucket}/nope.tif", "--out", out, "-q"),
        f"s3://{bucket}/nope.tif",
        "404",
    )
    assert not out.exists()
    assert_one_line_error(
        _geoseg("infer", ckpt, f"{http_server.url}/denied/a.tif", "--out", out, "-q"),
        "access denied (403)",
    )
    assert not out.exists()
    assert_one_line_error(
        _geoseg("infer", ckpt, f"s3://{bucket}/empty/", "--out", out, "-q"), "no rasters"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{closed_port()}")
    t0 = time.monotonic()
    assert_one_line_error(
        _geoseg("infer", ckpt, f"s3://{bucket}/a.tif", "--out", out, "-q"), "cannot reach"
    )
    assert time.monotonic() - t0 < 10
    assert not out.exists()


def test_stac_search_with_no_items_or_without_the_asset(
    http_server, http_root: Path, ckpt: Path, tmp_path: Path
) -> None:
    from remote_servers import ServerProcess
    from test_remote_stac import _item

    make_cog(http_root / "stac-cli" / "atl-1.tif", 512)
    api = ServerProcess("stac", [_item("atl-1", f"{http_server.url}/stac-cli/atl-1.tif")])
    try:
        out = tmp_path / "masks"
        assert_one_line_error(
            _geoseg("infer", ckpt, f"{api.url}/search?bbox=0,0,1,1", "--out", out, "-q"),
            "matched no items",
        )
        assert_one_line_error(
            _geoseg("infer", ckpt, f"{api.url}/search?ids=atl-1#asset=nir", "--out", out, "-q"),
            "has no asset 'nir'",
        )
        assert not out.exists()
        res = _geoseg(
            "infer", ckpt, f"{api.url}/search?ids=atl-1", "--out", out, "--patch-size", 128, "-q"
        )
        assert res.exit_code == 0, res.output
        with rasterio.open(out / "atl-1.tif") as m:
            assert m.shape == (512, 512) and np.isin(m.read(1), [0, 1]).all()
    finally:
        api.stop()


def test_rasterize_like_and_evaluate_on_s3(
    s3_cogs: str, local_cogs: Path, demo_data, tmp_path: Path
) -> None:
    import json

    for like, out in (
        (f"s3://{s3_cogs}/images/tile_03.tif", tmp_path / "s3.tif"),
        (local_cogs / "images" / "tile_03.tif", tmp_path / "local.tif"),
    ):
        res = _geoseg("rasterize", demo_data.buildings, "--like", like, "--out", out, "-q")
        assert res.exit_code == 0, res.output
    assert (tmp_path / "s3.tif").read_bytes() == (tmp_path / "local.tif").read_bytes()

    reports = {}
    for name, pred in (
        ("s3", f"s3://{s3_cogs}/masks/tile_03.tif"),
        ("local", local_cogs / "masks" / "tile_03.tif"),
    ):
        report = tmp_path / f"{name}.json"
        truth = tmp_path / "local.tif"
        res = _geoseg("evaluate", pred, truth, "--json", report, "-q")
        assert res.exit_code == 0, res.output
        reports[name] = json.loads(report.read_text())
    assert reports["s3"]["prediction"] == f"s3://{s3_cogs}/masks/tile_03.tif"
    for key in ("per_class", "miou", "accuracy", "confusion_matrix"):
        assert reports["s3"][key] == reports["local"][key]
    assert reports["s3"]["miou"] > 0.5  # the demo's truth mask against its burned buildings


@pytest.mark.slow
def test_train_on_s3_equals_training_on_local_copies(
    s3_cogs: str, local_cogs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from geoseg import checkpoint

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same arithmetic in both runs
    config = tmp_path / "small.yaml"
    config.write_text(
        "data:\n  split: {method: blocks, block_size: 128, ratios: [0.6, 0.2, 0.2], seed: 0}\n"
        "train:\n  patches_per_epoch: 8\n"
    )
    tiny = ["--epochs", 1, "--width", 4, "--patch-size", 64, "--batch-size", 4, "--seed", 0]
    runs = {}
    for name, images, labels in (
        ("s3", f"s3://{s3_cogs}/images/", f"s3://{s3_cogs}/masks/"),
        ("local", local_cogs / "images", local_cogs / "masks"),
    ):
        runs[name] = tmp_path / name
        res = _geoseg(
            "-q",
            "train",
            images,
            "--labels",
            labels,
            "--out",
            runs[name],
            "--config",
            config,
            "--precision",
            "32",
            *tiny,
        )
        assert res.exit_code == 0, (res.output, res.stderr)
    for ckpt in ("best.ckpt", "last.ckpt"):
        a = checkpoint.load(runs["s3"] / ckpt).state_dict
        b = checkpoint.load(runs["local"] / ckpt).state_dict
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    import csv

    def scores(run: Path) -> list[dict[str, str]]:  # all but the wall-clock columns
        with (run / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        return [{k: v for k, v in r.items() if k not in ("seconds", "patches_per_s")} for r in rows]

    assert scores(runs["s3"]) == scores(runs["local"])
