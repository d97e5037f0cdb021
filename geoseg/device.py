"""Where a model runs and in which precision: one answer for training, inference and checkpoints.

Training and inference ask the same two questions (which device does ``auto`` mean, and is bf16
autocast worth it here?) and must get the same answers on the same machine, so both live here.
"""

from __future__ import annotations

from typing import Literal

import torch

from geoseg.errors import ConfigError

ResolvedPrecision = Literal["32", "bf16", "16"]

__all__ = [
    "ResolvedPrecision",
    "channels_last_pays",
    "cpu_has_fast_bf16",
    "resolve_device",
    "resolve_precision",
]


def resolve_device(
    device: str | torch.device = "auto", *, local_rank: int = 0, setting: str = "device"
) -> torch.device:
    """The device a setting stands for.

    Args:
        device: ``auto`` (CUDA when a GPU is visible, else the CPU), ``cpu``, ``cuda`` or an
            indexed device such as ``cuda:1``.
        local_rank: This process's rank on its machine; plain ``cuda`` means GPU
            ``local_rank % gpu count`` (one GPU per data-parallel process).
        setting: How the user spelled the setting (``train.device``, ``--device``), for errors.

    Raises:
        ConfigError: CUDA asked for but not available, or an unknown device name.
    """
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.split(":")[0] != "cuda":
        raise ConfigError(f"{setting}={name!r} is not one of auto, cpu, cuda")
    if not torch.cuda.is_available():
        raise ConfigError(f"{setting}={name} but no CUDA GPU is visible; use cpu or auto")
    if ":" in name:
        return torch.device(name)
    return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast pays off.

    Asked of the CPU's feature flags (torch's cpuinfo), not of oneDNN: oneDNN also reports bf16
    support on AVX-512 CPUs that only emulate it, where bf16 is slower than fp32. On the 2-core
    AVX512-BF16 EPYC this was built on, bf16 + channels_last trained a UNet 2.4x faster than fp32
    (``benchmarks/train_step.py``) and predicted 4.2x faster (``benchmarks/infer.py``).
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def channels_last_pays(device: torch.device, precision: ResolvedPrecision) -> bool:
    """Whether the channels-last memory format is the faster one for this device and precision.

    On CUDA and with bf16 it is the format their speed-ups were measured in (tensor cores; the
    bf16 figures in :func:`cpu_has_fast_bf16`). For fp32 on a CPU it is not: on a 2-core AVX2
    EPYC (2026-12-02, ``benchmarks/train_step.py --fp32-only``), channels-last trained the OAM
    recipe's ResNet18-UNet (batch 8, 256 px) at 0.90x the contiguous speed (oneDNN's NHWC kernels
    were the slower ones for most of its decoder's few-channel, full-resolution convolutions),
    and the recipe in 42.8 min, not 47.1; the demo's small UNet ran at about the same speed
    either way (0.95x best of five, 1.05-1.08x in short runs).
    Training and inference use the same rule.
    """
    return device.type == "cuda" or precision == "bf16"


def resolve_precision(
    precision: str,
    device: torch.device,
    *,
    fp16: bool = False,
    setting: str = "precision",
) -> ResolvedPrecision:
    """The precision ``auto`` stands for on ``device``, and a check of explicit choices.

    ``auto``: bf16 on CUDA GPUs with bf16 (Ampere and later) and on CPUs with native bf16
    (:func:`cpu_has_fast_bf16`); otherwise fp16 on older GPUs when ``fp16`` is allowed (training,
    with a gradient scaler), else fp32.

    Args:
        precision: ``auto``, ``32``, ``bf16`` or (with ``fp16``) ``16``.
        device: The resolved device (:func:`resolve_device`).
        fp16: Whether the caller runs fp16 (training does, with a GradScaler; inference does not).
        setting: How the user spelled the setting, for errors.

    Raises:
        ConfigError: an unknown precision, ``16`` where fp16 is not offered, or ``bf16`` on a
            GPU without bf16.
    """
    cuda = device.type == "cuda"
    if precision == "auto":
        if cuda:
            if torch.cuda.is_bf16_supported():
                return "bf16"
            return "16" if fp16 else "32"
        return "bf16" if cpu_has_fast_bf16() else "32"
    valid = ("32", "bf16", "16") if fp16 else ("32", "bf16")
    if precision not in valid:
        raise ConfigError(
            f"{setting}={precision!r} is not valid; expected auto or {', '.join(valid)}"
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        fix = "16 or auto" if fp16 else "32 or auto"
        raise ConfigError(f"{setting}=bf16 but this GPU has no bf16 support; use {fix}")
    return precision  # type: ignore[return-value]
