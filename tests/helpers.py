"""What many test files share: a seeded GeoTIFF factory and the one-line-error assertions.

Plain functions (``from helpers import make_geotiff, assert_one_line_error``); the
``make_geotiff`` fixture in conftest.py is the same factory rooted at the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[1]
#: The default grid: UTM 31N, origin (500000, 5000000), 0.5 m pixels.
UTM = "EPSG:32631"
X0, Y0, RES = 500000.0, 5000000.0, 0.5


def make_geotiff(
    path: Path,
    data: np.ndarray | None = None,
    *,
    size: tuple[int, int] = (64, 64),
    count: int = 3,
    dtype: str = "uint8",
    crs: str | CRS | None = UTM,
    transform: rasterio.Affine | None = None,
    nodata: float | None = None,
    seed: int = 0,
    tiled: bool = False,
    class_names: Sequence[str] | None = None,
    driver: str = "GTiff",
) -> Path:
    """Write a small GeoTIFF with known content; returns its path.

    Args:
        path: The file to write (its folder is created); a folder gets ``image.tif`` in it.
        data: (C, H, W) or (H, W) pixels; default seeded noise of ``count`` x ``size`` (H, W)
            in ``dtype`` (1..254 for uint8, 1..999 otherwise, so 0 and 255 are free for nodata).
        crs: A CRS, or None for a raster without one (then the transform defaults to identity).
        transform: Default ``from_origin(500000, 5000000, 0.5, 0.5)``.
        nodata: The nodata value, if any.
        seed: Seed of the noise.
        tiled: Tiled (blocks of 16 px per 64 px of size) instead of strips.
        class_names: Write them as the mask tag ``class_names`` (a JSON list).
        driver: A GDAL driver (e.g. ``PNG`` for a plain tile).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "image.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        rng = np.random.default_rng(seed)
        kind = np.dtype(dtype)
        hi = 255 if kind.kind in "ui" and kind.itemsize == 1 else 1000
        data = rng.integers(1, hi, size=(count, *size)).astype(dtype)
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile: dict[str, Any] = dict(
        driver=driver,
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
    )
    if crs is not None:
        profile.update(crs=crs, transform=transform or from_origin(X0, Y0, RES, RES))
    elif transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if tiled:
        profile.update(
            tiled=True,
            blockxsize=16 * max(1, data.shape[2] // 64),
            blockysize=16 * max(1, data.shape[1] // 64),
        )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if class_names is not None:
            dst.update_tags(class_names=json.dumps(list(class_names)))
    return path


def _result_parts(result: Any) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a CliRunner result or a CompletedProcess."""
    if isinstance(result, subprocess.CompletedProcess):
        return result.returncode, result.stdout or "", result.stderr or ""
    return result.exit_code, result.stdout or "", result.stderr or ""


def assert_one_line_error(result: Any, *needles: str, code: int = 1) -> str:
    """Assert a user error: exit ``code``, exactly one stderr line ``Error: …`` with every one of
    ``needles`` (file names, hints) in it, and no traceback anywhere. Returns the line."""
    exit_code, out, err = _result_parts(result)
    assert exit_code == code, f"exit {exit_code}\nstdout: {out}\nstderr: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in out + err, out + err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def leftovers(folder: Path) -> list[Path]:
    """Temporary or lock files geoseg may have left under ``folder`` (should be none)."""
    patterns = (".*partial-*", ".*.lock", ".*tmp*", "*.tmp")
    return sorted({p for pat in patterns for p in Path(folder).rglob(pat)})


def run_geoseg(
    *args: str | Path,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = 600,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """``python -m geoseg.cli.main ARGS`` in a fresh process (this checkout's geoseg first).

    For what a CliRunner cannot do: resource limits, another user, dask workers, exit codes
    of the real entry point. ``preexec_fn`` runs in the child before it starts (setrlimit...).
    """
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, "-m", "geoseg.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=preexec_fn,
        timeout=timeout,
        cwd=cwd,
    )
