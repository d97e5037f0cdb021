"""data.transforms: normalise + augment a collated batch (uint8 in, float32/int64 out)."""

from __future__ import annotations

import numpy as np
import torch

from geoseg.data import BatchTransform
from geoseg.data.transforms import _cpu_batch, _dihedral


def _batch(b: int = 6, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)
    mask = (image[:, 0] > 128).to(torch.uint8)
    return {"image": image, "mask": mask, "bounds": torch.zeros(b, 4), "crs": [None] * b}


def test_normalises_and_keeps_other_keys() -> None:
    batch = _batch()
    out = BatchTransform([10.0, 20.0, 30.0], [2.0, 4.0, 5.0])(batch)
    assert out["image"].dtype == torch.float32 and out["mask"].dtype == torch.int64
    want = (batch["image"].float() - torch.tensor([10.0, 20, 30]).view(1, 3, 1, 1)) / torch.tensor(
        [2.0, 4, 5]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out["image"], want)
    assert torch.equal(out["mask"], batch["mask"].long()) and out["bounds"] is batch["bounds"]


def test_the_eight_flips_and_turns_keep_image_and_mask_aligned() -> None:
    x = torch.arange(8 * 2 * 5 * 5, dtype=torch.int64).remainder(251).to(torch.uint8)
    x = x.view(8, 2, 5, 5)
    y = x[:, 0].clone()
    codes = list(range(8))
    zero, one = np.zeros((1, 2, 1, 1), np.float32), np.ones((1, 2, 1, 1), np.float32)
    image, mask = _cpu_batch(x, y, codes, zero, one)  # the CPU path, in numpy
    for k, code in enumerate(codes):  # the device path, in torch
        assert torch.equal(image[k], _dihedral(x[k], code).float())
        assert torch.equal(mask[k], _dihedral(y[k][None], code)[0].long())
    assert len({tuple(_dihedral(x[0], c).flatten().tolist()) for c in codes}) == 8
    transform = BatchTransform([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], augment=True)
    batch = _batch(b=32)
    out = transform(batch, torch.Generator().manual_seed(1))
    assert torch.equal(out["mask"], (out["image"][:, 0] > 128).long())  # still aligned
    assert not torch.equal(out["image"], batch["image"].float())
    again = transform(batch, torch.Generator().manual_seed(1))
    assert torch.equal(again["image"], out["image"])  # same seed, same augmentation


def test_per_image_statistics_hook() -> None:
    class PerImage(BatchTransform):
        def statistics(self, image):
            flat = image.float().flatten(2)
            return flat.mean(2), flat.std(2)

    out = PerImage([0.0] * 3, [1.0] * 3)(_batch())
    means = out["image"].flatten(2).mean(2)
    torch.testing.assert_close(means, torch.zeros_like(means), atol=1e-5, rtol=0)


def test_color_jitter_changes_values_not_masks() -> None:
    batch = _batch()
    plain = BatchTransform([0.0] * 3, [1.0] * 3)(batch)
    jit = BatchTransform([0.0] * 3, [1.0] * 3, color_jitter=0.3)(batch, torch.Generator())
    assert torch.equal(plain["mask"], jit["mask"])
    assert not torch.allclose(plain["image"], jit["image"])


def test_per_patch_normalisation_ignores_brightness_and_contrast() -> None:
    """``per_patch``: each patch by its own mean/std, so a brighter, flatter copy of a patch
    reaches the model as the same numbers (the dataset std only sets a small floor)."""
    batch = _batch(b=4, size=32)
    dull = dict(batch, image=(batch["image"].float() * 0.5 + 60).to(torch.uint8))
    t = BatchTransform([0.0] * 3, [1e-3] * 3, per_patch=True)
    a, b = t(batch)["image"], t(dull)["image"]
    assert a.mean((2, 3)).abs().max() < 1e-4 and (a.std((2, 3)) - 1).abs().max() < 0.02
    torch.testing.assert_close(a, b, atol=0.03, rtol=0)  # uint8 rounding of the dull copy
    plain = BatchTransform([100.0] * 3, [50.0] * 3)
    assert (plain(batch)["image"] - plain(dull)["image"]).abs().max() > 1
    floor = BatchTransform([0.0] * 3, [500.0] * 3, per_patch=True)(batch)["image"]
    assert floor.std((2, 3)).max() < 0.7  # the floor (0.1 x 500) damps a uniform-ish patch


