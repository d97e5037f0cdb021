"""data.transforms: normalise + augment a collated batch (uint8 in, float32/int64 out)."""

from __future__ import annotations

import torch

from geoseg.data import BatchTransform
from geoseg.data.transforms import _dihedral


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
    x = torch.arange(2 * 5 * 5, dtype=torch.uint8).view(2, 5, 5)
    seen = set()
    for code in range(8):
        fast = _dihedral(x, code, torch.empty_like(x))  # the CPU path (transpose via a buffer)
        plain = _dihedral(x, code)
        assert torch.equal(fast, plain)
        seen.add(tuple(plain.flatten().tolist()))
    assert len(seen) == 8  # all different: the whole dihedral group
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
