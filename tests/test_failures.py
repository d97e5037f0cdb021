"""Hostile conditions (issue 11): a full disk, a file size limit, unwritable folders, corrupt
inputs, an output that is an input, a setting torch rejects, a huge sparse raster.

Each command ends in one line ``Error: …`` naming the file (exit 1; 2 for a bad setting) or in a
correct output, and leaves nothing behind: no temporary or lock file, no half-written output.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import shapely
from helpers import REPO, assert_one_line_error, leftovers, make_geotiff, run_geoseg
from rasterio.transform import from_origin
from rasterio.windows import Window
from test_infer import make_checkpoint
from typer.testing import CliRunner

from geoseg.cli.main import app

runner = CliRunner()
SIZE = 384  # pixels of the test image: its mask and outputs are tens of KB


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Path]]:
    """What the commands read, in a folder anyone may read (some tests run as ``nobody``)."""
    root = Path(tempfile.mkdtemp(prefix="geoseg-failures-"))
    rng = np.random.default_rng(0)
    w = {
        "ckpt": make_checkpoint(root / "model.ckpt"),
        # trained at 1 m: the 0.5 m image is predicted resampled, through temporary files
        "ckpt_1m": make_checkpoint(root / "model_1m.ckpt", res=1.0),
        "image": make_geotiff(root / "image.tif", size=(SIZE, SIZE), seed=1),
        # nodata (0) at random pixels: a mask burned on it is noise, tens of KB compressed
        "holes": make_geotiff(
            root / "holes.tif",
            (rng.random((SIZE, SIZE)) > 0.3).astype("uint8"),
            nodata=0,
        ),
        "mask": make_geotiff(
            root / "mask.tif",
            np.kron(rng.integers(0, 2, (SIZE // 8, SIZE // 8)), np.ones((8, 8))).astype("uint8"),
            nodata=255,
        ),
    }
    x0, y0 = 500000.0, 5000000.0  # make_geotiff's origin, 0.5 m pixels
    boxes = [
        shapely.box(x0 + i * 6, y0 - j * 6 - 4, x0 + i * 6 + 4, y0 - j * 6)
        for i in range(SIZE // 12)
        for j in range(SIZE // 12)
    ]
    w["truth"] = root / "truth.gpkg"
    gpd.GeoDataFrame({"class": [1] * len(boxes)}, geometry=boxes, crs="EPSG:32631").to_file(
        w["truth"]
    )
    w["pred"] = root / "pred.gpkg"
    shifted = [shapely.affinity.translate(b, 0.5, 0) for b in boxes]
    gpd.GeoDataFrame(geometry=shifted, crs="EPSG:32631").to_file(w["pred"])
    # a GeoTIFF whose header is intact but whose pixel data is cut short (a COG: header first)
    cog = root / "cog.tif"
    rasterio.shutil.copy(w["image"], cog, driver="COG", BLOCKSIZE=128, COMPRESS="DEFLATE")
    data = cog.read_bytes()
    w["truncated"] = root / "truncated.tif"
    w["truncated"].write_bytes(data[: len(data) * 7 // 10])
    cog.unlink()
    w["pipeline"] = root / "pipeline.yaml"
    w["pipeline"].write_text(
        f"data:\n  images: [{w['image']}]\n  labels: {w['truth']}\n"
        "model: {width: 4}\ntrain: {epochs: 1, patch_size: 64}\nevaluate: {truth: null}\n"
    )
    for path in [root, *root.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield w
    shutil.rmtree(root, ignore_errors=True)


def _commands(w: dict[str, Path], out: Path) -> dict[str, tuple[list[Any], Path]]:
    """Each writing command: its arguments (global -q first) and the output it writes."""
    mask = out / "m.tif"

    def infer(ckpt: Path, *extra: str) -> tuple[list[Any], Path]:
        # probabilities: uint8 bands of continuous values, large whatever the model predicts
        return [
            "infer",
            ckpt,
            w["image"],
            "-o",
            mask,
            "--overlap",
            "8",
            "--probabilities",
            *extra,
        ], mask

    return {
        "infer --no-cog": infer(w["ckpt"], "--no-cog"),
        "infer": infer(w["ckpt"]),
        # trained at 1 m: predicted at 1 m and brought back, through temporary files
        "infer --resample": infer(w["ckpt_1m"], "--no-cog", "--resample"),
        # multi-scale: each scale's prediction goes to temporary files before the average
        "infer --scales": infer(w["ckpt"], "--no-cog", "--scales", "0.8,1,1.25"),
        "rasterize": (
            ["rasterize", w["truth"], "--like", w["holes"], "--out", out / "r.tif"],
            out / "r.tif",
        ),
        "vectorize": (["vectorize", w["mask"], "--out", out / "v.gpkg"], out / "v.gpkg"),
        "evaluate --json": (
            ["evaluate", w["pred"], w["truth"], "--json", out / "e.json"],
            out / "e.json",
        ),
        "demo-data": (["demo-data", out / "demo", "--tiles", "1", "--size", "64"], out / "demo"),
    }


COMMANDS = [
    "infer --no-cog",
    "infer",
    "infer --resample",
    "infer --scales",
    "rasterize",
    "vectorize",
    "evaluate --json",
    "demo-data",
]


def _args(args: list) -> list[str]:
    return ["-q", *map(str, args)]


def _nothing_left(out: Path, output: Path) -> None:
    assert not output.exists(), output
    assert leftovers(out) == []
    assert sorted(p.name for p in out.iterdir()) == [], list(out.iterdir())


# ----------------------------------------------------------------------------- full disk


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """A 256 KiB tmpfs; ``fill(free_kib)`` fills it up to ``free_kib`` KiB and returns a folder
    in it. Needs root (mount); skipped where mounting is not allowed."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()[:80]})")

    def fill(free_kib: int) -> Path:
        st = os.statvfs(mnt)
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - free_kib * 1024))
        out = mnt / "out"
        out.mkdir()
        return out

    try:
        yield fill
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_full_disk_is_one_line_and_leaves_nothing(
    world: dict[str, Path], full_disk: Callable[[int], Path], command: str
) -> None:
    # 8 KiB free: the lock file takes one page, the output's first 4 KiB fit, the rest does
    # not; GDAL reports that only on stderr, so the written file itself is checked.
    out = full_disk(8)
    args, output = _commands(world, out)[command]
    result = runner.invoke(app, _args(args))
    assert_one_line_error(result, str(output.with_suffix("")), "No space left on device")
    _nothing_left(out, output)


