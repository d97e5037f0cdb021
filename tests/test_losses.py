"""Losses against values computed by hand on a 1x2x2x2 batch.

The batch: 4 pixels, 2 classes. Logits chosen so the softmax probabilities are simple:
  a: [ln 3, 0] -> p = (0.75, 0.25), truth 0
  b: [0, ln 3] -> p = (0.25, 0.75), truth 1
  c: [0, 0]    -> p = (0.5, 0.5),   truth 1
  d: [ln 3, 0] -> p = (0.75, 0.25), truth 255 (ignored)
"""

from __future__ import annotations

import math

import pytest
import torch

from geoseg import losses
from geoseg.errors import ConfigError

LN3 = math.log(3.0)
L43 = math.log(4.0 / 3.0)  # -ln 0.75
L2 = math.log(2.0)  # -ln 0.5

ALL_NAMES = ["ce", "dice", "focal", "ce+dice", "0.5*ce+dice", "ce+focal"]


def batch(
    d_logits: tuple[float, float] = (LN3, 0.0), d_truth: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = [(LN3, 0.0), (0.0, LN3), (0.0, 0.0), d_logits]
    logits = torch.tensor(pixels, dtype=torch.float32).T.reshape(1, 2, 2, 2).requires_grad_(True)
    target = torch.tensor([[[0, 1], [1, d_truth]]], dtype=torch.int64)
    return logits, target


# hand-computed values over the valid pixels a, b, c
CE = (2 * L43 + L2) / 3
CE_W13 = (1 * L43 + 3 * L43 + 3 * L2) / 7
# Dice per class over the batch: class 0: 2*0.75 / (1.5+1) = 0.6; class 1: 2*1.25 / (1.5+2) = 5/7
DICE = ((1 - 0.6) + (1 - 5 / 7)) / 2  # = 12/35
DICE_W13 = (1 * (1 - 0.6) + 3 * (1 - 5 / 7)) / 4  # = 11/35
# Focal, gamma 2: (1 - p_t)^2 * -ln p_t
FOCAL = (0.25**2 * L43 * 2 + 0.5**2 * L2) / 3
FOCAL_W13 = (1 * 0.25**2 * L43 + 3 * 0.25**2 * L43 + 3 * 0.5**2 * L2) / 7


@pytest.mark.parametrize(
    ("name", "weights", "expected"),
    [
        ("ce", None, CE),
        ("ce", [1.0, 3.0], CE_W13),
        ("dice", None, DICE),
        ("dice", [1.0, 3.0], DICE_W13),
        ("focal", None, FOCAL),
        ("focal", [1.0, 3.0], FOCAL_W13),
        ("ce+dice", None, CE + DICE),
        ("0.5*ce+dice", None, 0.5 * CE + DICE),
        ("ce+focal", [1.0, 3.0], CE_W13 + FOCAL_W13),
        (" CE + 0.25*Focal ", None, CE + 0.25 * FOCAL),
    ],
)
def test_loss_matches_hand_computed_value(
    name: str, weights: list[float] | None, expected: float
) -> None:
    loss = losses.build(name, num_classes=2, class_weights=weights)
    logits, target = batch()
    value = loss(logits, target)
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[0, :, 1, 1] == 0)  # the ignored pixel gets no gradient


def test_hand_values_are_distinct() -> None:
    """Weights change every loss (so the weighted cases above test something)."""
    assert (
        CE != pytest.approx(CE_W13)
        and DICE != pytest.approx(DICE_W13)
        and FOCAL != pytest.approx(FOCAL_W13)
    )


@pytest.mark.parametrize("name", ALL_NAMES)
def test_ignored_pixels_have_no_effect(name: str) -> None:
    loss = losses.build(name, num_classes=2, class_weights=[1.0, 2.0])
    base = loss(*batch()).item()
    changed = loss(*batch(d_logits=(-5.0, 7.0))).item()
    assert changed == pytest.approx(base, rel=1e-6)
    counted = loss(*batch(d_logits=(-5.0, 7.0), d_truth=0)).item()  # the same pixel, not ignored
    assert counted != pytest.approx(base, rel=1e-3)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_all_ignored_batch_gives_zero_with_grad(name: str) -> None:
    loss = losses.build(name, num_classes=3, class_weights=[1.0, 2.0, 3.0])
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    value = loss(logits, torch.full((2, 8, 8), 255, dtype=torch.int64))
    assert value.item() == 0.0
    assert value.requires_grad
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_with_gamma_zero_is_weighted_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[0, :3] = 255
    weights = [0.5, 1.0, 2.0, 4.0]
    focal = losses.FocalLoss(class_weights=weights, gamma=0.0)(logits, target)
    ce = losses.build("ce", num_classes=4, class_weights=weights)(logits, target)
    assert focal.item() == pytest.approx(ce.item(), rel=1e-5)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_losses_follow_the_logits_dtype_and_custom_ignore(name: str) -> None:
    """float64 and bfloat16 logits work (no hard-coded dtype); ignore_index is configurable."""
    loss = losses.build(name, num_classes=2, ignore_index=9)
    logits, target = batch(d_truth=9)
    ref = losses.build(name, num_classes=2)(*batch())
    assert loss(logits.double(), target).item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.isfinite(loss(logits.bfloat16(), target))


def test_unknown_loss_lists_valid_forms() -> None:
    for bad in ["cross_entropy", "ce+lovasz", "ce+", "2*", "-1*ce"]:
        with pytest.raises(ConfigError, match="expected ce, dice, focal"):
            losses.build(bad, num_classes=2)


def test_class_weights_must_fit_the_classes() -> None:
    with pytest.raises(ConfigError, match="do not fit 3 classes"):
        losses.build("ce", num_classes=3, class_weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="non-negative"):
        losses.build("dice", num_classes=2, class_weights=[1.0, -1.0])
