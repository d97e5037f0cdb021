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
