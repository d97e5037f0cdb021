"""Segmentation losses: cross-entropy, Dice, focal and weighted sums of them.

Every loss is an ``nn.Module`` called as ``loss(logits, target)`` with ``logits`` float
``[B, K, H, W]`` and ``target`` int64 ``[B, H, W]`` holding class ids ``0..K-1`` or
``ignore_index`` (nodata / unlabelled pixels, which contribute nothing). It returns a scalar.
A batch whose pixels are all ignored gives 0 (with a gradient), never NaN.

Names: ``ce``, ``dice``, ``focal`` and sums with optional coefficients, e.g. ``ce+dice``,
``0.5*ce+dice``, ``ce+0.25*focal``.

Example:
    >>> from geoseg import losses
    >>> criterion = losses.build("ce+dice", num_classes=2, class_weights=[1.0, 3.0])
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from geoseg.errors import ConfigError

__all__ = ["BASE_LOSSES", "CrossEntropyLoss", "DiceLoss", "FocalLoss", "WeightedSum", "build"]

BASE_LOSSES = ("ce", "dice", "focal")
_TERM = re.compile(r"^\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([a-z]+)\s*$")


def _weights_buffer(class_weights: Sequence[float] | None) -> torch.Tensor | None:
    return None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)


class CrossEntropyLoss(nn.Module):
    """``torch.nn.CrossEntropyLoss`` with class weights and ignore_index.

    With class weights w the value is ``sum_i w[y_i] * -log p_i(y_i) / sum_i w[y_i]`` over the
    non-ignored pixels i (torch's weighted mean). An all-ignored batch gives 0, not torch's NaN.
    """

    weight: torch.Tensor | None  # a buffer (moves with the module); None without class weights

    def __init__(self, *, ignore_index: int = 255, class_weights: Sequence[float] | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", _weights_buffer(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return logits.sum() * 0.0
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        return F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index)


class DiceLoss(nn.Module):
    """Multiclass soft Dice loss: smp's ``DiceLoss(mode='multiclass')``.

    ``1 - 2 * sum(p * t) / sum(p + t)`` per class over the whole batch (ignored pixels masked
    out of both p and t), then the mean over classes, or the weighted mean
    ``sum_k w_k * loss_k / sum_k w_k`` with class weights. Classes absent from the batch's
    truth contribute 0 (smp's convention: Dice is undefined for them) but still count in the
    mean. Checked against hand-computed values in tests/test_losses.py: smp 0.6 masks ignored
    pixels correctly (it multiplies them out of prediction and one-hot truth) and honours
    ``class_weights``, so it is used as is.
    """

    def __init__(self, *, ignore_index: int = 255, class_weights: Sequence[float] | None = None):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss as SmpDiceLoss

        self.ignore_index = ignore_index
        self.dice = SmpDiceLoss(
            "multiclass",
            from_logits=True,
            ignore_index=ignore_index,
            class_weights=None if class_weights is None else list(class_weights),
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # smp one-hot encodes ``target * valid``, so ignore values > K are safe; float32 for AMP.
        return self.dice(logits.float(), target)


class FocalLoss(nn.Module):
    """Softmax focal loss with per-class alpha (the class weights) and ignore_index.

    ``sum_i a[y_i] * (1 - p_i)^gamma * -log p_i / sum_i a[y_i]`` over non-ignored pixels i, with
    ``p_i`` the softmax probability of the true class and ``a`` the class weights (1 without).
    With ``gamma=0`` this equals the weighted cross-entropy, which the tests check.

    Hand-written because smp's multiclass FocalLoss is a mean of per-class *sigmoid* (one-vs-rest)
    focal losses on softmax logits and returns NaN when every pixel is ignored, and
    torchvision's ``sigmoid_focal_loss`` has no ignore_index or per-class alpha. The seed's
    version hard-coded ``cuda:0``; this one follows the logits' device and dtype.
    """

    weight: torch.Tensor | None  # a buffer (moves with the module); None without class weights

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        gamma: float = 2.0,
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.register_buffer("weight", _weights_buffer(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        logp = F.log_softmax(logits.float(), dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
        loss = -((1.0 - logp.exp()).clamp_min(0.0) ** self.gamma) * logp
        alpha = valid.to(loss.dtype)
        if self.weight is not None:
            alpha = alpha * self.weight.to(loss.device)[safe_target]
        # clamp: an all-ignored batch gives 0 / tiny = 0 with a (zero) gradient instead of NaN
        return (loss * alpha).sum() / alpha.sum().clamp_min(torch.finfo(loss.dtype).tiny)


class WeightedSum(nn.Module):
    """``sum_j coefficient_j * loss_j(logits, target)``."""

    def __init__(self, terms: Sequence[tuple[float, str, nn.Module]]):
        super().__init__()
        self.coefficients = [c for c, _, _ in terms]
        self.names = [n for _, n, _ in terms]
        self.terms = nn.ModuleList([m for _, _, m in terms])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for coefficient, term in zip(self.coefficients, self.terms, strict=True):
            total = total + coefficient * term(logits, target)
        return total


def _base(name: str, *, ignore_index: int, class_weights: Sequence[float] | None) -> nn.Module:
    if name == "ce":
        return CrossEntropyLoss(ignore_index=ignore_index, class_weights=class_weights)
    if name == "dice":
        return DiceLoss(ignore_index=ignore_index, class_weights=class_weights)
    return FocalLoss(ignore_index=ignore_index, class_weights=class_weights)


def build(
    name: str,
    *,
    num_classes: int,
    ignore_index: int = 255,
    class_weights: list[float] | None = None,
) -> nn.Module:
    """Build a loss ``(logits [B,K,H,W] float, target [B,H,W] int64) -> scalar``.

    Args:
        name: ``ce``, ``dice``, ``focal``, or a sum of them with optional coefficients, e.g.
            ``ce+dice``, ``0.5*ce+dice``, ``ce+focal``.
        num_classes: K, the number of classes (background included).
        ignore_index: Target value of pixels that contribute nothing (nodata, unlabelled).
        class_weights: K non-negative weights by class id (e.g. ``[1, 5]`` to up-weight
            buildings); used by every term (CE weight, Dice weighted mean, focal alpha).

    Raises:
        ConfigError: unknown loss name or class weights that do not fit ``num_classes``.
    """
    terms: list[tuple[float, str, nn.Module]] = []
    if class_weights is not None:
        weights = list(class_weights)
        if len(weights) != num_classes or any(not (w >= 0) for w in weights) or sum(weights) <= 0:
            raise ConfigError(
                f"class_weights={weights} do not fit {num_classes} classes; "
                f"give {num_classes} non-negative numbers, e.g. {[1.0] * num_classes}"
            )
    for part in str(name).strip().lower().split("+"):
        match = _TERM.match(part)
        if match is None or match.group(2) not in BASE_LOSSES:
            raise ConfigError(
                f"unknown loss {name!r}; expected {', '.join(BASE_LOSSES)} or a sum of them with "
                "optional coefficients, e.g. ce+dice or 0.5*ce+dice (set train.loss)"
            )
        coefficient = float(match.group(1)) if match.group(1) else 1.0
        terms.append(
            (
                coefficient,
                match.group(2),
                _base(match.group(2), ignore_index=ignore_index, class_weights=class_weights),
            )
        )
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][2]
    return WeightedSum(terms)
