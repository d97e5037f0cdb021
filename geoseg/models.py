"""Model registry: the seed's plain UNet and segmentation_models_pytorch (smp) architectures.

Every registered model maps a float image batch ``[B, in_channels, H, W]`` (normalised bands,
any number of them) to class logits ``[B, num_classes, H, W]`` at the same size. ``H`` and
``W`` must be divisible by :func:`downsampling` of the model.

Names: ``unet`` is the seed's plain UNet (no encoder; ``width`` sets its base channels).
``linear`` is one 1x1 convolution (a per-pixel baseline that costs next to nothing).
``<arch>-<encoder>`` names (``unet-resnet34``, ``deeplabv3plus-resnet34``, ...) are smp models
built with ``encoder_weights=None``: nothing is ever downloaded. A local encoder weights file can
be given with ``encoder_weights="/path/to/encoder.pth"`` (a state dict of the encoder, e.g.
torchvision's resnet34 ImageNet weights saved with ``torch.save(model.state_dict(), path)``).

Example:
    >>> from geoseg import models
    >>> net = models.build("unet", in_channels=4, num_classes=2, width=32)
    >>> models.downsampling("unet-resnet34")
    32
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from geoseg.errors import CheckpointError, ConfigError, InputNotFoundError

log = logging.getLogger(__name__)

__all__ = ["UNet", "build", "downsampling", "names"]


# --------------------------------------------------------------------------------------------
# The seed's plain UNet. Hand-written (smp's Unet always has a pretrained-style encoder); this is
# the network the seed experiments (whu-1, love-1) were trained with.


class DoubleConv(nn.Module):
    """(conv3x3 -> BatchNorm -> ReLU) x 2; keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max-pool (halves H and W) then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Bilinear x2 upsampling, pad to the skip connection's size, concatenate, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """The seed's plain UNet: 4 max-pool downsamplings, bilinear upsampling.

    Args:
        in_channels: Number of input bands.
        num_classes: Number of output classes (logit channels).
        width: Channels of the first level; levels have width x (1, 2, 4, 8, 8). The seed used 64
            (~17 M parameters); 16 or 32 train much faster on a CPU.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64):
        super().__init__()
        w = width
        self.inc = DoubleConv(in_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        self.down4 = Down(8 * w, 8 * w)  # 16w // 2: bilinear upsampling keeps the channel count
        self.up1 = Up(16 * w, 4 * w)
        self.up2 = Up(8 * w, 2 * w)
        self.up3 = Up(4 * w, w)
        self.up4 = Up(2 * w, w)
        self.outc = nn.Conv2d(w, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, H, W]`` float to logits ``[B, K, H, W]`` (H, W divisible by 16)."""
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


# --------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    downsampling: int
    description: str


def _build_unet(*, in_channels: int, num_classes: int, width: int = 64) -> nn.Module:
    if not isinstance(width, int) or width < 1:
        raise ConfigError(
            f"model width={width!r} is not valid; expected a positive integer, e.g. 32 or 64"
        )
    return UNet(in_channels, num_classes, width=width)


def _smp_factory(arch: str, encoder: str, **defaults: Any) -> Callable[..., nn.Module]:
    def factory(
        *, in_channels: int, num_classes: int, encoder_weights: str | None = None, **kwargs: Any
    ) -> nn.Module:
        import segmentation_models_pytorch as smp

        try:
            model = smp.create_model(
                arch,
                encoder_name=encoder,
                encoder_weights=None,  # never download; local weights are loaded below
                in_channels=in_channels,
                classes=num_classes,
                **{**defaults, **kwargs},
            )
        except TypeError as err:
            raise ConfigError(
                f"model {arch}-{encoder}: bad argument ({err}); remove or fix it"
            ) from None
        if encoder_weights is not None:
            _load_encoder_weights(model.encoder, encoder_weights)
        return model

    return factory


class PixelLinear(nn.Conv2d):
    """A per-pixel linear classifier: a 1x1 convolution, ``[B, C, H, W]`` -> ``[B, K, H, W]``.

    On a CPU, inference runs it on one torch thread (:data:`geoseg.infer.LIGHT_MODEL_PARAMS`):
    oneDNN's 1x1 convolution there takes 3 ms for 8 patches of 512 px, and beats the
    band-by-band multiply-adds this class once computed (6-10 ms); on two threads whose cores
    other processes share it was measured 50x slower.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes, kernel_size=1)