def test_grayscale_augmentation_replaces_the_bands_by_their_mean() -> None:
    batch = _batch(b=64, size=8)
    g = torch.Generator().manual_seed(1)
    out = BatchTransform([0.0] * 3, [1.0] * 3, grayscale=0.5)(batch, g)["image"]
    grey = (out[:, :1] == out).all(dim=(1, 2, 3))
    assert 16 < int(grey.sum()) < 48  # about half the samples
    want = batch["image"].float().mean(1)
    torch.testing.assert_close(out[grey, 0], want[grey])
    torch.testing.assert_close(out[~grey], batch["image"][~grey].float())
    plain = BatchTransform([0.0] * 3, [1.0] * 3)(batch, g)["image"]
    assert not (plain[:, :1] == plain).all(dim=(1, 2, 3)).any()  # off by default


def _squares(b: int, size: int = 64) -> dict:
    """Batches of one bright square building (mask 1) on dark ground, with an ignored corner."""
    image = torch.full((b, 3, size, size), 20, dtype=torch.uint8)
    mask = torch.zeros((b, size, size), dtype=torch.uint8)
    image[:, :, 24:40, 24:40] = 220
    mask[:, 24:40, 24:40] = 1
    mask[:, :4, :4] = 255  # ignore index: must stay 255, never blend into a class
    return {"image": image, "mask": mask}


def test_scale_range_zooms_image_and_mask_together() -> None:
    batch = _squares(48)
    t = BatchTransform([0.0] * 3, [1.0] * 3, scale_range=(0.7, 1.4))
    out = t(batch, torch.Generator().manual_seed(3))
    image, mask = out["image"], out["mask"]
    assert image.shape == (48, 3, 64, 64) and mask.shape == (48, 64, 64)
    assert mask.dtype == torch.int64 and set(mask.unique().tolist()) <= {0, 1, 255}
    # the building's area follows s^2: from 0.49x to 1.96x of the 256 pixels, not all equal
    area = (mask == 1).sum((1, 2)).float()
    assert area.min() >= 0.4 * 256 and area.max() <= 2.1 * 256
    assert area.min() < 0.85 * 256 and area.max() > 1.3 * 256
    # zoomed out (smaller square): the patch is mirrored beyond its border, no padding value
    assert image.min() >= 20 - 1e-3 and image.max() <= 220 + 1e-3
    # image and mask stay aligned: bright where the mask says building (bilinear edges aside)
    inside, outside = image[:, 0][mask == 1], image[:, 0][mask == 0]
    assert inside.float().mean() > 200 and outside.float().mean() < 40
    again = t(batch, torch.Generator().manual_seed(3))
    assert torch.equal(again["mask"], mask) and torch.equal(again["image"], image)


def test_scale_range_off_by_default_and_checked_in_the_config() -> None:
    import pytest

    from geoseg.config import DataConfig

    batch = _squares(4)
    plain = BatchTransform([0.0] * 3, [1.0] * 3)(batch, torch.Generator().manual_seed(3))
    assert torch.equal(plain["mask"], batch["mask"].long())
    assert DataConfig().scale_range == [1.0, 1.0]
    assert DataConfig(scale_range=[0.7, 1.4]).scale_range == [0.7, 1.4]
    for bad in ([1.4, 0.7], [0, 1.2], [0.8]):
        with pytest.raises(ValueError, match="scale_range"):
            DataConfig(scale_range=bad)
    # a fixed zoom of 2: the centre square (16 px) becomes 32 px wide where the random view
    # holds it whole (it does not touch the patch border), and never larger
    two = BatchTransform([0.0] * 3, [1.0] * 3, scale_range=(2.0, 2.0))
    m = two(_squares(16), torch.Generator().manual_seed(0))["mask"] == 1
    border = m[:, 0].any(1) | m[:, -1].any(1) | m[:, :, 0].any(1) | m[:, :, -1].any(1)
    area = m.sum((1, 2))
    assert (~border).sum() >= 2 and (area[~border] == 32 * 32).all()
    assert (area[border] <= 32 * 32).all() and (area[border] < 32 * 32).any()
