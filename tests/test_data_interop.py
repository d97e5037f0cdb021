"""data.interop: geoseg.train.fit on a user's torchgeo datasets (their files, bands, regex)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from data_helpers import RES, X0, Y0, write
from rasterio.transform import from_origin
from test_train import _one_thread  # noqa: F401  (one torch thread, as test_train runs)
from torchgeo.datasets import RasterDataset

from geoseg import checkpoint, train
from geoseg.config import PipelineConfig
from geoseg.errors import GeosegError


class Imagery(RasterDataset):
    """A user's imagery: dated 4-band scenes picked by their own pattern."""

    filename_glob = "scene_*.tif"
    filename_regex = r"scene_(?P<date>\d{8})_rgbn\.tif"
    all_bands = ("red", "green", "blue", "nir")


class Buildings(RasterDataset):
    filename_glob = "labels_*.tif"
    is_image = False


def _scenes(root: Path, size: int = 96, offset: float = 0.0) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for k in range(2):
        t = from_origin(X0 + offset + k * size * RES, Y0, RES, RES)
        img = rng.integers(1, 256, (4, size, size)).astype(np.uint8)
        write(root / "img" / f"scene_2024010{k + 1}_rgbn.tif", img, transform=t)
        write(root / "img" / f"scene_{k}_preview.tif", img[:3], transform=t)  # not matched
        write(root / "lab" / f"labels_{k}.tif", (img[3] > 128).astype(np.uint8), transform=t)
    return root / "img", root / "lab"


def _cfg(patch: int = 32) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "data": {"split": {"block_size": 64, "ratios": [0.6, 0.2, 0.2]}},
            "model": {"name": "unet", "width": 8},
            "train": {
                "epochs": 1,
                "patch_size": patch,
                "batch_size": 4,
                "patches_per_epoch": 8,
                "device": "cpu",
                "precision": "32",
            },
        }
    )


@pytest.mark.slow
def test_fit_takes_a_users_torchgeo_datasets(tmp_path: Path) -> None:
    img, lab = _scenes(tmp_path / "d")
    ds = Imagery(paths=str(img), bands=("nir", "red", "green")) & Buildings(paths=str(lab))
    result = train.fit(_cfg(), tmp_path / "run", dataset=ds)
    run = tmp_path / "run"
    for name in ("best.ckpt", "last.ckpt", "metrics.csv", "config.yaml", "split.gpkg"):
        assert (run / name).exists(), name
    card = checkpoint.load(result.best).card
    assert card.in_channels == 3 and card.band_indexes == [4, 1, 2]
    with rasterio.open(next(img.glob("scene_*_rgbn.tif"))) as src:
        assert card.crs_wkt == src.crs.to_wkt() and card.res == RES
    recorded = yaml.safe_load((run / "config.yaml").read_text())["data"]["images"]
    assert sorted(Path(p).name for p in recorded) == [
        "scene_20240101_rgbn.tif",
        "scene_20240102_rgbn.tif",
    ]


def _error(tmp_path: Path, dataset, patch: int = 32) -> str:
    with pytest.raises(GeosegError) as err:
        train.fit(_cfg(patch), tmp_path / "bad", dataset=dataset, overwrite=True)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_user_datasets_end_in_one_line_naming_them(tmp_path: Path) -> None:
    img, lab = _scenes(tmp_path / "d")
    other_crs = Buildings(paths=str(lab), crs=rasterio.crs.CRS.from_epsg(3857))
    msg = _error(tmp_path, (Imagery(paths=str(img)), other_crs))
    assert msg.startswith(
        "Buildings: the mask dataset is in EPSG:3857 but Imagery is in EPSG:32631"
    )
    _, far = _scenes(tmp_path / "far", offset=50_000.0)
    msg = _error(tmp_path, (Imagery(paths=str(img)), Buildings(paths=str(far))))
    assert msg.startswith("Buildings: no mask footprint overlaps an image of Imagery")
    empty = Imagery(paths=str(img))
    empty.index = empty.index.iloc[:0]
    msg = _error(tmp_path, (empty, Buildings(paths=str(lab))))
    assert msg.startswith("Imagery: the image dataset's index is empty")
    msg = _error(tmp_path, Imagery(paths=str(img)) & Buildings(paths=str(lab)), patch=128)
    assert msg.startswith("Imagery: every file is smaller than patch_size=128")
