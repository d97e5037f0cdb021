"""The GPU data paths: training batches normalised and augmented on the device, inference blended
and argmax-ed there. Each test runs on the CPU too (the same code with the device set to the CPU)
and, where a CUDA GPU is present, on it: benchmarks/gpu_check.sh runs this file there."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from data_helpers import mosaic

from geoseg import checkpoint, infer, models
from geoseg.config import DataConfig, SplitConfig
from geoseg.data import build_training_data

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    ),
]


def _training_data(tmp_path: Path, name: str):
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    cfg = DataConfig(
        images=[str(img)],
        labels=str(msk),
        split=SplitConfig(block_size=64),
        augment=True,
        color_jitter=0.2,
    )
    return build_training_data(
        cfg, patch_size=32, batch_size=4, run_dir=tmp_path / name, num_classes=2,
        patches_per_epoch=24,
    )  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_batches_moved_before_the_transform_are_the_same_batches(
    tmp_path: Path, device: str
) -> None:
    """Raw (uint8) batches copied to the device, then normalised, flipped and jittered there:
    bit for bit the batches normalised on the CPU (the random draws stay on the CPU)."""
    td = _training_data(tmp_path, "a")
    td.train.set_epoch(2)
    on_cpu = list(islice(td.train, 3))
    td.train.to(device)
    td.train.set_epoch(2)
    moved = list(islice(td.train, 3))
    for a, b in zip(on_cpu, moved, strict=True):
        assert b["image"].device.type == device and b["image"].dtype == torch.float32
        assert torch.equal(a["image"], b["image"].cpu())
        assert torch.equal(a["mask"], b["mask"].cpu())
    td.val.to(device)
    batch = next(iter(td.val))
    assert batch["image"].device.type == device and batch["mask"].dtype == torch.int64


def _pointwise_checkpoint(path: Path, num_classes: int = 3) -> Path:
    torch.manual_seed(5)
    net = models.build("linear", in_channels=3, num_classes=num_classes)
    card = checkpoint.ModelCard(
        architecture="linear",
        model_args={},
        in_channels=3,
        band_names=["r", "g", "b"],
        band_indexes=[1, 2, 3],
        mean=[100.0] * 3,
        std=[50.0] * 3,
        class_names=["a", "b", "c"][:num_classes],
        class_ids=[0, 4, 7][:num_classes],
        patch_size=32,
        res=0.5,
    )
    checkpoint.save(path, model=net, card=card)
    return path


@pytest.mark.parametrize("device", DEVICES)
def test_device_blending_agrees_with_the_host(
    tmp_path: Path, make_geotiff, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    """Blending, division and argmax in torch on ``device`` against numpy on the host: the same
    bytes on the CPU; on a GPU (other exp and convolution kernels) the same classes except at
    float ties, probabilities within one step of 1/254."""
    ckpt = _pointwise_checkpoint(tmp_path / "lin.ckpt")
    data = np.random.default_rng(4).integers(1, 255, (3, 150, 110)).astype("uint8")
    data[:, 40:60, 30:80] = 0
    src = make_geotiff("input.tif", data=data, nodata=0)
    kw = dict(checkpoint=ckpt, overlap=12, batch_size=5, precision="32", tta="flip")
    infer.predict_raster(src, tmp_path / "host.tif", probabilities=tmp_path / "host_p.tif", **kw)
    monkeypatch.setattr(infer, "_host_arrays", lambda device_type: False)
    infer.predict_raster(
        src, tmp_path / "dev.tif", probabilities=tmp_path / "dev_p.tif", device=device, **kw
    )
    with (
        rasterio.open(tmp_path / "host.tif") as h,
        rasterio.open(tmp_path / "dev.tif") as d,
        rasterio.open(tmp_path / "host_p.tif") as hp,
        rasterio.open(tmp_path / "dev_p.tif") as dp,
    ):
        mh, md, ph, pd = h.read(1), d.read(1), hp.read(), dp.read()
    assert ((mh == 255) == (md == 255)).all() and set(np.unique(md)) <= {0, 4, 7, 255}
    if device == "cpu":
        assert (tmp_path / "host.tif").read_bytes() == (tmp_path / "dev.tif").read_bytes()
        assert (tmp_path / "host_p.tif").read_bytes() == (tmp_path / "dev_p.tif").read_bytes()
    else:
        assert (mh != md).mean() < 1e-3
        assert np.abs(ph.astype(int) - pd).max() <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_two_class_masks_without_probabilities_agree(
    tmp_path: Path, make_geotiff, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    """The classes alone (no division by the weight sums, one comparison for two classes):
    the same mask as the run that writes probabilities, on the host and on ``device``."""
    ckpt = _pointwise_checkpoint(tmp_path / "lin2.ckpt", num_classes=2)
    data = np.random.default_rng(8).integers(1, 255, (3, 150, 110)).astype("uint8")
    data[:, 40:60, 30:80] = 0
    src = make_geotiff("input.tif", data=data, nodata=0)
    kw = dict(checkpoint=ckpt, overlap=12, batch_size=5, precision="32")
    infer.predict_raster(src, tmp_path / "probs.tif", probabilities=tmp_path / "p.tif", **kw)
    infer.predict_raster(src, tmp_path / "host.tif", **kw)
    monkeypatch.setattr(infer, "_host_arrays", lambda device_type: False)
    infer.predict_raster(src, tmp_path / "dev.tif", device=device, **kw)
    masks = []
    for name in ("probs.tif", "host.tif", "dev.tif"):
        with rasterio.open(tmp_path / name) as m:
            masks.append(m.read(1))
    with rasterio.open(tmp_path / "p.tif") as p:
        building = p.read(2)
    assert set(np.unique(masks[0])) == {0, 4, 255}
    assert (masks[0] == masks[1]).all() and (masks[1] == masks[2]).all()
    assert ((building > 127) == (masks[0] == 4))[masks[0] != 255].mean() > 0.99


@pytest.mark.parametrize("k", [2, 3, 5])
def test_argmax_is_the_first_largest_class(k: int) -> None:
    probs = np.random.default_rng(k).integers(0, 4, (k, 7, 9)).astype(np.float32)  # many ties
    want = probs.argmax(0)
    on_host, on_device = infer._argmax0(probs), infer._argmax0(torch.from_numpy(probs))
    assert on_host.dtype == np.uint8 and (on_host == want).all()
    assert on_device.dtype == torch.uint8 and (on_device.numpy() == want).all()
