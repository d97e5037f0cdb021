"""One device/precision resolver: training, inference and checkpoints agree about the machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geoseg import checkpoint, device, infer
from geoseg.errors import ConfigError


def test_auto_is_the_cpu_without_a_gpu_and_cuda_fails_clearly(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve_device("auto") == torch.device("cpu")
    assert device.resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"train.device=cuda but no CUDA GPU.*use cpu or auto"):
        device.resolve_device("cuda", setting="train.device")
    with pytest.raises(ConfigError, match="'tpu' is not one of auto, cpu, cuda"):
        device.resolve_device("tpu")


def test_plain_cuda_means_the_local_ranks_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device.resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)
    assert device.resolve_device("cuda:0", local_rank=3) == torch.device("cuda", 0)


@pytest.mark.parametrize("fast", [True, False])
def test_auto_precision_follows_the_cpus_bf16_for_training_and_inference(
    fast: bool, monkeypatch
) -> None:
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: fast)
    cpu = torch.device("cpu")
    want = "bf16" if fast else "32"
    assert device.resolve_precision("auto", cpu, fp16=True) == want  # training
    assert device.resolve_precision("auto", cpu) == want  # inference


def test_older_gpus_get_fp16_for_training_only(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    gpu = torch.device("cuda", 0)
    assert device.resolve_precision("auto", gpu, fp16=True) == "16"
    assert device.resolve_precision("auto", gpu) == "32"
    with pytest.raises(ConfigError, match="infer.precision=bf16 but this GPU has no bf16"):
        device.resolve_precision("bf16", gpu, setting="infer.precision")


def test_channels_last_only_where_it_is_the_faster_format() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert not device.channels_last_pays(cpu, "32")
    assert device.channels_last_pays(cpu, "bf16")
    assert device.channels_last_pays(gpu, "32") and device.channels_last_pays(gpu, "16")


def test_explicit_choices_are_checked() -> None:
    cpu = torch.device("cpu")
    assert device.resolve_precision("32", cpu) == "32"
    assert device.resolve_precision("16", cpu, fp16=True) == "16"
    with pytest.raises(ConfigError, match="'16' is not valid; expected auto or 32, bf16"):
        device.resolve_precision("16", cpu)


def test_the_cpu_answer_is_its_feature_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo to compare with")
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert device.cpu_has_fast_bf16() == native
    if device.cpu_has_fast_bf16():  # and bf16 autocast really runs here
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.nn.Conv2d(3, 4, 3)(torch.randn(1, 3, 8, 8))
        assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_inference_records_the_precision_training_would_pick(tmp_path: Path, make_geotiff) -> None:
    import rasterio
    from test_infer import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    src = make_geotiff("in.tif", size=(40, 40))
    infer.predict_raster(src, tmp_path / "out.tif", checkpoint=ckpt, device="cpu")
    with rasterio.open(tmp_path / "out.tif") as out:
        trained = device.resolve_precision("auto", torch.device("cpu"), fp16=True)
        assert out.tags()["precision"] == trained
    model, _ = checkpoint.load_model(ckpt, device="auto")
    assert next(model.parameters()).device == device.resolve_device("auto")
