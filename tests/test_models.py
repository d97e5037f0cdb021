"""The model registry: one contract every registered model passes, plus the registry's errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from geoseg import models
from geoseg.errors import CheckpointError, ConfigError, InputNotFoundError

# (in_channels, num_classes) combinations, spread over the models so each runs one forward pass.
COMBOS = [(4, 7), (1, 2), (3, 7), (4, 2), (1, 7), (3, 2)]
CASES = [(name, *combo) for name, combo in zip(models.names(), itertools.cycle(COMBOS))]
SMALL = {"unet": {"width": 8}}  # keep the plain UNet tiny; smp models have fixed widths


@pytest.mark.parametrize(("name", "in_channels", "num_classes"), CASES, ids=[c[0] for c in CASES])
def test_model_contract(name: str, in_channels: int, num_classes: int) -> None:
    """[B,C,64,64] -> [B,K,64,64] float logits; grads flow; eval deterministic; state reloads."""
    torch.manual_seed(0)
    kwargs = SMALL.get(name, {})
    model = models.build(name, in_channels=in_channels, num_classes=num_classes, **kwargs)
    x = torch.randn(2, in_channels, 64, 64)

    logits = model(x)
    assert logits.shape == (2, num_classes, 64, 64)
    assert logits.dtype == torch.float32
    logits.logsumexp(dim=1).mean().backward()
    first = next(
        p for p in model.parameters() if p.ndim == 4
    )  # the first conv sees the input bands
    assert first.shape[1] == in_channels
    assert first.grad is not None and first.grad.abs().sum() > 0
    with_grad = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters()]
    assert sum(with_grad) / len(with_grad) > 0.9

    model.eval()
    with torch.no_grad():
        a = model(x)
        b = model(x)
    assert torch.equal(a, b)

    rebuilt = models.build(name, in_channels=in_channels, num_classes=num_classes, **kwargs)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), a, atol=1e-6)


@pytest.mark.parametrize("name", ["unet", "deeplabv3plus-resnet34", "fpn-resnet34"])
def test_downsampling_is_the_real_constraint(name: str) -> None:
    """A patch of 3 x downsampling() runs; for the smp models that check, half a step more fails."""
    d = models.downsampling(name)
    model = models.build(name, in_channels=3, num_classes=2, **SMALL.get(name, {})).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 3 * d, 2 * d)).shape == (1, 2, 3 * d, 2 * d)
        if name != "unet":  # the plain UNet pads, so it runs at any size
            with pytest.raises(RuntimeError, match="divisible"):
                model(torch.zeros(1, 3, 3 * d + d // 2, 2 * d))


def test_downsampling_values() -> None:
    assert models.downsampling("unet") == 16
    assert models.downsampling("deeplabv3plus-resnet34") == 16
    for name in models.names():
        if name.startswith(("unet-", "fpn-", "unetplusplus-", "linknet-")):
            assert models.downsampling(name) == 32


def test_names_include_the_expected_models() -> None:
    expected = {
        "unet",
        "unet-resnet18",
        "unet-resnet34",
        "unet-resnet50",
        "unet-efficientnet-b0",
        "deeplabv3plus-resnet34",
        "fpn-resnet34",
    }
    assert expected <= set(models.names())


def test_plain_unet_is_the_seed_architecture() -> None:
    """Default width 64: ~17.26 M parameters (the seed's bilinear UNet); width scales channels."""
    seed = models.build("unet", in_channels=3, num_classes=2)
    assert seed.inc.double_conv[0].out_channels == 64
    assert sum(p.numel() for p in seed.parameters()) == 17_263_042
    small = models.build("unet", in_channels=3, num_classes=2, width=16)
    assert small.inc.double_conv[0].out_channels == 16
    assert small.down4.maxpool_conv[1].double_conv[3].out_channels == 128


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'.*unet-resnet34"):
        models.build("resnet9000", in_channels=3, num_classes=2)
    with pytest.raises(ConfigError, match="unknown model"):
        models.downsampling("nope")


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="in_channels=0"):
        models.build("unet", in_channels=0, num_classes=2)
    with pytest.raises(ConfigError, match="width"):
        models.build("unet", in_channels=3, num_classes=2, width=0)
    with pytest.raises(ConfigError, match="only takes width"):
        models.build("unet", in_channels=3, num_classes=2, depth=3)
    with pytest.raises(ConfigError, match="no encoder"):
        models.build("unet", in_channels=3, num_classes=2, encoder_weights="/x.pth")
    with pytest.raises(ConfigError, match="never does"):
        models.build("unet-resnet18", in_channels=3, num_classes=2, encoder_weights="imagenet")


def test_local_encoder_weights_load_and_adapt_to_four_bands(tmp_path: Path) -> None:
    """torchvision resnet18 weights (3 bands, with an fc head) load into a 4-band unet-resnet18."""
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    file = tmp_path / "resnet18.pth"
    torch.save(reference, file)

    model = models.build("unet-resnet18", in_channels=4, num_classes=2, encoder_weights=str(file))
    enc = model.encoder.state_dict()
    assert torch.equal(enc["layer3.0.conv1.weight"], reference["layer3.0.conv1.weight"])
    conv1 = enc["conv1.weight"]
    assert conv1.shape == (64, 4, 7, 7)
    # bands repeated cyclically (r, g, b, r) and scaled by 3/4 so activations keep their scale
    assert torch.allclose(conv1[:, :3], reference["conv1.weight"] * 0.75)
    assert torch.allclose(conv1[:, 3], reference["conv1.weight"][:, 0] * 0.75)


def test_encoder_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="missing.pth.*not found"):
        models.build(
            "unet-resnet18",
            in_channels=3,
            num_classes=2,
            encoder_weights=str(tmp_path / "missing.pth"),
        )

    wrong = tmp_path / "resnet34.pth"
    torch.save(
        models.build("unet-resnet34", in_channels=3, num_classes=2).encoder.state_dict(), wrong
    )
    with pytest.raises(CheckpointError, match="resnet34.pth: encoder weights do not fit"):
        models.build("unet-resnet18", in_channels=3, num_classes=2, encoder_weights=str(wrong))

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth"):
        models.build("unet-resnet18", in_channels=3, num_classes=2, encoder_weights=str(junk))


@pytest.mark.parametrize(("in_channels", "num_classes"), COMBOS)
def test_plain_unet_any_band_and_class_count(in_channels: int, num_classes: int) -> None:
    model = models.build("unet", in_channels=in_channels, num_classes=num_classes, width=4)
    assert model(torch.randn(2, in_channels, 48, 80)).shape == (2, num_classes, 48, 80)