def _build_linear(*, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    if kwargs:
        raise ConfigError(f"model linear: unknown option(s) {sorted(kwargs)}; it takes none")
    return PixelLinear(in_channels, num_classes)


_REGISTRY: dict[str, _Entry] = {
    "unet": _Entry(_build_unet, 16, "the seed's plain UNet (width=64 by default)"),
    # Next to no compute: a per-pixel baseline, and the zero-cost model with which
    # benchmarks/infer.py measures the ceiling of geoseg's own data path.
    "linear": _Entry(_build_linear, 1, "a per-pixel linear classifier (one 1x1 convolution)"),
}

# smp models that build offline with smp 0.6. The encoders' output stride sets the divisor:
# 32 for all of these, except DeepLabV3+ whose encoder is dilated to output stride 16
# (smp checks ``H % encoder.output_stride == 0``; its decoder only upsamples x4 twice).
_SMP_MODELS: dict[str, tuple[str, str, int]] = {
    "unet-resnet18": ("unet", "resnet18", 32),
    "unet-resnet34": ("unet", "resnet34", 32),
    "unet-resnet50": ("unet", "resnet50", 32),
    "unet-efficientnet-b0": ("unet", "efficientnet-b0", 32),
    "unetplusplus-resnet34": ("unetplusplus", "resnet34", 32),
    "deeplabv3plus-resnet34": ("deeplabv3plus", "resnet34", 16),
    "fpn-resnet34": ("fpn", "resnet34", 32),
    "linknet-resnet34": ("linknet", "resnet34", 32),
}
for _name, (_arch, _encoder, _down) in _SMP_MODELS.items():
    _REGISTRY[_name] = _Entry(
        _smp_factory(_arch, _encoder), _down, f"smp {_arch} with a {_encoder} encoder"
    )


def names() -> list[str]:
    """Names of the registered models, e.g. ``['unet', 'unet-resnet18', ...]``."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; expected one of: {', '.join(_REGISTRY)} (set model.name)"
        ) from None


def downsampling(name: str) -> int:
    """The factor a patch size must be divisible by for model ``name`` (16 for ``unet``)."""
    return _entry(name).downsampling


def build(name: str, *, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model, randomly initialised (or with a local encoder weights file).

    Args:
        name: A name from :func:`names`.
        in_channels: Number of input bands C of ``[B, C, H, W]`` float input.
        num_classes: Number of classes K of the ``[B, K, H, W]`` logits (background included).
        **kwargs: JSON-able model options: ``width`` (``unet`` only), ``encoder_weights`` (smp
            models: path of a local encoder state dict; never a download name), or other smp
            keyword arguments such as ``decoder_attention_type``.

    Returns:
        The model in train mode, on the CPU.

    Raises:
        ConfigError: unknown name, bad sizes or options, or ``encoder_weights`` not a local file.
        InputNotFoundError: the ``encoder_weights`` file does not exist.
        CheckpointError: the ``encoder_weights`` file does not fit the encoder.
    """
    entry = _entry(name)
    for label, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"model {name}: {label}={value!r} is not valid; expected a positive integer"
            )
    if name == "unet" and kwargs.get("encoder_weights") is not None:
        raise ConfigError(
            "model unet has no encoder, so encoder_weights cannot be used; pick e.g. unet-resnet34"
        )
    if name == "unet":
        kwargs.pop("encoder_weights", None)
    unknown = set(kwargs) - {"width"} if name == "unet" else set()
    if unknown:
        raise ConfigError(
            f"model unet: unknown option(s) {sorted(unknown)}; the plain UNet only takes width"
        )
    return entry.factory(in_channels=in_channels, num_classes=num_classes, **kwargs)


def _load_encoder_weights(encoder: nn.Module, path: str) -> None:
    """Load a local state dict into an smp encoder, adapting the first conv to the band count.

    When the file was made for 3 bands (ImageNet) and the model has C bands, the first conv's
    kernel is repeated over the bands and scaled by 3/C, as smp does for its own pretrained
    weights (``patch_first_conv``), so the initial activations keep their scale.
    """
    if path in ("imagenet", "ssl", "swsl", "instagram", "advprop", "noisy-student"):
        raise ConfigError(
            f"encoder_weights={path!r} would need a download, which geoseg never does; "
            "give the path of a local encoder state dict instead"
        )
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputNotFoundError(
            f"{file}: encoder weights file not found; check model.encoder_weights"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means "not a usable weights file"
        raise CheckpointError(
            f"{file}: encoder weights cannot be loaded safely ({type(err).__name__}); "
            "expected a plain state dict saved with torch.save(encoder.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{file}: not a state dict of tensors; expected torch.save(encoder.state_dict(), path)"
        )
    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}
    for head in (
        "fc.weight",
        "fc.bias",
        "_fc.weight",
        "_fc.bias",
        "classifier.weight",
        "classifier.bias",
    ):
        state.pop(head, None)  # classification heads that smp encoders delete
    own = encoder.state_dict()
    for key, value in list(state.items()):
        target = own.get(key)
        if (
            target is not None
            and value.ndim == 4
            and target.ndim == 4
            and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]
            and value.shape[1] != target.shape[1]
        ):
            c_new, c_old = target.shape[1], value.shape[1]
            reps = -(-c_new // c_old)
            state[key] = value.repeat(1, reps, 1, 1)[:, :c_new] * (c_old / c_new)
            log.info(
                "encoder weights %s: adapted %s from %d to %d input bands", file, key, c_old, c_new
            )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong),
            )
            if keys
        )
        raise CheckpointError(
            f"{file}: encoder weights do not fit this encoder ({detail}); "
            "use weights made for the same encoder (e.g. resnet34 for unet-resnet34)"
        )
    encoder.load_state_dict(state)
    log.info("loaded encoder weights from %s", file)