def _file_size_limit(limit: int) -> Callable[[], None]:
    def limit_writes() -> None:  # in the child: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return limit_writes


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "infer"])  # COG: see above
def test_file_size_limit_is_one_line_and_leaves_nothing(
    world: dict[str, Path], tmp_path: Path, command: str
) -> None:
    # The no-root stand-in for a full disk: the same failed writes, through EFBIG.
    out = tmp_path / "out"
    out.mkdir()
    args, output = _commands(world, out)[command]
    proc = run_geoseg(*_args(args), preexec_fn=_file_size_limit(3000))
    assert_one_line_error(proc, str(output.with_suffix("")), "File too large")
    _nothing_left(out, output)


# ----------------------------------------------------------------------------- unwritable


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An empty folder nothing can be written into, and the error that says so.

    As root (which ignores permissions) a read-only bind mount of it; otherwise chmod 555.
    """
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
        yield out, "Permission denied"
        out.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(out), str(out)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"no read-only bind mount here ({mounted.stderr.decode().strip()[:80]})")
    try:
        yield out, "Read-only file system"
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)


@pytest.mark.parametrize(
    "command", ["infer", "rasterize", "vectorize", "evaluate --json", "demo-data", "run"]
)
def test_unwritable_folder_is_one_line(
    world: dict[str, Path], unwritable: tuple[Path, str], command: str
) -> None:
    out, why = unwritable
    if command == "run":
        args, output = ["run", world["pipeline"], "--set", f"out={out / 'run'}"], out / "run"
    else:
        args, output = _commands(world, out)[command]
    assert_one_line_error(runner.invoke(app, _args(args)), str(output), why)
    assert list(out.iterdir()) == []


def test_outputs_under_proc_are_one_line(world: dict[str, Path]) -> None:
    for command in ("rasterize", "vectorize", "evaluate --json", "demo-data"):
        args, output = _commands(world, Path("/proc/geoseg-test"))[command]
        assert_one_line_error(runner.invoke(app, _args(args)), str(output))


# ----------------------------------------------------------------------------- corrupt inputs


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_truncated_input_to_infer_is_one_line(
    world: dict[str, Path], tmp_path: Path, workers: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = ["infer", world["ckpt"], world["truncated"], "--out", out / "m.tif"]
    proc = run_geoseg(*_args([*args, "--overlap", "8", "--workers", workers]))
    assert_one_line_error(proc, "truncated.tif", "truncated or corrupt")
    _nothing_left(out, out / "m.tif")  # no dask block files either


def test_truncated_mask_to_vectorize_is_one_line(world: dict[str, Path], tmp_path: Path) -> None:
    args = ["vectorize", world["truncated"], "--out", tmp_path / "v.gpkg", "--class", "1"]
    assert_one_line_error(runner.invoke(app, _args(args)), "truncated.tif")
    assert leftovers(tmp_path) == [] and not (tmp_path / "v.gpkg").exists()


def test_failed_run_leaves_no_pipeline_yaml(world: dict[str, Path], tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(world["truncated"], images / "tile.tif")
    out = tmp_path / "run"
    args = ["run", world["pipeline"], "--set", f"out={out}", "--set", f"data.images=[{images}]"]
    assert_one_line_error(runner.invoke(app, _args(args)), "tile.tif")
    assert not (out / "pipeline.yaml").exists() and leftovers(tmp_path) == []


def test_negative_learning_rate_is_one_line(world: dict[str, Path], tmp_path: Path) -> None:
    args = ["train", world["image"], "--labels", world["truth"], "--out", tmp_path / "r"]
    args += ["--width", "4", "--patch-size", "64", "--epochs", "1", "--lr", "-1"]
    assert_one_line_error(runner.invoke(app, _args(args)), "lr", code=2)


# ----------------------------------------------------------------------------- outputs and inputs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(
    world: dict[str, Path], tmp_path: Path
) -> None:
    image = shutil.copy(world["image"], tmp_path / "image.tif")
    before = _digest(Path(image))
    for args in (
        ["infer", world["ckpt"], image, "--out", image, "--overwrite"],
        ["infer", world["ckpt"], image, "--out", tmp_path / "." / "image.tif", "--overwrite"],
        ["rasterize", world["truth"], "--like", image, "--out", image, "--overwrite"],
        ["evaluate", image, world["truth"], "--json", image, "--overwrite"],
    ):
        assert_one_line_error(runner.invoke(app, _args(args)), "is also an input", code=2)
    assert _digest(Path(image)) == before and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- streaming


@pytest.mark.slow
def test_rasterize_streams_a_100000_pixel_square_sparse_raster(tmp_path: Path) -> None:
    # A sparse tiled GeoTIFF (nodata where no tile was written) of 100000 x 100000 pixels is
    # ~0.5 MB on disk; its nodata mask alone would be 9.3 GiB in memory.
    n, transform = 100_000, from_origin(500000, 5100000, 0.5, 0.5)
    like = tmp_path / "big.tif"
    corners = [(0, 0), (50_000, 50_000), (98_816, 98_816)]
    with rasterio.open(
        like,
        "w",
        driver="GTiff",
        width=n,
        height=n,
        count=1,
        dtype="uint8",
        crs="EPSG:32631",
        transform=transform,
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        SPARSE_OK=True,
        BIGTIFF="YES",
    ) as dst:
        for row, col in corners:
            dst.write(np.full((1, 1024, 1024), 7, np.uint8), window=Window(col, row, 1024, 1024))
    boxes = []
    for row, col in corners:  # 300 x 200 px inside each data area
        x, y = transform * (col + 100, row + 100)
        boxes.append(shapely.box(x, y - 100, x + 150, y))
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"class": [1, 2, 3]}, geometry=boxes, crs="EPSG:32631").to_file(labels)
    out = tmp_path / "mask.tif"
    # Peak RSS of the command alone: a wrapper process whose only child is geoseg.
    wrapper = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            wrapper,
            sys.executable,
            "-m",
            "geoseg.cli.main",
            "-q",
            "rasterize",
            str(labels),
            "--like",
            str(like),
            "--out",
            str(out),
            "--attribute",
            "class",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr
    peak_mib = int(proc.stdout.strip().splitlines()[-1]) / 1024
    print(f"rasterize 100000x100000: peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 1536, peak_mib
    with rasterio.open(out) as m:
        assert (m.width, m.height, m.crs, m.transform) == (n, n, "EPSG:32631", transform)
        for (row, col), value in zip(corners, (1, 2, 3), strict=True):
            block = m.read(1, window=Window(col, row, 1024, 1024))
            assert (block[100:300, 100:400] == value).all()  # the polygon
            assert (block[:100] == 0).all() and (block[400:] == 0).all()  # data, no polygon
        assert (m.read(1, window=Window(20_000, 20_000, 512, 512)) == 255).all()  # nodata
    assert leftovers(tmp_path) == []
